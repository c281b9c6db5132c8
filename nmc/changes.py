"""Changes while the cluster serves: scale up or down, roll out an image, roll back.

New replicas join the rotation only once they answer; leaving ones leave the rotation first
(DRAINING) and finish their requests before their instance is removed, so no request fails.
"""

from __future__ import annotations

import logging
import math
import time

import gevent
import gevent.lock

from nmc.config import MAX_REPLICAS
from nmc.errors import NmcError, UsageError, capture
from nmc.lifecycle import Lifecycle
from nmc.pool import Pool
from nmc.replica import Replica, State

log = logging.getLogger(__name__)

LEAVING = (State.DRAINING, State.STOPPING, State.STOPPED)
ENGINE_POLL = 0.05  # seconds between looks at an engine's own scale-down
# A rollout leaves these alone: their replacement starts on the new image anyway.
BEING_REPLACED = (State.REPLACING, State.BACKOFF, State.STARTING)


class ChangeFailed(NmcError):
    """A scale or a rollout could not be completed; the cluster serves as before it."""


class Changes:
    """Scale and rollout, one at a time."""

    def __init__(self, lifecycle: Lifecycle, pool: Pool):
        self.lifecycle = lifecycle
        self.pool = pool
        self.config = lifecycle.config
        self._one_at_a_time = gevent.lock.Semaphore()

    def in_service(self) -> list[Replica]:
        """The replicas that make up the cluster: all but those being removed on purpose."""
        return [r for r in self.pool if r.state not in LEAVING]

    def scale(self, count: int) -> str:
        """Grow or shrink to `count` replicas and say what was done. Leaving replicas are
        picked by `leaving_order`."""
        if not 1 <= count <= MAX_REPLICAS:
            raise UsageError(f"the number of replicas must be from 1 to {MAX_REPLICAS}, not {count}")
        with self._one_at_a_time:
            current = self.in_service()
            if count > len(current):
                added = self.add(count - len(current))
                return (f"scaled from {len(current)} to {count} replicas: started "
                        f"{', '.join(r.name for r in added)}")
            if count < len(current) and self.lifecycle.backend.orchestrates:
                return self._scale_down_by_engine(current, count)
            if count < len(current):
                leaving = leaving_order(current)[:len(current) - count]
                gevent.joinall([gevent.spawn(self.retire, r, f"scaling to {count}")
                                for r in leaving])
                return (f"scaled from {len(current)} to {count} replicas: removed "
                        f"{', '.join(r.name for r in leaving)}")
            return f"already {count} replicas: nothing to do"

    def _scale_down_by_engine(self, current: list[Replica], count: int) -> str:
        """The engine picks the leaving replicas (Swarm): it says so by retiring them, and
        healing drains them; done when they are gone."""
        lifecycle = self.lifecycle
        lifecycle.backend.prepare(count, lifecycle.image_id)
        allowed = self.config.start_timeout + self.config.graceful_timeout
        deadline = time.monotonic() + allowed
        while not self._scaled_to(count) and time.monotonic() < deadline:
            lifecycle.stopped.wait(ENGINE_POLL)
        leaving = [r.name for r in current if r not in self.in_service()]
        if not self._scaled_to(count):
            raise ChangeFailed(f"the {lifecycle.backend.engine_name} did not scale down to {count} "
                               f"within {allowed:g}s")
        return f"scaled from {len(current)} to {count} replicas: removed {', '.join(leaving)}"

    def _scaled_to(self, count: int) -> bool:
        """`count` replicas in service, and the leaving ones drained and gone."""
        return len(self.in_service()) <= count and all(r.state not in LEAVING for r in self.pool)

    def rollout(self, image: str | None = None, max_surge: int | None = None) -> str:
        """Replace every replica by one of `image` (default: the current image name, rebuilt),
        `max_surge` at a time: start the new ones, wait until they answer, then drain and
        remove as many old ones. When a new replica does not become ready, undo what was
        swapped and raise ChangeFailed: the replicas of the old image keep serving."""
        lifecycle = self.lifecycle
        surge = max_surge or self.config.max_surge
        with self._one_at_a_time:
            if lifecycle.backend.orchestrates:
                return self._rollout_by_engine(image or lifecycle.image, surge)
            image = image or lifecycle.image
            new_id = lifecycle.backend.image_id(image)
            outdated = [r for r in self.in_service() if r.state not in BEING_REPLACED
                        and r.instance is not None and r.instance.image_id != new_id]
            if not outdated:
                return nothing_to_roll_out(image, new_id)
            old_image, old_id = lifecycle.image, lifecycle.image_id
            log.info("rolling out %s (%s) to %d replicas, %d at a time", image,
                     short_image(new_id), len(outdated), surge)
            lifecycle.image, lifecycle.image_id = image, new_id
            swapped: list[Replica] = []
            try:
                for first in range(0, len(outdated), surge):
                    batch = outdated[first:first + surge]
                    added = self.add(len(batch))
                    swapped += added
                    gevent.joinall([gevent.spawn(self.retire, old, f"rolled out: replaced by {new.name}")
                                    for old, new in zip(batch, added)])
            except NmcError as e:
                lifecycle.image, lifecycle.image_id = old_image, old_id
                log.error("rollout of %s stopped: %s; rolling back %d replicas", image, e, len(swapped))
                self._roll_back(swapped)
                raise ChangeFailed(f"rollout of {image} stopped, the replicas of {old_image} "
                                   f"keep serving: {e}") from None
            return f"rolled out {image} ({short_image(new_id)}) to {len(outdated)} replicas"

    def _rollout_by_engine(self, image: str, surge: int) -> str:
        """The engine rolls out by itself (Swarm's start-first update, rolled back by it when a
        new instance fails); healing follows its instances as they come and go."""
        lifecycle = self.lifecycle
        new_id = lifecycle.backend.image_id(image)
        if all(r.instance is not None and r.instance.image_id == new_id for r in self.in_service()):
            return nothing_to_roll_out(image, new_id)
        old_image, old_id = lifecycle.image, lifecycle.image_id
        lifecycle.image, lifecycle.image_id = image, new_id
        log.info("rolling out %s (%s) to %d replicas, %d at a time, by the %s", image,
                 short_image(new_id), len(self.in_service()), surge, lifecycle.backend.engine_name)
        try:
            outcome = lifecycle.backend.roll_out(image, new_id, surge,
                                                 lambda text: log.info("rollout: %s", text))
        except NmcError as e:
            lifecycle.image, lifecycle.image_id = old_image, old_id
            raise ChangeFailed(f"rollout of {image} stopped, the replicas of {old_image} keep "
                               f"serving: {e}") from None
        return f"rolled out {image} ({short_image(new_id)}) to {len(self.in_service())} replicas: {outcome}"

    def _roll_back(self, swapped: list[Replica]) -> None:
        for new in swapped:  # one at a time: the cluster never shrinks meanwhile
            try:
                self.add(1)
            except NmcError as e:  # the old image failing too: keep the new one serving
                log.error("could not roll back replica %s: %s", new.name, e)
                continue
            self.retire(new, "rolled back")

    def add(self, count: int) -> list[Replica]:
        """Start `count` new replicas, in parallel, in the lowest free slots; they join the
        rotation as each answers. On failure the new ones are removed and the error raised."""
        lifecycle = self.lifecycle
        slots = self.pool.free_slots(lifecycle.backend.first_slot, count)
        lifecycle.backend.check_startable(slots)
        lifecycle.backend.prepare(len(self.in_service()) + count, lifecycle.image_id)
        added = [lifecycle.new_replica(slot) for slot in slots]
        for replica in added:
            self.pool.add(replica)
        starts = [lifecycle.tasks.spawn(capture, lifecycle.start, r) for r in added]
        gevent.joinall(starts)
        errors = [g.value for g in starts if g.value is not None]
        if errors or lifecycle.stopping:
            # those that joined the rotation may be serving: they drain like any leaving replica
            gevent.joinall([gevent.spawn(self.retire, r, "the change failed") for r in added
                            if r.state is State.READY])
            for replica in added:
                if replica.instance and replica.state is not State.STOPPED:
                    lifecycle.remove(replica, grace=1)
                self.pool.remove(replica)
            lifecycle.backend.prepare(len(self.in_service()), lifecycle.image_id)
            raise errors[0] if errors else ChangeFailed("nmc is stopping")
        return added

    def retire(self, replica: Replica, reason: str) -> None:
        """Out of the rotation; once its requests are done (or after --graceful-timeout), its
        instance is stopped (the site finishes what it still has) and removed."""
        self.lifecycle.drain(replica, reason)
        if replica.instance:
            self.lifecycle.remove(replica, grace=5)
        self.pool.remove(replica)


def leaving_order(replicas: list[Replica]) -> list[Replica]:
    """Which replicas a scale-down removes first: those out of the rotation, then the newest
    (the last to join; one that never joined is the newest of all), then the highest slot."""
    return sorted(replicas, key=lambda r: (r.state is State.READY,
                                           -(r.ready_at if r.ready_at is not None else math.inf),
                                           -r.slot))


def short_image(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def nothing_to_roll_out(image: str, image_id: str) -> str:
    return f"nothing to roll out: every replica runs {image} ({short_image(image_id)})"
