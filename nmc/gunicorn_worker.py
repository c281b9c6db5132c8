"""gunicorn's gevent worker, serving through nmc's own HTTP server (nmc.http_server), as
./nmc_server.py does: the picked worker class of nmc.gunicorn_conf.

gunicorn's gevent worker reads each request with its own parser, builds the environ and writes the
answer through its own Response (the head and the body in two sends): about 100 µs of CPU per
small request more than nmc's server on the same relay (about 1.5 x ./nmc_server.py in all). This
worker keeps gunicorn's process (its signals, heartbeat, --max-requests, reloads, --keep-alive,
--worker-connections, --graceful-timeout, TLS and access log) and hands the connections to
nmc.http_server's ProxyServer, the way gunicorn's own gevent_pywsgi worker hands them to pywsgi's.
So the client's requests meet one set of HTTP/1 rules (nmc.request_head) under both hosts.
`-k gevent` gives gunicorn's own parser back, with its limits and at its cost.

Imported by gunicorn's master to find the class: nmc's modules are imported in run(), in the
worker, after gevent's patching (see nmc.gunicorn_conf).
"""

from __future__ import annotations

import time
from datetime import timedelta

import gevent
from gunicorn.http.wsgi import base_environ
from gunicorn.sock import ssl_context
from gunicorn.workers.ggevent import VERSION, GeventResponse, GeventWorker

CLASS_PATH = "nmc.gunicorn_worker.Worker"
NO_KEEPALIVE_IDLE = 60.0  # seconds without progress on a body or an answer, under --keep-alive 0
DRAIN_POLL = 1.0        # seconds between looks for connections left while the worker stops

# gunicorn's settings about reading requests, which nmc's server does by its own rules: set to
# anything but their defaults, nmc.gunicorn_conf refuses them (-k gevent honours them).
PARSER_SETTINGS = ("limit_request_line", "limit_request_fields", "limit_request_field_size",
                   "proxy_protocol", "forwarded_allow_ips", "secure_scheme_headers",
                   "forwarder_headers", "header_map", "http_protocols", "protocol",
                   "permit_unconventional_http_method", "permit_unconventional_http_version",
                   "casefold_http_method", "strip_header_spaces", "permit_obsolete_folding",
                   "http_parser")


def settings_not_honoured(cfg) -> list[str]:
    """The command-line names of PARSER_SETTINGS that `cfg` sets to other than their defaults."""
    from gunicorn.config import Config
    defaults = Config()
    names = []
    for name in PARSER_SETTINGS:
        setting = cfg.settings.get(name)
        if setting is not None and setting.get() != defaults.settings[name].get():
            names.append(setting.cli[-1] if setting.cli else name)
    return names


class Worker(GeventWorker):
    """GeventWorker with nmc's ProxyServer on each listener instead of gunicorn's parser."""

    def run(self):
        servers = [self._server(listener) for listener in self.sockets]
        for server in servers:
            server.start()
        while self.alive:
            self.notify()
            gevent.sleep(1.0)
        self._stop(servers)

    def _server(self, listener):
        from nmc.config import Config  # in the worker: patched by now
        from nmc.http_server import ErrorLog, ProxyHandler, ProxyServer

        listener.setblocking(1)
        environ = base_environ(self.cfg)
        environ.update({"wsgi.multithread": True, "SERVER_SOFTWARE": VERSION})
        tls = {"ssl_context": ssl_context(self.cfg)} if self.cfg.is_ssl else {}
        keepalive = self.cfg.keepalive
        # (a gunicorn before 27 cannot tell whether its access log is on: every request is offered)
        logged = getattr(self.log, "access_log_enabled", True)
        server = ProxyServer(listener, self._counted(self.wsgi), environ=environ,
                             max_connections=self.worker_connections,
                             header_timeout=Config.header_timeout,  # nmc-server's default
                             idle_timeout=keepalive if keepalive > 0 else NO_KEEPALIVE_IDLE,
                             handler_class=_access_logging(ProxyHandler, self.log) if logged
                             else ProxyHandler, log=None, error_log=ErrorLog(), **tls)
        if self.cfg.workers > 1:
            server.max_accept = 1  # as gunicorn's gevent worker: spread connections
        return server

    def _counted(self, app):
        """The application, with what gunicorn's worker does around each request: --max-requests,
        and Connection: close once the worker stops or under --keep-alive 0."""
        from nmc.hijack import close_after

        keepalive = self.cfg.keepalive > 0

        def counted(environ, start_response):
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                self.log.info("Autorestarting worker after current request.")
                self.alive = False
            if not self.alive or not keepalive:
                close_after(environ)
            return app(environ, start_response)

        return counted

    def _stop(self, servers) -> None:
        """As gunicorn's gevent worker: stop accepting, let the connections end until
        --graceful-timeout (every answer now says Connection: close; an idle one waits out its
        --keep-alive), then cut them. (ProxyServer.drain would close the idle ones at once: a
        request sent on one at that moment would fail, on a reload or a --max-requests restart.)"""
        for server in servers:
            server.begin_drain()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while any(server.connections for server in servers) and time.monotonic() < deadline:
            self.notify()
            gevent.sleep(min(DRAIN_POLL, max(0.0, deadline - time.monotonic())))
        if any(server.connections for server in servers):
            self.log.warning("Worker graceful timeout (pid:%s)", self.pid)
        for server in servers:
            server.stop(timeout=1)


def _access_logging(handler_class, log):
    """nmc's handler, writing gunicorn's access log lines (--access-logfile) as gunicorn's
    gevent_pywsgi worker does."""

    class AccessLogging(handler_class):
        def log_request(self):
            status = self.status
            if isinstance(status, bytes):
                status = status.decode("latin-1")
            headers = [(name.decode("latin-1"), value.decode("latin-1"))
                       if isinstance(name, bytes) else (name, value)
                       for name, value in getattr(self, "response_headers", None) or ()]
            headers_in = self.headers.pairs if getattr(self, "headers", None) is not None else []
            log.access(GeventResponse(status, headers, self.response_length), headers_in,
                       self.environ, timedelta(seconds=self.time_finish - self.time_start))

    return AccessLogging
