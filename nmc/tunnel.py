"""Upgraded connections (WebSocket): a raw two-way byte tunnel between client and replica.

relay_upgrade() is called by the proxy for a request that asks to switch protocols. It opens
its own TCP connection to the replica, sends the request head, and relays the replica's answer:
a `101 Switching Protocols` opens the tunnel, which pumps bytes both ways until either side
closes; any other answer is relayed as an ordinary answer and the client connection is closed.

The client's connection is taken over from the WSGI server: its socket (`nmc.socket`, or
gunicorn's `gunicorn.socket`) and, with our pywsgi handler, its buffered reader (`nmc.rfile`),
which may already hold bytes the client sent right after the request head. Once a tunnel or a
refused upgrade is done, the server is told to close the connection (the handler's
`close_connection`), so it never reads another request from it.
"""

from __future__ import annotations

import errno
import logging
import socket
import time

import gevent
import urllib3

from nmc.http1 import BLOCK, MAX_ANSWER_HEAD, MAX_INTERIM, SMALL_BODY
from nmc.http_rules import HOP_BY_HOP, connection_named, error_answer

log = logging.getLogger(__name__)

LINGER = 2.0               # seconds the other direction gets once one direction has ended
# Hop-by-hop headers (RFC 9110 7.6.1): never relayed, except Connection and Upgrade on a 101.
class TunnelRefused(Exception):
    """The replica could not be connected to: nothing was sent, the proxy may try another."""


class _BadAnswer(Exception):
    """The replica's answer head is missing, too big or malformed (a 502)."""


class _Broke(ConnectionResetError):
    """The replica broke off a refused upgrade's body under way: pywsgi closes the client's
    connection quietly (ECONNRESET is one of its ignored socket errors)."""

    def __init__(self, message: str):
        super().__init__(errno.ECONNRESET, message)


def relay_upgrade(environ: dict, start_response, replica, target: str, headers: dict,
                  connect_timeout: float, answer_timeout: float, extra_headers):
    """Relay an upgrade request to `replica`; the WSGI return value for the proxy to return.

    `headers` are the end-to-end request headers (hop-by-hop ones already removed); the tunnel
    adds `Connection: Upgrade` and the client's `Upgrade` header back. `extra_headers` are added
    to every answer (the proxy's X-Served-By / X-Request-ID). Raises TunnelRefused when the
    replica refuses the connection.
    """
    extra_headers = list(extra_headers)
    request_id = headers.get("X-Request-ID")
    client = environ.get("nmc.socket") or environ.get("gunicorn.socket")
    if client is None:
        _close_after(start_response)
        return error_answer(start_response, 501, "this server cannot hand over the connection for an "
                            "upgrade", request_id, extra_headers)
    upstream = _connect(replica, connect_timeout)
    upstream_file = upstream.makefile("rb")
    owned = True  # False once a streamed body (which closes the connection itself) has it
    try:
        try:
            upstream.sendall(_request_head(environ, replica, target, headers))
            _send_request_body(environ, upstream)
            status, reason, answer = _read_answer(upstream, upstream_file, answer_timeout)
        except socket.timeout:
            _close_after(start_response)
            return error_answer(start_response, 504, f"replica {replica.name} did not answer within "
                                f"{answer_timeout:g}s", request_id, extra_headers)
        except (_BadAnswer, OSError) as e:
            log.warning("upgrade relayed to %s failed: %s", replica.name, e)
            _close_after(start_response)
            return error_answer(start_response, 502, f"replica {replica.name} sent no valid answer",
                                request_id, extra_headers)
        if status != 101:
            _close_after(start_response)
            result = _relay_refusal(environ, start_response, replica, status, reason, answer,
                                    upstream, upstream_file, answer_timeout, extra_headers)
            owned = isinstance(result, list)
            return result
        _tunnel(environ, start_response, replica, client, upstream, upstream_file, reason,
                answer, extra_headers)
        return []
    finally:
        if owned:
            _close(upstream_file, upstream)


# -- connecting and asking ----------------------------------------------------------------------


def _connect(replica, timeout: float) -> socket.socket:
    try:
        address = replica.address
        upstream = socket.create_connection((address.host, address.port), timeout=timeout)
    except ConnectionRefusedError:
        raise TunnelRefused("connection refused") from None
    except socket.timeout:
        raise TunnelRefused("connection timed out") from None
    except OSError as e:
        raise TunnelRefused(f"connection failed: {e.strerror or e}") from None
    try:
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass
    return upstream


def _request_head(environ: dict, replica, target: str, headers: dict) -> bytes:
    lines = [f"{environ['REQUEST_METHOD']} {target} HTTP/1.1"]
    names = set()
    for name, value in headers.items():
        if value == urllib3.util.SKIP_HEADER:
            continue  # a marker: the client did not send this header
        if name.lower() in ("connection", "upgrade"):
            continue
        lines.append(f"{name}: {value}")
        names.add(name.lower())
    if "host" not in names:  # HTTP/1.1 requires one
        lines.append(f"Host: {replica.address.host}:{replica.address.port}")
    if environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked" and \
            "content-length" not in names:
        lines.append("Transfer-Encoding: chunked")
    lines.append("Connection: Upgrade")
    lines.append(f"Upgrade: {environ['HTTP_UPGRADE']}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send_request_body(environ: dict, upstream: socket.socket) -> None:
    """An upgrade request rarely has a body (a WebSocket one never does); relay it when it has."""
    stream = environ.get("wsgi.input")
    length = environ.get("CONTENT_LENGTH")
    if stream is None:
        return
    if length and length.isdigit() and int(length) > 0:
        left = int(length)
        while left > 0:
            data = stream.read(min(left, BLOCK))
            if not data:
                raise OSError("the client's request body ended early")
            upstream.sendall(data)
            left -= len(data)
    elif environ.get("HTTP_TRANSFER_ENCODING", "").lower() == "chunked":
        while True:  # read all of it (pywsgi's Input decodes), send it chunked again
            data = stream.read(BLOCK)
            if not data:
                upstream.sendall(b"0\r\n\r\n")
                return
            upstream.sendall(b"%x\r\n%s\r\n" % (len(data), data))


def _read_answer(upstream: socket.socket, upstream_file, timeout: float):
    """(status, reason, [(name, value)]) of the replica's answer, 1xx interim answers other than
    101 skipped; socket.timeout when it takes longer than `timeout` in all."""
    deadline = time.monotonic() + timeout
    for _ in range(MAX_INTERIM):
        status, reason, answer = _read_head(upstream, upstream_file, deadline)
        if status == 101 or not 100 <= status < 200:
            upstream.settimeout(None)
            return status, reason, answer
    raise _BadAnswer(f"more than {MAX_INTERIM} interim answers")


def _read_head(upstream: socket.socket, upstream_file, deadline: float):
    lines: list[bytes] = []
    size = 0
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("timed out")
        upstream.settimeout(remaining)
        line = upstream_file.readline(MAX_ANSWER_HEAD - size + 1)
        size += len(line)
        if size > MAX_ANSWER_HEAD:
            raise _BadAnswer(f"answer head over {MAX_ANSWER_HEAD} bytes")
        if not line.endswith(b"\n"):
            raise _BadAnswer("connection closed before the end of the answer head"
                             if not lines and not line else "answer head cut short")
        if line in (b"\r\n", b"\n"):
            if lines:
                break
            continue  # tolerate stray empty lines before the status line (RFC 9112 2.2)
        lines.append(line.rstrip(b"\r\n"))
    status_line = lines[0].decode("latin-1")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit() \
            or len(parts[1]) != 3:
        raise _BadAnswer(f"bad status line {status_line[:100]!r}")
    status, reason = int(parts[1]), (parts[2] if len(parts) > 2 else "")
    answer: list[tuple[str, str]] = []
    for raw in lines[1:]:
        text = raw.decode("latin-1")
        if text[:1] in (" ", "\t") and answer:  # obsolete line folding
            name, value = answer[-1]
            answer[-1] = (name, value + " " + text.strip())
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            raise _BadAnswer(f"bad header line {text[:100]!r}")
        answer.append((name, value.strip()))
    return status, reason, answer


# -- a refused upgrade: an ordinary answer --------------------------------------------------------


def _relay_refusal(environ, start_response, replica, status, reason, answer, upstream,
                   upstream_file, timeout, extra_headers):
    named = connection_named(answer)
    relayed = [(n, v) for n, v in answer if n.lower() not in HOP_BY_HOP and n.lower() not in named]
    start_response(f"{status} {reason}".rstrip(), relayed + extra_headers)
    if environ["REQUEST_METHOD"] == "HEAD" or status in (204, 304):
        return []
    upstream.settimeout(timeout)  # a stalled replica does not hold the client forever
    lower = {n.lower(): v for n, v in answer}
    chunked = "chunked" in lower.get("transfer-encoding", "").lower()
    length = lower.get("content-length", "")
    if not chunked and length.isdigit() and int(length) <= SMALL_BODY:
        try:
            data = upstream_file.read(int(length))
        except OSError as e:
            raise _Broke(f"replica {replica.name} broke off its answer: {e}") from None
        if len(data) != int(length):
            raise _Broke(f"replica {replica.name} sent {len(data)} of {length} bytes")
        return [data]
    return _stream_body(replica, upstream, upstream_file, chunked,
                        int(length) if length.isdigit() and not chunked else None)


def _stream_body(replica, upstream, upstream_file, chunked: bool, length: int | None):
    try:
        if chunked:
            while True:
                line = upstream_file.readline(1024)
                if not line.endswith(b"\n"):
                    raise _Broke(f"replica {replica.name} broke off a chunked answer")
                size = int(line.split(b";")[0].strip() or b"x", 16)
                if size == 0:
                    break
                while size > 0:
                    data = upstream_file.read1(min(size, BLOCK))
                    if not data:
                        raise _Broke(f"replica {replica.name} broke off a chunked answer")
                    size -= len(data)
                    yield data
                upstream_file.readline(1024)  # the CRLF after the chunk
        else:
            left = length
            while left is None or left > 0:
                data = upstream_file.read1(BLOCK if left is None else min(left, BLOCK))
                if not data:
                    if left is not None:
                        raise _Broke(f"replica {replica.name} broke off its answer")
                    break
                if left is not None:
                    left -= len(data)
                yield data
    except ValueError:
        raise _Broke(f"replica {replica.name} sent a bad chunk size") from None
    except _Broke:
        raise
    except OSError as e:
        raise _Broke(f"replica {replica.name} broke off its answer: {e}") from None
    finally:
        _close(upstream_file, upstream)


# -- the tunnel ---------------------------------------------------------------------------------


def _tunnel(environ, start_response, replica, client, upstream, upstream_file, reason, answer,
            extra_headers) -> None:
    named = connection_named(answer)
    relayed = [(n, v) for n, v in answer
               if n.lower() in ("connection", "upgrade")
               or (n.lower() not in HOP_BY_HOP and n.lower() not in named)]
    write = start_response(f"101 {reason or 'Switching Protocols'}", relayed + extra_headers)
    started = time.monotonic()
    client_file = environ.get("nmc.rfile")
    client_read = client_file.read1 if client_file is not None else client.recv
    try:
        client.settimeout(None)  # a tunnel may be quiet for long: its protocol pings if it cares
        # The 101 head, alone, now (pywsgi sends headers with the first write, even an empty
        # one; the Content-Length it adds to a 101 when handed a list is avoided this way).
        write(b"")
    except OSError as e:
        log.debug("tunnel to %s: the client left before the 101 was sent: %s", replica.name, e)
        _close_after(start_response)
        _close_client(client_file, client)
        return
    # From here on the connection is no longer HTTP: the server must neither write an answer
    # nor read a request on it again.
    _close_after(start_response)
    counts = [0, 0]
    up = gevent.spawn(_pump, client_read, upstream, counts, 0)
    down = gevent.spawn(_pump, upstream_file.read1, client, counts, 1)
    try:
        first = gevent.wait([up, down], count=1)[0]
        other = down if first is up else up
        other.join(LINGER)
        if not other.dead:
            for sock in (client, upstream):  # wakes the reader still waiting
                _shutdown(sock, socket.SHUT_RDWR)
            other.join(1)
    finally:
        # (also reached when the server cuts this request short: GreenletExit) The pumps must
        # be gone before their readers are closed: closing a BufferedReader another greenlet is
        # blocked in raises "reentrant call".
        running = [pump for pump in (up, down) if not pump.dead]
        if running:
            for sock in (client, upstream):
                _shutdown(sock, socket.SHUT_RDWR)
            gevent.killall(running, timeout=1)
        _close_client(client_file, client)
        log.debug("tunnel to %s closed after %.1fs (%d bytes up, %d down)%s", replica.name,
                  time.monotonic() - started, counts[0], counts[1],
                  "".join(f"; {p.value}" for p in (up, down) if isinstance(p.value, str)))


def _pump(read, sink: socket.socket, counts: list[int], index: int):
    """Copy until EOF or an error, then half-close `sink` (it will get nothing more). Returns
    the error as text, if any (for the one debug line)."""
    try:
        while True:
            data = read(BLOCK)
            if not data:
                return None
            sink.sendall(data)
            counts[index] += len(data)
    except (OSError, ValueError) as e:  # ValueError: a reader closed under us
        return f"{'up' if index == 0 else 'down'}: {e}"
    finally:
        _shutdown(sink, socket.SHUT_WR)


# -- small helpers ------------------------------------------------------------------------------


def _close_after(start_response) -> None:
    """Tell the WSGI server to close the client's connection after this answer. pywsgi's
    start_response is a method of its handler, whose close_connection ends the keep-alive loop
    (our ProxyHandler then also says `Connection: close` on a non-101 answer)."""
    handler = getattr(start_response, "__self__", None)
    if handler is not None and hasattr(handler, "close_connection"):
        handler.close_connection = True


def _shutdown(sock, how) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def _close_client(client_file, client) -> None:
    if client_file is not None:
        try:
            client_file.close()
        except (OSError, ValueError, RuntimeError):
            pass
    _shutdown(client, socket.SHUT_RDWR)
    try:
        client.close()
    except OSError:
        pass


def _close(upstream_file, upstream) -> None:
    for thing in (upstream_file, upstream):
        try:
            thing.close()
        except (OSError, ValueError, RuntimeError):
            pass
