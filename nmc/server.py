"""The gevent.pywsgi server in front of the proxy, and the life of a whole nmc-server process.

Signals only queue their name; the main loop dispatches `handle_<signal>` (as gunicorn does),
so nothing heavy ever runs inside a signal handler.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import signal
import socket
import sys
import time
from contextlib import nullcontext

import gevent
import gevent.event
import gevent.pool
import gevent.queue
from gevent.pywsgi import WSGIHandler, WSGIServer

from nmc import request_head
from nmc.build import build_app
from nmc.cluster import Cluster, make_backend
from nmc.config import Config
from nmc.containers import Engine
from nmc.errors import NmcError, UsageError, capture
from nmc.http_rules import error_answer
from nmc.logs import follow_live
from nmc.supervisor import Supervisor

log = logging.getLogger(__name__)

LISTEN_BACKLOG = 1024
FORCED_STOP_TIMEOUT = 1  # seconds containers get to stop when the user insists (second Ctrl-C)


class PortInUse(NmcError):
    pass


class Interrupted(NmcError):
    exit_code = 130


READ_BUFFER = 2048  # bytes of a client connection's read buffer (see ProxyHandler.__init__)


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
        try:
            super().handle()
        finally:
            server.connections.discard(self)

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
        if isinstance(result, tuple) and result[0] == "414":  # pywsgi's own answer has no body
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
        if not self.in_flight and self.socket is not None:
            try:
                self.socket.shutdown(socket.SHUT_RDWR)  # wakes the greenlet blocked in recv
            except OSError:
                pass

    def get_environ(self):
        environ = super().get_environ()
        environ["RAW_URI"] = self.path
        environ["nmc.headers"] = self.headers.pairs
        # for tunnels (WebSocket): the client's socket, and its reader (which may hold bytes
        # the client sent right after the request head)
        environ["nmc.socket"] = self.socket
        environ["nmc.rfile"] = self.rfile
        return environ

    def _sendall(self, data):
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
        self.draining = False
        self._idle = gevent.event.Event()

    def request_done(self) -> None:
        if self.draining and not any(c.in_flight for c in self.connections):
            self._idle.set()

    def drain(self, timeout: float) -> bool:
        """Stop accepting, close idle connections, let busy ones finish their request for up to
        `timeout` seconds, then cut what is left. True when nothing had to be cut."""
        self.close()
        self.draining = True
        for connection in list(self.connections):
            connection.close_if_idle()
        self.request_done()
        drained = self._idle.wait(timeout)
        self.stop(timeout=0)
        return bool(drained)


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


class NmcServer:
    """One nmc-server process: the listener, the replicas' supervisor, and their shutdown."""

    def __init__(self, config: Config):
        self.config = config
        self.signals: gevent.queue.Queue[str] = gevent.queue.Queue()
        self.engine: Engine | None = None
        self.supervisor: Supervisor | None = None
        self.http: WSGIServer | None = None
        self.admin: WSGIServer | None = None
        self._replica_logs: gevent.Greenlet | None = None  # --logs

    def run(self, progress=None) -> int:
        """Start the cluster and serve until SIGINT/SIGTERM; returns the exit code.

        `progress(text)` returns a context manager shown while the cluster starts (a spinner).
        """
        for signum in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(signum, self.signals.put, signal.Signals(signum).name)
        gevent.signal_handler(signal.SIGHUP, self._on_sighup)
        access_log = open_access_log(self.config.access_log)
        listener = bind_listener(self.config.bind, self.config.port)
        admin_listener = None
        try:
            if self.config.admin_port:
                admin_listener = bind_listener(self.config.admin_bind, self.config.admin_port,
                                               "--admin-port (0 turns it off)")
            engine = Engine.connect()
            if self.config.build:
                with (progress or _no_progress)(f"Building {self.config.build}..."):
                    build_app(engine, self.config.build, self.config.build_image)
                self.config = dataclasses.replace(self.config, image=self.config.build_image)
            self.engine = engine
            cluster = Cluster(self.config, access_log)
            self.supervisor = cluster.supervise(make_backend(engine, self.config))
            with (progress or _no_progress)("Starting cluster..."):
                self._start_cluster()
            self.http = ProxyServer(listener, cluster.proxy,
                                    max_connections=self.config.max_connections,
                                    header_timeout=self.config.header_timeout,
                                    idle_timeout=self.config.idle_timeout,
                                    log=None, error_log=ErrorLog())
            self.http.start()
            self.supervisor.watch()
            shown = "localhost" if self.config.bind in ("0.0.0.0", "::") else self.config.bind
            log.info("serving on http://%s:%d (%d replicas, %s)", shown, self.config.port,
                     self.config.replicas, f"tasks of swarm service {self.config.name}"
                     if self.config.swarm else f"ports {self.config.base_port}-"
                                               f"{self.config.replica_ports[-1]}")
            if admin_listener is not None:
                self.admin = WSGIServer(admin_listener, cluster.admin_app(), log=None,
                                        error_log=ErrorLog())
                self.admin.start()
                log.info("admin interface on http://%s:%d (status, scale, rollout)",
                         self.config.admin_bind, self.config.admin_port)
            if self.config.logs:
                self._replica_logs = gevent.spawn(follow_live, engine, self.config.name, time.time())
            while self.http is not None:
                getattr(self, "handle_" + self.signals.get().lower())()
            return 0
        finally:
            listener.close()
            if self._replica_logs is not None:
                self._replica_logs.kill()
            if self.admin is not None:
                self.admin.stop(timeout=0)
            if admin_listener is not None:
                admin_listener.close()
            if self.supervisor is not None and not self.supervisor.stopping:
                self.supervisor.stop(remove=not self.config.keep, stop_timeout=FORCED_STOP_TIMEOUT)

    def _start_cluster(self) -> None:
        """Start the replicas; Interrupted when a signal cuts the start short (they are removed)."""
        start = gevent.spawn(capture, self.supervisor.start)
        interrupted = gevent.spawn(self.signals.peek)
        gevent.wait([start, interrupted], count=1)
        if not start.ready():
            log.info("interrupted while starting: removing the replicas started so far")
            self.supervisor.stop(remove=True, stop_timeout=FORCED_STOP_TIMEOUT)
            start.join()
            raise Interrupted("interrupted while starting; the replicas started so far were removed")
        interrupted.kill()
        if start.value is not None:
            # nothing was served: a failed start leaves nothing behind, --keep or not
            self.supervisor.stop(remove=True, stop_timeout=FORCED_STOP_TIMEOUT)
            raise start.value

    def handle_sigint(self) -> None:
        # the first signal only: the serving loop ends with it, and _stop reads any second one
        self._stop()

    handle_sigterm = handle_sigint

    def _on_sighup(self) -> None:
        if self.http is None:  # starting or stopping: nothing to roll out
            log.warning("SIGHUP ignored: nmc-server is not serving yet, or stopping")
            return
        self.signals.put("SIGHUP")

    def _next_stop_signal(self) -> str:
        while True:
            name = self.signals.get()
            if name != "SIGHUP":  # queued just before the stop began: no rollout now
                return name

    def handle_sighup(self) -> None:
        """A rollout of the image, rebuilt (e.g. by `make nodejs`), in the background."""
        def roll_out():
            try:
                if self.config.build:  # --build: what changed is the folder
                    build_app(self.engine, self.config.build, self.config.image)
                log.info("SIGHUP: %s", self.supervisor.rollout())
            except NmcError as e:
                log.error("SIGHUP: %s", e)
        gevent.spawn(roll_out)

    def _stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then stop the replicas; a
        second signal meanwhile cuts the wait short."""
        http, self.http = self.http, None
        log.info("stopping: no new connections; in-flight requests get up to %gs",
                 self.config.graceful_timeout)
        draining = gevent.spawn(http.drain, self.config.graceful_timeout)
        # a second signal while draining cuts it short
        again = gevent.spawn(self._next_stop_signal)
        gevent.wait([draining, again], count=1)
        forced = again.ready()
        if forced:
            log.warning("second signal: stopping at once")
            draining.kill()
            http.stop(timeout=0)
        else:
            again.kill()
            if not draining.value:
                log.warning("requests still running after %gs were cut", self.config.graceful_timeout)
        keep = self.config.keep and not forced
        self.supervisor.stop(remove=not keep, stop_timeout=FORCED_STOP_TIMEOUT if forced else 5)
        log.info("stopped%s", " (replicas left running: --keep)" if keep else "")


class ErrorLog:
    """pywsgi's error_log: one log line, never a traceback on the console."""

    def write(self, text: str) -> None:
        text = text.strip()
        if text:
            log.warning("%s", text.splitlines()[-1])

    def flush(self) -> None:
        pass


def _no_progress(text: str):
    log.info("%s", text)
    return nullcontext()
