"""The soak's faults on a fixed schedule: a replica killed every KILL_EVERY seconds, a pause (and
its unpause), a scale up and down and rollouts through the admin API. The kills and the pause are
harness.chaos.actions' (with their time to replace), the changes harness.chaos.changes'. One
fault at a time, in order: a change answers when it is done, and the next fault waits for it."""

from __future__ import annotations

import time
from dataclasses import dataclass

from harness.chaos.actions import Action, Chaos
from harness.chaos.changes import Change, Changes, describe_replicas
from harness.chaos.common import PAUSE_FOR, SITE_IMAGE
from harness.cleanup import ENGINE_ERRORS

KILL_EVERY = 20.0
REPLICAS = 3        # the cluster's size, but for the time between the scale up and down
SCALED = 5


@dataclass
class Fault:
    at: float                       # planned, seconds after the load began
    action: Action | None = None    # a kill, pause or unpause
    change: Change | None = None    # a scale or rollout

    @property
    def what(self) -> str:
        return self.action.what if self.action else self.change.title

    @property
    def ran_at(self) -> float | None:
        return self.action.ran_at if self.action else self.change.started

    @property
    def span(self) -> tuple[float, float] | None:
        """When it acted (run-relative): a kill or pause until its replica answered again (or
        REPLACE_LIMIT), a change from its call to its answer."""
        if self.action is not None:
            if self.action.ran_at is None:
                return None
            measure = self.action.measure
            healed = measure.healthy_after if measure is not None else None
            return self.action.ran_at, self.action.ran_at + (healed if healed is not None else 20.0)
        if self.change.started is None:
            return None
        return self.change.started, self.change.answered or self.change.started

    @property
    def outcome(self) -> str:
        if self.action is not None:
            a = self.action
            text = f"{a.name or '-'}: {a.outcome}"
            if a.measure is not None:
                m = a.measure
                text += (f"; answering again after {m.healthy_after:.2f} s" if m.healthy_after is not None
                         else f"; {m.error}" if m.error else "")
            return text
        c = self.change
        if c.error or c.took is None:
            return f"{c.call}: **{c.error or 'not run'}**"
        return (f"{c.call}: {c.message} ({c.took:.1f} s); replicas after: {describe_replicas(c.after)}"
                + (f"; **{c.check}**" if c.check else ""))


def schedule(duration: float, quick: bool, derived: str, ports: list[int]) -> list[Fault]:
    """The faults of a run of `duration` seconds. Kills at every KILL_EVERY s; the pause, the
    scale up and down and the rollout(s) between two kills. Quick (a minute): each once, early
    enough to be sampled after. The kills pick the replicas in turn (by port)."""
    faults = [Fault(at, Action(at, "kill", ports[i % REPLICAS], i + 1))
              for i, at in enumerate(_every(KILL_EVERY, duration - 5))]
    if quick:
        pause, up, down, rollouts = 10.0, 25.0, 32.0, [(47.0, derived)]
    else:
        pause = _between(0.2 * duration)
        up, down = _between(0.35 * duration), _between(0.35 * duration) + KILL_EVERY
        rollouts = [(_between(0.55 * duration), derived), (_between(0.8 * duration), SITE_IMAGE)]
    faults.append(Fault(pause, Action(pause, "pause", ports[1], 1)))
    faults.append(Fault(pause + PAUSE_FOR, Action(pause + PAUSE_FOR, "unpause", ports[1], 1)))
    faults.append(Fault(up, change=Change(f"scale {REPLICAS} → {SCALED}", "/scale", {"replicas": SCALED},
                                          SCALED, SITE_IMAGE)))
    faults.append(Fault(down, change=Change(f"scale {SCALED} → {REPLICAS}", "/scale", {"replicas": REPLICAS},
                                            REPLICAS, SITE_IMAGE)))
    for at, image in rollouts:
        faults.append(Fault(at, change=Change(f"rollout to {image}", "/rollout", {"image": image},
                                              REPLICAS, image)))
    return sorted((f for f in faults if f.at < duration - 3), key=lambda f: f.at)


def _every(step: float, until: float) -> list[float]:
    return [step * i for i in range(1, int(until // step) + 1)]


def _between(at: float) -> float:
    """Half-way between the two kills around `at`."""
    return KILL_EVERY * int(at // KILL_EVERY) + KILL_EVERY / 2


def run_faults(faults: list[Fault], chaos: Chaos, changer: Changes, began: float, end: float,
               alive) -> None:
    """Each fault at its time (or, after a long change, late: its real time is kept), in order,
    until `end` (monotonic). `alive()` is False once nmc exited: the run stops there."""
    for fault in faults:
        wait = began + fault.at - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # a signal interrupts it (Interrupted)
        if not alive():
            raise RuntimeError("nmc exited during the soak")
        if fault.action is not None:
            chaos.run(fault.action)
            continue
        change = fault.change
        change.started = time.monotonic() - began
        try:
            change.before = changer.replicas()
            changer.call(change, max(10.0, end - time.monotonic()))
            change.answered = time.monotonic() - began
            change.after = changer.replicas()
        except ENGINE_ERRORS as e:  # the engine away (restarted by someone else): said, not fatal
            change.error = change.error or f"the engine did not answer: {type(e).__name__}: {str(e)[:160]}"
            change.answered = change.answered or time.monotonic() - began
            continue
        change.check = changer.check(change)
