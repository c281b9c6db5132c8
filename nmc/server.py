"""The life of a whole nmc-server process: the listener (nmc.http_server), the cluster, the admin
listener, signals, the drain and the stop.

Signals only queue their name; the main loop dispatches `handle_<signal>` (as gunicorn does),
so nothing heavy ever runs inside a signal handler.
"""

from __future__ import annotations

import dataclasses
import logging
import signal
import ssl
import time
from contextlib import nullcontext

import gevent
import gevent.event
import gevent.queue
from gevent.pywsgi import WSGIServer

from nmc import admin_auth, tls
from nmc.admin_socket import AdminSocket
from nmc.build import build_app
from nmc.cluster import Cluster, make_backend
from nmc.config import Config
from nmc.containers import Engine
from nmc.errors import NmcError, capture
from nmc.http_server import AdminServer, ErrorLog, ProxyServer, bind_listener
from nmc.proxy import open_access_log
from nmc.supervisor import Supervisor

log = logging.getLogger(__name__)

FORCED_STOP_TIMEOUT = 1  # seconds containers get to stop when the user insists (second Ctrl-C)


class Interrupted(NmcError):
    exit_code = 130


class NmcServer:
    """One nmc-server process: the listener, the replicas' supervisor, and their shutdown."""

    def __init__(self, config: Config):
        self.config = config
        self.signals: gevent.queue.Queue[str] = gevent.queue.Queue()
        self.engine: Engine | None = None
        self.supervisor: Supervisor | None = None
        self.http: WSGIServer | None = None
        self.admin: WSGIServer | None = None
        self.admin_unix: WSGIServer | None = None  # the same, on <run dir>/<name>.sock
        self.tls: ssl.SSLContext | None = None  # --certfile
        self._replica_logs: gevent.Greenlet | None = None  # --logs
        self._watching: gevent.Greenlet | None = None  # --watch
        self._stop_watching = gevent.event.Event()

    def run(self, progress=None) -> int:
        """Start the cluster and serve until SIGINT/SIGTERM; returns the exit code.

        `progress(text)` returns a context manager shown while the cluster starts (a spinner).
        """
        for signum in (signal.SIGINT, signal.SIGTERM):
            gevent.signal_handler(signum, self.signals.put, signal.Signals(signum).name)
        gevent.signal_handler(signal.SIGHUP, self._on_sighup)
        access_log = open_access_log(self.config.access_log)
        self.tls = tls.server_context(self.config.certfile, self.config.keyfile) \
            if self.config.certfile else None
        secure = {"ssl_context": self.tls} if self.tls else {}
        listener = bind_listener(self.config.bind, self.config.port)
        admin_listener = None
        admin_socket = AdminSocket(self.config.name)
        owner = False  # of the name: what a failed start leaves is ours to remove
        try:
            # before any container is touched: another nmc-server of this name stops us here
            admin_socket.bind()
            owner = True
            if self.config.admin_port:
                admin_listener = bind_listener(self.config.admin_bind, self.config.admin_port,
                                               "--admin-port (0 turns it off)")
            engine = Engine.connect()
            if self.config.build:
                with (progress or _no_progress)(f"Building {self.config.build}..."):
                    build_app(engine, self.config.build, self.config.build_image,
                              dict(self.config.build_arg))
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
                                    log=None, error_log=ErrorLog(), **secure)
            self.http.start()
            self.supervisor.watch()
            serving_since = time.time()  # --logs: the replicas' lines from here on, none missed
            shown = "localhost" if self.config.bind in ("0.0.0.0", "::") else self.config.bind
            scheme = "https" if self.tls else "http"
            log.info("serving on %s://%s:%d (%d replicas, %s)", scheme, shown, self.config.port,
                     self.config.replicas, f"tasks of swarm service {self.config.name}"
                     if self.config.swarm else f"ports {self.config.base_port}-"
                                               f"{self.config.replica_ports[-1]}")
            if admin_listener is not None:
                self.admin = AdminServer(admin_listener, cluster.admin_app(), log=None,
                                        error_log=ErrorLog(), **secure)
                self.admin.start()
                log.info("admin interface on %s://%s:%d (status, scale, rollout)", scheme,
                         self.config.admin_bind, self.config.admin_port)
            self.admin_unix = WSGIServer(admin_socket.sock, cluster.socket_app(), log=None,
                                         error_log=ErrorLog())
            self.admin_unix.start()
            log.info("admin socket %s (nmc-server status | scale | rollout --name %s)",
                     admin_socket.path, self.config.name)
            # nmc.logs and nmc.watch are imported only when asked for: 0.015 s of every start
            if self.config.logs:
                from nmc.logs import follow_live

                self._replica_logs = gevent.spawn(follow_live, engine, self.config.name, serving_since)
            if self.config.watch:
                from nmc.watch import watch

                self._watching = gevent.spawn(watch, self.config.build,
                                              lambda changed: self._rebuild_and_roll_out("watch"),
                                              self._stop_watching)
            while self.http is not None:
                getattr(self, "handle_" + self.signals.get().lower())()
            return 0
        finally:
            listener.close()
            self._stop_watching.set()
            if self._watching is not None:
                self._watching.kill()
            if self._replica_logs is not None:
                self._replica_logs.kill()
            if self.admin is not None:
                self.admin.stop(timeout=0)
            if admin_listener is not None:
                admin_listener.close()
            if self.admin_unix is not None:
                self.admin_unix.stop(timeout=0)
            admin_socket.remove()
            if self.supervisor is not None and not self.supervisor.stopping:
                self.supervisor.stop(remove=not self.config.keep, stop_timeout=FORCED_STOP_TIMEOUT)
            if owner and not self.config.keep:
                admin_auth.forget_token(self.config.name, self.config.admin_token_file)

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
        """The certificate read again (--certfile), and a rollout of the image, rebuilt (e.g.
        by `make nodejs`), in the background."""
        if self.tls is not None:
            try:
                tls.load(self.tls, self.config.certfile, self.config.keyfile)
                log.info("SIGHUP: read the certificate again (%s): new connections get it",
                         self.config.certfile)
            except NmcError as e:
                log.error("SIGHUP: %s; the certificate in use stays", e)

        gevent.spawn(self._rebuild_and_roll_out, "SIGHUP")

    def _rebuild_and_roll_out(self, why: str) -> None:
        """--build: the folder built again; then a rollout of the image. A failure of either is
        one line, and the replicas keep serving what they run."""
        try:
            if self.config.build:  # --build: what changed is the folder
                build_app(self.engine, self.config.build, self.config.image,
                          dict(self.config.build_arg))
            log.info("%s: %s", why, self.supervisor.rollout())
        except NmcError as e:
            log.error("%s: %s; the replicas keep serving the image they run", why, e)

    def _stop(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), then stop the replicas; a
        second signal meanwhile cuts the wait short."""
        http, self.http = self.http, None
        self._stop_watching.set()  # no rollout begins while stopping
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


def _no_progress(text: str):
    log.info("%s", text)
    return nullcontext()
