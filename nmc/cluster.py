"""One cluster built from a Config, the same for both hosts: ./nmc_server.py (nmc.server) and
gunicorn (nmc.wsgi).

It wires the pool, the relay over it, and, in the process that supervises, the backend, the
supervisor and the admin interface. Under gunicorn only one worker supervises; the others
follow it (nmc.workers) and tell the cluster so with `follow`.
"""

from __future__ import annotations

import logging
from typing import Protocol

from nmc import admin_auth
from nmc.admin import AdminApp, own_counts
from nmc.backend import Backend
from nmc.config import Config
from nmc.containers import ContainerBackend, Engine
from nmc.events import EventLog
from nmc.history import History
from nmc.pool import Pool
from nmc.proxy import Proxy
from nmc.replica import Replica
from nmc.supervisor import Supervisor

log = logging.getLogger(__name__)


def make_backend(engine: Engine, config: Config) -> Backend:
    """The backend the configuration asks for: one Swarm service, or containers on one host."""
    if config.swarm:
        from nmc.swarm import SwarmBackend
        return SwarmBackend(engine, config)
    return ContainerBackend(engine, config)


class FailureReports(Protocol):
    def report_failure(self, replica: Replica, reason: str) -> None: ...


class Cluster:
    """The pool, the relay, and whoever hears of the relay's failures: the supervisor where
    this process supervises, a follower's own probes where it does not."""

    def __init__(self, config: Config, access_log=None):
        self.config = config
        self.pool = Pool()
        self.events = EventLog()  # heard once this process supervises
        self.history = History(self.pool)  # read once this process serves the admin interface
        self.supervisor: Supervisor | None = None
        self._reports: FailureReports | None = None
        self.proxy = Proxy(self.pool, self.report_failure,
                           backend_timeout=config.backend_timeout,
                           queue_timeout=config.queue_timeout,
                           log_requests=not config.quiet, served_by=config.served_by,
                           balance=config.balance, sticky=config.sticky, access_log=access_log,
                           max_body_size=config.max_body_size)

    def supervise(self, backend: Backend) -> Supervisor:
        """This process supervises the replicas on `backend` (start them with .start())."""
        self.events.follow()
        self.supervisor = Supervisor(self.config, backend, self.pool)
        self._reports = self.supervisor
        return self.supervisor

    def follow(self, reports: FailureReports) -> None:
        """Another process supervises; the relay's failures go to `reports` meanwhile."""
        self._reports = reports

    def report_failure(self, replica: Replica, reason: str) -> None:
        if self._reports is not None:
            self._reports.report_failure(replica, reason)

    def admin_app(self, started: float | None = None, counts=None) -> AdminApp:
        """The admin interface, guarded by the cluster's token (nmc.admin_auth), whose URL for
        the dashboard is logged once here."""
        config = self.config
        token, where = admin_auth.server_token(config.name, config.admin_token_file)
        scheme = "https" if config.certfile else "http"
        log.info("admin token in %s; the dashboard with it: %s://%s:%d/?token=%s", where, scheme,
                 config.admin_bind, config.admin_port, token)
        self.history.start(counts or own_counts)
        return AdminApp(config, self.supervisor, started, counts,
                        admin_auth.Guard(token, config.admin_bind, where), self.events,
                        self.history)

    def socket_app(self, started: float | None = None, counts=None) -> AdminApp:
        """The same interface on the cluster's Unix socket (nmc.admin_socket): no token, the
        socket file's mode (0600) is the credential."""
        self.history.start(counts or own_counts)
        return AdminApp(self.config, self.supervisor, started, counts, events=self.events,
                        history=self.history)
