"""--max-body-size end to end: a body over the limit gets nmc's own 413, before anything reaches
a replica when its Content-Length says so; a chunked one once it crosses the limit. Bodies under
the limit are relayed whole. Real nmc, real replica, real sockets."""

from __future__ import annotations

import pytest
import requests

from conftest import free_port_block

LIMIT = 256 * 1024


@pytest.fixture
def limited(run_nmc, cluster_name):
    """One replica behind nmc with --max-body-size 256k: (proxy URL, admin URL)."""
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 1),
                      "--base-port", str(base), "--admin-port", str(base + 2), "-n", "1", "-q",
                      "--max-body-size", "256k")
    process.wait_serving()
    return f"http://127.0.0.1:{base + 1}", f"http://127.0.0.1:{base + 2}"


def relayed(admin: str) -> int:
    return requests.get(admin + "/status", timeout=10).json()["totals"]["requests"]


def pieces(total: int, size: int = 16 * 1024):
    """A chunked body: requests sends a generator's pieces as chunks."""
    for start in range(0, total, size):
        yield b"z" * min(size, total - start)


def test_a_declared_length_over_the_limit_is_a_413_that_reaches_no_replica(limited):
    url, admin = limited
    answer = requests.post(url + "/echo", data=b"x" * (LIMIT + 1), timeout=10)
    assert answer.status_code == 413
    assert "over --max-body-size (262,144 bytes)" in answer.text
    assert answer.headers["Connection"] == "close" and "X-Request-ID" in answer.headers
    assert relayed(admin) == 0  # no replica was chosen, nothing was sent


def test_a_body_at_the_limit_is_relayed_whole(limited):
    url, _admin = limited
    for body in (b"y" * LIMIT, pieces(LIMIT)):
        answer = requests.post(url + "/echo", data=body, timeout=10)
        assert answer.status_code == 200
        assert answer.json()["bodyLength"] == LIMIT


def test_a_chunked_body_that_crosses_the_limit_is_a_413_and_nmc_serves_on(limited):
    url, _admin = limited
    answer = requests.post(url + "/echo", data=pieces(LIMIT * 4), timeout=10)
    assert answer.status_code == 413 and "over --max-body-size" in answer.text
    assert requests.get(url + "/healthz", timeout=10).status_code == 200
