"""A replica's lifecycle on the backend: start an instance, wait until it answers, remove it;
and, when nmc starts, adopt what a previous run left behind.

It holds what the supervisor's jobs share: the backend, the health checker, the image that new
replicas run, the greenlets under way, and the event that says nmc is stopping.
"""

from __future__ import annotations

import logging
import time

import gevent
import gevent.event
import gevent.pool

from nmc.backend import Backend, EngineError
from nmc.config import Config
from nmc.errors import NmcError
from nmc.health import HealthChecker
from nmc.pool import Pool
from nmc.replica import Replica, State

log = logging.getLogger(__name__)

# Seconds between health probes while a replica starts: often at first (a Node.js site answers
# some 0.1-0.5 s after its container starts, and every poll's remainder adds to nmc's start),
# then in proportion to the time waited so far (5 %), up to READY_POLL: a slow app is not
# probed fifty times a second for its whole start.
FIRST_READY_POLL = 0.02
READY_POLL_SHARE = 0.05
READY_POLL = 0.1
INSPECT_POLL = 0.5   # seconds between looks at a starting instance (an exited one never answers)
LOG_LINES = 5        # lines of an instance's output quoted when it fails
DRAIN_POLL = 0.05    # seconds between looks at a draining replica's requests in flight


def ready_poll(waited: float) -> float:
    """Seconds until the next probe of a replica that has not answered for `waited` seconds."""
    return min(READY_POLL, max(FIRST_READY_POLL, waited * READY_POLL_SHARE))


class ReplicaStartFailed(NmcError):
    """A replica exited, or never answered its health URL, while starting."""


class Lifecycle:
    """Starts, waits for and removes the instances that serve replicas."""

    def __init__(self, config: Config, backend: Backend, checker: HealthChecker):
        self.config = config
        self.backend = backend
        self.checker = checker
        self.image = config.image  # what new replicas run; a rollout changes it
        self.image_id = ""
        self.tasks = gevent.pool.Group()  # starts, checks and replacements under way
        # Set when nmc stops. A task creating an instance is never killed mid-call (the engine
        # would finish creating it unseen): it is in `creating`, and looks at the event when done.
        self.stopped = gevent.event.Event()
        self.creating: set[gevent.Greenlet] = set()

    @property
    def stopping(self) -> bool:
        return self.stopped.is_set()

    def new_replica(self, slot: int) -> Replica:
        return Replica(self.backend.slot_name(slot), slot, noun=self.backend.noun)

    # -- start -------------------------------------------------------------------------------

    def adopt_or_remove_leftovers(self, pool: Pool) -> None:
        """Instances a previous run left: adopted into their replica's slot when they match
        this cluster's settings and image, else removed."""
        by_name = {r.name: r for r in pool}
        for found in self.backend.list_instances(self.image_id):
            replica = by_name.get(found.name)
            if replica is not None and replica.instance is None and found.adoptable:
                replica.serve_with(found)
                log.info("adopting running %s %s (%s)", self.backend.noun, found.name, found.short_id)
            else:
                log.info("removing leftover %s %s (%s, %s): it does not match this cluster's "
                         "settings", self.backend.noun, found.name, found.short_id,
                         found.problem or "running")
                self.backend.remove(found.id, grace=2)

    def start(self, replica: Replica) -> None:
        """Run a fresh instance for `replica` and wait until it answers; READY on success."""
        replica.change_state(State.STARTING)
        if self.stopping:
            raise ReplicaStartFailed(f"replica {replica.name}: start cancelled, nmc is stopping")
        task = gevent.getcurrent()
        self.creating.add(task)
        try:
            replica.serve_with(self.backend.start(replica.slot, self.image_id))
        finally:
            self.creating.discard(task)
        self.wait_ready(replica)

    def wait_ready(self, replica: Replica) -> None:
        started = time.monotonic()
        deadline = started + self.config.start_timeout
        # the first look at the instance is what the engine said as it started it (or listed it):
        # an inspect at once would only delay the next probe
        problem = replica.instance.problem if replica.instance else f"{self.backend.noun} is gone"
        next_inspect = started + INSPECT_POLL
        while True:
            if self.stopping:
                raise ReplicaStartFailed(f"replica {replica.name}: start cancelled, nmc is stopping")
            result = self.checker.check(replica.url)
            if result.ok:
                replica.change_state(State.READY, f"answered {self.config.health_path} "
                                                  f"after {time.monotonic() - started:.2f}s")
                return
            now = time.monotonic()
            if now >= next_inspect:
                next_inspect = now + INSPECT_POLL
                problem = self.problem(replica)
            if problem:  # an exited instance never answers: say so at once
                raise ReplicaStartFailed(f"replica {replica.name}: {problem} while starting"
                                         + self.last_logs(replica))
            if now >= deadline:
                raise ReplicaStartFailed(
                    f"replica {replica.name} did not answer {self.config.health_path} within "
                    f"{self.config.start_timeout:g}s (last try: {result.reason})" + self.last_logs(replica))
            self.stopped.wait(ready_poll(now - started))

    def problem(self, replica: Replica) -> str | None:
        """Why the replica's instance cannot answer (gone, exited...), or None. Raises
        EngineError when the engine cannot say."""
        found = self.backend.inspect(replica.instance_id) if replica.instance else None
        if found is None:
            return f"{self.backend.noun} is gone"
        return found.problem

    def last_logs(self, replica: Replica) -> str:
        try:
            lines = self.backend.tail_logs(replica.instance_id, LOG_LINES) if replica.instance else []
        except EngineError:
            lines = []
        lines = [line.strip() for line in lines if line.strip()]
        return "; its last log lines: " + " | ".join(lines) if lines else "; it logged nothing"

    # -- remove ------------------------------------------------------------------------------

    def drain(self, replica: Replica, reason: str) -> None:
        """Out of the rotation on purpose; returns once its requests are done (or after
        --graceful-timeout)."""
        replica.change_state(State.DRAINING, reason)
        deadline = time.monotonic() + self.config.graceful_timeout
        while replica.relay.in_flight > 0 and time.monotonic() < deadline:
            gevent.sleep(DRAIN_POLL)

    def remove(self, replica: Replica, grace: float) -> None:
        """Its instance stopped (a polite signal, then a kill after `grace` s) and removed."""
        replica.change_state(State.STOPPING)
        try:
            self.backend.remove(replica.instance_id, grace=grace)
        except EngineError as e:
            log.error("could not remove %s %s of replica %s: %s", self.backend.noun,
                      replica.short_id, replica.name, e)
            return
        replica.change_state(State.STOPPED, f"{self.backend.noun} removed")
        replica.serve_with(None)

    def remove_unrecorded(self) -> None:
        """Instances of this cluster that no replica knows of: a start was interrupted between
        the engine creating the instance and nmc learning its id."""
        try:
            strays = self.backend.list_instances(self.image_id)
        except EngineError as e:
            log.error("could not list the cluster's %ss to clean up: %s", self.backend.noun, e)
            return
        for found in strays:
            log.info("removing %s %s (%s): its start was interrupted", self.backend.noun,
                     found.name, found.short_id)
            try:
                self.backend.remove(found.id, grace=0)
            except EngineError as e:
                log.error("could not remove %s %s: %s", self.backend.noun, found.name, e)
