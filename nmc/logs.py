"""`nmc-server logs [-f]`: the replicas' logs merged, each line prefixed with its replica.

Like `docker compose logs`: without -f, every line logged so far, in time order; with -f, the
same and then new lines as they come, including those of replicas started later (a
replacement), until Ctrl-C. The cluster is found by its label (`--name`), so this works for a
cluster run by ./nmc_server.py and by gunicorn alike. On a swarm manager that has the cluster's
service (--swarm), the lines come through the manager from every node, named by slot.
"""

from __future__ import annotations

import sys
import time

import gevent

from nmc.containers import ContainerInfo, Engine, EngineError
from nmc.errors import NmcError
from nmc.swarm import ServiceLogs

COLORS = ("36", "33", "32", "35", "34", "31")  # cyan, yellow, green, magenta, blue, red


class NoReplicas(NmcError):
    pass


class LogPrinter:
    """Writes `name | line`, names padded to one width, coloured per replica on a terminal."""

    def __init__(self, out, names: list[str]):
        self.out = out
        self.width = max((len(n) for n in names), default=0)
        self.color = out.isatty()
        self._colors: dict[str, str] = {}

    def line(self, name: str, text: str) -> None:
        prefix = f"{name:<{self.width}} |"
        if self.color:
            code = self._colors.setdefault(name, COLORS[len(self._colors) % len(COLORS)])
            prefix = f"\x1b[{code}m{prefix}\x1b[0m"
        self.out.write(f"{prefix} {text}\n")
        self.out.flush()


def show_logs(cluster: str, follow: bool, out=sys.stdout) -> int:
    engine = Engine.connect()
    service = ServiceLogs.of_cluster(engine, cluster)
    if service is not None:
        return _show_service_logs(service, follow, out)
    replicas = sorted(engine.list_cluster(cluster), key=lambda info: info.name)
    if not replicas and not follow:
        raise NoReplicas(f"no replicas of cluster {cluster!r} on this Docker engine "
                         "(is it running? is --name right?)")
    printer = LogPrinter(out, [info.name for info in replicas] or [cluster + "-00000"])
    started = time.time()
    history = [(stamp, info.name, text) for info in replicas
               for stamp, text in engine.logs_until(info.id, started)]
    for _stamp, name, text in sorted(history):  # RFC 3339 stamps in UTC sort as text
        printer.line(name, text)
    if follow:
        _follow(engine, cluster, replicas, printer, since=started)
    return 0


def follow_live(engine: Engine, cluster: str, since: float, out=sys.stdout) -> None:
    """`--logs`: the replicas' lines from `since` on, as they come, until killed (a greenlet of
    the server)."""
    service = ServiceLogs.of_cluster(engine, cluster)
    if service is not None:
        printer = LogPrinter(out, service.names() or [cluster + ".00"])
        follow = lambda: _print_lines(service.lines(follow=True, since=since), printer)  # noqa: E731
    else:
        replicas = sorted(engine.list_cluster(cluster), key=lambda info: info.name)
        printer = LogPrinter(out, [info.name for info in replicas] or [cluster + "-00000"])
        follow = lambda: _follow(engine, cluster, replicas, printer, since=since)  # noqa: E731
    try:
        follow()
    except EngineError as e:
        printer.line(cluster, f"(replica logs stop: {e})")


def _show_service_logs(service: ServiceLogs, follow: bool, out) -> int:
    """A swarm service's: every task's lines so far in time order, then (-f) new ones as they
    come, through the manager."""
    names = service.names()
    if not names and not follow:
        raise NoReplicas(f"no tasks of swarm service {service.name!r} yet")
    printer = LogPrinter(out, names or [service.name + ".00"])
    started = time.time()
    # the engine's stamps are RFC 3339 with nine digits (RFC3339NanoFixed): they sort as text
    until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(started)) + f"{started % 1:.9f}"[1:] + "Z"
    history = sorted(line for line in service.lines() if line.stamp < until)
    for line in history:
        printer.line(line.replica, line.text)
    if follow:
        _print_lines(service.lines(follow=True, since=started), printer)
    return 0


def _print_lines(lines, printer: LogPrinter) -> None:
    for line in lines:
        printer.line(line.replica, line.text)


def _follow(engine: Engine, cluster: str, replicas: list[ContainerInfo], printer: LogPrinter,
            since: float) -> None:
    """New lines of every replica, and of each one that starts later, until interrupted."""
    following: set[str] = set()

    def attach(container_id: str, name: str, from_time: float | None) -> None:
        if container_id in following:
            return
        following.add(container_id)
        gevent.spawn(_relay_lines, engine, container_id, name, from_time, printer)

    events = engine.events(cluster)  # opened before attaching: no start is missed
    for info in replicas:  # an exited one too: its last lines may be newer than `since`
        attach(info.id, info.name, since)
    for event in events:
        if event.action == "start":
            attach(event.container_id, event.name, None)  # all its lines: it is new


def _relay_lines(engine: Engine, container_id: str, name: str, since: float | None,
                 printer: LogPrinter) -> None:
    try:
        for text in engine.follow_logs(container_id, since):
            printer.line(name, text)
    except EngineError as e:
        printer.line(name, f"(logs unavailable: {e})")
