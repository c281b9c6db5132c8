"""Keeps the desired replicas alive: the one place that starts, replaces and removes them.

A thin composer of three jobs, each a module of its own: the lifecycle (start, wait until
ready, remove: nmc.lifecycle), healing (events, checks, reports, replacement with backoff:
nmc.healing) and changes (scale, rollout, rollback: nmc.changes). All of it runs in greenlets:
replicas start in parallel, each check runs on its own, and each replacement too.
"""

from __future__ import annotations

import logging
import time

import gevent

from nmc.backend import Backend, EngineError
from nmc.changes import ChangeFailed, Changes
from nmc.config import Config
from nmc.errors import capture
from nmc.healing import Healing
from nmc.health import HealthChecker, Thresholds
from nmc.lifecycle import Lifecycle, ReplicaStartFailed
from nmc.pool import Pool
from nmc.replica import Replica, State

__all__ = ["ChangeFailed", "ReplicaStartFailed", "Supervisor"]

log = logging.getLogger(__name__)

TASKS_STOP_WAIT = 40.0  # seconds stop() waits for tasks to notice it (an engine call takes <= 30)


def thresholds_of(config: Config) -> Thresholds:
    return Thresholds(config.unhealthy_after, config.healthy_after, config.replace_after)


class Supervisor:
    """Owns the replicas' instances on the backend, for one cluster."""

    def __init__(self, config: Config, backend: Backend, pool: Pool | None = None,
                 checker: HealthChecker | None = None):
        self.config = config
        self.backend = backend
        self.pool = pool if pool is not None else Pool()
        self.lifecycle = Lifecycle(config, backend,
                                   checker or HealthChecker(config.health_path, config.check_timeout))
        self.healing = Healing(self.lifecycle, self.pool, thresholds_of(config))
        self.changes = Changes(self.lifecycle, self.pool)
        self._watchers: list[gevent.Greenlet] = []
        if not len(self.pool):
            for slot in range(backend.first_slot, backend.first_slot + config.replicas):
                self.pool.add(self.lifecycle.new_replica(slot))

    # what the admin interface reads and asks for (nmc.admin.Control)

    @property
    def stopping(self) -> bool:
        return self.lifecycle.stopping

    @property
    def image(self) -> str:
        return self.lifecycle.image

    @property
    def image_id(self) -> str:
        return self.lifecycle.image_id

    def in_service(self) -> list[Replica]:
        return self.changes.in_service()

    def scale(self, count: int) -> str:
        return self.changes.scale(count)

    def rollout(self, image: str | None = None, max_surge: int | None = None) -> str:
        return self.changes.rollout(image, max_surge)

    def report_failure(self, replica: Replica, reason: str) -> None:
        self.healing.report_failure(replica, reason)

    # -- start, watch, stop ------------------------------------------------------------------

    def start(self) -> None:
        """Adopt matching leftovers, start the missing replicas in parallel, wait until all answer.

        On failure the replicas started so far stay in the pool; the caller stops them.
        """
        lifecycle = self.lifecycle
        lifecycle.image_id = self.backend.image_id(lifecycle.image)
        self.backend.prepare(len(self.pool), lifecycle.image_id)
        lifecycle.adopt_or_remove_leftovers(self.pool)
        missing = [r for r in self.pool if r.instance is None]
        self.backend.check_startable([r.slot for r in missing])
        for replica in missing:  # a new leader's replicas, mirrored READY, whose instance is gone
            if replica.state is State.READY:
                replica.change_state(State.DOWN, f"no running {self.backend.noun} to adopt")
        # in the task group, so that stop() also ends starts still under way
        starts = [lifecycle.tasks.spawn(capture, lifecycle.start, r) for r in missing]
        starts += [lifecycle.tasks.spawn(capture, lifecycle.wait_ready, r)
                   for r in self.pool if r not in missing]
        gevent.joinall(starts)
        for greenlet in starts:
            if greenlet.value is not None:
                raise greenlet.value

    def watch(self) -> None:
        """Start the periodic checks, and following the engine's events, in the background.
        The events are followed from now, not from when the stream opens (once this greenlet
        waits, after "serving on"): a replica killed in between is heard of too."""
        self._watchers = [gevent.spawn(self.healing.monitor),
                          gevent.spawn(self.healing.follow_events, time.time())]

    def stop(self, remove: bool = True, stop_timeout: float = 5,
             reason: str = "left running (--keep)") -> None:
        """Stop checking and starting; remove the cluster's instances in parallel (unless not
        `remove`: then `reason` says why they stay), including any whose creation was cut short
        before its id was known."""
        lifecycle = self.lifecycle
        lifecycle.stopped.set()
        self.healing.close_events()
        for watcher in self._watchers:
            watcher.kill()  # they only wait on the event, or on the engine's events
        for task in list(lifecycle.tasks):
            if task not in lifecycle.creating:  # checks, waits and backoffs: safe to cut short
                task.kill(block=False)
        lifecycle.tasks.join(timeout=TASKS_STOP_WAIT)
        lifecycle.tasks.kill()
        if not remove:
            for replica in self.pool:
                if replica.instance:
                    replica.change_state(State.STOPPED, reason)
            return
        try:  # first: an engine that restarts instances by itself must not meanwhile
            self.backend.teardown()
        except EngineError as e:
            log.error("could not remove the cluster from the engine: %s", e)
        gevent.joinall([gevent.spawn(lifecycle.remove, r, stop_timeout)
                        for r in self.pool if r.instance])
        lifecycle.remove_unrecorded()
        lifecycle.checker.close()
