"""What the relay sends again when a replica breaks the connection before any byte of its
answer: an idempotent method's request, and a POST or PATCH that carries an Idempotency-Key
(the IETF httpapi draft); never another POST. nmc's real relay (tests/relay_process.py) in front
of two scripted replicas on loopback sockets: one breaks every connection once it has read the
request, the other answers with what it received."""

from __future__ import annotations

import pytest
import requests

from relay_process import RelayProcess
from test_unit_transport import Server, ok

SENT = 6  # round-robin: half of them go to the breaking replica first


def breaks(conn, index):
    conn.request()  # read whole, then closed without a byte of an answer


def echoes(conn, index):
    while (request := conn.request()) is not None:
        conn.send(ok(request.split(b"\r\n\r\n", 1)[1] or b"-"))


@pytest.fixture
def replicas():
    broken, good = Server(breaks), Server(echoes)
    relay = RelayProcess(broken.port, good.port)
    yield broken, good, f"http://127.0.0.1:{relay.port}"
    log = relay.stop()
    broken.close()
    good.close()
    assert "Traceback" not in log, log
    assert not broken.errors and not good.errors, broken.errors + good.errors


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_a_request_with_an_idempotency_key_is_sent_again_elsewhere(replicas, method):
    broken, good, url = replicas
    for number in range(SENT):
        body = f"order {number}".encode()
        answer = requests.request(method, url + "/orders", data=body, timeout=10,
                                  headers={"Idempotency-Key": f"key-{number}"})
        assert (answer.status_code, answer.content) == (200, body)
    assert len(broken.requests) >= 1  # some went there first, and were sent again
    assert len(good.requests) == SENT  # each arrived once where it was answered
    assert all(b"\r\nidempotency-key: key-" in r.lower() for r in broken.requests + good.requests)


def test_a_post_without_one_is_never_sent_twice(replicas):
    broken, good, url = replicas
    statuses = [requests.post(url + "/orders", data=b"x", timeout=10).status_code
                for _ in range(SENT)]
    assert statuses.count(502) == len(broken.requests) >= 1  # each that broke: a 502, not retried
    assert statuses.count(200) == len(good.requests) == SENT - len(broken.requests)


def test_an_empty_key_is_no_key(replicas):
    broken, _good, url = replicas
    statuses = [requests.post(url + "/orders", data=b"x", headers={"Idempotency-Key": ""},
                              timeout=10).status_code for _ in range(SENT)]
    assert 502 in statuses and statuses.count(502) == len(broken.requests)
