"""Upgrade requests (WebSocket) through nmc's real relay (tests/relay_process.py: server, proxy,
transport, tunnel) to a replica played by a scripted server on a loopback socket (the one of
test_unit_transport). The transport reads the answer to an upgrade with its one parser, so every
malformed answer gets the verdict any request gets: a 502, nothing of it relayed, its connection
not reused. A 101 opens a tunnel that pumps bytes both ways, those sent along with the heads too.
"""

from __future__ import annotations

import socket

import pytest

from nmc import http1
from relay_process import RelayProcess
from test_unit_transport import Server, ok

UPGRADE = (b"GET /ws HTTP/1.1\r\nHost: site\r\nConnection: keep-alive, Upgrade\r\n"
           b"Upgrade: websocket\r\nSec-WebSocket-Key: k\r\nSec-WebSocket-Version: 13\r\n\r\n")
SWITCH = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
NMC_OWN = {"content-type", "content-length", "x-request-id", "x-served-by", "connection", "date"}


class Replica:
    """The scripted server, kept for the whole module; each test says how it answers an upgrade
    request (`answer_upgrade(conn)`); any other request gets `answer_plain`, by default a 200
    that closes its connection."""

    def __init__(self):
        self.answer_upgrade = self.answer_plain = None
        self.server = Server(self._script)

    def _script(self, conn, index):
        request = conn.request()
        if request is None:
            return
        if b"\r\nupgrade: websocket\r\n" in request.lower():
            self.answer_upgrade(conn)
        elif self.answer_plain is not None:
            self.answer_plain(conn)
        else:
            conn.send(ok(b"fine", b"Connection: close\r\n"))


@pytest.fixture(scope="module")
def replica():
    replica = Replica()
    yield replica
    replica.server.close()
    assert not replica.server.errors, replica.server.errors


@pytest.fixture(scope="module")
def relay(replica):
    relay = RelayProcess(replica.server.port)
    yield relay
    log = relay.stop()
    assert "Traceback" not in log and "error while handling" not in log, log


def exchange(port: int, request: bytes, more: bytes = b"") -> tuple[int, dict, bytes]:
    """Send `request` (and `more` in the same send), read until the relay closes the connection:
    (status, headers by lower-case name, body); status 0 when nothing came at all."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request + more)
        data = b""
        while chunk := _recv(sock):
            data += chunk
    if not data:
        return 0, {}, b""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split(" ")[1]), headers, body


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionResetError:
        return b""


def assert_not_reused(replica: Replica, relay: RelayProcess, connections_before: int) -> None:
    """A plain request after the upgrade's: answered on a new connection, the broken one gone."""
    status, _, body = exchange(relay.port, b"GET /after HTTP/1.1\r\nHost: site\r\n"
                                             b"Connection: close\r\n\r\n")
    assert (status, body) == (200, b"fine")
    assert replica.server.connections == connections_before + 2


def sends(answer: bytes):
    return lambda conn: conn.send(answer)


def switch_with(*lines: bytes) -> bytes:
    return SWITCH + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


MANY_FIELDS = [b"X-%d: v" % i for i in range(http1.MAX_FIELDS - 1)]  # with the two of SWITCH

# Every malformed answer of test_unit_transport, as the answer to an upgrade; a 101 wherever the
# fault is in the head, so that a lenient parser would have opened a tunnel.
MALFORMED = [
    *(line + b"\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n" for line in [
        b"HTTP/2 101 OK", b"HTTP/1.1 10 OK", b"HTTP/1.1 099 Low", b"HTTP/1.1 1x1 OK", b"ICY 101 OK",
        b"HTTP/1.1  101 OK", b"HTTP/1.1 \xb201 OK", b"HTTP/1.1 101 O\nK", b"HTTP/1.1 101 O\rK",
        b"HTTP/1.1 101 O\x00K"]),
    b"\r\n\r\n",  # no status line at all
    *(switch_with(b"A: 1", field, b"B: 2") for field in [
        b"NoColon", b"Space : before", b"Tab\t: before", b" folded: line", b"\tfolded: line",
        b"Bad\x00: name", b"Value: with\x01control", b"Value: bare\nLF", b"Value: bare\rCR",
        b": no name", b"Na(me: x"]),
    switch_with(*MANY_FIELDS, b"X-One-Too-Many: v"),
    *(b"HTTP/1.1 200 OK\r\n%s\r\n\r\nhello" % b"\r\n".join(fields) for fields in [
        [b"Content-Length: 5", b"Transfer-Encoding: chunked"],
        [b"Content-Length: 5", b"Content-Length: 6"],
        [b"Content-Length: 5, 6"], [b"Content-Length: -1"], [b"Content-Length: 0x10"],
        [b"Content-Length: \xb2"], [b"Content-Length: " + b"1" * 19]]),
    b"garbage\r\n\r\n",
    switch_with(b"X: " + b"y" * http1.MAX_ANSWER_HEAD),
    # what only an upgrade can get wrong: a switch to nothing, or to what was not asked for
    SWITCH.replace(b"Upgrade: websocket\r\n", b"") + b"\r\n",
    SWITCH.replace(b"Upgrade: websocket", b"Upgrade: h2c") + b"\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\n" * (http1.MAX_INTERIM + 1) + SWITCH + b"\r\n",
]


@pytest.mark.parametrize("answer", MALFORMED)
def test_a_malformed_answer_to_an_upgrade_is_a_502_and_nothing_of_it_is_relayed(replica, relay,
                                                                                  answer):
    replica.answer_upgrade = sends(answer + b"frames the tunnel would have carried")
    before = replica.server.connections
    status, headers, body = exchange(relay.port, UPGRADE, b"client frames")
    assert status == 502, (headers, body)
    assert set(headers) <= NMC_OWN and headers["connection"] == "close", headers
    assert body.startswith(b"502 Bad Gateway: replica replica-%d sent an invalid answer"
                           % replica.server.port), body
    assert b"frames" not in body
    assert_not_reused(replica, relay, before)


def test_no_answer_to_an_upgrade_is_a_502(replica, relay):
    replica.answer_upgrade = lambda conn: None  # the connection closes
    before = replica.server.connections
    status, headers, body = exchange(relay.port, UPGRADE)
    assert status == 502 and b"broke the connection" in body, (headers, body)
    assert set(headers) <= NMC_OWN
    assert replica.server.connections == before + 1  # not sent again elsewhere, as before
    assert_not_reused(replica, relay, before)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
])
def test_a_refusal_whose_body_breaks_off_is_cut_as_any_answer_is(replica, relay, answer):
    replica.answer_upgrade = sends(answer)
    before = replica.server.connections
    status, headers, body = exchange(relay.port, UPGRADE)
    # never a whole answer: nothing at all (a small body is read whole before the head goes),
    # or a chunked head and what arrived, without the last chunk
    assert status in (0, 404), (headers, body)
    if status:
        assert headers["transfer-encoding"] == "chunked" and not body.endswith(b"0\r\n\r\n")
    assert_not_reused(replica, relay, before)


def test_a_refused_upgrade_is_relayed_as_an_answer_then_the_connection_closes(replica, relay):
    replica.answer_upgrade = sends(b"HTTP/1.1 404 Not Found\r\nContent-Length: 7\r\n"
                                   b"Connection: X-Private\r\nX-Private: p\r\nX-Site: s\r\n\r\nno ws\r\n")
    status, headers, body = exchange(relay.port, UPGRADE)
    assert (status, body) == (404, b"no ws\r\n")
    assert headers["x-site"] == "s" and headers["connection"] == "close"
    assert "x-private" not in headers and "upgrade" not in headers
    assert headers["x-served-by"] == f"replica-{replica.server.port}" and headers["x-request-id"]


def test_a_101_opens_a_tunnel_that_carries_what_came_with_either_head(replica, relay):
    seen = []

    def tunnel(conn):
        conn.send(switch_with(b"Sec-WebSocket-Accept: a", b"Keep-Alive: 5") + b"early down")
        while len(conn.buffer) < len(b"client frames, more"):  # bytes past the request head
            assert conn._fill(), conn.buffer
        seen.append(conn.buffer)
        conn.send(b" and the rest")  # then the replica closes its end

    replica.answer_upgrade = tunnel
    with socket.create_connection(("127.0.0.1", relay.port), timeout=10) as sock:
        sock.sendall(UPGRADE + b"client frames")
        data = b""
        while b"early down" not in data:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk
        sock.sendall(b", more")
        while chunk := _recv(sock):
            data += chunk
    head, _, down = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n"), head
    names = [line.split(b":")[0].lower() for line in head.split(b"\r\n")[1:]]
    assert b"connection" in names and b"upgrade" in names and b"sec-websocket-accept" in names
    assert b"keep-alive" not in names and b"content-length" not in names
    assert b"x-served-by" in names and b"x-request-id" in names
    assert down == b"early down and the rest"
    assert seen == [b"client frames, more"]
    request = replica.server.requests[-1].lower()
    assert b"\r\nconnection: upgrade\r\n" in request and b"\r\nupgrade: websocket\r\n" in request
    assert b"keep-alive" not in request and b"\r\nx-forwarded-for: 127.0.0.1\r\n" in request


def test_interim_answers_up_to_the_limit_are_skipped_before_the_101(replica, relay):
    replica.answer_upgrade = sends(b"HTTP/1.1 100 Continue\r\n\r\n" * http1.MAX_INTERIM +
                                   switch_with() + b"down")
    status, headers, body = exchange(relay.port, UPGRADE)
    assert (status, headers["upgrade"], body) == (101, "websocket", b"down")


def test_a_101_to_a_request_that_asked_for_no_upgrade_is_a_502(replica, relay):
    replica.answer_plain = sends(switch_with() + b"x")
    before = replica.server.connections
    try:
        status, headers, body = exchange(relay.port, b"GET /plain HTTP/1.1\r\nHost: site\r\n"
                                                     b"Connection: close\r\n\r\n")
    finally:
        replica.answer_plain = None
    assert status == 502 and b"sent an invalid answer" in body, (headers, body)
    assert set(headers) <= NMC_OWN
    assert_not_reused(replica, relay, before)


def test_a_replica_that_cannot_be_connected_to_is_skipped_like_for_any_request():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    relay = RelayProcess(port)
    try:
        status, headers, body = exchange(relay.port, UPGRADE)
    finally:
        log = relay.stop()
    assert status == 503 and b"no replica could be reached" in body, (headers, body)
    assert "Traceback" not in log, log


def test_a_replica_that_does_not_answer_the_upgrade_gets_a_504():
    silent = Server(lambda conn, index: (conn.request(), conn.sock.recv(1)))  # until we close
    relay = RelayProcess(silent.port, backend_timeout=0.3)
    try:
        status, headers, body = exchange(relay.port, UPGRADE)
    finally:
        log = relay.stop()
        silent.close()
    assert status == 504 and b"did not answer within 0.3s" in body, (headers, body)
    assert headers["connection"] == "close" and headers["x-served-by"]
    assert "Traceback" not in log, log
