"""The supervisor's policy, driven through an engine in memory (tests/memory_backend.py): crash
loops and backoff, kills from outside, rollouts that fail, scale-down order, adoption of
leftovers, and an engine that goes away and comes back. No Docker, no network.

The policy's time constants are shrunk (they are its parameters, not what is tested here), so
every test takes a fraction of a second; conditions are awaited with a deadline, never timed.
"""

from __future__ import annotations

import logging
import re
import time

import gevent
import pytest

from memory_backend import SITE_ID, SITE_IMAGE, MemoryBackend, MemoryChecker
from nmc import healing, lifecycle
from nmc.backend import EngineUnreachable
from nmc.changes import ChangeFailed, leaving_order
from nmc.config import Config
from nmc.healing import crash_loop_delay
from nmc.replica import Replica, State
from nmc.supervisor import Supervisor

SETTINGS = dict(replicas=2, base_port=3001, check_interval=0.01, start_timeout=1,
                replace_after=0.05, graceful_timeout=0.1)
BACKOFF_FIRST = 0.02


def wait_until(predicate, timeout: float = 3, what: str = "the condition"):
    """Look at `predicate` until it holds (its value) or `timeout` passes (an AssertionError).
    It sleeps with gevent, so that the supervisor's greenlets run meanwhile (conftest's
    wait_until blocks the thread: it waits for other processes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        gevent.sleep(0.002)


def states_of(caplog, replica: Replica) -> list[str]:
    """The states `replica` went to, in order, as its log lines say (each change is logged once)."""
    moves = re.compile(rf"^replica {re.escape(replica.name)} \(.*\): \w+ -> (\w+)")
    found = (moves.match(r.getMessage()) for r in caplog.records if r.name == "nmc.replica")
    return [m.group(1) for m in found if m]


def messages(caplog, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if text in r.getMessage()]


def tasks_for(supervisor: Supervisor, replica: Replica) -> list[gevent.Greenlet]:
    """The supervisor's tasks still under way for `replica` (a replacement, a check)."""
    return [t for t in supervisor.lifecycle.tasks if not t.dead and replica in t.args]


@pytest.fixture(autouse=True)
def fast_policy(monkeypatch, caplog):
    monkeypatch.setattr(healing, "BACKOFF_FIRST", BACKOFF_FIRST)
    monkeypatch.setattr(healing, "BACKOFF_MAX", 4 * BACKOFF_FIRST)
    monkeypatch.setattr(healing, "ENGINE_RETRY_MAX", 0.02)
    monkeypatch.setattr(lifecycle, "READY_POLL", 0.005)
    monkeypatch.setattr(lifecycle, "INSPECT_POLL", 0.01)
    monkeypatch.setattr(lifecycle, "DRAIN_POLL", 0.005)
    caplog.set_level(logging.INFO, logger="nmc")


@pytest.fixture(autouse=True)
def greenlet_errors(monkeypatch):
    """The exceptions that killed a greenlet (gevent prints and forgets them): none, at the end."""
    hub = gevent.get_hub()
    errors: list[BaseException] = []
    handle_error = hub.handle_error

    def record(context, kind, value, tb):
        errors.append(value)
        handle_error(context, kind, value, tb)

    monkeypatch.setattr(hub, "handle_error", record)
    yield errors
    assert errors == [], "a greenlet died"


@pytest.fixture
def backend():
    return MemoryBackend(first_slot=3001)


@pytest.fixture
def checker(backend):
    return MemoryChecker(backend)


@pytest.fixture
def cluster(backend, checker):
    """Start a supervisor on the memory backend and watch its replicas; every one started is
    stopped at the end, pass or fail."""
    started: list[Supervisor] = []

    def start(**settings) -> Supervisor:
        supervisor = Supervisor(Config(**{**SETTINGS, **settings}).validate(), backend,
                                pool=None, checker=checker)
        started.append(supervisor)
        supervisor.start()
        supervisor.watch()
        wait_until(lambda: backend.listening, what="following the engine's events")
        return supervisor

    yield start
    for supervisor in started:
        supervisor.stop(stop_timeout=0)


def replaced(replica: Replica, old_id: str) -> bool:
    """`replica` serves again, with an instance other than `old_id`."""
    return replica.state is State.READY and replica.instance_id not in (None, old_id)


def crash_and_wait(backend: MemoryBackend, replica: Replica, code: int = 3) -> None:
    old = replica.instance_id
    backend.crash(old, code)
    wait_until(lambda: replaced(replica, old), what=f"{replica.name} replaced after a crash")


def kill_and_wait(backend: MemoryBackend, replica: Replica) -> None:
    old = replica.instance_id
    backend.kill(old)
    wait_until(lambda: replaced(replica, old), what=f"{replica.name} replaced after a kill")


# -- starts ------------------------------------------------------------------------------------


def test_a_starting_replica_is_probed_often_at_first_then_in_proportion_to_the_wait(monkeypatch):
    monkeypatch.setattr(lifecycle, "READY_POLL", 0.1)  # the defaults, not the fast policy's
    assert [lifecycle.ready_poll(w) for w in (0, 0.1, 0.4, 1.0, 2.0, 30.0)] == pytest.approx(
        [0.02, 0.02, 0.02, 0.05, 0.1, 0.1])


# -- crash loops and backoff -------------------------------------------------------------------


def test_the_crash_loop_delay_is_none_for_the_first_crash_then_doubles_up_to_its_cap():
    assert [crash_loop_delay(n) for n in range(8)] == [0, 0, 0.02, 0.04, 0.08, 0.08, 0.08, 0.08]


def test_the_crash_loop_delay_with_the_default_constants_is_1_2_4_up_to_60_seconds(monkeypatch):
    monkeypatch.setattr(healing, "BACKOFF_FIRST", 1.0)
    monkeypatch.setattr(healing, "BACKOFF_MAX", 60.0)
    assert [crash_loop_delay(n) for n in range(10)] == [0, 0, 1, 2, 4, 8, 16, 32, 60, 60]
    assert crash_loop_delay(1000) == 60  # no overflow far along the loop


def test_a_replica_crashing_right_after_each_start_backs_off_and_its_quick_crashes_grow(
        cluster, backend, caplog):
    supervisor = cluster()
    crasher, other = supervisor.pool.replicas
    others_instance = other.instance
    counts = []
    for _ in range(3):
        crash_and_wait(backend, crasher, code=3)
        counts.append(crasher.quick_crashes)
    assert counts == [1, 2, 3]
    # the first quick crash restarts at once; from the second on, BACKOFF before the start
    assert states_of(caplog, crasher) == [
        "ready",
        "down", "replacing", "starting", "ready",
        "down", "replacing", "backoff", "starting", "ready",
        "down", "replacing", "backoff", "starting", "ready"]
    assert messages(caplog, f"replica {crasher.name} failed 2 times in a row within 10s of "
                            "starting: next start in 0.02s")
    assert messages(caplog, f"replica {crasher.name} failed 3 times in a row within 10s of "
                            "starting: next start in 0.04s")
    assert crasher.restarts == 3 and crasher.last_exit_code == 3
    assert other.state is State.READY and other.instance is others_instance  # untouched


def test_a_crash_is_explained_once_with_its_exit_code_and_the_last_log_lines(
        cluster, backend, caplog):
    supervisor = cluster(replicas=1)
    crasher = supervisor.pool.replicas[0]
    backend.logs[crasher.instance_id] = ["listening on 8080", "giving up, as told"]
    crash_and_wait(backend, crasher, code=3)
    [line] = [r.getMessage() for r in caplog.records if r.name == "nmc.healing"]
    assert re.fullmatch(r"replica nmc-3001 exited with code 3 after \d\.\ds in the rotation; its "
                        r"last log lines: listening on 8080 \| giving up, as told", line), line


# -- crash loops versus kills from outside ------------------------------------------------------


def test_quick_kills_from_outside_never_count_as_a_crash_loop_nor_back_off(cluster, backend, caplog):
    supervisor = cluster()
    victim = supervisor.pool.replicas[1]
    for _ in range(4):
        kill_and_wait(backend, victim)
        assert victim.quick_crashes == 0
    assert "backoff" not in states_of(caplog, victim)
    assert victim.restarts == 4 and victim.last_exit_code == 137
    assert not messages(caplog, "times in a row within")


def test_paused_and_vanished_instances_are_replaced_and_not_counted_as_crashes(
        cluster, backend, caplog):
    supervisor = cluster()
    victim = supervisor.pool.replicas[0]
    for happen in (backend.pause, backend.vanish, backend.pause, backend.vanish):
        old = victim.instance_id
        happen(old)
        wait_until(lambda: replaced(victim, old), what=f"{victim.name} replaced")
        assert victim.quick_crashes == 0
    assert "backoff" not in states_of(caplog, victim)
    assert victim.restarts == 4
    assert not any(i.name == victim.name and i.problem for i in backend.instances.values())


def test_a_crash_after_serving_longer_than_quick_crash_resets_the_crash_loop_count(
        cluster, backend, caplog, monkeypatch):
    monkeypatch.setattr(healing, "QUICK_CRASH", 0.15)
    supervisor = cluster()
    crasher = supervisor.pool.replicas[0]
    crash_and_wait(backend, crasher)
    crash_and_wait(backend, crasher)
    assert crasher.quick_crashes == 2 and states_of(caplog, crasher).count("backoff") == 1
    wait_until(lambda: crasher.uptime() > healing.QUICK_CRASH, what="serving past QUICK_CRASH")
    crash_and_wait(backend, crasher)
    assert crasher.quick_crashes == 0  # it served a while: no crash loop, no backoff
    assert states_of(caplog, crasher).count("backoff") == 1
    crash_and_wait(backend, crasher)  # a quick crash again counts from 1: still no backoff
    assert crasher.quick_crashes == 1 and states_of(caplog, crasher).count("backoff") == 1


# -- rollouts -----------------------------------------------------------------------------------


def test_a_rollout_whose_new_replica_never_answers_fails_and_the_old_replicas_keep_serving(
        cluster, backend, checker, caplog):
    backend.images["site:broken"] = "sha256:broken"
    checker.failing_images.add("sha256:broken")  # its instances run, and never answer
    supervisor = cluster(start_timeout=0.1)
    before = {r.name: r.instance for r in supervisor.pool}
    with pytest.raises(ChangeFailed, match=rf"rollout of site:broken stopped, the replicas of "
                                           rf"{SITE_IMAGE} keep serving: replica nmc-3003 did not "
                                           r"answer /healthz within 0.1s \(last try: status 503\)"):
        supervisor.rollout("site:broken")
    assert {r.name: r.instance for r in supervisor.pool} == before
    assert all(r.state is State.READY for r in supervisor.pool)
    assert all(states_of(caplog, r) == ["ready"] for r in supervisor.pool)  # served all along
    new = [i for i in backend.started if i.image_id == "sha256:broken"]
    assert [i.name for i in new] == ["nmc-3003"]  # max_surge 1: one tried, and it failed
    assert all(i.id in backend.removed for i in new)
    assert {i.image_id for i in backend.instances.values()} == {SITE_ID}
    assert (supervisor.image, supervisor.image_id) == (SITE_IMAGE, SITE_ID)  # new replicas: old image
    assert supervisor.rollout() == f"nothing to roll out: every replica runs {SITE_IMAGE} (site)"


def test_a_rollout_replaces_every_replica_one_at_a_time_with_the_new_image(cluster, backend, caplog):
    backend.images["site:v2"] = "sha256:v2"
    supervisor = cluster()
    old = {r.instance_id for r in supervisor.pool}
    assert supervisor.rollout("site:v2") == "rolled out site:v2 (v2) to 2 replicas"
    assert len(supervisor.pool) == 2
    assert all(r.state is State.READY and r.instance.image_id == "sha256:v2" for r in supervisor.pool)
    assert old <= set(backend.removed)
    assert {i.image_id for i in backend.instances.values()} == {"sha256:v2"}
    # one new replica at a time, in the lowest free slot: 3003, then 3001 (freed by the first)
    assert [i.name for i in backend.started[2:]] == ["nmc-3003", "nmc-3001"]
    assert supervisor.image_id == "sha256:v2"


# -- scaling down -------------------------------------------------------------------------------


def make_replica(slot: int, state: State, ready_at: float | None) -> Replica:
    return Replica(f"nmc-{slot}", slot, state=state, ready_at=ready_at)


def test_a_scale_down_takes_out_of_rotation_replicas_first_then_the_newest_then_the_highest_slot():
    oldest = make_replica(3001, State.READY, ready_at=1.0)
    newer = make_replica(3002, State.READY, ready_at=5.0)
    down = make_replica(3003, State.DOWN, ready_at=2.0)
    as_new_higher_slot = make_replica(3004, State.READY, ready_at=5.0)
    backing_off = make_replica(3005, State.BACKOFF, ready_at=3.0)
    order = leaving_order([oldest, newer, down, as_new_higher_slot, backing_off])
    assert [r.slot for r in order] == [3005, 3003, 3004, 3002, 3001]


def test_scale_1_on_three_replicas_removes_the_one_out_of_rotation_then_the_newest(
        cluster, backend, checker):
    supervisor = cluster(replicas=3, replace_after=60)
    first, second, third = supervisor.pool.replicas
    kill_and_wait(backend, second)  # back in the rotation last: the newest
    checker.answer(first.url, ok=False)  # failing its checks: out of the rotation
    wait_until(lambda: first.state is State.DOWN, what="nmc-3001 out of the rotation")
    leaving = [first.instance_id, second.instance_id]
    assert supervisor.scale(1) == "scaled from 3 to 1 replicas: removed nmc-3001, nmc-3002"
    assert supervisor.pool.replicas == [third] and third.state is State.READY
    assert first.state is second.state is State.STOPPED
    assert set(leaving) <= set(backend.removed)
    assert [i.name for i in backend.instances.values()] == ["nmc-3003"]


def test_scale_up_starts_new_replicas_in_the_lowest_free_slots(cluster, backend):
    supervisor = cluster(replicas=1)
    assert supervisor.scale(3) == "scaled from 1 to 3 replicas: started nmc-3002, nmc-3003"
    assert [(r.name, r.state) for r in supervisor.pool] == [
        ("nmc-3001", State.READY), ("nmc-3002", State.READY), ("nmc-3003", State.READY)]
    assert supervisor.scale(3) == "already 3 replicas: nothing to do"


# -- leftovers: adopted or removed --------------------------------------------------------------


def test_matching_leftovers_are_adopted_and_the_others_removed(cluster, backend, caplog):
    adoptable = backend.leave(3001)
    other_settings = backend.leave(3002, same_settings=False)
    exited = backend.leave(3003, running=False)
    other_image = backend.leave(3004, image_id="sha256:old")
    beyond_the_pool = backend.leave(3009)
    supervisor = cluster(replicas=4)
    by_name = {r.name: r for r in supervisor.pool}
    assert all(r.state is State.READY for r in supervisor.pool)
    assert by_name["nmc-3001"].instance_id == adoptable.id  # adopted: the same instance
    assert by_name["nmc-3001"].restarts == 0
    assert sorted(backend.removed) == sorted(
        [other_settings.id, exited.id, other_image.id, beyond_the_pool.id])
    assert sorted(i.name for i in backend.started) == ["nmc-3002", "nmc-3003", "nmc-3004"]
    assert sorted(i.name for i in backend.instances.values()) == [
        "nmc-3001", "nmc-3002", "nmc-3003", "nmc-3004"]
    assert messages(caplog, f"adopting running container nmc-3001 ({adoptable.short_id})")
    assert len(messages(caplog, "removing leftover container")) == 4


def test_stop_removes_every_instance_of_the_cluster_and_closes_the_checker(backend, checker):
    supervisor = Supervisor(Config(**SETTINGS).validate(), backend, checker=checker)
    supervisor.start()
    supervisor.watch()
    supervisor.stop(stop_timeout=0)
    assert backend.instances == {} and checker.closed
    assert all(r.state is State.STOPPED and r.instance is None for r in supervisor.pool)


# -- the engine going away and coming back ------------------------------------------------------


def test_the_engine_going_away_is_said_once_replicas_keep_serving_and_its_return_is_said(
        cluster, backend, caplog):
    supervisor = cluster()
    instances = [r.instance for r in supervisor.pool]
    backend.go_away()
    asked = backend.events_asked
    for more in range(1, 4):  # several tries to reconnect, all failing
        wait_until(lambda: backend.events_asked >= asked + more, what="a try to reconnect")
        assert all(r.state is State.READY for r in supervisor.pool)
    [lost] = messages(caplog, "relaying to the replicas that still answer; reconnecting")
    assert lost.startswith("the engine's event stream broke")
    assert not messages(caplog, "is back")
    backend.come_back()
    wait_until(lambda: messages(caplog, "is back: checking every replica"), what="the engine back")
    wait_until(lambda: backend.listening, what="following the events again")
    assert len(messages(caplog, "relaying to the replicas that still answer")) == 1
    assert [r.instance for r in supervisor.pool] == instances
    assert all(r.state is State.READY for r in supervisor.pool)
    assert all(states_of(caplog, r) == ["ready"] for r in supervisor.pool)


def test_a_replica_killed_while_the_engine_is_away_is_replaced_once_it_is_back(
        cluster, backend, caplog):
    supervisor = cluster()
    survivor, victim = supervisor.pool.replicas
    killed = victim.instance_id
    backend.go_away()
    backend.kill(killed)  # no event tells: the checks notice it no longer answers
    wait_until(lambda: victim.state is State.DOWN, what="the checks taking it out")
    asked = backend.events_asked
    wait_until(lambda: backend.events_asked >= asked + 2, what="more tries to reconnect")
    # not replaced while the engine is away, however long it fails (with live-restore, it may
    # be alive and come back with the engine's port proxies): the engine is asked once back
    assert victim.state is State.DOWN and victim.instance_id == killed
    assert survivor.state is State.READY
    backend.come_back()
    wait_until(lambda: replaced(victim, killed), what=f"{victim.name} replaced")
    assert killed in backend.removed
    assert victim.restarts == 1 and victim.quick_crashes == 0
    assert survivor.state is State.READY and states_of(caplog, survivor) == ["ready"]
    assert len(messages(caplog, "relaying to the replicas that still answer")) == 1


def test_the_engine_gone_at_start_is_one_clear_error(backend, checker):
    backend.go_away()
    supervisor = Supervisor(Config(**SETTINGS).validate(), backend, checker=checker)
    with pytest.raises(EngineUnreachable):
        supervisor.start()
    backend.come_back()
    supervisor.stop(stop_timeout=0)
    assert backend.started == []


# -- a scale-down or the engine meeting a replacement under way ----------------------------------


def test_a_scale_down_that_retires_a_backing_off_replica_leaves_no_instance_behind(
        cluster, backend, monkeypatch):
    monkeypatch.setattr(healing, "BACKOFF_FIRST", 0.1)  # long enough to scale down meanwhile
    monkeypatch.setattr(healing, "BACKOFF_MAX", 0.1)
    supervisor = cluster()
    keeper, crasher = supervisor.pool.replicas
    crash_and_wait(backend, crasher)
    backend.crash(crasher.instance_id)  # the second quick crash: it backs off
    wait_until(lambda: crasher.state is State.BACKOFF, what="the backoff")
    assert supervisor.scale(1) == "scaled from 2 to 1 replicas: removed nmc-3002"
    assert supervisor.pool.replicas == [keeper]
    wait_until(lambda: not tasks_for(supervisor, crasher), what="its replacement task to end")
    assert [i.name for i in backend.instances.values()] == ["nmc-3001"]
    assert crasher.state is State.STOPPED


def test_an_engine_lost_for_one_start_only_is_said_again_when_it_goes_away_later(
        cluster, backend, caplog):
    supervisor = cluster(replicas=1)
    replica = supervisor.pool.replicas[0]
    backend.next_start_error = EngineUnreachable("lost the engine while trying to start a replica "
                                                 "(read timed out)")
    crash_and_wait(backend, replica)  # its first restart fails once, the next works
    assert backend.listening  # the events never stopped: the engine was there all along
    assert len(messages(caplog, "relaying to the replicas that still answer")) == 1
    backend.go_away()  # now it really goes
    asked = backend.events_asked
    wait_until(lambda: backend.events_asked > asked, what="a try to reconnect")
    assert len(messages(caplog, "relaying to the replicas that still answer")) == 2


def test_a_scale_down_that_retires_a_replica_whose_replacement_is_starting_ends_it_quietly(
        cluster, backend, checker, caplog, greenlet_errors):
    supervisor = cluster(start_timeout=5)
    keeper, leaving = supervisor.pool.replicas
    checker.answer(leaving.url, ok=False)  # its next instance takes its time to answer
    old = leaving.instance_id
    backend.crash(old)
    wait_until(lambda: leaving.state is State.STARTING and leaving.instance_id not in (None, old),
               what="its replacement starting")
    assert supervisor.scale(1) == "scaled from 2 to 1 replicas: removed nmc-3002"
    wait_until(lambda: not tasks_for(supervisor, leaving), what="its replacement task to end")
    assert [i.name for i in backend.instances.values()] == ["nmc-3001"]
    assert leaving.state is State.STOPPED
    assert not messages(caplog, "could not replace replica nmc-3002")
    assert greenlet_errors == []
