"""The WSGI callable: pick a ready replica, relay the request to it, stream its answer back.

The proxy decides *where* a request goes and *what* it carries; a `requests.Session` decides *how*
it gets there, through nmc's transport adapter (`nmc.transport`: HTTP/1.1 over pooled keep-alive
connections). The rules follow Go's httputil.ReverseProxy:
the request target and headers are relayed as received, hop-by-hop headers (the fixed list and
every header named in `Connection`) are dropped both ways, X-Forwarded-For is appended to, and
a backend failure becomes a 502/503/504 answer, worded by `http_rules.error_answer`.
"""

from __future__ import annotations

import errno
import logging
import random
import re
import sys
import time
from typing import Callable, Iterable, Iterator
from urllib.parse import quote, urlsplit

import gevent
import requests
import urllib3

from nmc import hijack, transport, tunnel
from nmc.http1 import BLOCK, SMALL_BODY
from nmc.errors import UsageError
from nmc.http_rules import HOP_BY_HOP, connection_named, error_answer
from nmc.pool import Pool, Replica

log = logging.getLogger(__name__)

# Expect is answered by the server itself (100 Continue when the body is first read), so it is
# not relayed either.
NOT_RELAYED = HOP_BY_HOP | {"expect"}
# Set by the relay: a client's own values are replaced (X-Forwarded-For is appended to instead).
SET_BY_RELAY = frozenset(("x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "x-request-id"))
CONNECT_TIMEOUT = 2.0     # a replica on loopback accepts at once or not at all
RETRY_AFTER = "1"         # seconds, in 503 answers
QUEUE_POLL = 0.05         # seconds between looks for a ready replica while a request waits
ENGINE_AWAY_HOLD = 10.0   # seconds after the engine went away that requests wait for a replica
                          # (its restart: the port proxies are back within a few seconds)
# Requests that may be sent again to another replica when the first broke mid-way (RFC 9110 9.2.2).
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
# A POST or PATCH with an Idempotency-Key header (the IETF httpapi draft) may be sent again too:
# the client says that the server recognises a repeat by its key.
MADE_IDEMPOTENT_BY_KEY = frozenset(("POST", "PATCH"))
REQUEST_ID = re.compile(r"^[A-Za-z0-9._:+/=-]{1,128}$")
STICKY_COOKIE = "nmc_replica"
STICKY = re.compile(r"(?:^|;)\s*nmc_replica=([^;\s]+)")

FailureReporter = Callable[[Replica, str], None]


class BackendBroke(ConnectionResetError):
    """The replica broke off an answer already under way: the server just closes the client's
    connection (a reset is what the client would have seen from the replica itself)."""

    def __init__(self, message: str):
        super().__init__(errno.ECONNRESET, message)


class ClientBodyError(Exception):
    """Reading the client's request body failed (malformed chunks, or the client went away)."""

    status = 400


class BodyTooLarge(ClientBodyError):
    """The request body is over --max-body-size."""

    status = 413


def make_session(pool_size: int = 1024) -> requests.Session:
    """A Session that adds nothing of its own to relayed requests and keeps up to `pool_size`
    idle connections per replica."""
    session = requests.Session()
    session.trust_env = False   # no proxy, .netrc or CA lookups in the environment per request
    session.headers.clear()     # no User-Agent / Accept / Accept-Encoding the client did not send
    session.mount("http://", transport.RelayAdapter(pool_size))
    return session


class Proxy:
    """WSGI application relaying every request to the pool's replicas (round-robin by default).

    Each replica's relay counters (nmc.counters: requests, errors, in flight, the latency
    histogram, bytes) are written here and nowhere else, per request, as plain additions;
    /status and /metrics read them."""

    def __init__(self, pool: Pool, report_failure: FailureReporter | None = None, *,
                 backend_timeout: float = 30.0, queue_timeout: float = 2.0,
                 log_requests: bool = True, served_by: bool = True,
                 balance: str = "roundrobin", sticky: bool = False, access_log=None,
                 max_body_size: int = 0, session: requests.Session | None = None):
        self.pool = pool
        self.max_body_size = max_body_size  # bytes; 0: no limit
        self.balance = balance
        self.sticky = sticky
        self.access_log = access_log  # a text file: one combined-format line per request
        self.report_failure = report_failure or (lambda replica, reason: None)
        self.timeout = (CONNECT_TIMEOUT, backend_timeout)
        self.queue_timeout = queue_timeout
        self.log_requests = log_requests
        self.served_by = served_by
        self.session = session or make_session()
        # Requests go out through the session's adapter (a transport.RelayAdapter), not
        # Session.send: that would follow a redirect, reading the whole body of its answer.
        self.transport = self.session.get_adapter("http://")

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        request = _Request(environ)
        if request.upgrade:  # whatever the answer, the client's connection is not HTTP's after it
            hijack.close_after(environ)
            if not hijack.can_hijack(environ):
                return error_answer(start_response, 501, "this server cannot hand over the "
                                    "connection for an upgrade", request.id)
        try:
            body = _request_body(environ, self.max_body_size)
        except ClientBodyError as e:
            return _bad_body(environ, start_response, e, request.id)
        tried: dict[Replica, tuple] = {}  # replica -> (its instance, when it joined) when tried
        preferred = _sticky_replica(environ) if self.sticky else None
        while True:
            replica = self._choose(tried, preferred)
            if replica is None:
                what = "no replica is ready" if not tried else "no replica could be reached"
                self._log_access(environ, 503, request.id, None, request.arrived)
                return error_answer(start_response, 503, what, request.id,
                                    [("Retry-After", RETRY_AFTER)])
            tried[replica] = (replica.instance_id, replica.ready_at)
            if self.log_requests:
                log.info("Forwarding request to port: %d", replica.port)
            extra = self._answer_headers(replica, request.id, preferred)
            replica.relay.requests += 1
            result = self._forward(request, body, replica, start_response, extra)
            if result is not _TRY_ANOTHER:
                return result

    def _choose(self, tried: dict, preferred: str | None) -> Replica | None:
        """The next replica to try: one tried already is skipped while it is the same instance
        and has not come back into the rotation since (once replaced, or back after a restart
        of the engine's port proxies, it may take the request).

        None ready (all being replaced at once?): wait a little, like HAProxy's `timeout queue`
        (nothing has been sent, so this is safe for any request), and while the engine is away
        (a restart), until ENGINE_AWAY_HOLD after it went; None when none became ready."""
        queued_until = None
        while True:
            skip = tuple(r for r, then in tried.items() if (r.instance_id, r.ready_at) == then)
            replica = self.pool.choose(skip, self.balance, preferred)
            if replica is not None:
                return replica
            now = time.monotonic()
            queued_until = queued_until or now + self.queue_timeout
            engine_lost_at = self.pool.engine_lost_at
            if now >= queued_until and (engine_lost_at is None
                                        or now >= engine_lost_at + ENGINE_AWAY_HOLD):
                return None
            gevent.sleep(QUEUE_POLL)

    def _answer_headers(self, replica: Replica, request_id: str, preferred: str | None) -> list:
        """What nmc adds to the replica's answer: who served it, the request id, the sticky cookie."""
        extra = [("X-Served-By", replica.name)] if self.served_by else []
        extra.append(("X-Request-ID", request_id))
        if self.sticky and preferred != replica.name:
            extra.append(("Set-Cookie", f"{STICKY_COOKIE}={replica.name}; Path=/; HttpOnly; "
                                        "SameSite=Lax"))
        return extra

    def _fail(self, replica: Replica, reason: str) -> None:
        """The replica refused or broke a connection: counted, and reported to whoever heals."""
        replica.relay.connect_errors += 1
        self.report_failure(replica, reason)

    def _forward(self, request: "_Request", body, replica: Replica, start_response, extra: list):
        """Send the request to `replica` and relay its answer (a 101 to an upgrade request:
        a tunnel); _TRY_ANOTHER when another replica may take it, else the WSGI result (the
        answer, or nmc's own error answer)."""
        prepared = requests.PreparedRequest()
        prepared.method = request.method
        prepared.url = replica.url + request.target
        prepared.headers = request.headers  # a plain dict: the transport only iterates it
        prepared.body = body.payload if body is not None else None
        exchange = _Exchange(self, replica, request, body)
        request_id = request.id
        error_extra = extra if request.upgrade else ()  # as the tunnel always did
        try:
            response = self.transport.send(prepared, stream=True, timeout=self.timeout)
        except ClientBodyError as e:  # the client's fault, not the replica's
            exchange.finish(e.status, failed=False)
            return _bad_body(request.environ, start_response, e, request_id)
        except requests.exceptions.ConnectTimeout:
            exchange.abandon()
            self._fail(replica, "connection timed out")
            return _TRY_ANOTHER  # nothing was sent: any request may go elsewhere
        except transport.NotConnected:
            exchange.abandon()
            self._fail(replica, "connection refused")
            return _TRY_ANOTHER
        except requests.exceptions.ReadTimeout:
            exchange.finish(504, failed=True)
            return error_answer(start_response, 504, f"replica {replica.name} did not answer within "
                                f"{self.timeout[1]:g}s", request_id, error_extra)
        except requests.exceptions.ConnectionError:
            self._fail(replica, "connection broken")
            if request.idempotent and (body is None or body.replayable) and not request.upgrade:
                exchange.abandon()
                return _TRY_ANOTHER  # safe to send again: the method says so, and the body is at hand
            exchange.finish(502, failed=True)
            return error_answer(start_response, 502, f"replica {replica.name} broke the connection",
                                request_id, error_extra)
        except requests.exceptions.RequestException as e:
            exchange.finish(502, failed=True)
            log.warning("relay to %s failed: %s", replica.name, e)
            return error_answer(start_response, 502, f"replica {replica.name} sent an invalid answer",
                                request_id, error_extra)
        if response.status_code == 101:  # the transport checked that the request asked for it
            exchange.finish(101)
            return tunnel.relay_switch(request.environ, start_response, replica.name, response.raw,
                                       extra)
        return _relay_response(response.raw, exchange, start_response, extra)

    def _log_access(self, environ: dict, status: int, request_id: str, replica: Replica | None,
                    started: float, sent: int = 0) -> None:
        """One line in the combined log format, plus the request id, replica and time taken."""
        if self.access_log is None:
            return
        target = environ.get("RAW_URI") or environ.get("REQUEST_URI") or environ.get("PATH_INFO", "")
        request_line = f"{environ['REQUEST_METHOD']} {target} {environ.get('SERVER_PROTOCOL', '')}"
        line = (f'{environ.get("REMOTE_ADDR") or "-"} - - [{time.strftime("%d/%b/%Y:%H:%M:%S %z")}] '
                f'"{_printable(request_line)}" {status} {sent or "-"} '
                f'"{_printable(environ.get("HTTP_REFERER", "-"))}" '
                f'"{_printable(environ.get("HTTP_USER_AGENT", "-"))}" '
                f'rid={request_id} replica={replica.name if replica else "-"} '
                f'time={time.monotonic() - started:.3f}\n')
        try:
            self.access_log.write(line)
            self.access_log.flush()
        except OSError as e:  # a full disk must not fail the request
            log.warning("cannot write the access log: %s", e)


_TRY_ANOTHER = object()  # what _forward returns when another replica may take it


class _Request:
    """What the relay needs of a client's request, read once from the environ."""

    __slots__ = ("environ", "arrived", "id", "method", "target", "headers", "upgrade",
                 "idempotent")

    def __init__(self, environ: dict):
        self.environ = environ
        self.arrived = time.monotonic()
        self.id = _request_id(environ)
        self.method = environ["REQUEST_METHOD"]
        self.target = _request_target(environ)
        self.headers = _request_headers(environ, self.id)
        self.upgrade = _upgrade_requested(environ)
        self.idempotent = self.method in IDEMPOTENT or (
            self.method in MADE_IDEMPOTENT_BY_KEY
            and bool(environ.get("HTTP_IDEMPOTENCY_KEY", "").strip()))
        if self.upgrade:  # hop-by-hop, yet what asks the replica to switch (as Go's ReverseProxy)
            self.headers["Connection"] = "Upgrade"
            self.headers["Upgrade"] = self.upgrade


class _Exchange:
    """One request relayed to one replica: in flight until its answer is relayed whole, then
    counted (status class, time, bytes) and logged."""

    __slots__ = ("proxy", "replica", "request", "body", "started")

    def __init__(self, proxy: Proxy, replica: Replica, request: _Request, body):
        self.proxy, self.replica, self.request, self.body = proxy, replica, request, body
        self.started = time.monotonic()
        replica.relay.in_flight += 1

    def abandon(self) -> None:
        """Not answered (refused, or broken and sent elsewhere): an error of the replica's."""
        relay = self.replica.relay
        relay.in_flight -= 1
        relay.errors += 1

    def finish(self, status: int, sent: int = 0, failed: bool = False) -> None:
        relay = self.replica.relay
        relay.in_flight -= 1
        if failed:
            relay.errors += 1
        relay.record(status, time.monotonic() - self.started)
        relay.bytes_out += sent
        if self.body is not None:
            relay.bytes_in += self.body.received
        self.proxy._log_access(self.request.environ, status, self.request.id, self.replica,
                               self.started, sent)


def _sticky_replica(environ: dict) -> str | None:
    """The replica named by the client's affinity cookie, if any."""
    match = STICKY.search(environ.get("HTTP_COOKIE", ""))
    return match.group(1) if match else None


def _printable(text: str) -> str:
    """A request's text for a log line: quotes and control characters escaped."""
    return text.replace("\\", "\\\\").replace('"', '\\"').encode("ascii", "backslashreplace") \
        .decode("ascii").replace("\n", "\\n").replace("\r", "\\r")


# -- the request --------------------------------------------------------------------------------


def _request_id(environ: dict) -> str:
    """The client's X-Request-ID when it is a sane token, else a new one: 128 random bits as 32
    hex digits. They label a request in logs, they guard nothing, so they come from `random` (as
    nginx's $request_id from its own PRNG), not from os.urandom: a system call per request.
    (random reseeds itself in a forked child: gunicorn's workers do not repeat each other's ids.)"""
    given = environ.get("HTTP_X_REQUEST_ID", "")
    return given if REQUEST_ID.match(given) else f"{random.getrandbits(128):032x}"


def _request_target(environ: dict) -> str:
    """The path and query as the client sent them (not the decoded PATH_INFO)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw and raw.startswith("/"):
        return raw
    if raw and raw != "*":
        # absolute-form (GET http://host/path): only its path and query; the host is ours
        parts = urlsplit(raw)
        path = parts.path if parts.path.startswith("/") else "/" + parts.path
        return path + ("?" + parts.query if parts.query else "")
    target = quote(environ.get("PATH_INFO", "") or "/", safe="/;=,:@!$&'()*+~")
    query = environ.get("QUERY_STRING")
    return target + "?" + query if query else target


def _client_header_pairs(environ: dict) -> list[tuple[str, str]]:
    pairs = environ.get("nmc.headers")
    if pairs is not None:
        return pairs
    # not our pywsgi handler (e.g. gunicorn): rebuild from the CGI keys
    pairs = [(key[5:].replace("_", "-").title(), value)
             for key, value in environ.items() if key.startswith("HTTP_")]
    if environ.get("CONTENT_TYPE"):
        pairs.append(("Content-Type", environ["CONTENT_TYPE"]))
    if environ.get("CONTENT_LENGTH"):
        pairs.append(("Content-Length", environ["CONTENT_LENGTH"]))
    return pairs


def _request_headers(environ: dict, request_id: str) -> dict[str, str]:
    """The headers to send on: the client's end-to-end ones, then X-Forwarded-* and X-Request-ID."""
    pairs = _client_header_pairs(environ)
    dropped = NOT_RELAYED | connection_named(pairs)
    headers: dict[str, str] = {}
    names: dict[str, str] = {}  # lower-case name -> the spelling first sent
    forwarded_for = []
    for name, value in pairs:
        lower = name.lower()
        if lower in dropped:
            continue
        if lower in SET_BY_RELAY:
            if lower == "x-forwarded-for":
                forwarded_for.append(value)
            continue
        if lower in names:  # a repeated header travels as one comma-joined line (RFC 9110 5.3)
            headers[names[lower]] += ("; " if lower == "cookie" else ", ") + value
        else:
            names[lower] = name
            headers[name] = value
    forwarded_for.append(environ.get("REMOTE_ADDR") or "unknown")
    headers["X-Forwarded-For"] = ", ".join(forwarded_for)
    headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
    if "host" in names:
        headers["X-Forwarded-Host"] = headers[names["host"]]
    headers["X-Request-ID"] = request_id
    # A requests transport may add these unless told not to (urllib3's does): the replica
    # should see only what the client sent. nmc's transport honours the marker as well.
    for name in ("User-Agent", "Accept-Encoding"):
        if name.lower() not in names:
            headers[name] = urllib3.util.SKIP_HEADER
    return headers


class _ClientBody:
    """The client's request body as the transport reads it. A failure to read it is a
    ClientBodyError, so that a bad or vanished client is not blamed on the replica."""

    def __init__(self, stream, limit: int = 0):
        self.stream = stream
        self.limit = limit  # bytes at most (0: no limit)
        self.received = 0  # bytes read from the client so far

    @property
    def payload(self):
        """What the transport is given to send: this object (read as a file, or iterated)."""
        return self

    def _guarded(self, read, *args) -> bytes:
        try:
            data = read(*args)
        except (OSError, ValueError) as e:
            raise ClientBodyError(f"request body: {e}") from e
        self.received += len(data)
        if self.limit and self.received > self.limit:
            raise BodyTooLarge(too_large(self.limit))
        return data


class _LengthBody(_ClientBody):
    """A Content-Length body: the transport reads it as a file, in blocks."""

    replayable = False

    def read(self, size: int = -1) -> bytes:
        return self._guarded(self.stream.read, size)


class _SmallBody(_ClientBody):
    """A body of at most SMALL_BODY bytes, read whole before relaying: it can be sent again to
    another replica when the first breaks the connection (an idempotent PUT or DELETE)."""

    replayable = True

    def __init__(self, stream, length: int):
        super().__init__(stream)
        self.data = self._guarded(stream.read, length)
        if len(self.data) != length:
            raise ClientBodyError(f"request body ended after {len(self.data)} of {length} bytes")

    @property
    def payload(self) -> bytes:
        return self.data


class _ChunkedBody(_ClientBody):
    """A chunked body: the transport sends each piece as a chunk. (No `read` here: the
    transport would take this for a file and skip the first piece, read ahead below.)"""

    replayable = False

    def __init__(self, stream, limit: int = 0):
        super().__init__(stream, limit)
        # the first piece now: a malformed first chunk is a 400 (too large: a 413) before
        # anything is relayed
        self.first = self._guarded(_read_chunk_piece, stream)

    def __iter__(self) -> Iterator[bytes]:
        piece = self.first
        while piece:
            yield piece
            piece = self._guarded(_read_chunk_piece, self.stream)


def _request_body(environ: dict, limit: int = 0) -> _ClientBody | None:
    """None when the request has no body (then no framing header reaches the replica).
    BodyTooLarge when it declares more than `limit` bytes (a chunked one: once it sends more)."""
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length and length != "0":
        if limit and int(length) > limit:
            raise BodyTooLarge(too_large(limit))
        if int(length) <= SMALL_BODY:
            return _SmallBody(stream, int(length))
        return _LengthBody(stream)
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        body = _ChunkedBody(stream, limit)
        return body if body.first else None
    return None


def too_large(limit: int) -> str:
    return f"the request body is over --max-body-size ({limit:,} bytes)"


def _read_chunk_piece(stream) -> bytes:
    """Up to BLOCK bytes of a chunked body, but never more than the rest of the current chunk:
    pywsgi's read(n) waits for n bytes across chunks, which would hold a slow upload back."""
    if not hasattr(stream, "chunk_length"):  # not pywsgi's Input
        return stream.read(BLOCK)
    left = stream.chunk_length - stream.position
    if left > 0:
        return stream.read(min(left, BLOCK))
    first = stream.read(1)  # reads the next chunk-size line (or the last chunk)
    left = stream.chunk_length - stream.position
    return first + stream.read(min(left, BLOCK - 1)) if first and left > 0 else first


def _upgrade_requested(environ: dict) -> str | None:
    """The protocol a request asks to switch to (`Connection: upgrade` + `Upgrade: x`), or None."""
    upgrade = environ.get("HTTP_UPGRADE")
    connection = environ.get("HTTP_CONNECTION", "").lower()
    if upgrade and "upgrade" in (token.strip() for token in connection.split(",")):
        return upgrade
    return None


def _bad_body(environ: dict, start_response, error: ClientBodyError, request_id: str):
    environ["nmc.close_connection"] = True  # the rest of the body cannot be trusted, or is unread
    return error_answer(start_response, error.status, str(error), request_id)


# -- the answer ---------------------------------------------------------------------------------


def _relay_response(answer: transport.Answer, exchange: _Exchange, start_response,
                    extra_headers: list[tuple[str, str]]):
    dropped = HOP_BY_HOP | connection_named(answer.headers)
    headers = [(name, value) for name, value in answer.headers if name.lower() not in dropped]
    start_response(f"{answer.status} {answer.reason}".rstrip(), headers + extra_headers)
    if answer.complete:  # no body (HEAD, 1xx, 204, 304, or empty): its connection is back already
        exchange.finish(answer.status)
        return []
    if answer.length is not None and answer.length <= SMALL_BODY:
        try:
            data = answer.read()  # whole: sent with the headers in one write
        except requests.exceptions.RequestException as e:
            exchange.finish(answer.status, failed=True)
            raise BackendBroke(f"replica {exchange.replica.name} broke off its answer: {e}") from e
        exchange.finish(answer.status, len(data))
        return [data]
    return _stream_body(answer, exchange)


def _stream_body(answer: transport.Answer, exchange: _Exchange):
    """The answer's body as it arrives, undecoded (a gzip answer stays gzip)."""
    sent, broke = 0, False
    try:
        for piece in answer.stream(BLOCK):
            yield piece
            sent += len(piece)
    except requests.exceptions.RequestException as e:
        broke = True
        log.warning("replica %s broke off an answer under way: %s", exchange.replica.name, e)
        raise BackendBroke(f"replica {exchange.replica.name} broke off its answer") from e
    finally:
        answer.close()  # the client left, or the replica broke (read whole, it is back in the pool)
        exchange.finish(answer.status, sent, failed=broke)


def open_access_log(path: str):
    """--access-log: stdout for "-", else the file, appended to, a line at a time."""
    if not path:
        return None
    if path == "-":
        return sys.stdout
    try:
        return open(path, "a", buffering=1, encoding="utf-8")
    except OSError as e:
        raise UsageError(f"--access-log {path}: {e.strerror}") from None
