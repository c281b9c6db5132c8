"""Healing: notice a replica failing and replace it.

Three ways to notice: the engine's events (at once), the periodic health checks (a hung
replica), and the relay's reports (a refused connection). A replica that fails for good is
replaced in a greenlet of its own; one that crashes again and again soon after starting waits
in BACKOFF, longer each time, instead of restarting in a tight loop.
"""

from __future__ import annotations

import logging
import time

import gevent

from nmc.backend import EngineError, EngineUnreachable, Event, Happening
from nmc.errors import NmcError
from nmc.health import Thresholds, Verdict
from nmc.lifecycle import Lifecycle
from nmc.pool import Pool
from nmc.replica import Replica, State

log = logging.getLogger(__name__)

BACKOFF_FIRST = 1.0     # seconds before the second try at replacing a replica ...
BACKOFF_MAX = 60.0      # ... doubling up to this
QUICK_CRASH = 10.0      # seconds: a replica that fails sooner after joining is in a crash loop
ENGINE_RETRY_MAX = 5.0  # seconds between tries to reach a lost engine (its restarts are short)
ENGINE_AWAY_PROBE = 0.25  # seconds between checks of the replicas out of the rotation meanwhile
# The states in which a replica is watched: in the rotation, or out of it and not yet replaced.
WATCHED = (State.READY, State.DOWN)
BEING_REPLACED = (State.REPLACING, State.BACKOFF, State.STARTING)


class Healing:
    """Follows the engine's events, runs the checks, takes reports, replaces failed replicas."""

    def __init__(self, lifecycle: Lifecycle, pool: Pool, thresholds: Thresholds):
        self.lifecycle = lifecycle
        self.backend = lifecycle.backend
        self.pool = pool
        self.thresholds = thresholds
        self.engine_lost = False  # said once, by whichever task notices first
        self._event_stream = None

    # -- the engine's events -----------------------------------------------------------------

    def follow_events(self, since: float | None = None) -> None:
        """React to a replica's instance dying, pausing or vanishing at once, not at the next
        check; the first stream from `since` (epoch seconds) on, so that nothing that happened
        before it opened is missed. When the engine goes away, say so once, keep relaying (the
        checks go on), reconnect with a growing delay, and look at every replica again when it
        is back."""
        delay = BACKOFF_FIRST
        while not self.lifecycle.stopping:
            try:
                stream = self.backend.events(since)
                since = None  # one opened after the engine was away: engine_back looks at all
            except EngineError as e:
                self.lost_engine(e)
                self.lifecycle.stopped.wait(delay)
                delay = min(delay * 2, ENGINE_RETRY_MAX)
                continue
            self.engine_back()
            delay = BACKOFF_FIRST
            self._event_stream = stream
            try:
                for event in stream:
                    self.on_event(event)
            except EngineError as e:
                if not self.lifecycle.stopping:
                    self.lost_engine(e)
            finally:
                stream.close()

    def close_events(self) -> None:
        if self._event_stream is not None:
            self._event_stream.close()

    def lost_engine(self, error: Exception) -> None:
        """The engine went away (a restart, most often): said once. With live-restore its
        containers live on, but their port proxies go and come back with it: meanwhile requests
        wait longer for a replica (Pool.engine_lost_at), the replicas out of the rotation are
        probed every ENGINE_AWAY_PROBE seconds to bring them back as soon as they answer, and
        none is replaced for not answering (the engine is asked once it is back)."""
        if not self.engine_lost:
            self.engine_lost = True
            self.pool.engine_lost_at = time.monotonic()
            log.warning("%s; relaying to the replicas that still answer; reconnecting", error)
            self.lifecycle.tasks.spawn(self._probe_while_away)

    def engine_back(self) -> None:
        """The engine answered again after lost_engine: say so once, and look at every replica."""
        if self.engine_lost:
            self.engine_lost = False
            self.pool.engine_lost_at = None
            log.info("the %s is back: checking every replica", self.backend.engine_name)
            self.check_all()

    def _probe_while_away(self) -> None:
        checking: dict[Replica, gevent.Greenlet] = {}  # one check of each at a time (one may hang)
        while self.engine_lost and not self.lifecycle.stopped.wait(ENGINE_AWAY_PROBE):
            for replica in self.pool:
                check = checking.get(replica)
                if replica.state is State.DOWN and (check is None or check.ready()):
                    checking[replica] = self.lifecycle.tasks.spawn(self.check, replica)

    def on_event(self, event: Event) -> None:
        replica = next((r for r in self.pool if r.instance_id == event.instance_id), None)
        if replica is None:
            return
        if event.happening is Happening.EXITED:
            replica.last_exit_code = event.exit_code
        if event.happening is Happening.OUT_OF_MEMORY:
            # the kernel killed a process of it: when it was the main one, its exit follows at
            # once, and is said as out of memory (the engine's inspect tells)
            return
        if event.happening is Happening.RETIRED:
            if replica.state in WATCHED:  # the engine scales down: it leaves, as on our own
                self.lifecycle.tasks.spawn(self._leave, replica, event.reason)
        elif event.happening is Happening.BEING_STOPPED:
            # out of the rotation now: no new requests while it shuts down (in-flight ones
            # finish); its exit follows and gets it replaced. An engine that replaces instances
            # itself may have the next one up already (Swarm's start-first update): follow it now.
            if replica.state is State.READY:
                replica.change_state(State.DOWN, event.reason)
            if self.backend.orchestrates:
                self.replace(replica, event.reason)
        elif event.happening is not Happening.STARTED and replica.state in WATCHED:
            # a DOWN replica too: the relay often sees the connections break before the engine
            # reports the death. STARTING ones are watched by Lifecycle.wait_ready.
            self.replace(replica, event.reason, event.exit_code)

    def _leave(self, replica: Replica, reason: str) -> None:
        """A replica the engine retires (Swarm scaling down): drained, then out of the pool."""
        self.lifecycle.drain(replica, reason)
        replica.change_state(State.STOPPED, "removed by the engine")
        replica.serve_with(None)
        self.pool.remove(replica)

    # -- checks ------------------------------------------------------------------------------

    def monitor(self) -> None:
        """Check every replica each --check-interval, until nmc stops."""
        while not self.lifecycle.stopped.wait(self.lifecycle.config.check_interval):
            self.check_all()

    def check_all(self) -> None:
        """A check of every watched replica, each in its own greenlet: a hung replica delays
        no other."""
        for replica in self.pool:
            if replica.state in WATCHED:
                self.lifecycle.tasks.spawn(self.check, replica)

    def check(self, replica: Replica) -> None:
        """One health check, counted; the thresholds decide whether anything changes."""
        result = self.lifecycle.checker.check(replica.url)
        if replica.state not in WATCHED or self.lifecycle.stopping:
            return  # replaced, removed or stopping meanwhile
        replica.health.add(result.ok)
        # A failing replica may be dead, and one about to come back may be answering only while
        # it is being stopped (docker stop, Swarm's update): ask the engine before either.
        if not result.ok or replica.state is State.DOWN:
            dead = self._problem(replica)
            if dead:  # no use waiting for more checks: it will not come back
                self.replace(replica, dead)
                return
        out_for = time.monotonic() - replica.since if replica.state is State.DOWN else 0.0
        verdict = self.thresholds.judge(replica.state is State.READY, replica.health.fails,
                                        replica.health.passes, out_for)
        if verdict is Verdict.OUT:
            replica.change_state(State.DOWN, f"{result.reason}; {replica.health.fails} failed "
                                             "checks in a row")
        elif verdict is Verdict.IN:
            replica.change_state(State.READY, f"{result.reason}; {replica.health.passes} passed "
                                              "checks in a row")
        elif verdict is Verdict.REPLACE and not self.engine_lost:
            self.replace(replica, f"out of the rotation for {out_for:.0f}s ({result.reason})")

    def _problem(self, replica: Replica) -> str | None:
        try:
            return self.lifecycle.problem(replica)
        except EngineError:
            return None  # the engine is away: say nothing of the instance

    def report_failure(self, replica: Replica, reason: str) -> None:
        """The relay could not reach `replica`: out of the rotation now, and checked at once."""
        if self.lifecycle.stopping or replica.state is not State.READY:
            return
        replica.change_state(State.DOWN, reason)
        replica.health.passes = 0
        self.lifecycle.tasks.spawn(self.check, replica)

    # -- replacing ---------------------------------------------------------------------------

    def replace(self, replica: Replica, reason: str, exit_code: int | None = None) -> None:
        """Take `replica` out of the rotation and start a new instance in its place (`exit_code`:
        its instance's, when the engine said it exited)."""
        if self.lifecycle.stopping or replica.state not in WATCHED:
            return  # being replaced already, or leaving on purpose
        if replica.change_state(State.DOWN, reason):
            replica.change_state(State.REPLACING)
        else:  # out already: say why it goes now
            replica.change_state(State.REPLACING, reason)
        self.lifecycle.tasks.spawn(self._replace, replica, exit_code)

    def _replace(self, replica: Replica, exit_code: int | None) -> None:
        delay = BACKOFF_FIRST
        last_error = ""  # a failure is logged when it changes, not at every try
        self._report_crash_and_back_off(replica, exit_code)
        # until it serves again, nmc stops, or a scale-down retires it meanwhile
        while not self.lifecycle.stopping and replica.state in BEING_REPLACED:
            try:
                old_image = replica.instance.image_id if replica.instance else None
                if replica.instance:
                    self.backend.remove(replica.instance_id, grace=1)
                    replica.serve_with(None)
                self.lifecycle.start(replica)
                if replica.instance.image_id == old_image or old_image is None:
                    replica.restarts += 1  # (not a rollout's new image, on an engine that rolls out)
                self.engine_back()  # it answered: whatever was lost is back
                return
            except NmcError as e:
                if replica.state not in BEING_REPLACED:
                    return  # retired while it started: its removal is what failed the start
                if isinstance(e, EngineUnreachable):
                    self.lost_engine(e)  # one line for the whole cluster, not one a replica
                    delay = min(delay, ENGINE_RETRY_MAX)
                elif str(e) != last_error:
                    log.error("could not replace replica %s: %s; trying again in %gs, then "
                              "less and less often (up to every %gs)", replica.name, e, delay,
                              BACKOFF_MAX)
                    last_error = str(e)
                replica.change_state(State.BACKOFF, "replacement failed")
            self.lifecycle.stopped.wait(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    def _report_crash_and_back_off(self, replica: Replica, exit_code: int | None) -> None:
        """Say once what the failed instance left behind (its exit code: the engine's word now,
        else `exit_code`, heard in its exit event: Swarm may call a task running a while after
        its container exited). A replica failing soon after each
        start (a crash loop) waits in BACKOFF before its next start (from the second such
        failure in a row: 1 s, 2 s, 4 s ... 60 s) instead of being restarted in a tight loop."""
        uptime = replica.uptime()
        try:
            found = self.backend.inspect(replica.instance_id) if replica.instance else None
        except EngineError:
            found = None
        from_outside = found is None or found.stopped_from_outside
        if from_outside or uptime >= QUICK_CRASH:
            replica.quick_crashes = 0  # a docker kill or pause is no crash loop
        else:
            replica.quick_crashes += 1
        if found is not None and found.exit_code is not None:
            exit_code = found.exit_code
        out_of_memory = found is not None and found.out_of_memory
        if exit_code is not None or out_of_memory:
            replica.last_exit_code = exit_code
            replica.last_exit_out_of_memory = out_of_memory
        if out_of_memory:
            replica.oom_kills += 1
            log.warning("replica %s was killed out of memory (its limit: %s) with code %s after "
                        "%.1fs in the rotation%s", replica.name,
                        size_text(self.lifecycle.config.memory), exit_code, uptime,
                        self.lifecycle.last_logs(replica))
        elif exit_code is not None:
            log.warning("replica %s exited with code %s after %.1fs in the rotation%s",
                        replica.name, exit_code, uptime, self.lifecycle.last_logs(replica))
        delay = 0.0 if self.backend.orchestrates else crash_loop_delay(replica.quick_crashes)
        if delay:  # (an engine that restarts by itself, Swarm, has its own fixed delay)
            log.warning("replica %s failed %d times in a row within %gs of starting: next start "
                        "in %gs", replica.name, replica.quick_crashes, QUICK_CRASH, delay)
            if replica.state in BEING_REPLACED:
                replica.change_state(State.BACKOFF, f"crash loop: next start in {delay:g}s")
                self.lifecycle.stopped.wait(delay)


def size_text(size: int) -> str:
    """A --memory limit as a person reads it: 64 MiB, 1.5 GiB; "none" for 0 (the host's memory)."""
    if not size:
        return "none, the host's memory"
    for unit, factor in (("GiB", 1024 ** 3), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if size >= factor:
            return f"{size / factor:.4g} {unit}"
    return f"{size} bytes"


def crash_loop_delay(quick_crashes: int) -> float:
    """Seconds to wait before the next start after `quick_crashes` quick crashes in a row: none
    after the first, then 1 s, 2 s, 4 s ... up to BACKOFF_MAX."""
    if quick_crashes < 2:
        return 0.0
    return min(BACKOFF_FIRST * 2 ** (quick_crashes - 2), BACKOFF_MAX)
