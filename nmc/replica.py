"""A replica: a stable slot of the cluster, the instance that serves it now, and its life as a
small state machine (as supervisord's process.py has it).

Every state a replica can be in is a member of `State`; every change goes through
`Replica.change_state`, which allows only the transitions in TRANSITIONS and logs each change
once, so the log shows changes of state and never steady state.
"""

from __future__ import annotations

import enum
import logging
import time
from dataclasses import dataclass, field

from nmc.backend import Address, Instance
from nmc.counters import RelayCounters
from nmc.health import CheckCounts

log = logging.getLogger(__name__)


class State(enum.Enum):
    STARTING = "starting"    # an instance being created, or not yet answering its health URL
    READY = "ready"          # in the rotation
    DOWN = "down"            # failed checks, a request or an engine event: out of the rotation;
                             # back in on passing checks, else replaced
    REPLACING = "replacing"  # its instance failed for good: it is removed, a new one follows
    BACKOFF = "backoff"      # waiting before its next start: a crash loop, or a failed start
    DRAINING = "draining"    # out of the rotation on purpose (scale down, rollout), finishing requests
    STOPPING = "stopping"    # its instance is being removed on purpose
    STOPPED = "stopped"      # removed, or left running for the next start (--keep)


_ENDING = {State.DRAINING, State.STOPPING, State.STOPPED}
# Where each state may go. Any state may end (nmc stops, or a change removes the replica).
TRANSITIONS: dict[State, set[State]] = {
    State.STARTING: {State.READY, State.BACKOFF, State.DOWN} | _ENDING,
    State.READY: {State.DOWN, State.REPLACING} | _ENDING,
    State.DOWN: {State.READY, State.REPLACING, State.STARTING} | _ENDING,
    State.REPLACING: {State.STARTING, State.BACKOFF} | _ENDING,
    State.BACKOFF: {State.STARTING} | _ENDING,
    State.DRAINING: {State.STOPPING, State.STOPPED},
    State.STOPPING: {State.STOPPED},
    State.STOPPED: set(),
}


class TransitionError(RuntimeError):
    """A change of state that the state machine does not allow: a bug in nmc."""


@dataclass(eq=False)
class Replica:
    """One slot of the cluster: a stable name, and the instance that currently serves it."""

    name: str
    slot: int                          # the backend's number for it (on one host: the host port)
    instance: Instance | None = None   # what serves it now (a container, a task), if anything
    address: Address | None = None     # where it answers (or last answered)
    state: State = State.STARTING
    since: float = field(default_factory=time.monotonic)
    ready_at: float | None = None      # when it last joined the rotation
    restarts: int = 0
    quick_crashes: int = 0             # crashes in a row, each soon after joining: the backoff's count
    last_exit_code: int | None = None  # of its last instance that exited
    last_exit_out_of_memory: bool = False  # that instance was killed for want of memory
    oom_kills: int = 0                 # its instances killed for want of memory
    health: CheckCounts = field(default_factory=CheckCounts)  # written by the health checks
    relay: RelayCounters = field(default_factory=RelayCounters)  # written by the proxy
    noun: str = "container"            # what its instances are called in log lines

    @property
    def url(self) -> str:
        return self.address.url if self.address else ""

    @property
    def port(self) -> int | None:
        return self.address.port if self.address else None

    @property
    def instance_id(self) -> str | None:
        return self.instance.id if self.instance else None

    @property
    def short_id(self) -> str:
        return self.instance.short_id if self.instance else "-"

    def uptime(self) -> float:
        """Seconds since it last joined the rotation (0 if it never did)."""
        return time.monotonic() - self.ready_at if self.ready_at is not None else 0.0

    def serve_with(self, instance: Instance | None) -> None:
        """`instance` serves this slot now (None: none does); its address becomes the replica's."""
        self.instance = instance
        if instance is not None and instance.address is not None:
            self.address = instance.address

    def change_state(self, new: State, reason: str = "", *, mirrored: bool = False) -> bool:
        """Move to `new`, logging the transition; False (and silence) when already there.
        `mirrored`: a state another process decided and logged (gunicorn's followers take the
        leader's word, which may skip steps): neither checked nor logged again."""
        if new is self.state:
            return False
        if not mirrored and new not in TRANSITIONS[self.state]:
            raise TransitionError(f"replica {self.name}: no way from {self.state.value} to {new.value}")
        old, self.state, self.since = self.state, new, time.monotonic()
        if new is State.READY:
            self.ready_at = self.since
        if new is State.STARTING:
            self.health = CheckCounts(total=self.health.total)
        if not mirrored:
            level = logging.WARNING if new is State.DOWN else logging.INFO
            node = self.instance.node if self.instance else None  # several machines (a swarm)
            log.log(level, "replica %s (%sport %s, %s %s): %s -> %s%s", self.name,
                    f"node {node}, " if node else "", self.port or "-", self.noun, self.short_id,
                    old.value, new.value, f" ({reason})" if reason else "")
        return True
