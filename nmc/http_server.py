"""The HTTP server in front of the relay: gevent.pywsgi's, adapted. The process around it (signals,
drain, stop) is nmc.server's; gunicorn hosts the same relay without it.

What pywsgi gets from nmc here: a strict request head (nmc.request_head) read within
--header-timeout, keep-alive connections closed after --idle-timeout (and waiting without a
greenlet once idle for PARK_AFTER), the request exactly as received for the proxy, one write for
small answers, a cap on open connections, a drain on stop, and the client's connection handed
over for a tunnel (nmc.hijack).

pywsgi's public hooks cover most of it. Where a private name is overridden, its comment says
why nothing public does the job.
"""

from __future__ import annotations

import errno
import logging
import socket
from contextlib import closing

import gevent
import gevent.event
import gevent.pool
from gevent import pywsgi
from gevent.hub import Waiter
from gevent.pywsgi import WSGIHandler, WSGIServer

from nmc import request_head
from nmc.errors import NmcError, UsageError
from nmc.hijack import HIJACKER, Hijacked, close_socket
from nmc.http_rules import error_answer

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024


class PortInUse(NmcError):
    pass


READ_BUFFER = 2048  # bytes of a client connection's read buffer (see ProxyHandler.__init__)
# A kept-alive connection with no next request for this long gives up its greenlet and its read
# buffer until bytes arrive (ProxyHandler._park): most of what an idle connection costs. One in a
# burst of requests keeps them, so a busy connection pays nothing for it.
PARK_AFTER = 0.5  # seconds
# what a handler holds of its last request: a parked connection lets go of it
PER_REQUEST = ("environ", "headers", "wsgi_input", "result", "requestline", "path", "command",
               "status", "_orig_status", "response_headers", "provided_date",
               "provided_content_length")
ADMIN_HANDSHAKE_TIMEOUT = 10  # seconds a client of the admin port has to finish its TLS handshake


class ProxyHandler(WSGIHandler):
    """pywsgi's handler, plus what a relay needs: a strict request head (nmc.request_head) read
    within --header-timeout, keep-alive connections closed after --idle-timeout, the request
    exactly as received for the proxy, one write for small answers, and a drain on stop."""

    busy = False       # between reading a request and finishing its answer
    answered = 0       # requests answered on this connection
    _head_timer = None

    def __init__(self, sock, address, server, rfile=None):
        # pywsgi's reader has io's 8 KiB buffer, allocated at once: a third of what an idle
        # keep-alive connection costs. A request head is read a line at a time, and a large
        # body bypasses the buffer, so a smaller one costs neither reads nor speed.
        if rfile is None:
            rfile = sock.makefile("rb", READ_BUFFER)
        super().__init__(sock, address, server, rfile)

    def handle(self):
        server = self.server
        if len(server.connections) >= server.max_connections:
            self._refuse(request_head.Rejected(503, "too many open connections; try again",
                                               (("Retry-After", "1"),)))
            return
        server.connections.add(self)
        self._serve()

    def _serve(self) -> None:
        """pywsgi's keep-alive loop (WSGIHandler.handle, which has no way to leave it but closing),
        with one way out more: a kept-alive connection idle for PARK_AFTER is parked."""
        parked = False
        try:
            while self.socket is not None:
                if self._may_park() and not self._next_request_within(PARK_AFTER):
                    parked = self._park()
                    return
                result = self.handle_one_request()
                if result is None:
                    break
                if result is True:
                    continue
                self.status, answer = result  # a client error, answered before the WSGI call
                self.socket.sendall(answer)
                break
        finally:
            if not parked:
                self.server.connections.discard(self)
                self._close()

    def _close(self) -> None:
        """As pywsgi's handle() ends: what the client sent last is read out (a close with unread
        bytes would reset the connection before our answer arrived), then it is closed."""
        sock = self.socket
        if sock is not None:
            inner = getattr(sock, "_sock", None)  # the standard socket under gevent's: never waits
            try:
                if inner is not None:
                    try:
                        inner.recv(16384)
                    finally:
                        inner.close()
                sock.close()
            except OSError:
                pass
        self.__dict__.pop("socket", None)
        self.__dict__.pop("rfile", None)
        self.__dict__.pop("wsgi_input", None)
        if self._readable is not None:
            self._readable.close()
            self._quiet.close()

    # -- an idle keep-alive connection without a greenlet -----------------------------------

    _readable = None   # a read watcher on the connection, made when first needed
    _quiet = None      # and a timer: PARK_AFTER without a byte
    _idle_timer = None
    parked = False

    def _may_park(self) -> bool:
        # TLS: the reader may hold bytes the socket no longer shows, and handle_after_handshake
        # closes the connection when handle() returns
        return (self.answered > 0 and not self.server.draining and not self.server.ssl_enabled
                and self.server.idle_timeout > PARK_AFTER)

    def _next_request_within(self, seconds: float) -> bool:
        """False when nothing arrived within `seconds` (and nothing waits in the read buffer).
        An end of the connection counts as arrived: the loop reads it and closes."""
        sock = self.socket
        sock.settimeout(0.0)
        try:
            if self.rfile.peek(1):  # buffered (pipelined) or there already: no waiting at all
                return True
        except OSError:
            return True  # the loop meets it again, and closes
        finally:
            sock.settimeout(self.server.idle_timeout)
        if self._readable is None:  # made once, started for each wait (cheaper than wait_read)
            self._readable = self.server.loop.io(sock.fileno(), 1)
            # (repeating, for again(): a stopped libev timer started again only runs out what was
            # left of it)
            self._quiet = self.server.loop.timer(seconds, seconds)
        waiter = Waiter()
        self._readable.start(waiter.switch, True)
        self._quiet.again(waiter.switch, False)
        try:
            return waiter.get()
        finally:
            self._readable.stop()
            self._quiet.stop()

    def _park(self) -> bool:
        """Give up the greenlet and the read buffer until the client sends something (then
        _resume) or --idle-timeout since the last answer ends (then close_parked). False when the
        connection could not be parked (closed meanwhile)."""
        if self.socket is None:
            return False
        try:
            self.rfile.close()  # its buffer is empty (_next_request_within looked)
        except (OSError, ValueError):
            pass
        self.rfile = None
        for name in PER_REQUEST:  # the last request's environ, headers, answer: not kept
            self.__dict__.pop(name, None)
        self.parked = True
        self.server.parked.add(self.socket)
        self._readable.start(self._resume)
        self._idle_timer = self.server.loop.timer(max(0.0, self.server.idle_timeout - PARK_AFTER))
        self._idle_timer.start(self.close_parked)
        return True

    def _unpark(self) -> None:
        self.parked = False
        self._readable.stop()
        self._idle_timer.close()
        self._idle_timer = None
        self.server.parked.discard(self.socket)

    def _resume(self) -> None:
        """(in the hub) The client sent something: a greenlet serves the connection again."""
        self._unpark()
        self.rfile = self.socket.makefile("rb", READ_BUFFER)
        self.server.spawn_handler(self._serve)

    def close_parked(self) -> None:
        """(in the hub, or on drain) --idle-timeout passed without a request, or the server
        stops: closed, as pywsgi would close a connection that waits in its greenlet."""
        self._unpark()
        self.server.connections.discard(self)
        self._readable.close()
        self._quiet.close()
        close_socket(self.socket)
        self.__dict__.pop("socket", None)

    def _refuse(self, rejected: request_head.Rejected) -> None:
        """Answer without reading the request, then a lingering close (no reset before it is read)."""
        try:
            self.socket.sendall(rejected.response())
            self.socket.shutdown(socket.SHUT_WR)
            self.socket.settimeout(1)
            while self.socket.recv(65536):
                pass
        except OSError:
            pass
        finally:
            self.socket.close()

    def read_requestline(self):
        # Waiting for a request to begin: --idle-timeout on a kept-alive connection, --header-timeout
        # on a new one. From its first byte on, the whole head must arrive within --header-timeout
        # (a timer, unless the empty line that ends the head has arrived with that first read, as
        # it usually has: reading the head then never waits for the client).
        # A timeout here raises socket.timeout, on which pywsgi closes the connection.
        self.socket.settimeout(self.server.idle_timeout if self.answered else self.server.header_timeout)
        arrived = self.rfile.peek(1)
        if not arrived:
            return ""  # the client closed
        if b"\n\r\n" not in arrived and b"\n\n" not in arrived:
            self._head_timer = gevent.Timeout.start_new(
                self.server.header_timeout, socket.timeout("request head too slow"))
        return self.rfile.readline(request_head.MAX_REQUEST_LINE).decode("latin-1")

    def read_request(self, raw_requestline):
        try:
            self.requestline = raw_requestline.rstrip()
            self.command, self.path, self.request_version = \
                request_head.parse_request_line(raw_requestline)
            self.headers = request_head.read_headers(self.rfile.readline)
            self.content_length = request_head.body_framing(self.headers, self.command)
        except socket.timeout:
            raise request_head.Rejected(
                408, f"request head not received within {self.server.header_timeout:g}s") from None
        finally:
            self._stop_head_timer()
        # reading the body and writing the answer: no progress for --idle-timeout cuts it
        self.socket.settimeout(self.server.idle_timeout)
        tokens = {t.strip().lower() for t in (self.headers.get("Connection") or "").split(",")}
        if self.request_version == "HTTP/1.1":
            self.close_connection = "close" in tokens
        else:
            self.close_connection = "keep-alive" not in tokens
        return True

    def handle_one_request(self):
        try:
            result = super().handle_one_request()
        finally:
            self._stop_head_timer()
        if isinstance(result, tuple) and len(self.requestline or "") >= pywsgi.MAX_REQUEST_LINE:
            # pywsgi answered 414 itself (with no body) to a request line at its limit
            return self._handle_client_error(request_head.Rejected(
                414, f"request line over {request_head.MAX_REQUEST_LINE} bytes"))
        return result

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.close()
            self._head_timer = None

    def log_request(self):
        # pywsgi formats an access-log line for every request even when nobody reads it
        # (log=None); nmc logs its own line per request in the proxy (-q turns it off).
        pass

    def _handle_client_error(self, ex):
        # (private name: pywsgi documents it as the hook for subclasses, "experimental")
        # pywsgi's own client errors (a malformed chunked body) become the same kind of answer
        if not isinstance(ex, request_head.Rejected):
            ex = request_head.Rejected(400, f"malformed request body ({ex})")
        log.warning("refused a request from %s: %s", self.client_address[0], ex.formatted_message)
        return str(ex.status), ex.response()

    def handle_one_response(self):
        self.busy = True
        try:
            super().handle_one_response()
        finally:
            self.busy = False
            self.answered += 1
            if self.server.draining or self.connection_upgraded:  # never parse a tunnel as HTTP
                self.close_connection = True
            self.server.request_done()

    @property
    def in_flight(self) -> bool:
        """Answering a request. A tunnel (WebSocket) is not: it may last for hours, so a drain
        closes it at once rather than waiting out --graceful-timeout."""
        return self.busy and not self.connection_upgraded

    def close_if_idle(self) -> None:
        """Called on drain: a connection waiting for its next request, or a tunnel, closes now."""
        if self.parked:
            self.close_parked()
        elif not self.in_flight and self.socket is not None:
            try:
                self.socket.shutdown(socket.SHUT_RDWR)  # wakes the greenlet blocked in recv
            except OSError:
                pass

    def get_environ(self):
        environ = super().get_environ()
        environ["RAW_URI"] = self.path
        environ["nmc.headers"] = self.headers.pairs
        environ[HIJACKER] = self  # for a tunnel (WebSocket): see nmc.hijack
        return environ

    # -- nmc.hijack.Hijacker ---------------------------------------------------------------

    def close_after(self) -> None:
        """No other request is read from this connection after this answer."""
        self.close_connection = True

    def hijack(self) -> Hijacked:
        """The client's connection, for a tunnel: its socket, and its reader, which may hold
        bytes the client sent right after the request head."""
        self.close_connection = True
        return Hijacked(self.socket, self.rfile.read1, self._close_hijacked)

    def _close_hijacked(self) -> None:
        try:
            self.rfile.close()
        except (OSError, ValueError, RuntimeError):
            pass
        close_socket(self.socket)

    def _sendall(self, data):
        # (private name: every write of pywsgi's goes through it, and no public method would
        # see them all)
        # gevent's socket.sendall asks the kernel for the send buffer's size on every call
        # (a syscall); one send() takes a whole answer of the usual size. Errors are recorded
        # as pywsgi's own _sendall does.
        try:
            sent = self.socket.send(data)
            if sent < len(data):
                self.socket.sendall(memoryview(data)[sent:])
        except OSError as ex:
            self.status = f"socket error: {ex}"
            if self.code > 0:
                self.code = -self.code
            raise
        self.response_length += len(data)

    def _write_with_headers(self, data):
        # (private name: pywsgi's first write of an answer; the public write() cannot join the
        # head and the body, it sends the head through this)
        # pywsgi sends the headers and the body in two send()s; with the client's delayed ACK
        # that stalls every small answer ~40 ms. Send them together (and TCP_NODELAY is set).
        self.headers_sent = True
        self.finalize_headers()
        towrite = bytearray(b"HTTP/1.1 ")
        towrite += self.status
        towrite += b"\r\n"
        for name, value in self.response_headers:
            towrite += name + b": " + value + b"\r\n"
        if self.server.draining or self.environ.get("nmc.close_connection"):
            self.close_connection = True
        if (self.close_connection and self.request_version == "HTTP/1.1" and self.code != 101
                and not any(name.lower() == b"connection" for name, _ in self.response_headers)):
            towrite += b"Connection: close\r\n"  # pywsgi closes without saying so
        towrite += b"\r\n"
        if data and not self.response_use_chunked:
            towrite += data
            self._sendall(towrite)
        else:
            self._sendall(towrite)
            self._write(data)


    def handle_error(self, t, v, tb):
        if issubclass(t, gevent.GreenletExit):  # a forced stop cut this request short
            self.close_connection = True
            if not self.response_length and not self.headers_sent:
                try:
                    for data in error_answer(self.start_response, 503, "nmc-server is stopping", None):
                        self.write(data)
                except OSError:
                    pass
            return
        super().handle_error(t, v, tb)

    def _log_error(self, t, v, tb):
        # (private name: the public handle_error sends the 500 and calls this; overriding only
        # that would mean sending the 500 ourselves)
        # pywsgi prints a traceback through the hub; a user sees one line (the trace at DEBUG)
        if not issubclass(t, gevent.GreenletExit):
            log.error("error while handling %s %s: %s: %s", self.command, self.path, t.__name__, v,
                      exc_info=(t, v, tb) if log.isEnabledFor(logging.DEBUG) else None)


class ProxyServer(WSGIServer):
    """pywsgi's server with its connections known, so that stop() can drain them."""

    handler_class = ProxyHandler

    def __init__(self, listener, application, *, max_connections: int = 10000,
                 header_timeout: float = 10.0, idle_timeout: float = 60.0, **kwargs):
        # The pool is unbounded: past max_connections, ProxyHandler answers 503 at once, where a
        # full pool would stop accepting and leave new clients hanging in the backlog.
        super().__init__(listener, application, spawn=gevent.pool.Pool(), **kwargs)
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.idle_timeout = idle_timeout
        self.connections: set[ProxyHandler] = set()
        self.parked: set = set()  # the sockets of parked connections (ProxyHandler._park)
        self.draining = False
        self._idle = gevent.event.Event()

    def wrap_socket_and_handle(self, client_socket, address):
        # TLS: the handshake counts toward the request head's time, so that a client stalling
        # it is cut as a slow head would be (the handler sets its own timeouts after it)
        return handle_after_handshake(self, client_socket, address, self.header_timeout)

    def spawn_handler(self, serve) -> None:
        """A parked connection's greenlet again, in the server's pool (stop() ends it too)."""
        self.pool.spawn(serve)

    def do_close(self, sock, *args):
        # pywsgi closes a connection when its handler returns; a parked one lives on
        if sock not in self.parked:
            sock.close()

    def request_done(self) -> None:
        if self.draining and not any(c.in_flight for c in self.connections):
            self._idle.set()

    def stop(self, timeout=None):
        for connection in list(self.connections):  # no greenlet of theirs for stop() to end
            if connection.parked:
                connection.close_parked()
        super().stop(timeout)

    def begin_drain(self) -> None:
        """No new connections; from now on every answer says Connection: close, and no idle
        connection is parked. (The connections open now are left to end: drain closes them.)"""
        self.close()
        self.draining = True

    def drain(self, timeout: float) -> bool:
        """Stop accepting, close idle connections, let busy ones finish their request for up to
        `timeout` seconds, then cut what is left. True when nothing had to be cut."""
        self.begin_drain()
        for connection in list(self.connections):
            connection.close_if_idle()
        self.request_done()
        drained = self._idle.wait(timeout)
        self.stop(timeout=0)
        return bool(drained)


class AdminServer(WSGIServer):
    """The admin listener: pywsgi's server, its TLS handshakes as the public port's."""

    def wrap_socket_and_handle(self, client_socket, address):
        return handle_after_handshake(self, client_socket, address, ADMIN_HANDSHAKE_TIMEOUT)


def handle_after_handshake(server: WSGIServer, client_socket, address, timeout: float):
    """TLS: the handshake within `timeout` seconds, then the connection served. One that fails (a
    port checker that connects and leaves, plain HTTP, an old TLS) is closed without a word, as
    nginx does at its default log level: no request was made."""
    client_socket.settimeout(timeout)
    try:
        tls_socket = server.wrap_socket(client_socket, **server.ssl_args)
    except OSError:  # ssl.SSLError, a reset, the timeout: all OSErrors
        return None  # (the server closes the client's socket)
    with closing(tls_socket):
        return server.handle(tls_socket, address)


def bind_listener(address: str, port: int, option: str = "--port") -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        # Accepted sockets inherit it on Linux: small answers leave at once (see ProxyHandler).
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((address, port))
        sock.listen(LISTEN_BACKLOG)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} on {address} is already in use: stop what holds it or "
                            f"choose another {option}") from None
        if e.errno == errno.EACCES:
            raise PortInUse(f"no permission to listen on port {port}: choose a port above 1023 "
                            "or run as root") from None
        if e.errno == errno.EADDRNOTAVAIL or isinstance(e, socket.gaierror):
            raise UsageError(f"--bind {address}: not an address of this machine "
                             f"({e.strerror or e})") from None
        raise PortInUse(f"cannot listen on {address}:{port}: {e.strerror}") from None
    return sock


class ErrorLog:
    """pywsgi's error_log: one log line, never a traceback on the console."""

    def write(self, text: str) -> None:
        text = text.strip()
        if text:
            log.warning("%s", text.splitlines()[-1])

    def flush(self) -> None:
        pass
