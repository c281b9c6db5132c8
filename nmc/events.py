"""The cluster's recent events: what nmc says of its cluster in its log (each state change with its
reason, an exit with its code or as out of memory, each step of a scale or a rollout and a
rollback, the engine going away and coming back), without the per-request lines, kept in memory:
the last MAX_EVENTS, numbered.

`/status` carries the latest, `/events?after=N` those after the Nth; the dashboard draws them as
a timeline and `nmc-server events [-f]` prints them. The log is the one source of both, so they
never tell different stories.
"""

from __future__ import annotations

import collections
import logging
import re

MAX_EVENTS = 500     # kept in memory
STATUS_EVENTS = 100  # the latest ones in /status
# the loggers whose lines are events of the cluster, and the kind of each
KINDS = {
    "nmc.replica": "state",
    "nmc.healing": "healing",
    "nmc.changes": "change",
    "nmc.lifecycle": "start",
    "nmc.supervisor": "cluster",
    "nmc.swarm": "swarm",
    "nmc.server": "server",
    "nmc.watch": "watch",
    "nmc.workers": "workers",
    "nmc.admin": "change",
}
REPLICA = re.compile(r"^replica (\S+) ")


class EventLog(logging.Handler):
    """A logging handler that keeps the cluster's events (see the module's docstring)."""

    def __init__(self, limit: int = MAX_EVENTS):
        super().__init__(logging.INFO)
        self.events: collections.deque[dict] = collections.deque(maxlen=limit)
        self.last = 0  # the number of the latest event

    def emit(self, record: logging.LogRecord) -> None:
        kind = KINDS.get(record.name)
        if kind is None:
            return
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad log call loses its event, never the caller
            return
        found = REPLICA.match(message)
        self.last += 1
        self.events.append({"seq": self.last, "time": round(record.created, 3),
                            "level": record.levelname.lower(), "kind": kind,
                            "replica": found.group(1) if found else None, "message": message})

    def after(self, seq: int) -> list[dict]:
        """The events numbered after `seq`, oldest first (those still kept)."""
        return [event for event in list(self.events) if event["seq"] > seq]

    def latest(self, count: int = STATUS_EVENTS) -> list[dict]:
        return list(self.events)[-count:]

    def follow(self, logger: logging.Logger | None = None) -> "EventLog":
        """Hear nmc's log lines from now on (once)."""
        logger = logger or logging.getLogger("nmc")
        if self not in logger.handlers:
            logger.addHandler(self)
        return self
