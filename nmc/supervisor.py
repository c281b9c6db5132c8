"""Keeps the desired replicas alive: adopt or start them, check them, replace the ones that fail.

All of it runs in greenlets: replicas start in parallel, every replica is checked in its own
greenlet (a hung one delays no other), and each replacement runs on its own with a backoff.
"""

from __future__ import annotations

import logging
import socket
import time

import gevent
import gevent.event
import gevent.lock
import gevent.pool

from nmc.config import MAX_REPLICAS, REPLICA_HOST, Config
from nmc.containers import (LABEL_SETTINGS, Engine, EngineError, EngineUnreachable, PortBusy,
                            ReplicaSpec)
from nmc.errors import NmcError, UsageError, capture
from nmc.health import HealthChecker, Thresholds
from nmc.pool import Pool, Replica, State

log = logging.getLogger(__name__)

READY_POLL = 0.1        # seconds between health probes while a replica starts
BACKOFF_FIRST = 1.0     # seconds before the second try at replacing a replica ...
BACKOFF_MAX = 60.0      # ... doubling up to this
QUICK_CRASH = 10.0      # seconds: a replica that fails sooner after joining is in a crash loop
ENGINE_RETRY_MAX = 5.0  # seconds between tries to reach a lost engine (its restarts are short)
# Signals that stop a container (docker stop sends TERM, then KILL); others (HUP, USR1) do not.
STOPPING_SIGNALS = frozenset(("2", "3", "9", "15", "SIGINT", "SIGQUIT", "SIGKILL", "SIGTERM",
                              "INT", "QUIT", "KILL", "TERM"))
LOG_LINES = 5           # container log lines quoted when a replica fails to start
TASKS_STOP_WAIT = 40.0  # seconds stop() waits for tasks to notice it (an engine call takes <= 30)
DRAIN_POLL = 0.05       # seconds between looks at a draining replica's requests in flight


class ReplicaStartFailed(NmcError):
    """A replica exited, or never answered its health URL, while starting."""


class ChangeFailed(NmcError):
    """A scale or a rollout could not be completed; the cluster serves as before it."""


class Supervisor:
    """Owns the replicas' containers: the one place that starts, replaces and removes them."""

    def __init__(self, config: Config, engine: Engine, checker: HealthChecker | None = None,
                 pool: Pool | None = None):
        self.config = config
        self.engine = engine
        self.checker = checker or HealthChecker(config.health_path, config.check_timeout)
        self.thresholds = Thresholds(config.unhealthy_after, config.healthy_after,
                                     config.replace_after)
        self.pool = pool if pool is not None else Pool.for_config(config)
        self.image = config.image  # what new replicas run; a rollout changes it
        self.image_id = ""
        self._changing = gevent.lock.Semaphore()  # one scale or rollout at a time
        self._tasks = gevent.pool.Group()  # checks and replacements in flight
        self._replacing: set[Replica] = set()
        self._monitor: gevent.Greenlet | None = None
        self._events: gevent.Greenlet | None = None
        self._event_stream = None
        self._engine_lost = False  # said once, by whichever task notices first
        # Set by stop(). A task creating a container is never killed mid-call (the engine would
        # finish creating it unseen): it is in _creating, and looks at the event when done.
        self._stop_event = gevent.event.Event()
        self._creating: set[gevent.Greenlet] = set()

    @property
    def stopping(self) -> bool:
        """stop() has begun: nothing more is started, checked or replaced."""
        return self._stop_event.is_set()

    # -- start -------------------------------------------------------------------------------

    def start(self) -> None:
        """Adopt matching leftovers, start the missing replicas in parallel, wait until all answer.

        On failure the replicas started so far stay in the pool; the caller stops them.
        """
        self.image_id = self.engine.image_id(self.config.image)
        self._adopt_or_remove_leftovers()
        missing = [r for r in self.pool if r.container_id is None]
        for replica in missing:
            _check_port_free(replica.port)
        # in the task group, so that stop() also ends starts still under way
        starts = [self._tasks.spawn(capture, self._start, r) for r in missing]
        starts += [self._tasks.spawn(capture, self._wait_ready, r) for r in self.pool if r not in missing]
        gevent.joinall(starts)
        for greenlet in starts:
            if greenlet.value is not None:
                raise greenlet.value

    def _adopt_or_remove_leftovers(self) -> None:
        by_port = {r.port: r for r in self.pool}
        for info in self.engine.list_cluster(self.config.name):
            replica = by_port.get(info.port)
            matches = (replica is not None and replica.container_id is None
                       and info.name == replica.name and info.running
                       and info.labels.get(LABEL_SETTINGS) == self._spec(replica).settings_hash(self.image_id))
            if matches:
                replica.container_id, replica.image_id = info.id, self.image_id
                log.info("adopting running container %s (%s)", info.name, info.short_id)
            else:
                log.info("removing leftover container %s (%s, %s): it does not match this cluster's "
                         "settings", info.name, info.short_id, info.status)
                self.engine.remove(info.id, stop_timeout=2)

    def _spec(self, replica: Replica) -> ReplicaSpec:
        return ReplicaSpec(cluster=self.config.name, name=replica.name, image=self.image,
                           host_port=replica.port, container_port=self.config.container_port,
                           host_ip=REPLICA_HOST, env=self.config.replica_env)

    def _start(self, replica: Replica) -> None:
        """Run a fresh container for `replica` and wait until it answers; READY on success."""
        replica.change_state(State.STARTING)
        if self.stopping:
            raise ReplicaStartFailed(f"replica {replica.name}: start cancelled, nmc is stopping")
        task = gevent.getcurrent()
        self._creating.add(task)
        try:
            info = self.engine.run(self._spec(replica), self.image_id)
            replica.container_id = info.id  # from here on, stop() removes it
            replica.image_id = self.image_id
        finally:
            self._creating.discard(task)
        self._wait_ready(replica)

    def _wait_ready(self, replica: Replica) -> None:
        started = time.monotonic()
        deadline = started + self.config.start_timeout
        next_inspect = started
        while True:
            if self.stopping:
                raise ReplicaStartFailed(f"replica {replica.name}: start cancelled, nmc is stopping")
            result = self.checker.check(replica.url)
            if result.ok:
                replica.change_state(State.READY, f"answered {self.config.health_path} "
                                                  f"after {time.monotonic() - started:.2f}s")
                return
            now = time.monotonic()
            if now >= next_inspect:  # an exited container never answers: say so at once
                next_inspect = now + 0.5
                problem = _not_running(self.engine.inspect(replica.container_id))
                if problem:
                    raise ReplicaStartFailed(f"replica {replica.name}: {problem} while starting"
                                             + self._last_logs(replica))
            if now >= deadline:
                raise ReplicaStartFailed(
                    f"replica {replica.name} did not answer {self.config.health_path} within "
                    f"{self.config.start_timeout:g}s (last try: {result.reason})" + self._last_logs(replica))
            self._stop_event.wait(READY_POLL)

    def _last_logs(self, replica: Replica) -> str:
        try:
            lines = self.engine.tail_logs(replica.container_id, LOG_LINES) if replica.container_id else []
        except EngineError:
            lines = []
        lines = [line.strip() for line in lines if line.strip()]
        return "; its last log lines: " + " | ".join(lines) if lines else "; it logged nothing"

    # -- watch -------------------------------------------------------------------------------

    def watch(self) -> None:
        """Start the periodic liveness checks, and following the engine's events, in the background."""
        self._monitor = gevent.spawn(self._monitor_loop)
        self._events = gevent.spawn(self._follow_events)

    def _follow_events(self) -> None:
        """React to a replica's container dying, pausing or vanishing at once, not at the next check.
        When the engine goes away, say so once, keep relaying (the checks go on), reconnect with a
        growing delay, and look at every replica again when it is back."""
        delay = BACKOFF_FIRST
        while not self.stopping:
            try:
                stream = self.engine.events(self.config.name)
            except EngineError as e:
                self._lost_engine(e)
                self._stop_event.wait(delay)
                delay = min(delay * 2, ENGINE_RETRY_MAX)
                continue
            if self._engine_lost:
                self._engine_lost = False
                log.info("the Docker engine is back: checking every replica")
                self._check_all()
            delay = BACKOFF_FIRST
            self._event_stream = stream
            try:
                for event in stream:
                    self._on_event(event)
            except EngineError as e:
                if not self.stopping:
                    self._lost_engine(e)
            finally:
                stream.close()

    def _lost_engine(self, error: Exception) -> None:
        if not self._engine_lost:
            self._engine_lost = True
            log.warning("%s; relaying to the replicas that still answer; reconnecting", error)

    def _on_event(self, event) -> None:
        reasons = {
            "die": f"container exited with code {event.exit_code}",
            "oom": "container ran out of memory",
            "pause": "container was paused",
            "destroy": "container was removed",
        }
        being_stopped = event.action == "kill" and event.signal in STOPPING_SIGNALS
        if event.action not in reasons and not being_stopped:
            return
        for replica in self.pool:
            if replica.container_id != event.container_id:
                continue
            if event.action == "die":
                replica.last_exit_code = event.exit_code
            if being_stopped or event.action == "pause":  # someone stopped it: not a crash of its own
                replica.stopped_from_outside = True
            if being_stopped and replica.state is State.READY:
                # out of the rotation now: no new requests while it shuts down (in-flight ones
                # finish); its `die` follows and gets it replaced
                replica.change_state(State.DOWN, f"container is being stopped (signal {event.signal})")
            # A DOWN replica too: the proxy often sees the connections break before the engine
            # reports the death. STARTING ones are watched by _wait_ready.
            if event.action in reasons and replica.state in (State.READY, State.DOWN):
                self.replace(replica, reasons[event.action])
            return

    def _monitor_loop(self) -> None:
        while not self._stop_event.wait(self.config.check_interval):
            self._check_all()

    def _check_all(self) -> None:
        """A check of every replica in or out of the rotation (not one being replaced), each in
        its own greenlet: a hung replica delays no other."""
        for replica in self.pool:
            if replica.state in (State.READY, State.DOWN) and replica not in self._replacing:
                self._tasks.spawn(self._check, replica)

    def _check(self, replica: Replica) -> None:
        """One health check, counted; the thresholds decide whether anything changes."""
        result = self.checker.check(replica.url)
        if replica in self._replacing or self.stopping:
            return
        replica.stats.checks["pass" if result.ok else "fail"] += 1
        if result.ok:
            replica.check_passes, replica.check_fails = replica.check_passes + 1, 0
        else:
            replica.check_passes, replica.check_fails = 0, replica.check_fails + 1
            dead = self._container_problem(replica)
            if dead:  # no use waiting for more checks: it will not come back
                self.replace(replica, dead)
                return
        out_for = time.monotonic() - replica.since if replica.state is State.DOWN else 0.0
        verdict = self.thresholds.judge(replica.state is State.READY, replica.check_fails,
                                        replica.check_passes, out_for)
        if verdict == "out":
            replica.change_state(State.DOWN, f"{result.reason}; {replica.check_fails} failed "
                                             "checks in a row")
        elif verdict == "in":
            replica.change_state(State.READY, f"{result.reason}; {replica.check_passes} passed "
                                              "checks in a row")
        elif verdict == "replace":
            self.replace(replica, f"out of the rotation for {out_for:.0f}s ({result.reason})")

    def _container_problem(self, replica: Replica) -> str | None:
        """Why the replica's container cannot answer any more (gone, exited...), or None."""
        try:
            info = self.engine.inspect(replica.container_id) if replica.container_id else None
        except EngineError:
            return None  # the engine is away: say nothing of the container
        return _not_running(info)

    def report_failure(self, replica: Replica, reason: str) -> None:
        """The proxy could not reach `replica`: out of the rotation now, and checked at once."""
        replica.stats.connect_errors += 1
        if self.stopping or replica.state is not State.READY:
            return
        replica.change_state(State.DOWN, reason)
        replica.check_passes = 0
        self._tasks.spawn(self._check, replica)

    def replace(self, replica: Replica, reason: str) -> None:
        """Take `replica` out of the rotation and start a new container in its place."""
        if self.stopping or replica in self._replacing:
            return
        if not replica.change_state(State.DOWN, reason):  # already out: say why it goes now
            log.warning("replica %s (port %d, container %s): replacing it (%s)", replica.name,
                        replica.port, replica.short_id, reason)
        self._replacing.add(replica)
        self._tasks.spawn(self._replace, replica)

    def _replace(self, replica: Replica) -> None:
        delay = BACKOFF_FIRST
        last_error = ""  # a failure is logged when it changes, not at every try
        try:
            self._report_crash_and_back_off(replica)
            while not self.stopping:
                try:
                    if replica.container_id:
                        self.engine.remove(replica.container_id, stop_timeout=1)
                        replica.container_id = None
                    self._start(replica)
                    replica.restarts += 1
                    return
                except NmcError as e:
                    replica.change_state(State.DOWN, "replacement failed")
                    if isinstance(e, EngineUnreachable):
                        self._lost_engine(e)  # one line for the whole cluster, not one a replica
                        delay = min(delay, ENGINE_RETRY_MAX)
                    elif str(e) != last_error:
                        log.error("could not replace replica %s: %s; trying again in %gs, then "
                                  "less and less often (up to every %gs)", replica.name, e, delay,
                                  BACKOFF_MAX)
                        last_error = str(e)
                self._stop_event.wait(delay)
                delay = min(delay * 2, BACKOFF_MAX)
        finally:
            self._replacing.discard(replica)

    def _report_crash_and_back_off(self, replica: Replica) -> None:
        """Say once what the failed container left behind. A replica failing soon after each
        start (a crash loop) gets a doubling delay before its next start (from the second such
        failure in a row: 1 s, 2 s, 4 s ... 60 s) instead of being restarted in a tight loop."""
        uptime = replica.uptime()
        if replica.stopped_from_outside or uptime >= QUICK_CRASH:
            replica.quick_failures = 0  # a docker kill or pause is no crash loop
        else:
            replica.quick_failures += 1
        info = None
        if replica.container_id:
            try:
                info = self.engine.inspect(replica.container_id)
            except EngineError:
                pass
        exited = info is not None and info.status in ("exited", "dead")
        if exited:
            replica.last_exit_code = info.exit_code
            log.warning("replica %s exited with code %s after %.1fs in the rotation%s",
                        replica.name, info.exit_code, uptime, self._last_logs(replica))
        if replica.quick_failures >= 2:
            delay = min(BACKOFF_FIRST * 2 ** (replica.quick_failures - 2), BACKOFF_MAX)
            log.warning("replica %s failed %d times in a row within %gs of starting: next start "
                        "in %gs", replica.name, replica.quick_failures, QUICK_CRASH, delay)
            self._stop_event.wait(delay)

    # -- change while running ----------------------------------------------------------------

    def in_service(self) -> list[Replica]:
        """The replicas that make up the cluster: all but those being removed on purpose."""
        return [r for r in self.pool
                if r.state not in (State.DRAINING, State.STOPPING, State.STOPPED)]

    def scale(self, count: int) -> str:
        """Grow or shrink to `count` replicas and say what was done. New replicas join the
        rotation once they answer; leaving ones (the unhealthy first, then the newest) leave
        the rotation first and finish their requests."""
        if not 1 <= count <= MAX_REPLICAS:
            raise UsageError(f"the number of replicas must be from 1 to {MAX_REPLICAS}, not {count}")
        with self._changing:
            current = self.in_service()
            if count > len(current):
                added = self._add(count - len(current))
                return (f"scaled from {len(current)} to {count} replicas: started "
                        f"{', '.join(r.name for r in added)}")
            if count < len(current):
                leaving = sorted(current, key=lambda r: (r.state is State.READY,
                                                         -(r.ready_at or 0), -r.port))
                leaving = leaving[:len(current) - count]
                gevent.joinall([gevent.spawn(self._retire, r, f"scaling to {count}")
                                for r in leaving])
                return (f"scaled from {len(current)} to {count} replicas: removed "
                        f"{', '.join(r.name for r in leaving)}")
            return f"already {count} replicas: nothing to do"

    def rollout(self, image: str | None = None, max_surge: int | None = None) -> str:
        """Replace every replica by one of `image` (default: the current image name, rebuilt),
        `max_surge` at a time: start the new ones, wait until they answer, then drain and
        remove as many old ones. When a new replica does not become ready, undo what was
        swapped and raise ChangeFailed: the replicas of the old image keep serving."""
        surge = max_surge or self.config.max_surge
        with self._changing:
            image = image or self.image
            new_id = self.engine.image_id(image)
            outdated = [r for r in self.in_service()
                        if r.image_id != new_id and r not in self._replacing]
            if not outdated:
                return f"nothing to roll out: every replica runs {image} ({_short(new_id)})"
            old_image, old_id = self.image, self.image_id
            log.info("rolling out %s (%s) to %d replicas, %d at a time", image, _short(new_id),
                     len(outdated), surge)
            self.image, self.image_id = image, new_id
            swapped: list[Replica] = []
            try:
                for first in range(0, len(outdated), surge):
                    batch = outdated[first:first + surge]
                    added = self._add(len(batch))
                    swapped += added
                    gevent.joinall([gevent.spawn(self._retire, old, f"rolled out: replaced by {new.name}")
                                    for old, new in zip(batch, added)])
            except NmcError as e:
                self.image, self.image_id = old_image, old_id
                log.error("rollout of %s stopped: %s; rolling back %d replicas", image, e, len(swapped))
                self._roll_back(swapped)
                raise ChangeFailed(f"rollout of {image} stopped, the replicas of {old_image} "
                                   f"keep serving: {e}") from None
            return f"rolled out {image} ({_short(new_id)}) to {len(outdated)} replicas"

    def _roll_back(self, swapped: list[Replica]) -> None:
        for new in swapped:  # one at a time: the cluster never shrinks meanwhile
            try:
                self._add(1)
            except NmcError as e:  # the old image failing too: keep the new one serving
                log.error("could not roll back replica %s: %s", new.name, e)
                continue
            self._retire(new, "rolled back")

    def _add(self, count: int) -> list[Replica]:
        """Start `count` new replicas, in parallel, on the lowest free ports; they join the
        rotation as each answers. On failure the new ones are removed and the error raised."""
        ports = self.pool.free_ports(self.config.base_port, count)
        for port in ports:
            _check_port_free(port)
        added = [Replica(self.config.replica_name(port), port) for port in ports]
        for replica in added:
            self.pool.add(replica)
        starts = [self._tasks.spawn(capture, self._start, r) for r in added]
        gevent.joinall(starts)
        errors = [g.value for g in starts if g.value is not None]
        if errors or self.stopping:
            for replica in added:
                if replica.container_id:
                    self._remove(replica, stop_timeout=1)
                self.pool.remove(replica)
            raise errors[0] if errors else ChangeFailed("nmc is stopping")
        return added

    def _retire(self, replica: Replica, reason: str) -> None:
        """Out of the rotation; once its requests are done (or after --graceful-timeout), its
        container is stopped (the site finishes what it still has) and removed."""
        replica.change_state(State.DRAINING, reason)
        deadline = time.monotonic() + self.config.graceful_timeout
        while replica.in_flight > 0 and time.monotonic() < deadline:
            gevent.sleep(DRAIN_POLL)
        if replica.container_id:
            self._remove(replica, stop_timeout=5)
        self.pool.remove(replica)

    # -- stop --------------------------------------------------------------------------------

    def stop(self, remove: bool = True, stop_timeout: float = 5,
             reason: str = "left running (--keep)") -> None:
        """Stop checking and starting; remove the cluster's containers in parallel (unless not
        `remove`: then `reason` says why they stay), including any whose creation was cut short
        before its id was known."""
        self._stop_event.set()
        if self._monitor is not None:
            self._monitor.kill()  # it only waits on the event between rounds
        if self._events is not None:
            if self._event_stream is not None:
                self._event_stream.close()
            self._events.kill()
        for task in list(self._tasks):
            if task not in self._creating:  # checks, waits and backoffs: safe to cut short
                task.kill(block=False)
        self._tasks.join(timeout=TASKS_STOP_WAIT)
        self._tasks.kill()
        if not remove:
            for replica in self.pool:
                if replica.container_id:
                    replica.change_state(State.STOPPED, reason)
            return
        removals = [gevent.spawn(self._remove, r, stop_timeout) for r in self.pool if r.container_id]
        gevent.joinall(removals)
        self._remove_unrecorded()
        self.checker.close()

    def _remove_unrecorded(self) -> None:
        """Containers labelled with this cluster that no replica knows of: a start was interrupted
        between the engine creating the container and nmc learning its id."""
        try:
            strays = self.engine.list_cluster(self.config.name)
        except EngineError as e:
            log.error("could not list the cluster's containers to clean up: %s", e)
            return
        for info in strays:
            log.info("removing container %s (%s): its start was interrupted", info.name, info.short_id)
            try:
                self.engine.remove(info.id, stop_timeout=0)
            except EngineError as e:
                log.error("could not remove container %s: %s", info.name, e)

    def _remove(self, replica: Replica, stop_timeout: float) -> None:
        replica.change_state(State.STOPPING)
        try:
            self.engine.remove(replica.container_id, stop_timeout=stop_timeout)
        except EngineError as e:
            log.error("could not remove container %s of replica %s: %s", replica.short_id, replica.name, e)
            return
        replica.change_state(State.STOPPED, "container removed")
        replica.container_id = None


def _short(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def _not_running(info) -> str | None:
    """Why a container (a ContainerInfo, or None when gone) cannot answer, or None if it runs."""
    if info is None:
        return "container is gone"
    if info.status == "exited":
        return f"container exited with code {info.exit_code}"
    if not info.running:
        return f"container is {info.status}"
    return None


def _check_port_free(port: int) -> None:
    """Fail before touching Docker when a replica's host port is taken (Docker's own error is cryptic)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((REPLICA_HOST, port))
    except OSError:
        raise PortBusy(f"host port {port} is already in use: stop what holds it or choose "
                       "another --base-port") from None
    finally:
        probe.close()
