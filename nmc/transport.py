"""requests' transport for the relay: HTTP/1.1 to the replicas over pooled keep-alive sockets.

`RelayAdapter` is mounted on the proxy's Session for "http://" (transport adapters are requests'
extension point). It speaks HTTP/1.1 itself: urllib3 and http.client cost two thirds of nmc's
CPU per request (headers parsed by the `email` package, a poll() of every pooled connection,
several objects per request) for what a relay on loopback never uses (TLS, proxies, retries,
decoding).

- Connections: per host, a stack of idle keep-alive sockets, the most recently used on top,
  not checked before reuse: one that the replica closed while it sat idle shows it at once
  (the send fails, or the connection ends before the replica could have read the request),
  and the request goes out again on a new connection. A connection goes back on the stack
  only when its answer was read whole and both sides keep it alive.
- The request leaves in one send, with a body given as bytes; a file or an iterable body
  follows as it is read, chunked unless the headers give a Content-Length. Only Host (when
  missing) and that framing are added; a header whose value is urllib3's SKIP_HEADER marker
  is not sent.
- The answer's head is parsed strictly from bytes (order, spelling and repeats kept), with the
  grammar and limits of nmc.http1, interim 1xx answers skipped; the body is framed by
  Content-Length, chunked coding or the end of the connection, and never decoded (HEAD, 1xx,
  204 and 304 answers have none).
- An upgrade request (WebSocket) goes the same way. A `101 Switching Protocols`, accepted only
  for a request that asked to switch and to what it asked for, hands its connection over
  (`Answer.detach`) for nmc.tunnel to pump; any other answer to it is an answer like any other.

Failures are requests' exceptions, telling what may be retried: ConnectTimeout and NotConnected
(nothing was sent), ConnectionError (broken before an answer: the replica may have acted on the
request), ReadTimeout, InvalidAnswer; ChunkedEncodingError once the body is under way. An error
of the caller's own body (a file or an iterable) passes through unchanged.
"""

from __future__ import annotations

import datetime
import functools
import socket
import time
from collections.abc import Iterable, Iterator

import requests
import requests.adapters
import requests.cookies
import urllib3
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from nmc.http1 import (
    BAD_TARGET_CHAR,
    BLOCK,
    CHUNK_SIZE,
    FIELD,
    MAX_ANSWER_HEAD,
    MAX_CHUNK_LINE,
    MAX_FIELDS,
    MAX_INTERIM,
    SMALL_BODY,
    STATUS_LINE,
    TOKEN,
    fields_are_valid,
)

RECV = 64 * 1024  # bytes asked for per read of an answer's head (and a small body with it)
# An idle connection is closed after this long, as Go's Transport (IdleConnTimeout) and nginx's
# upstream keepalive_timeout do: the connections to a replica that was removed, or moved to
# another port, would otherwise stay open for good (CLOSE_WAIT, once its end is gone).
IDLE_TIMEOUT = 60.0
SWEEP_EVERY = 10.0  # seconds between looks for connections idle too long (at the next request)
NO_TIME = datetime.timedelta(0)  # Response.elapsed: not measured (the proxy times an exchange)


class NotConnected(requests.exceptions.ConnectionError):
    """The connection could not be made (refused, unreachable): nothing was sent."""


class InvalidAnswer(requests.exceptions.RequestException):
    """The answer's head is malformed, too big, or frames its body ambiguously."""


class _Stale(Exception):
    """A pooled connection that the replica had closed before the request reached it."""


class RelayAdapter(requests.adapters.BaseAdapter):
    """A requests transport adapter for plain http://, with a pool of keep-alive connections
    per host (at most `pool_size` idle ones each; more may be open at once)."""

    def __init__(self, pool_size: int = 1024):
        super().__init__()
        self.pool_size = pool_size
        self._pools: dict[str, _HostPool] = {}
        self._swept = time.monotonic()

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout=None,
             verify=True, cert=None, proxies=None) -> requests.Response:
        """Send `request` and return its answer once its head has arrived; the body is read
        from `response.raw` (an `Answer`) as the caller asks for it. `timeout` is seconds, or
        (connect, read): read bounds each wait for the replica, the answer's start included.
        `verify` and `cert` do not apply to plain http, and `proxies` are not supported."""
        authority, target = _split_url(request.url)
        connect_timeout, read_timeout = timeout if isinstance(timeout, tuple) else (timeout, timeout)
        if time.monotonic() - self._swept >= SWEEP_EVERY:
            self._sweep()
        pool = self._pools.get(authority)
        if pool is None:
            pool = self._pools[authority] = _HostPool(authority, self.pool_size)
        head, body = _request_message(request, target, authority)
        conn = pool.idle.pop() if pool.idle else None
        if conn is not None:
            try:
                return self._response(request, _exchange(conn, pool, request, head, body,
                                                         read_timeout, reused=True))
            except _Stale:
                # The replica closed it while it sat idle, and those under it in the stack sat
                # idle longer still: they go too, and the request goes out on a new connection.
                pool.clear()
        conn = pool.connect(connect_timeout, read_timeout, request)
        return self._response(request, _exchange(conn, pool, request, head, body, read_timeout,
                                                 reused=False))

    def _response(self, request: requests.PreparedRequest, answer: Answer) -> requests.Response:
        return RelayResponse(request, answer, self)

    def close(self) -> None:
        """Close every idle connection."""
        for pool in self._pools.values():
            pool.clear()

    def _sweep(self) -> None:
        """Close the connections idle for IDLE_TIMEOUT, and forget the hosts left with none
        (a replica's old port): their connections in use are closed when done."""
        self._swept = now = time.monotonic()
        for authority, pool in list(self._pools.items()):
            pool.close_idle_since(now - IDLE_TIMEOUT)
            if not pool.idle:
                pool.retired = True
                del self._pools[authority]


class RelayResponse(requests.Response):
    """requests' Response for an answer from a replica. What the relay never reads is made only
    when it is asked for: the headers as a CaseInsensitiveDict, the encoding, and the cookie jar
    (a lock each). Made whole per answer, they cost a tenth of nmc's CPU per request."""

    def __init__(self, request: requests.PreparedRequest, answer: Answer, adapter: RelayAdapter):
        # requests.Response.__init__'s attributes, but for the three below
        # (tests/test_unit_transport.py checks that none is missing)
        self._content = False
        self._content_consumed = False
        self._next = None
        self.status_code = answer.status
        self.raw = answer
        self.url = request.url
        self.history = []
        self.reason = answer.reason
        self.elapsed = NO_TIME
        self.request = request
        self.connection = adapter

    # functools.cached_property: computed once on first use, and assignable as requests' are
    @functools.cached_property
    def headers(self) -> CaseInsensitiveDict:
        return CaseInsensitiveDict(_joined(self.raw.headers))

    @functools.cached_property
    def encoding(self) -> str | None:
        return get_encoding_from_headers(self.headers)

    @functools.cached_property
    def cookies(self) -> requests.cookies.RequestsCookieJar:
        return requests.cookies.cookiejar_from_dict({})


class _Connection:
    """One socket to a replica, and the bytes read from it past the current answer's head."""

    __slots__ = ("idle_since", "pending", "sock")

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.pending = b""
        self.idle_since = 0.0  # when it was last put back in its pool

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class _HostPool:
    """One host's address and its idle keep-alive connections (a stack: last in, first out)."""

    def __init__(self, authority: str, size: int):
        self.family, self.host, self.port = _address(authority)
        self.size = size
        self.idle: list[_Connection] = []  # the longest idle first
        self.retired = False  # forgotten by its adapter: what is put back is closed

    def connect(self, connect_timeout, read_timeout, request) -> _Connection:
        sock = socket.socket(self.family, socket.SOCK_STREAM)
        try:
            sock.settimeout(connect_timeout)
            sock.connect((self.host, self.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.settimeout(read_timeout)
        except TimeoutError as e:
            sock.close()
            raise requests.exceptions.ConnectTimeout(
                f"connecting to {self.host}:{self.port} timed out", request=request) from e
        except OSError as e:
            sock.close()
            raise NotConnected(f"cannot connect to {self.host}:{self.port}: {e.strerror or e}",
                               request=request) from e
        return _Connection(sock)

    def put(self, conn: _Connection) -> None:
        if len(self.idle) < self.size and not self.retired:
            conn.idle_since = time.monotonic()
            self.idle.append(conn)
        else:
            conn.close()

    def close_idle_since(self, moment: float) -> None:
        """Close the connections idle since before `moment` (at the bottom of the stack)."""
        stale = 0
        while stale < len(self.idle) and self.idle[stale].idle_since < moment:
            self.idle[stale].close()
            stale += 1
        del self.idle[:stale]

    def clear(self) -> None:
        while self.idle:
            self.idle.pop().close()


# -- the request --------------------------------------------------------------------------------


def _split_url(url: str) -> tuple[str, str]:
    """'http://host:port/path?query#fragment' -> ('host:port', '/path?query')."""
    if not url.startswith("http://"):
        raise requests.exceptions.InvalidSchema(f"only plain http:// is relayed, not {url[:60]!r}")
    rest = url[7:]
    cut = len(rest)
    for mark in "/?#":
        found = rest.find(mark, 0, cut)
        if found >= 0:
            cut = found
    target = rest[cut:].partition("#")[0]  # a fragment is not sent (RFC 9110 4.2.4)
    return rest[:cut], target if target.startswith("/") else "/" + target


def _address(authority: str) -> tuple[socket.AddressFamily, str, int]:
    host, colon, port = authority.rpartition(":")
    if not colon or "]" in port:
        host, port = authority, "80"
    if not host or "@" in host or not (port.isascii() and port.isdigit()):
        raise requests.exceptions.InvalidURL(f"cannot connect to {authority!r}")
    if host.startswith("[") and host.endswith("]"):
        return socket.AF_INET6, host[1:-1], int(port)
    return socket.AF_INET, host, int(port)


def _request_message(request: requests.PreparedRequest, target: str, authority: str):
    """(the head as bytes, with a small body in it; the rest of the body to stream, or None)."""
    method = request.method
    if not TOKEN.fullmatch(method or "") or BAD_TARGET_CHAR.search(target):
        raise requests.exceptions.InvalidURL(f"cannot send {method!r} {target[:60]!r}")
    lines = [f"{method} {target} HTTP/1.1"]
    has_host = has_length = has_coding = False
    for name, value in request.headers.items():
        if value == urllib3.util.SKIP_HEADER:
            continue
        lower = name.lower()
        if lower == "host":
            has_host = True
        elif lower == "content-length":
            has_length = True  # the body is sent as it is given
        elif lower == "transfer-encoding":
            has_coding = True
        lines.append(f"{name}: {value}")
    if not has_host:  # HTTP/1.1 requires one
        lines.append(f"Host: {authority}")
    body = request.body
    if body is None:
        return _encode_head(lines, b""), None
    if isinstance(body, str):
        body = body.encode("utf-8")
    if isinstance(body, (bytes, bytearray, memoryview)):
        if not has_length:
            lines.append(f"Content-Length: {len(body)}")
        if len(body) <= SMALL_BODY:
            return _encode_head(lines, body), None
        return _encode_head(lines, b""), (body,)
    if has_length:
        return _encode_head(lines, b""), _pieces(body)
    if not has_coding:
        lines.append("Transfer-Encoding: chunked")
    return _encode_head(lines, b""), _chunked(_pieces(body))


def _encode_head(lines: list[str], body) -> bytes:
    head = "\r\n".join(lines)
    # the same grammar as the answers' (and the clients' heads): no request splitting, no header
    # a replica could read otherwise than nmc
    if not fields_are_valid(head[len(lines[0]) + 2:] + "\r\n"):
        raise requests.exceptions.InvalidHeader("a request header line is malformed (a CR or LF, a "
                                                "control character, or a name that is no token)")
    try:
        return head.encode("latin-1") + b"\r\n\r\n" + body
    except UnicodeEncodeError as e:
        raise requests.exceptions.InvalidHeader(f"a request header is not latin-1: {e}") from None


def _pieces(body) -> Iterator[bytes]:
    """A file-like body read in BLOCK pieces, or an iterable's items; empty ones skipped."""
    read = getattr(body, "read", None)
    for piece in iter(lambda: read(BLOCK), b"") if read is not None else body:
        if piece:
            yield piece.encode("utf-8") if isinstance(piece, str) else piece


def _chunked(pieces: Iterable[bytes]) -> Iterator[bytes]:
    for piece in pieces:
        yield b"%x\r\n%s\r\n" % (len(piece), piece)
    yield b"0\r\n\r\n"


def send_all(sock: socket.socket, data) -> None:
    """sock.sendall(data), in one send() when it fits in the socket's buffer, as it usually does
    (gevent's sendall asks the kernel for the buffer's size first: a system call every time)."""
    sent = sock.send(data)
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])


def _exchange(conn: _Connection, pool: _HostPool, request, head: bytes, body, read_timeout,
              reused: bool) -> Answer:
    """Send the request on `conn` and read the answer's head. Raises _Stale when `conn` came
    from the pool and turns out closed by the replica before the request could reach it."""
    sock = conn.sock
    try:
        try:
            send_all(sock, head)
        except OSError as e:
            if reused and not isinstance(e, TimeoutError):
                raise _Stale() from e
            raise _failure(e, request, read_timeout) from e
        if reused:
            # A look without waiting, right after the request left: what the socket holds now
            # was there before the replica could have read the request, so an end of the
            # connection (or a reset) means that it closed the connection while it sat idle.
            sock.settimeout(0.0)
            try:
                early = sock.recv(RECV)
            except BlockingIOError:
                early = None  # nothing yet, as it should be
            except OSError:
                early = b""
            finally:
                sock.settimeout(read_timeout)
            if early == b"":
                raise _Stale()
            conn.pending = early or b""
        if body is not None:
            for piece in body:  # an error of the caller's body itself passes through as it is
                try:
                    send_all(sock, piece)
                except OSError as e:
                    raise _failure(e, request, read_timeout) from e
        return _read_answer(conn, pool, request, read_timeout)
    except BaseException:
        conn.close()
        raise


def _failure(error: OSError, request, read_timeout) -> requests.exceptions.RequestException:
    if isinstance(error, TimeoutError):
        return requests.exceptions.ReadTimeout(f"no answer within {read_timeout:g}s",
                                               request=request)
    return requests.exceptions.ConnectionError(f"connection broken: {error}", request=request)


# -- the answer ---------------------------------------------------------------------------------


def _read_answer(conn: _Connection, pool: _HostPool, request, read_timeout) -> Answer:
    for _ in range(MAX_INTERIM + 1):
        version, status, reason, headers = parse_head(_read_head(conn, request, read_timeout))
        if not 100 <= status < 200 or status == 101:  # 1xx other than 101: the final one follows
            if status == 101:
                _check_switch(request, headers)
            length, chunked, keep_alive = body_framing(version, status, headers, request.method)
            return Answer(conn, pool, status, reason, headers, length, chunked, keep_alive)
    raise InvalidAnswer(f"more than {MAX_INTERIM} interim answers", request=request)


def _check_switch(request, headers: list[tuple[str, str]]) -> None:
    """A 101 answers only a request that asked to switch, and switches to what it asked for (as
    Go's ReverseProxy checks): else the replica and nmc would disagree on what the connection is."""
    asked = next((v for n, v in request.headers.items() if n.lower() == "upgrade"), "")
    given = next((v for n, v in headers if n.lower() == "upgrade"), "")
    if not asked or asked.lower() != given.lower():
        raise InvalidAnswer(f"the replica switched to {given[:40]!r} when {asked[:40]!r} was asked for",
                            request=request)


def _read_head(conn: _Connection, request, read_timeout) -> bytes:
    data = conn.pending
    end = data.find(b"\r\n\r\n")
    while end < 0:
        if len(data) > MAX_ANSWER_HEAD:
            raise InvalidAnswer(f"answer head over {MAX_ANSWER_HEAD // 1024} KiB", request=request)
        try:
            more = conn.sock.recv(RECV)
        except OSError as e:
            raise _failure(e, request, read_timeout) from e
        if not more:
            raise requests.exceptions.ConnectionError(
                "connection closed before an answer" if not data else "answer head cut short",
                request=request)
        data += more
        end = data.find(b"\r\n\r\n", max(0, len(data) - len(more) - 3))
    if end > MAX_ANSWER_HEAD:
        raise InvalidAnswer(f"answer head over {MAX_ANSWER_HEAD // 1024} KiB", request=request)
    conn.pending = data[end + 4:]
    return data[:end]


def parse_head(head: bytes) -> tuple[str, int, str, list[tuple[str, str]]]:
    """An answer's status line and header lines (without the empty line that ends them) ->
    (version, status, reason, [(name, value)] in order); InvalidAnswer when malformed."""
    text = head.decode("latin-1")
    status_line, _, fields = text.partition("\r\n")
    status = STATUS_LINE.fullmatch(status_line)
    if status is None:
        raise InvalidAnswer(f"bad status line {status_line[:100]!r}")
    if fields:
        fields += "\r\n"
        if fields.count("\n") > MAX_FIELDS:
            raise InvalidAnswer(f"more than {MAX_FIELDS} header lines in the answer")
        if not fields_are_valid(fields):
            bad = next(line for line in fields.split("\r\n") if not fields_are_valid(line + "\r\n"))
            raise InvalidAnswer(f"bad header line {bad[:100]!r}")
        headers = FIELD.findall(fields)
        if " \r\n" in fields or "\t\r\n" in fields:  # white space after a value is not part of it
            headers = [(name, value.rstrip(" \t")) for name, value in headers]
    else:
        headers = []
    version, code, reason = status.groups()
    return version, int(code), reason or "", headers


def body_framing(version: str, status: int, headers: list[tuple[str, str]],
                 method: str) -> tuple[int | None, bool, bool]:
    """(length, chunked, keep_alive) of an answer's body (RFC 9112 6.3): length 0 when it has
    none, None when chunked or delimited by the end of the connection (then not kept alive)."""
    lengths = codings = connection = None  # each header's values, comma-joined
    for name, value in headers:
        lower = name.lower()
        if lower == "content-length":
            lengths = value if lengths is None else f"{lengths},{value}"
        elif lower == "transfer-encoding":
            codings = value if codings is None else f"{codings},{value}"
        elif lower == "connection":
            connection = value if connection is None else f"{connection},{value}"
    tokens = {t.strip(" \t") for t in connection.lower().split(",")} if connection else ()
    keep_alive = "keep-alive" in tokens if version == "HTTP/1.0" else "close" not in tokens
    if status == 101:  # the connection now speaks another protocol
        return 0, False, False
    if method == "HEAD" or status < 200 or status in (204, 304):
        return 0, False, keep_alive
    if codings is not None:
        if lengths is not None:
            raise InvalidAnswer("both Transfer-Encoding and Content-Length in the answer")
        if codings.rpartition(",")[2].strip(" \t").lower() == "chunked":
            return None, True, keep_alive
        return None, False, False
    if lengths is not None:
        values = {v.strip(" \t") for v in lengths.split(",")}
        length = values.pop()
        if values or not (length.isascii() and length.isdigit()) or len(length) > 18:
            raise InvalidAnswer(f"bad Content-Length {lengths[:60]!r} in the answer")
        return int(length), False, keep_alive
    return None, False, False


def _joined(headers: list[tuple[str, str]]) -> dict[str, str]:
    """Repeated headers as one comma-joined value each (what requests' Response.headers holds)."""
    joined: dict[str, str] = {}
    names: dict[str, str] = {}
    for name, value in headers:
        lower = name.lower()
        if lower in names:
            joined[names[lower]] += ", " + value
        else:
            names[lower] = name
            joined[name] = value
    return joined


class Answer:
    """A replica's answer (what `response.raw` is): status, reason, headers as received, and
    the body read from the connection as asked for. The connection goes back to its pool the
    moment the body has been read whole; `close` gives up the rest (closing the connection).
    A `101 Switching Protocols` has no body: `detach` hands its connection over."""

    def __init__(self, conn: _Connection, pool: _HostPool, status: int, reason: str,
                 headers: list[tuple[str, str]], length: int | None, chunked: bool,
                 keep_alive: bool):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.length = length      # the body's size when known (0: no body)
        self.chunked = chunked
        self._conn: _Connection | None = conn
        self._pool = pool
        self._keep_alive = keep_alive
        self._left = length or 0  # bytes left of the body (Content-Length) or of the current chunk
        self._chunk_end_due = False
        self.complete = False     # True once the body has been read whole (or there is none)
        if length == 0 and status != 101:
            self._finish()

    def stream(self, amt: int = BLOCK, decode_content=None) -> Iterator[bytes]:
        """The body in pieces of at most `amt` bytes, each as soon as it has arrived (never
        decoded: `decode_content` is there for requests' iter_content, and ignored)."""
        while True:
            piece = self._piece(amt)
            if not piece:
                return
            yield piece

    def read(self, amt: int | None = None, decode_content=None) -> bytes:
        """`amt` bytes of the body (fewer only at its end), or all the rest when None."""
        pieces = []
        while amt is None or amt > 0:
            piece = self._piece(BLOCK if amt is None else amt)
            if not piece:
                break
            pieces.append(piece)
            if amt is not None:
                amt -= len(piece)
        return pieces[0] if len(pieces) == 1 else b"".join(pieces)

    def close(self) -> None:
        """Give up what is left of the body: its connection is closed (one read whole is back
        in the pool already)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    release_conn = close  # requests' Response.close calls both, as urllib3's answer has both

    def detach(self) -> tuple[socket.socket, bytes]:
        """A 101's connection, which now speaks the protocol switched to: its socket (the
        caller's to close) and the bytes already read past the answer's head."""
        conn, self._conn = self._conn, None
        if self.status != 101 or conn is None:
            raise RuntimeError("only a 101 answer's connection can be taken, and only once")
        return conn.sock, conn.pending

    def _finish(self) -> None:
        self.complete = True
        conn, self._conn = self._conn, None
        if self._keep_alive and not conn.pending:  # bytes past the answer: not a connection to reuse
            self._pool.put(conn)
        else:
            conn.close()

    def _piece(self, limit: int) -> bytes:
        """The next piece of the body (at most `limit` bytes), b"" at its end."""
        if self._conn is None:
            if self.complete:
                return b""
            raise requests.exceptions.ChunkedEncodingError("the answer was closed before its end")
        try:
            if self.chunked:
                return self._chunk_piece(limit)
            if self.length is None:  # delimited by the end of the connection
                data = self._take(limit)
                if not data:
                    self._finish()
                return data
            data = self._take(min(limit, self._left))
            if not data:
                raise requests.exceptions.ChunkedEncodingError(
                    f"the answer ended {self._left} bytes short of its Content-Length")
            self._left -= len(data)
            if not self._left:
                self._finish()
            return data
        except OSError as e:
            self.close()
            raise requests.exceptions.ChunkedEncodingError(f"the answer broke off: {e}") from e
        except requests.exceptions.ChunkedEncodingError:
            self.close()
            raise

    def _chunk_piece(self, limit: int) -> bytes:
        if not self._left:
            if self._chunk_end_due:  # the CRLF after a chunk's data, read only now: a piece that
                if self._line() != b"":  # ends a chunk is passed on without waiting for it
                    raise requests.exceptions.ChunkedEncodingError("chunk data longer than its size")
                self._chunk_end_due = False
            size_line = self._line().split(b";", 1)[0].strip(b" \t")
            if not CHUNK_SIZE.fullmatch(size_line):
                raise requests.exceptions.ChunkedEncodingError(f"bad chunk size {size_line[:20]!r}")
            size = int(size_line, 16)
            if size == 0:
                self._skip_trailers()
                self._finish()
                return b""
            self._left = size
        data = self._take(min(limit, self._left))
        if not data:
            raise requests.exceptions.ChunkedEncodingError("the answer ended inside a chunk")
        self._left -= len(data)
        self._chunk_end_due = not self._left
        return data

    def _skip_trailers(self) -> None:
        total = 0
        while True:
            line = self._line()
            if not line:
                return
            total += len(line)
            if total > MAX_ANSWER_HEAD:
                raise requests.exceptions.ChunkedEncodingError("trailer section too big")

    def _take(self, limit: int) -> bytes:
        """Up to `limit` bytes: what is buffered, else one read of the socket."""
        conn = self._conn
        pending = conn.pending
        if not pending:
            return conn.sock.recv(limit)
        if len(pending) <= limit:
            conn.pending = b""
            return pending
        conn.pending = pending[limit:]
        return pending[:limit]

    def _line(self) -> bytes:
        """The next CRLF-ended line (without its CRLF) of a chunked body."""
        conn = self._conn
        data = conn.pending
        end = data.find(b"\r\n")
        while end < 0:
            if len(data) > MAX_CHUNK_LINE:
                raise requests.exceptions.ChunkedEncodingError("chunk-size line too long")
            more = conn.sock.recv(RECV)
            if not more:
                raise requests.exceptions.ChunkedEncodingError("the answer ended inside its chunked body")
            data += more
            end = data.find(b"\r\n", max(0, len(data) - len(more) - 1))
        conn.pending = data[end + 2:]
        return data[:end]
