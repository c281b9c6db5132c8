"""nmc.health against a real replica."""

import socket

import pytest

from conftest import IMAGE, free_port_block, get, wait_until
from nmc.health import HealthChecker


@pytest.fixture(scope="module")
def replica_url(docker_client):
    import uuid
    from conftest import remove_cluster

    name = "nmct-" + uuid.uuid4().hex[:10]
    port = free_port_block(1)
    docker_client.containers.run(IMAGE, detach=True, name=f"{name}-{port}",
                                 labels={"nmc.cluster": name},
                                 ports={"8080/tcp": ("127.0.0.1", port)})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(url), what="the replica answers")
        yield url
    finally:
        remove_cluster(docker_client, name)


def _answers(url):
    try:
        return get(url + "/healthz", timeout=1).ok
    except Exception:
        return False


def test_a_healthy_replica_passes(replica_url):
    result = HealthChecker("/healthz", 2).check(replica_url)
    assert result.ok and result.reason == "status 200"


def test_an_error_status_fails_with_the_status(replica_url):
    result = HealthChecker("/status/500", 2).check(replica_url)
    assert not result.ok and result.reason == "status 500"


def test_a_redirect_is_not_followed_and_fails(replica_url):
    result = HealthChecker("/status/302", 2).check(replica_url)
    assert not result and result.reason == "status 302"


def test_a_slow_answer_fails_on_the_timeout(replica_url):
    result = HealthChecker("/slow?ms=3000", 0.3).check(replica_url)
    assert not result.ok and result.reason == "no answer within 0.3s"


def test_a_closed_port_is_refused():
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = HealthChecker("/healthz", 1).check(f"http://127.0.0.1:{port}")
    assert not result.ok and result.reason == "connection refused"
