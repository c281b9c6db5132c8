"""End to end: how a replica is chosen (--balance least-conn, --sticky) and the per-request
access log (--access-log), against real replicas."""

from __future__ import annotations

import re
import threading
import time

import requests

from conftest import free_port_block

ACCESS_LINE = re.compile(
    r'^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
    r'"(?P<request>[^"]*)" (?P<status>\d{3}) (?P<bytes>\d+|-) "(?P<referer>[^"]*)" '
    r'"(?P<agent>[^"]*)" rid=(?P<rid>\S+) replica=(?P<replica>\S+) time=(?P<time>\d+\.\d{3})$')


def start(run_nmc, cluster_name: str, *extra: str):
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "-n", "2", "--check-interval", "1", "-q", *extra)
    process.wait_serving()
    return process, f"http://127.0.0.1:{base + 2}", [f"{cluster_name}-{base}", f"{cluster_name}-{base + 1}"]


def test_least_conn_sends_new_requests_to_the_replica_that_is_not_busy(run_nmc, cluster_name):
    process, url, names = start(run_nmc, cluster_name, "--balance", "least-conn")
    busy: list = []
    slow = threading.Thread(target=lambda: busy.append(
        requests.get(url + "/slow?ms=3000", timeout=20).headers["X-Served-By"]))
    slow.start()
    time.sleep(0.5)  # the slow one is in flight on one replica
    quick = [requests.get(url + "/whoami", timeout=5).headers["X-Served-By"] for _ in range(6)]
    slow.join(20)
    assert len(set(quick)) == 1 and quick[0] != busy[0], (quick, busy)
    # idle again: both take turns
    turns = [requests.get(url + "/whoami", timeout=5).headers["X-Served-By"] for _ in range(4)]
    assert set(turns) == set(names)


def test_round_robin_is_the_default_even_with_a_busy_replica(run_nmc, cluster_name):
    process, url, names = start(run_nmc, cluster_name)
    slow = threading.Thread(target=lambda: requests.get(url + "/slow?ms=2000", timeout=20))
    slow.start()
    time.sleep(0.3)
    quick = [requests.get(url + "/whoami", timeout=5).headers["X-Served-By"] for _ in range(6)]
    slow.join(20)
    assert set(quick) == set(names)


def test_a_sticky_client_keeps_its_replica_and_moves_when_it_goes(run_nmc, cluster_name,
                                                                  docker_client):
    process, url, names = start(run_nmc, cluster_name, "--sticky")
    with requests.Session() as client:  # keeps the cookie, like a browser
        first = client.get(url + "/whoami", timeout=5)
        mine = first.headers["X-Served-By"]
        assert first.cookies.get("nmc_replica") == mine
        assert "HttpOnly" in first.headers["Set-Cookie"]
        later = [client.get(url + "/whoami", timeout=5) for _ in range(8)]
        assert {a.headers["X-Served-By"] for a in later} == {mine}
        assert all("Set-Cookie" not in a.headers for a in later)  # told once
        # without the cookie, another client is spread as usual
        others = {requests.get(url + "/whoami", timeout=5).headers["X-Served-By"] for _ in range(4)}
        assert others == set(names)
        docker_client.containers.get(mine).stop(timeout=2)  # its replica goes away
        moved = client.get(url + "/whoami", timeout=10)
        assert moved.status_code == 200
        other = (set(names) - {mine}).pop()
        assert moved.headers["X-Served-By"] == other
        assert client.cookies.get("nmc_replica") == other


def test_the_access_log_has_one_combined_line_per_request(run_nmc, cluster_name, tmp_path):
    log_file = tmp_path / "access.log"
    process, url, names = start(run_nmc, cluster_name, "--access-log", str(log_file))
    for i in range(4):
        requests.get(url + f"/whoami?i={i}", headers={"Referer": "http://example.test/",
                                                      "User-Agent": "nmct/1.0",
                                                      "X-Request-ID": f"req-{i}"}, timeout=5)
    requests.post(url + "/status/404", data=b"abc", timeout=5)
    time.sleep(0.3)
    lines = log_file.read_text().splitlines()
    assert len(lines) == 5, lines
    parsed = [ACCESS_LINE.match(line) for line in lines]
    assert all(parsed), lines
    first = parsed[0]
    assert first["request"] == "GET /whoami?i=0 HTTP/1.1"
    assert (first["status"], first["referer"], first["agent"], first["rid"]) == \
        ("200", "http://example.test/", "nmct/1.0", "req-0")
    assert int(first["bytes"]) > 100
    assert {p["replica"] for p in parsed[:4]} == set(names)
    assert parsed[4]["request"].startswith("POST /status/404") and parsed[4]["status"] == "404"
    assert "Forwarding request" not in log_file.read_text()
