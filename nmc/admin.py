"""The admin interface: a second listener (127.0.0.1:3100 by default), never the public port,
and the same app on the cluster's Unix socket (nmc.admin_socket), which needs no token.

    GET  /          the live dashboard (nmc/dashboard.html: one page, no outside resources)
    GET  /status    the cluster as JSON: settings, each replica, totals, this process's figures
    GET  /metrics   Prometheus text format (nmc.metrics)
    GET  /events    the cluster's recent events (nmc.events), ?after=N: those after the Nth
    GET  /history   the last five minutes of requests/s, errors/s, p50 and p99 (nmc.history)
    POST /scale     {"replicas": N}: grow or shrink the pool (answers when done)
    POST /rollout   {"image": "name"} (optional): zero-downtime rolling update (answers when done)

`nmc-server status | scale N | rollout` are clients of it (see `call`): over the socket found by
--name, or over HTTP when given --admin-port. The POST routes take only `Content-Type:
application/json` (else 415): a cross-site HTML form cannot send that, and a cross-site fetch
that sets it needs a CORS preflight, which this listener never grants.
"""

from __future__ import annotations

import http.client
import importlib.resources
import ipaddress
import json
import logging
import time
from typing import Callable, Protocol
from urllib.parse import parse_qs

from nmc import metrics, process_stats
from nmc.admin_auth import Guard
from nmc.admin_socket import UnixHTTPConnection, socket_path
from nmc.run_dir import run_dir
from nmc.config import Config
from nmc.counters import RelayCounters
from nmc.events import EventLog
from nmc.history import History
from nmc.errors import NmcError, UsageError
from nmc.pool import Pool
from nmc.replica import Replica, State

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
CHANGE_TIMEOUT = 3600  # seconds a client waits for a scale or rollout to finish

# The dashboard runs only its own inline script and talks only to this listener; no other site
# may frame it (its buttons change the cluster).
DASHBOARD_HEADERS = [
    ("Content-Type", "text/html; charset=utf-8"),
    ("Cache-Control", "no-store"),
    ("Content-Security-Policy", ("default-src 'none'; script-src 'unsafe-inline'; "
                                 "style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
                                 "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
]


class UnsupportedMediaType(UsageError):
    """A POST whose body is not declared as JSON (415)."""


class Control(Protocol):
    """What the admin interface reads of a cluster and asks of it (nmc.supervisor.Supervisor)."""

    pool: Pool
    image: str
    image_id: str

    def in_service(self) -> list[Replica]: ...

    def scale(self, count: int) -> str: ...

    def rollout(self, image: str | None = None, max_surge: int | None = None) -> str: ...


class AdminApp:
    """WSGI application of the admin listener. `counts(replica)`: the relay's counts of it,
    this process's own by default (under gunicorn, every worker's: nmc.workers.SharedCounts)."""

    def __init__(self, config: Config, control: Control, started: float | None = None,
                 counts: Callable[[Replica], RelayCounters] | None = None,
                 guard: Guard | None = None, events: EventLog | None = None,
                 history: History | None = None):
        self.config = config
        self.control = control
        self.guard = guard  # None: no token asked (the Unix socket: its mode is the credential)
        self.events = events or EventLog()  # (none heard: tests of the routes alone)
        self.history = history or History(control.pool)  # (never read: likewise)
        self.started = started or time.time()
        self.counts = counts or own_counts
        self._dashboard: bytes | None = None

    def __call__(self, environ, start_response):
        method, path = environ["REQUEST_METHOD"], environ.get("PATH_INFO", "/")
        if not _host_allowed(environ.get("HTTP_HOST", "")):
            # DNS rebinding: a web page whose own name now points at 127.0.0.1 reaches this
            # port with its name in Host; nmc is only ever addressed by an IP or "localhost"
            return _json(start_response, 403, {"error": "the admin interface answers only to an "
                                               "IP address or localhost in Host"})
        if self.guard is not None:
            if (method, path) == ("GET", "/") and self.guard.from_query(environ):
                # the dashboard's first visit: the token becomes a cookie, and leaves the URL
                start_response("303 See Other", [("Location", "/"), self.guard.cookie_header(),
                                                 ("Content-Length", "0"), ("Cache-Control", "no-store")])
                return [b""]
            if self.guard.refuses(environ):
                return _json(start_response, 401, {"error": self.guard.refusal()},
                             [("WWW-Authenticate", 'Bearer realm="nmc"')])
        routes = {
            ("GET", "/status"): self.status,
            ("GET", "/events"): self.recent_events,
            ("GET", "/history"): self.recent_history,
            ("POST", "/scale"): self.scale,
            ("POST", "/rollout"): self.rollout,
        }
        if (method, path) == ("GET", "/metrics"):
            body = metrics.exposition(self.control.pool, self.counts)
            start_response("200 OK", [("Content-Type", metrics.CONTENT_TYPE_LATEST),
                                      ("Content-Length", str(len(body)))])
            return [body]
        if path == "/":
            if method != "GET":
                return _json(start_response, 405, {"error": f"{method} not allowed on /"},
                             [("Allow", "GET")])
            body = self.dashboard()
            start_response("200 OK", [*DASHBOARD_HEADERS, ("Content-Length", str(len(body)))])
            return [body]
        handler = routes.get((method, path))
        if handler is None:
            allowed = [m for (m, p) in routes if p == path]
            if allowed:
                return _json(start_response, 405, {"error": f"{method} not allowed on {path}"},
                             [("Allow", ", ".join(allowed))])
            return _json(start_response, 404, {"error": f"no such admin path: {path}"})
        try:
            return _json(start_response, 200, handler(environ))
        except UnsupportedMediaType as e:
            return _json(start_response, 415, {"error": str(e)})
        except UsageError as e:
            return _json(start_response, 400, {"error": str(e)})
        except NmcError as e:
            return _json(start_response, 409, {"error": str(e)})

    # -- routes ------------------------------------------------------------------------------

    def dashboard(self) -> bytes:
        """The page, read from the package once (it is package data: see setup.py)."""
        if self._dashboard is None:
            self._dashboard = importlib.resources.files("nmc").joinpath("dashboard.html").read_bytes()
        return self._dashboard

    def status(self, environ) -> dict:
        replicas = [replica_status(r, self.counts(r)) for r in self.control.pool]
        return {
            "cluster": self.config.name,
            "image": self.control.image,
            "image_id": self.control.image_id,
            "listening": f"{self.config.bind}:{self.config.port}",
            "admin_url": (f"{'https' if self.config.certfile else 'http'}://"
                          f"{self.config.admin_bind}:{self.config.admin_port}/"
                          if self.config.admin_port else None),
            "uptime_seconds": round(time.time() - self.started, 1),
            "settings": {"replicas": len(self.control.in_service()),
                         "base_port": self.config.base_port,
                         "container_port": self.config.container_port,
                         "health_path": self.config.health_path,
                         "check_interval": self.config.check_interval},
            "replicas": replicas,
            "totals": {
                "replicas": len(replicas),
                "ready": sum(r["state"] == State.READY.value for r in replicas),
                "in_flight": sum(r["in_flight"] for r in replicas),
                "requests": sum(r["requests"] for r in replicas),
                "errors": sum(r["errors"] for r in replicas),
                "restarts": sum(r["restarts"] for r in replicas),
            },
            "events": self.events.latest(),
            "process": process_stats.snapshot(
                replica_ports={r.address.port for r in self.control.pool if r.address},
                skip_ports=(self.config.admin_port,)),
        }

    def recent_events(self, environ) -> dict:
        """GET /events?after=N: the events numbered after N (all those kept without it)."""
        after = parse_qs(environ.get("QUERY_STRING", "")).get("after", ["0"])[0]
        if not after.isdigit():
            raise UsageError(f"after must be an event's number, not {after!r}")
        return {"events": self.events.after(int(after)), "last": self.events.last}

    def recent_history(self, environ) -> dict:
        """GET /history: the last five minutes, one point per SAMPLE_EVERY seconds."""
        return {"every_seconds": self.history.every, "points": self.history.points()}

    def scale(self, environ) -> dict:
        count = _read_json(environ).get("replicas")
        if isinstance(count, bool) or not isinstance(count, int):
            raise UsageError('send {"replicas": N} with N a whole number')
        return {"message": self._said(f"scale to {count} replicas", self.control.scale, count)}

    def rollout(self, environ) -> dict:
        request = _read_json(environ)
        image, surge = request.get("image"), request.get("max_surge")
        if image is not None and (not isinstance(image, str) or not image.strip()):
            raise UsageError('"image" must be an image name')
        if surge is not None and (isinstance(surge, bool) or not isinstance(surge, int) or surge < 1):
            raise UsageError('"max_surge" must be a whole number from 1')
        return {"message": self._said(f"rollout of {image or self.control.image}",
                                      self.control.rollout, image, surge)}

    @staticmethod
    def _said(what: str, change: Callable[..., str], *args) -> str:
        """A change asked for through the admin interface, and its outcome, said in the log
        (and so among the cluster's events) as well as to whoever asked."""
        log.info("admin: %s asked for", what)
        try:
            outcome = change(*args)
        except NmcError as e:
            log.warning("admin: %s failed: %s", what, e)
            raise
        log.info("admin: %s", outcome)
        return outcome


def own_counts(replica: Replica) -> RelayCounters:
    return replica.relay


def replica_status(replica: Replica, relay: RelayCounters) -> dict:
    instance, address = replica.instance, replica.address
    return {
        "name": replica.name,
        "slot": replica.slot,
        "node": instance.node if instance else None,
        "address": f"{address.host}:{address.port}" if address else None,
        "port": replica.port,
        "container_id": replica.instance_id,
        "image_id": replica.instance.image_id if replica.instance else None,
        "state": replica.state.value,
        "engine_state": instance.engine_state if instance else None,
        "since_seconds": round(time.monotonic() - replica.since, 1),
        "in_flight": relay.in_flight,
        "requests": relay.requests,
        "errors": relay.errors,
        "restarts": replica.restarts,
        "last_exit_code": replica.last_exit_code,
        "last_exit_out_of_memory": replica.last_exit_out_of_memory,
        "oom_kills": replica.oom_kills,
        "latency_buckets": [list(bucket) for bucket in relay.cumulative_latency()],
    }


def _host_allowed(host: str) -> bool:
    """Host is an IP address (v4, or v6 in brackets) or localhost, with or without a port."""
    name = host.rsplit("]", 1)[0].lstrip("[") if host.startswith("[") else host.rsplit(":", 1)[0]
    if name.lower() in ("localhost", ""):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _read_json(environ) -> dict:
    media_type = environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType("send the body as JSON, with Content-Type: application/json")
    try:
        length = int(environ.get("CONTENT_LENGTH") or 0)
    except ValueError:
        raise UsageError("bad Content-Length") from None
    if length > MAX_BODY:
        raise UsageError("request body too large")
    body = environ["wsgi.input"].read(length) if length else b""
    if not body.strip():
        return {}
    try:
        data = json.loads(body)
    except ValueError:
        raise UsageError("the body must be JSON") from None
    if not isinstance(data, dict):
        raise UsageError("the body must be a JSON object")
    return data


def _json(start_response, status: int, data: dict, headers=()) -> list[bytes]:
    body = json.dumps(data, indent=1).encode() + b"\n"
    reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
              405: "Method Not Allowed", 409: "Conflict", 415: "Unsupported Media Type"}[status]
    start_response(f"{status} {reason}", [("Content-Type", "application/json"),
                                          ("Content-Length", str(len(body))),
                                          ("Cache-Control", "no-store"), *headers])
    return [body]


# -- the client side: nmc-server status | scale | rollout ----------------------------------------

class AdminUnreachable(NmcError):
    pass


CONNECT_TIMEOUT = 3  # seconds to reach the cluster (on this host: refused or taken at once)


def call(where: int | str, method: str, path: str, body: dict | None = None,
         token: str | None = None, timeout: float = CHANGE_TIMEOUT) -> dict:
    """One request to a running nmc-server: `where` is its --name (its Unix socket on this host,
    which needs no token) or an admin port; NmcError (one line) on any failure."""
    if isinstance(where, str):
        connection = UnixHTTPConnection(socket_path(where), timeout, CONNECT_TIMEOUT)
        what = f"the admin socket {socket_path(where)}"
    else:
        connection = http.client.HTTPConnection("127.0.0.1", where, timeout=timeout)
        what = f"admin port {where}"
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, payload, headers)
        answer = connection.getresponse()
        raw = answer.read()
    except (OSError, http.client.HTTPException) as e:
        raise AdminUnreachable(_unreachable(where, what, e)) from None
    finally:
        connection.close()
    try:
        data = json.loads(raw)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise AdminUnreachable(f"{what} answered {answer.status} without JSON: is it "
                               "nmc-server's?")
    if answer.status != 200:
        raise NmcError(data.get("error") or f"{what} answered {answer.status}")
    return data


def _unreachable(where: int | str, what: str, error: Exception) -> str:
    """Why a subcommand could not talk to its cluster, in one line."""
    if isinstance(where, str) and isinstance(error, (FileNotFoundError, ConnectionRefusedError)):
        found = "no socket at" if isinstance(error, FileNotFoundError) else "nothing answers on"
        return (f"no nmc-server named {where} runs here ({found} {socket_path(where)}); "
                "started with another --name?")
    if isinstance(where, int) and isinstance(error, ConnectionRefusedError):
        return (f"no nmc-server answers on admin port {where} (is it running? started with "
                "another --admin-port?)")
    if isinstance(error, PermissionError):
        return f"{what}: no permission to use it (it is another user's)"
    if isinstance(error, TimeoutError):
        return f"{what}: no answer in time"
    if isinstance(error, http.client.RemoteDisconnected):
        return f"{what}: the connection closed before an answer (did nmc-server stop?)"
    return f"{what}: {getattr(error, 'strerror', None) or error}"


LIST_TIMEOUT = 5  # seconds `nmc-server ls` waits for each cluster's answer


def list_clusters() -> list[dict]:
    """`nmc-server ls`: the clusters running on this host, found by their sockets in the run
    directory, each with its /status (or, for one that does not answer in time, its error)."""
    try:
        names = sorted(path.name[:-len(".sock")] for path in run_dir().glob("*.sock"))
    except OSError:
        names = []
    clusters = []
    for name in names:
        try:
            clusters.append(call(name, "GET", "/status", timeout=LIST_TIMEOUT))
        except AdminUnreachable as e:
            if "no nmc-server named" not in str(e):  # (a stale socket: its nmc is gone)
                clusters.append({"cluster": name, "error": str(e)})
        except NmcError as e:
            clusters.append({"cluster": name, "error": str(e)})
    return clusters


def format_clusters(clusters: list[dict]) -> str:
    """The clusters as a table, like `docker ps` or `pm2 ls`."""
    rows = [("NAME", "ADDRESS", "READY", "IMAGE", "UPTIME", "ADMIN")]
    for cluster in clusters:
        if "error" in cluster:
            rows.append((cluster["cluster"], "-", "-", "-", "-", f"({cluster['error']})"))
            continue
        rows.append((cluster["cluster"], cluster["listening"],
                     f"{cluster['totals']['ready']}/{cluster['settings']['replicas']}",
                     cluster["image"], _duration(cluster["uptime_seconds"]),
                     cluster.get("admin_url") or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in rows)


def format_status(status: dict) -> str:
    """The status as a table, like `pm2 list` or `docker ps`; on several machines (a swarm) each
    replica's node, address, task and the engine's own word for its state too."""
    spread = any(r.get("node") for r in status["replicas"])
    header = ("REPLICA", *(("NODE", "ADDRESS") if spread else ("PORT",)), "STATE",
              *(("SWARM STATE",) if spread else ()), "SINCE", "TASK" if spread else "CONTAINER",
              "IMAGE", "IN-FLIGHT", "REQUESTS", "ERRORS", "RESTARTS", "LAST EXIT")
    rows = [header]
    for r in status["replicas"]:
        where = (r["node"] or "-", r["address"] or "-") if spread else (str(r["port"]),)
        rows.append((r["name"], *where, r["state"], *((r["engine_state"] or "-",) if spread else ()),
                     _duration(r["since_seconds"]), (r["container_id"] or "-")[:12],
                     (r["image_id"] or "-").split(":", 1)[-1][:12],
                     str(r["in_flight"]), str(r["requests"]), str(r["errors"]), str(r["restarts"]),
                     _last_exit(r)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in rows]
    totals = status["totals"]
    lines.append(f"cluster {status['cluster']}: {totals['ready']}/{totals['replicas']} ready, "
                 f"image {status['image']}, {totals['requests']} requests, "
                 f"{totals['errors']} errors, {totals['restarts']} restarts")
    if status.get("process"):
        lines.append(format_process(status["process"]))
    return "\n".join(lines)


def _last_exit(replica: dict) -> str:
    out_of_memory = replica.get("last_exit_out_of_memory")  # (an older nmc's status has none)
    if replica["last_exit_code"] is None and not out_of_memory:
        return "-"
    code = "-" if replica["last_exit_code"] is None else str(replica["last_exit_code"])
    return f"{code} (out of memory)" if out_of_memory else code


def format_process(process: dict) -> str:
    """/status's process section in one line."""
    def by_state(counts: dict) -> str:
        return " + ".join(f"{n} {state}" for state, n in counts.items()) or "none"
    return (f"process {process['pid']}: RSS {process['rss_bytes'] / 2**20:.1f} MiB, "
            f"{process['open_fds']} fds, {process['greenlets']} greenlets, clients "
            f"{by_state(process['client_connections'])}, replicas "
            f"{by_state(process['replica_connections'])}, up {_duration(process['uptime_seconds'])}")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
