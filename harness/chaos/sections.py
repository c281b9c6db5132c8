"""The report's section of each mode: the live changes phase by phase (--changes), or the chaos
and the time to replace."""

from __future__ import annotations

import statistics
from collections import Counter
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

from harness.chaos.changes import describe_replicas
from harness.chaos.common import METHODS, POLL, SETTLE, SWARM_CONVERGE_LIMIT, ms, percentile
from harness.chaos.load import PhaseTotals, Totals, merged, phase_totals

if TYPE_CHECKING:
    from harness.chaos.run import Run


def report_changes(run: Run, add) -> None:
    add("")
    add("## Live changes, phase by phase")
    add("")
    add("A phase lasts from its call to the admin port until the next call (sent "
        f"{SETTLE:g} s after the answer{', or after Swarm had stopped what it retired' if run.args.swarm else ''}"
        "), the last one until the load stopped; t = seconds since "
        "the load began. A request counts as sent (and in p99, max) in the phase it was sent in, "
        "a failure in the phase it failed in (the change under way is its likely cause); each "
        "adds up to the totals above. Replicas: the cluster's running containers by image id, "
        "right after the call answered" + (
            " (--swarm: or, when Swarm had not stopped the tasks it retired yet, once it had: "
            f"waited for {SWARM_CONVERGE_LIMIT:g} s at most, the time is given below)" if run.args.swarm else "")
        + ".")
    add("")
    add("| # | phase | from t | call took | to t | sent GET / POST / PUT | failed GET | failed POST "
        "| failed PUT | p99 | max | replicas after |")
    add("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    load = run.load
    totals = phase_totals(load) if load is not None else None
    end_of_load = load.finished() - load.began if load is not None and load.began else None
    _phase_rows(run, add, totals, end_of_load)
    if totals is not None:
        _phase_sums(run, add, totals)
    for index, change in enumerate(run.changes):
        if change.started is not None or change.error:
            _change_details(run, add, index, change, totals, end_of_load)
    posts = sum(n for (p, m, _), n in totals.failed.items() if m == "POST") if totals is not None else 0
    if posts:
        add("")
        add("POST failures do not fail the run (a relay cannot safely resend a POST cut off mid-way), "
            "but in this mode nothing kills a replica: each one here is a request that a change cut "
            "short, on a replica it took out of the rotation and stopped (see the examples under "
            "Failures, and nmc's log at that moment).")


def _phase_rows(run: Run, add, totals: PhaseTotals | None, end_of_load: float | None) -> None:
    for index, change in enumerate(run.changes):
        if change.started is None:
            add(f"| {index} | {change.title} | not run | | | | | | | | | |")
            continue
        ended = change.ended if change.ended is not None else end_of_load
        sent, failed, latency = totals.sent, totals.failed, sorted(totals.latency.get(index, []))
        fails = {m: sum(n for (p, mm, _), n in failed.items() if p == index and mm == m) for m in METHODS}
        add(f"| {index} | {change.title} | {change.started:.1f} | {ms(change.took) if change.path else '-'} "
            f"| {'-' if ended is None else f'{ended:.1f}'} "
            f"| {' / '.join(str(sent[index, m]) for m in METHODS)} "
            + "".join(f"| {'**' + str(fails[m]) + '**' if fails[m] else 0} " for m in METHODS)
            + f"| {ms(percentile(latency, 99))} | {ms(latency[-1] if latency else None)} "
            f"| {describe_replicas(change.after) if change.answered is not None or not change.path else '-'}"
            f"{' (not as expected)' if change.check else ''} |")


def _phase_sums(run: Run, add, totals: PhaseTotals) -> None:
    """The failed requests during the scaling and during the rollouts."""
    add("")
    for label, phases in (("during scale 2 → 6 → 1 → 2 (phases 1-3)", (1, 2, 3)),
                          ("during the two rollouts (phases 4-5)", (4, 5))):
        ran = [p for p in phases if p < len(run.changes) and run.changes[p].started is not None]
        if not ran:
            continue
        sent = {m: sum(totals.sent[p, m] for p in ran) for m in METHODS}
        fails = {m: sum(n for (p, mm, _), n in totals.failed.items() if p in ran and mm == m)
                 for m in METHODS}
        add(f"**Failed requests {label}: "
            + ", ".join(f"{m} {fails[m]} of {sent[m]}" for m in METHODS) + ".**")
        add("")


def _change_details(run: Run, add, index: int, change, totals: PhaseTotals | None,
                    end_of_load: float | None) -> None:
    began_wall = run.load.began_wall if run.load is not None else None
    add(f"- **{index}. {change.title}**: `{change.call}`")
    if change.started is not None:
        ended = change.ended if change.ended is not None else end_of_load
        add(f"  - {clock(began_wall, change.started)} → {clock(began_wall, ended)} UTC "
            f"(t={change.started:.2f} → {'-' if ended is None else f'{ended:.2f}'} s)"
            + (f"; the call answered after {ms(change.took)}" if change.path and change.took is not None else ""))
    if change.path:
        add("  - answer: " + (f"{change.status} `{change.message}`" if change.message
                               else f"**{change.error or 'none: the run ended before it answered'}**"))
    if change.before or change.path:
        add(f"  - replicas before: {replica_list(change.before)}")
    if change.answered is not None or not change.path:
        add(f"  - replicas after: {replica_list(change.after)}"
            + (f" (once Swarm had stopped the tasks it retired, {change.converged - change.answered:.2f} s "
               f"after the answer, t={change.converged:.2f} s)" if change.converged is not None else "")
            + (f" — **{change.check}**" if change.check else
               f" — as expected ({change.replicas} of {change.image})" if change.after else ""))
    if totals is not None:
        failed = {(m, k): n for (p, m, k), n in totals.failed.items() if p == index}
        if failed:
            add("  - failures: " + ", ".join(f"{m} {k} × {n}" for (m, k), n in sorted(failed.items())))


def clock(began_wall: datetime | None, at: float | None) -> str:
    if began_wall is None or at is None:
        return "-"
    return f"{began_wall + timedelta(seconds=at):%H:%M:%S.%f}"[:-5]


def replica_list(replicas: list) -> str:
    """'1 (id, image i), ...'; a swarm task container <service>.<slot>.<task id> as '<slot>.<task id>'."""
    return ", ".join(f"{short_name(name)} ({cid}, image {image})" for name, cid, image in replicas) or "none"


def short_name(name: str) -> str:
    if "." in name:  # a swarm task's container (cluster names have no dot)
        slot, _, task = name.split(".", 1)[1].partition(".")
        return f"{slot}.{task[:12]}" if task else slot
    return name.rsplit('-', 1)[-1]


def report_chaos(run: Run, add) -> None:
    add("")
    add("## Chaos and time to replace")
    add("")
    if run.args.swarm:
        add("Time to replace: from the kill (pause, crash) until a new task container of the same slot "
            "(Swarm's replacement, `<service>.<slot>.<new task id>`) is running, and until it answers "
            f"/healthz on its own published port (polled every {POLL * 1000:.0f} ms).")
    else:
        add("Time to replace: from the kill (pause, crash) until a new container with the same name is "
            f"running, and until it answers /healthz on its port (polled every {POLL * 1000:.0f} ms).")
    add("")
    add("| # | t | replica | container | outcome | call took | running after | healthy after "
        "| failures until the next action |")
    add("|---|---:|---|---|---|---:|---:|---:|---|")
    after = failures_after(run, merged(run.load)) if run.load is not None else {}
    for index, action in enumerate(run.actions):
        if action.ran_at is None:
            continue
        measure = action.measure
        running = ms(measure.running_after) if measure else ""
        if measure and run.args.swarm and measure.new_id:
            running += f" ({measure.new_id[:12]})"  # Swarm's new task container
        healthy = (ms(measure.healthy_after) if measure and measure.healthy_after is not None
                   else (measure.error if measure else ""))
        add(f"| {action.what} #{action.number} | {action.ran_at:.1f} s | {action.name or '-'} "
            f"| {action.container or '-'} | {action.outcome} | {ms(action.call_took)} | {running} | {healthy} "
            f"| {', '.join(f'{k} x{n}' for k, n in sorted(after.get(index, {}).items())) or '-'} |")
    kills = [a.measure.healthy_after for a in run.actions
             if a.what == "kill" and a.measure and a.measure.healthy_after is not None]
    add("")
    if kills:
        add(f"**Kills: {len(kills)} measured; time to replace (healthy) median {ms(statistics.median(kills))}, "
            f"max {ms(max(kills))}, min {ms(min(kills))}.**")
    unmeasured = [a for a in run.actions if a.what == "kill" and a.ran_at is not None
                  and not (a.measure and a.measure.healthy_after is not None)]
    if unmeasured:
        notes = "; ".join(f"#{a.number}: {a.outcome} {a.measure.error if a.measure else ''}".strip()
                          for a in unmeasured)
        add(f"Kills without a measured replacement: {len(unmeasured)} ({notes}).")
    for what in ("pause", "unpause", "crash"):
        for action in run.actions:
            if action.what == what and action.ran_at is not None:
                extra = ""
                if action.measure:
                    extra = (f"; replaced: running after {ms(action.measure.running_after)}, healthy after "
                             f"{ms(action.measure.healthy_after)}" if action.measure.healthy_after is not None
                             else f"; {action.measure.error}")
                add(f"- **{what}** at t={action.ran_at:.1f}s of {action.name or '-'}: {action.outcome}{extra}")


def failures_after(run: Run, totals: Totals) -> dict[int, Counter]:
    """Each failure counted against the last chaos action that ran before it ended."""
    done = sorted((a.ran_at, index) for index, a in enumerate(run.actions)
                  if a.ran_at is not None and a.what != "unpause")
    counts: dict[int, Counter] = {}
    for end, method, kind in totals.failures:
        last = None
        for ran_at, index in done:
            if ran_at > end:
                break
            last = index
        if last is not None:
            counts.setdefault(last, Counter())[f"{method} {kind}"] += 1
    return counts
