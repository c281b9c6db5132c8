"""Replicas, their live state, and the round-robin choice among the ready ones.

A replica's life is a small state machine; every transition goes through
`Replica.change_state`, which logs it, so the log shows changes of state and never steady state.
"""

from __future__ import annotations

import bisect
import enum
import logging
import time
from dataclasses import dataclass, field

from nmc.config import REPLICA_HOST

log = logging.getLogger(__name__)


class State(enum.Enum):
    STARTING = "starting"  # container being created, or not yet answering its health URL
    READY = "ready"        # in the rotation
    DOWN = "down"          # failed a check or a request: out of the rotation, to be replaced
    DRAINING = "draining"  # out of the rotation on purpose (scale down, rollout), finishing requests
    STOPPING = "stopping"  # being removed on purpose
    STOPPED = "stopped"    # removed, or left running for the next start (--keep)


# Upper bounds (seconds) of the request latency histogram's buckets (Prometheus' defaults).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass(eq=False)
class ReplicaStats:
    """What the relay counted for one replica: plain numbers, read by /status and /metrics."""

    by_class: dict = field(default_factory=lambda: {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0,
                                                    "5xx": 0})
    latency_counts: list = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    connect_errors: int = 0
    bytes_in: int = 0    # request bodies sent to the replica
    bytes_out: int = 0   # answer bodies received from it
    checks: dict = field(default_factory=lambda: {"pass": 0, "fail": 0})

    def record(self, status: int, seconds: float) -> None:
        """One answer relayed: its status class and its time to the last byte."""
        code = f"{status // 100}xx"
        self.by_class[code] = self.by_class.get(code, 0) + 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


@dataclass(eq=False)
class Replica:
    """One slot of the cluster: a host port, and the container that currently serves it."""

    name: str
    port: int
    host: str = REPLICA_HOST
    container_id: str | None = None
    image_id: str | None = None     # the image its container runs
    state: State = State.STARTING
    since: float = field(default_factory=time.monotonic)
    ready_at: float | None = None   # when it last joined the rotation
    restarts: int = 0
    quick_failures: int = 0         # failures in a row, each soon after joining (a crash loop)
    stopped_from_outside: bool = False  # its container was killed or paused by someone: no crash
    check_fails: int = 0            # health checks failed in a row
    check_passes: int = 0           # health checks passed in a row
    in_flight: int = 0              # requests relayed to it that have not finished
    requests: int = 0               # requests relayed to it
    errors: int = 0                 # of those, failed to connect or broke (502/504)
    last_exit_code: int | None = None  # of its last container that exited
    stats: ReplicaStats = field(default_factory=ReplicaStats)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def uptime(self) -> float:
        """Seconds since it last joined the rotation (0 if it never did)."""
        return time.monotonic() - self.ready_at if self.ready_at is not None else 0.0

    @property
    def short_id(self) -> str:
        return (self.container_id or "-")[:12]

    def change_state(self, new: State, reason: str = "") -> bool:
        """Move to `new`, logging the transition; False (and silence) when already there."""
        if new is self.state:
            return False
        old, self.state, self.since = self.state, new, time.monotonic()
        if new is State.READY:
            self.ready_at = self.since
        if new is State.STARTING:
            self.check_fails = self.check_passes = 0
            self.stopped_from_outside = False
        level = logging.WARNING if new is State.DOWN else logging.INFO
        log.log(level, "replica %s (port %d, container %s): %s -> %s%s", self.name, self.port,
                self.short_id, old.value, new.value, f" ({reason})" if reason else "")
        return True

    def mirror(self, state: State, container_id: str | None) -> None:
        """Take a state that another process decided and logged (see nmc.workers): no log."""
        if state is not self.state:
            self.state, self.since = state, time.monotonic()
            if state is State.READY:
                self.ready_at = self.since
        self.container_id = container_id


class Pool:
    """The cluster's replicas in port order, and the round-robin cursor over them."""

    def __init__(self, replicas: list[Replica]):
        self.replicas = list(replicas)
        self._cursor = 0

    @classmethod
    def for_config(cls, config) -> "Pool":
        """One replica per host port of the configuration, none started yet."""
        return cls([Replica(config.replica_name(port), port) for port in config.replica_ports])

    def __iter__(self):
        return iter(list(self.replicas))  # a snapshot: scaling may change the list meanwhile

    def add(self, replica: Replica) -> None:
        """A new replica, in port order (it joins the rotation once READY)."""
        self.replicas.append(replica)
        self.replicas.sort(key=lambda r: r.port)

    def remove(self, replica: Replica) -> None:
        if replica in self.replicas:
            self.replicas.remove(replica)

    def free_ports(self, base_port: int, count: int) -> list[int]:
        """The `count` lowest ports from base_port on that no replica of the pool uses."""
        used = {r.port for r in self.replicas}
        ports, port = [], base_port
        while len(ports) < count:
            if port not in used:
                ports.append(port)
            port += 1
        return ports

    def __len__(self) -> int:
        return len(self.replicas)

    def choose(self, skip=(), balance: str = "roundrobin", preferred: str | None = None
               ) -> Replica | None:
        """The replica for the next request, among the ready ones not in `skip`: `preferred`
        (a replica's name, from a sticky cookie) while it is ready, else by the `balance` policy:
        "roundrobin" (each in turn) or "least-conn" (the fewest requests in flight; ties in
        turn). None when no replica is ready."""
        if preferred is not None:
            for replica in self.replicas:
                if replica.name == preferred and replica.state is State.READY and replica not in skip:
                    return replica
        if balance == "least-conn":
            return self._least_busy(skip)
        return self.next_ready(skip)

    def _least_busy(self, skip) -> Replica | None:
        count = len(self.replicas)
        best, best_index = None, 0
        for step in range(count):  # from the cursor on: equal loads are taken in turn
            index = (self._cursor + step) % count
            replica = self.replicas[index]
            if replica.state is State.READY and replica not in skip and \
                    (best is None or replica.in_flight < best.in_flight):
                best, best_index = replica, index
        if best is not None:
            self._cursor = best_index + 1
        return best

    def next_ready(self, skip: tuple[Replica, ...] = ()) -> Replica | None:
        """The next ready replica after the last one chosen, skipping `skip`; None if none is."""
        count = len(self.replicas)
        if count == 0:
            return None
        for step in range(count):
            index = (self._cursor + step) % count
            replica = self.replicas[index]
            if replica.state is State.READY and replica not in skip:
                self._cursor = index + 1
                return replica
        return None
