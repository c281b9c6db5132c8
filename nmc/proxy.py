"""The WSGI callable: pick a ready replica, relay the request to it, stream its answer back.

The proxy decides *where* a request goes; a `requests.Session` decides *how* it gets there
(connection pooling, keep-alive). Backend failures become 502/503/504 answers here, in one place.
"""

from __future__ import annotations

import errno
import logging
from typing import Callable, Iterable
from urllib.parse import quote, urlsplit

import requests
import requests.adapters
import urllib3
from requests.structures import CaseInsensitiveDict

from nmc import tunnel
from nmc.pool import Pool, Replica

log = logging.getLogger(__name__)

# Hop-by-hop headers (RFC 9110 section 7.6.1, plus the old Keep-Alive and Proxy-Connection):
# they describe one connection, so they are never relayed in either direction.
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
))
CHUNK = 256 * 1024        # stream bodies in chunks this big (8 KiB chunks cost 4x on 10 MiB bodies)
SMALL_BODY = 64 * 1024    # answers up to this size are read whole and sent with the headers
CONNECT_TIMEOUT = 2.0     # a replica on loopback accepts at once or not at all
RETRY_AFTER = "1"         # seconds, in 503 answers
# Requests that may be sent again to another replica when the first broke mid-way (RFC 9110 9.2.2).
IDEMPOTENT = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))

FailureReporter = Callable[[Replica, str], None]


class BackendBroke(ConnectionResetError):
    """The replica broke off an answer already under way: the server just closes the client's
    connection (a reset is what the client would have seen from the replica itself)."""

    def __init__(self, message: str):
        super().__init__(errno.ECONNRESET, message)


def make_session(pool_size: int = 1024) -> requests.Session:
    """A Session that adds nothing of its own to relayed requests and keeps many connections."""
    session = requests.Session()
    session.trust_env = False   # no proxy, .netrc or CA lookups in the environment per request
    session.headers.clear()     # no User-Agent / Accept / Accept-Encoding the client did not send
    adapter = requests.adapters.HTTPAdapter(pool_connections=64, pool_maxsize=pool_size,
                                            pool_block=False, max_retries=0)
    session.mount("http://", adapter)
    return session


class Proxy:
    """WSGI application relaying every request to the pool's replicas in round-robin order."""

    def __init__(self, pool: Pool, report_failure: FailureReporter | None = None, *,
                 backend_timeout: float = 30.0, log_requests: bool = True,
                 session: requests.Session | None = None):
        self.pool = pool
        self.report_failure = report_failure or (lambda replica, reason: None)
        self.timeout = (CONNECT_TIMEOUT, backend_timeout)
        self.log_requests = log_requests
        self.session = session or make_session()

    def __call__(self, environ: dict, start_response) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        target = _request_target(environ)
        headers, body = _request_headers_and_body(environ)
        upgrade = _upgrade_requested(environ)
        tried: list[Replica] = []
        while True:
            replica = self.pool.next_ready(skip=tuple(tried))
            if replica is None:
                what = "no replica is ready" if not tried else "no replica could be reached"
                return _error(start_response, 503, what, [("Retry-After", RETRY_AFTER)])
            tried.append(replica)
            if self.log_requests:
                log.info("Forwarding request to port: %d", replica.port)
            if upgrade:
                try:
                    return tunnel.relay_upgrade(environ, start_response, replica, target, headers,
                                                CONNECT_TIMEOUT, self.timeout[1])
                except tunnel.TunnelRefused as e:
                    self.report_failure(replica, str(e))
                    continue
            request = requests.PreparedRequest()
            request.method = method
            request.url = replica.url + target
            request.headers = CaseInsensitiveDict(headers)
            request.body = body
            try:
                response = self.session.send(request, stream=True, allow_redirects=False,
                                             timeout=self.timeout)
            except requests.exceptions.ConnectTimeout:
                self.report_failure(replica, "connection timed out")
                continue  # nothing was sent: any request may go elsewhere
            except requests.exceptions.ReadTimeout:
                return _error(start_response, 504, f"replica {replica.name} did not answer within "
                                                   f"{self.timeout[1]:g}s")
            except requests.exceptions.ConnectionError as e:
                if _never_connected(e):
                    self.report_failure(replica, "connection refused")
                    continue
                self.report_failure(replica, "connection broken")
                if body is None and method in IDEMPOTENT:
                    continue
                return _error(start_response, 502, f"replica {replica.name} broke the connection")
            except requests.exceptions.RequestException as e:
                log.warning("relay to %s failed: %s", replica.name, e)
                return _error(start_response, 502, f"replica {replica.name} sent an invalid answer")
            return _relay_response(response, replica, start_response, method)


def _request_target(environ: dict) -> str:
    """The path and query as the client sent them (not the decoded PATH_INFO)."""
    raw = environ.get("RAW_URI") or environ.get("REQUEST_URI")
    if raw and raw.startswith("/"):
        return raw
    if raw and raw != "*":
        # absolute-form (GET http://host/path): only its path and query; the host is ours
        parts = urlsplit(raw)
        if parts.path.startswith("/"):
            return parts.path + ("?" + parts.query if parts.query else "")
    target = quote(environ.get("PATH_INFO", "") or "/", safe="/;=,:@!$&'()*+~")
    query = environ.get("QUERY_STRING")
    return target + "?" + query if query else target


def _request_headers_and_body(environ: dict):
    """The headers to send on (end-to-end ones only) and the body (None, a file, or chunks)."""
    pairs = environ.get("nmc.headers")
    if pairs is None:  # not our pywsgi handler (e.g. gunicorn): rebuild from the CGI keys
        pairs = [(key[5:].replace("_", "-").title(), value)
                 for key, value in environ.items() if key.startswith("HTTP_")]
        if environ.get("CONTENT_TYPE"):
            pairs.append(("Content-Type", environ["CONTENT_TYPE"]))
        if environ.get("CONTENT_LENGTH"):
            pairs.append(("Content-Length", environ["CONTENT_LENGTH"]))
    connection_named = _connection_named(pairs)
    headers: dict[str, str] = {}
    lowered: set[str] = set()
    for name, value in pairs:
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in connection_named:
            continue
        if lower in lowered:  # a repeated header travels as one comma-joined line
            existing = next(k for k in headers if k.lower() == lower)
            separator = "; " if lower == "cookie" else ", "
            headers[existing] = headers[existing] + separator + value
        else:
            headers[name] = value
            lowered.add(lower)
    # urllib3 adds these unless told not to; the replica should see only what the client sent
    for name in ("User-Agent", "Accept-Encoding"):
        if name.lower() not in lowered:
            headers[name] = urllib3.util.SKIP_HEADER

    body = None
    stream = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length and length != "0":
        body = stream
    elif environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        body = iter(lambda: stream.read(CHUNK), b"")
    return headers, body


def _upgrade_requested(environ: dict) -> str | None:
    """The protocol a request asks to switch to (`Connection: upgrade` + `Upgrade: x`), or None."""
    upgrade = environ.get("HTTP_UPGRADE")
    connection = environ.get("HTTP_CONNECTION", "").lower()
    if upgrade and "upgrade" in (token.strip() for token in connection.split(",")):
        return upgrade
    return None


def _connection_named(pairs) -> set[str]:
    names: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def _never_connected(error: Exception) -> bool:
    """True when the connection to the replica was never made (so nothing was sent)."""
    cause = error.args[0] if error.args else None
    reason = getattr(cause, "reason", cause)
    return isinstance(reason, urllib3.exceptions.NewConnectionError)


def _relay_response(response: requests.Response, replica: Replica, start_response, method: str):
    raw = response.raw
    connection_named = _connection_named(raw.headers.items())
    headers = [(name, value) for name, value in raw.headers.iteritems()
               if name.lower() not in HOP_BY_HOP and name.lower() not in connection_named]
    start_response(f"{response.status_code} {response.reason or ''}".rstrip(), headers)
    if method == "HEAD" or response.status_code in (204, 304):
        raw.release_conn()  # these never have a body, whatever Content-Length says
        return []
    length = raw.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) <= SMALL_BODY:
        try:
            data = raw.read(decode_content=False)  # read whole: the connection goes back to the pool
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise BackendBroke(f"replica {replica.name} broke off its answer: {e}") from e
        if len(data) != int(length):
            raise BackendBroke(f"replica {replica.name} sent {len(data)} of {length} bytes")
        return [data]
    return _stream_body(raw, replica)


def _stream_body(raw, replica: Replica):
    try:
        for chunk in raw.stream(CHUNK, decode_content=False):
            yield chunk
    except (urllib3.exceptions.HTTPError, OSError) as e:
        log.warning("replica %s broke off an answer under way: %s", replica.name, e)
        raise BackendBroke(f"replica {replica.name} broke off its answer") from e
    finally:
        raw.release_conn()


def _error(start_response, status: int, message: str, extra_headers=()) -> list[bytes]:
    reasons = {502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
    body = f"{status} {reasons[status]}: {message}\n".encode()
    start_response(f"{status} {reasons[status]}", [
        ("Content-Type", "text/plain; charset=utf-8"),
        ("Content-Length", str(len(body))),
        *extra_headers,
    ])
    return [body]
