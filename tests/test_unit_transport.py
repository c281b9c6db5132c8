"""nmc's transport adapter: the answer-head parser and body framing on plain bytes, then whole
exchanges with a scripted HTTP server on a real loopback socket (a thread per connection)."""

from __future__ import annotations

import select
import socket
import threading
import time

import pytest
import requests
import urllib3

from nmc import http1, transport
from nmc.transport import (
    InvalidAnswer,
    NotConnected,
    RelayAdapter,
    body_framing,
    parse_head,
)

# ------------------------------------------------------------------------------------------------
# the answer's head


def test_a_head_keeps_order_spelling_and_repeats():
    version, status, reason, headers = parse_head(
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nx-lower: v\r\nSet-Cookie: b=2\r\n"
        b"Content-Length: 0\r\nEmpty:\r\nPadded: \t  x y \t")
    assert (version, status, reason) == ("HTTP/1.1", 200, "OK")
    assert headers == [("Set-Cookie", "a=1"), ("x-lower", "v"), ("Set-Cookie", "b=2"),
                       ("Content-Length", "0"), ("Empty", ""), ("Padded", "x y")]


@pytest.mark.parametrize("line, reason", [
    (b"HTTP/1.1 404 Not Found", "Not Found"),
    (b"HTTP/1.0 200", ""),
    (b"HTTP/1.1 200 ", ""),
    (b"HTTP/1.1 599 Odd \xe9 reason", "Odd \xe9 reason"),
])
def test_status_lines_that_parse(line, reason):
    assert parse_head(line)[2] == reason


@pytest.mark.parametrize("line", [
    b"HTTP/2 200 OK", b"HTTP/1.1 20 OK", b"HTTP/1.1 099 Low", b"HTTP/1.1 2x0 OK",
    b"ICY 200 OK", b"HTTP/1.1  200 OK", b"HTTP/1.1 \xb200 OK", b"", b"HTTP/1.1 200 O\nK",
    b"HTTP/1.1 200 O\rK", b"HTTP/1.1 200 O\x00K",
])
def test_status_lines_that_do_not(line):
    with pytest.raises(InvalidAnswer, match="status line"):
        parse_head(line)


@pytest.mark.parametrize("field", [
    b"NoColon", b"Space : before", b"Tab\t: before", b" folded: line", b"\tfolded: line",
    b"Bad\x00: name", b"Value: with\x01control", b"Value: bare\nLF", b"Value: bare\rCR",
    b": no name", b"Na(me: x",
])
def test_malformed_header_lines_are_refused(field):
    with pytest.raises(InvalidAnswer, match="header line"):
        parse_head(b"HTTP/1.1 200 OK\r\nA: 1\r\n" + field + b"\r\nB: 2")


def test_more_than_the_header_line_limit_is_refused():
    many = b"".join(b"\r\nX-%d: v" % i for i in range(http1.MAX_FIELDS + 1))
    with pytest.raises(InvalidAnswer, match="header lines"):
        parse_head(b"HTTP/1.1 200 OK" + many)
    assert len(parse_head(b"HTTP/1.1 200 OK" + many.rpartition(b"\r\n")[0])[3]) == 100


# ------------------------------------------------------------------------------------------------
# body framing: (length, chunked, keep_alive)


@pytest.mark.parametrize("version, status, headers, method, framing", [
    ("HTTP/1.1", 200, [("Content-Length", "12")], "GET", (12, False, True)),
    ("HTTP/1.1", 200, [("Content-Length", "12, 12")], "GET", (12, False, True)),
    ("HTTP/1.1", 200, [("Content-Length", "0")], "GET", (0, False, True)),
    ("HTTP/1.1", 200, [("Transfer-Encoding", "chunked")], "GET", (None, True, True)),
    ("HTTP/1.1", 200, [("Transfer-Encoding", "gzip, Chunked")], "GET", (None, True, True)),
    ("HTTP/1.1", 200, [("Transfer-Encoding", "gzip")], "GET", (None, False, False)),
    ("HTTP/1.1", 200, [], "GET", (None, False, False)),
    ("HTTP/1.1", 200, [("Content-Length", "5"), ("Connection", "Keep-Alive, Close")], "GET",
     (5, False, False)),
    ("HTTP/1.0", 200, [("Content-Length", "5")], "GET", (5, False, False)),
    ("HTTP/1.0", 200, [("Content-Length", "5"), ("Connection", "keep-alive")], "GET",
     (5, False, True)),
    ("HTTP/1.1", 200, [("Content-Length", "5")], "HEAD", (0, False, True)),
    ("HTTP/1.1", 204, [("Transfer-Encoding", "chunked")], "GET", (0, False, True)),
    ("HTTP/1.1", 304, [("Content-Length", "99")], "GET", (0, False, True)),
    ("HTTP/1.1", 101, [("Connection", "upgrade")], "GET", (0, False, False)),
])
def test_body_framing(version, status, headers, method, framing):
    assert body_framing(version, status, headers, method) == framing


@pytest.mark.parametrize("headers", [
    [("Content-Length", "5"), ("Transfer-Encoding", "chunked")],
    [("Content-Length", "5"), ("Content-Length", "6")],
    [("Content-Length", "5, 6")],
    [("Content-Length", "-1")],
    [("Content-Length", "0x10")],
    [("Content-Length", "\xb2")],
    [("Content-Length", "1" * 19)],
])
def test_ambiguous_framing_is_refused(headers):
    with pytest.raises(InvalidAnswer):
        body_framing("HTTP/1.1", 200, headers, "GET")


@pytest.mark.parametrize("url, split", [
    ("http://127.0.0.1:3001/a%2Fb;c?x=1&x=2#frag", ("127.0.0.1:3001", "/a%2Fb;c?x=1&x=2")),
    ("http://h:1?q", ("h:1", "/?q")),
    ("http://h:1", ("h:1", "/")),
    ("http://h//double//", ("h", "//double//")),
])
def test_the_target_is_sent_as_given(url, split):
    assert transport._split_url(url) == split


# ------------------------------------------------------------------------------------------------
# whole exchanges with a scripted server on a real socket


class Server:
    """Accepts connections on 127.0.0.1 and runs `script(connection, index)` for each, in a
    thread; `script` reads requests with `request()` and writes whatever bytes it likes."""

    def __init__(self, script):
        self.script = script
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.connections = 0
        self.requests: list[bytes] = []  # every request received, whole, in order
        self.errors: list[BaseException] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.settimeout(10)
            index, self.connections = self.connections, self.connections + 1
            threading.Thread(target=self._run, args=(conn, index), daemon=True).start()

    def _run(self, conn, index):
        try:
            self.script(Conn(self, conn), index)
        except BaseException as e:  # noqa: BLE001 - reported by the test that owns the server
            self.errors.append(e)
        finally:
            conn.close()

    def close(self):
        self.listener.close()


class Conn:
    def __init__(self, server: Server, sock: socket.socket):
        self.server, self.sock, self.buffer = server, sock, b""

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        self.buffer += data
        return bool(data)

    def request(self) -> bytes | None:
        """The next whole request (head and body: Content-Length or chunked), None at EOF."""
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill():
                return None
        end = self.buffer.index(b"\r\n\r\n") + 4
        head = self.buffer[:end].lower()
        if b"transfer-encoding: chunked" in head:
            while not self.buffer.endswith(b"0\r\n\r\n"):
                self._fill()
            end = len(self.buffer)
        elif b"content-length:" in head:
            end += int(head.split(b"content-length:")[1].split(b"\r\n")[0])
            while len(self.buffer) < end:
                self._fill()
        request, self.buffer = self.buffer[:end], self.buffer[end:]
        self.server.requests.append(request)
        return request

    def send(self, data: bytes):
        self.sock.sendall(data)


def ok(body: bytes = b"hello", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def keep_answering(answer: bytes):
    def script(conn, index):
        while conn.request() is not None:
            conn.send(answer)
    return script


@pytest.fixture
def serve():
    servers = []

    def start(script) -> Server:
        server = Server(script)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()
        assert not server.errors, server.errors


@pytest.fixture
def session():
    session = requests.Session()
    session.trust_env = False
    session.headers.clear()
    session.mount("http://", RelayAdapter())
    yield session
    session.close()


def send(session, method: str, url: str, body=None, headers=None, timeout=(2, 2)):
    """One request through the Session's adapter, as the proxy sends it (no redirects)."""
    request = requests.Request(method, url, headers=headers or {}, data=body).prepare()
    return session.get_adapter(url).send(request, stream=True, timeout=timeout)


def test_answers_come_back_and_the_connection_is_reused(serve, session):
    server = serve(keep_answering(ok(extra=b"X-Many: 1\r\nX-Many: 2\r\n")))
    for _ in range(3):
        response = send(session, "GET", server.url + "/x?y=1")
        assert response.status_code == 200 and response.reason == "OK"
        assert response.raw.headers == [("Content-Length", "5"), ("X-Many", "1"), ("X-Many", "2")]
        assert response.headers["x-many"] == "1, 2"
        assert response.raw.read() == b"hello" and response.raw.complete
    assert server.connections == 1
    assert server.requests[0] == b"GET /x?y=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % server.port


def test_nothing_is_added_but_host_and_body_framing(serve, session):
    server = serve(keep_answering(ok()))
    send(session, "PUT", server.url + "/a", body=b"abc",
         headers={"Host": "shop", "User-Agent": urllib3.util.SKIP_HEADER, "X-A": "1"}).raw.read()
    send(session, "POST", server.url + "/b", body=iter([b"ab", b"", b"cde"]),
         headers={"Host": "shop"}).raw.read()
    assert server.requests == [
        b"PUT /a HTTP/1.1\r\nHost: shop\r\nX-A: 1\r\nContent-Length: 3\r\n\r\nabc",
        (b"POST /b HTTP/1.1\r\nHost: shop\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")]


def test_the_adapter_frames_a_body_the_headers_do_not(serve, session):
    server = serve(keep_answering(ok()))
    for body in (b"abc", iter([b"ab", b"c"])):
        request = requests.PreparedRequest()  # as the proxy builds it: no framing of requests'
        request.method, request.url = "POST", server.url + "/c"
        request.headers, request.body = {"Host": "h"}, body
        session.get_adapter(server.url).send(request, timeout=(2, 2)).raw.read()
    assert server.requests == [
        b"POST /c HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
        (b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"2\r\nab\r\n1\r\nc\r\n0\r\n\r\n")]


@pytest.mark.parametrize("name, value", [
    ("X-Split", "a\r\nInjected: yes"), ("X-Split", "a\nInjected: yes"), ("X-Split", "a\rb"),
    ("X-Nul", "a\x00b"), ("Bad Name", "x"), ("Colon:Name", "x"), ("", "x"),
])
def test_a_header_the_grammar_refuses_is_not_sent(serve, session, name, value):
    server = serve(keep_answering(ok()))
    with pytest.raises(requests.exceptions.InvalidHeader):
        send(session, "GET", server.url, headers={name: value})
    assert server.requests == []


def test_a_chunked_answer_is_decoded_and_the_connection_reused(serve, session):
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5;ext=1\r\nhello\r\n1\r\n \r\n5\r\nworld\r\n0\r\nTrailer: x\r\n\r\n")
    server = serve(keep_answering(chunked))
    response = send(session, "GET", server.url)
    assert response.raw.chunked and response.raw.length is None
    assert list(response.raw.stream(3)) == [b"hel", b"lo", b" ", b"wor", b"ld"]
    assert send(session, "GET", server.url).raw.read() == b"hello world"
    assert server.connections == 1


def test_an_answer_without_length_is_read_until_the_connection_closes(serve, session):
    def script(conn, index):
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\n\r\nto the end")
    server = serve(script)
    assert send(session, "GET", server.url).raw.read() == b"to the end"
    assert send(session, "GET", server.url).raw.read() == b"to the end"
    assert server.connections == 2  # never reused


def test_bodiless_answers_leave_the_connection_clean(serve, session):
    def script(conn, index):
        conn.request()
        conn.send(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
                  b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n")
        conn.request()
        conn.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")  # HEAD: no body follows
        conn.request()
        conn.send(ok(b"last"))
    server = serve(script)
    response = send(session, "GET", server.url)
    assert response.status_code == 204 and response.raw.complete
    head = send(session, "HEAD", server.url)
    assert head.headers["Content-Length"] == "1234" and head.raw.complete
    assert head.raw.read() == b""
    assert send(session, "GET", server.url).raw.read() == b"last"
    assert server.connections == 1


def test_a_connection_closed_while_idle_is_replaced_unnoticed(serve, session):
    def script(conn, index):
        conn.request()
        conn.send(ok(b"first" if index == 0 else b"again"))  # then close, as an idle timeout would
    server = serve(script)
    assert send(session, "GET", server.url).raw.read() == b"first"
    [idle] = session.get_adapter(server.url)._pools[f"127.0.0.1:{server.port}"].idle
    assert select.select([idle.sock], [], [], 5)[0], "the server's close did not arrive"
    assert send(session, "POST", server.url, body=b"once").raw.read() == b"again"
    assert server.connections == 2
    assert [r.split(b" ")[0] for r in server.requests] == [b"GET", b"POST"]


def test_a_connection_that_breaks_after_the_request_arrived_is_not_retried(serve, session):
    def script(conn, index):
        conn.request()
        conn.send(ok())
        conn.request()
        time.sleep(0.2)  # the replica dies while working on it: no answer
    server = serve(script)
    assert send(session, "GET", server.url).raw.read() == b"hello"
    with pytest.raises(requests.exceptions.ConnectionError) as caught:
        send(session, "POST", server.url, body=b"once")
    assert not isinstance(caught.value, NotConnected)
    assert server.connections == 1 and len(server.requests) == 2


def test_a_refused_connection_is_not_connected(session):
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    with pytest.raises(NotConnected):
        send(session, "GET", f"http://127.0.0.1:{port}/")


def test_a_silent_replica_is_a_read_timeout(serve, session):
    def script(conn, index):
        conn.request()
        time.sleep(1)
    server = serve(script)
    started = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        send(session, "GET", server.url, timeout=(2, 0.3))
    assert time.monotonic() - started < 0.9


@pytest.mark.parametrize("answer", [
    b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nBad Header: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * http1.MAX_ANSWER_HEAD + b"\r\n\r\n",
])
def test_a_malformed_answer_is_invalid(serve, session, answer):
    def script(conn, index):
        conn.request()
        conn.send(answer)
    server = serve(script)
    with pytest.raises(InvalidAnswer):
        send(session, "GET", server.url)


def test_no_answer_at_all_is_a_broken_connection(serve, session):
    server = serve(lambda conn, index: conn.request())
    with pytest.raises(requests.exceptions.ConnectionError, match="before an answer"):
        send(session, "GET", server.url)


@pytest.mark.parametrize("answer", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel",
])
def test_a_body_cut_short_or_malformed_is_an_error_and_the_connection_dropped(serve, session,
                                                                               answer):
    def script(conn, index):
        conn.request()
        conn.send(answer)
    server = serve(script)
    response = send(session, "GET", server.url)
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        response.raw.read()
    assert not response.raw.complete
    assert session.get_adapter(server.url)._pools[f"127.0.0.1:{server.port}"].idle == []


def test_an_answer_given_up_closes_its_connection(serve, session):
    def script(conn, index):
        conn.request()
        try:
            conn.send(ok(b"x" * 100_000))
        except ConnectionResetError:  # the first: the client gave up on it
            pass
    server = serve(script)
    response = send(session, "GET", server.url)
    assert len(response.raw.read(10)) == 10
    response.close()
    assert send(session, "GET", server.url).raw.read() == b"x" * 100_000
    assert server.connections == 2


def test_a_session_request_reads_the_whole_answer(serve, session):
    server = serve(keep_answering(ok(b"plain text", b"Content-Type: text/plain; charset=utf-8\r\n")))
    response = session.get(server.url + "/page", timeout=2)
    assert response.text == "plain text" and response.encoding == "utf-8"
    assert response.url == server.url + "/page"


def test_an_answer_is_a_whole_requests_response(serve, session):
    # RelayResponse makes three of requests.Response's attributes only when asked for: a
    # Response of this version of requests must have none that it lacks
    server = serve(keep_answering(ok(b"{}", b"Content-Type: application/json\r\n"
                                           b"Set-Cookie: a=1; Path=/\r\n")))
    response = session.get(server.url + "/j", timeout=2)
    assert isinstance(response, requests.Response)
    for name in vars(requests.Response()):
        assert hasattr(response, name), name
    assert response.json() == {} and response.headers["content-type"] == "application/json"
    assert response.encoding == "utf-8"  # requests' default for JSON, from the headers
    assert len(response.cookies) == 0  # requests fills the jar from urllib3's answers only
    response.encoding = "latin-1"
    assert response.text == "{}" and response.encoding == "latin-1"
    assert response.elapsed.total_seconds() >= 0 and response.history == []


def test_connections_idle_too_long_are_closed_and_a_gone_hosts_pool_forgotten(serve, session,
                                                                              monkeypatch):
    """A replica removed, or moved to another port, leaves idle connections behind: closed
    after IDLE_TIMEOUT, at the next request to anyone (else they stay open in CLOSE_WAIT)."""
    monkeypatch.setattr(transport, "IDLE_TIMEOUT", 0.2)
    monkeypatch.setattr(transport, "SWEEP_EVERY", 0.0)
    closed_by_nmc = threading.Event()

    def answer_until_closed(conn, index):
        while conn.request() is not None:
            conn.send(ok())
        closed_by_nmc.set()

    gone = serve(answer_until_closed)
    send(session, "GET", gone.url + "/").raw.read()
    adapter = session.get_adapter("http://")
    assert f"127.0.0.1:{gone.port}" in adapter._pools
    time.sleep(0.3)  # idle longer than IDLE_TIMEOUT
    other = serve(keep_answering(ok()))
    assert send(session, "GET", other.url + "/").raw.read() == b"hello"  # this one sweeps
    assert closed_by_nmc.wait(5)
    assert f"127.0.0.1:{gone.port}" not in adapter._pools
    assert send(session, "GET", other.url + "/").raw.read() == b"hello"  # its own: still pooled
    assert other.connections == 1
