"""The chaos run's report (markdown, printed and written to bench/results/) and its verdict."""

from __future__ import annotations

import os
import time
from typing import TYPE_CHECKING

from harness.chaos.common import METHODS, SITE_IMAGE, ms, percentile
from harness.chaos.load import merged
from harness.chaos.sections import report_changes, report_chaos

if TYPE_CHECKING:
    from harness.chaos.actions import Action
    from harness.chaos.run import Run


def longest_gap(ends: list[float], until: float) -> tuple[float, float]:
    """The longest time without a good answer (start, length), from the load's start to `until`."""
    best, previous = (0.0, 0.0), 0.0
    for end in [*ends, until]:
        if end - previous > best[1]:
            best = (previous, end - previous)
        previous = max(previous, end)
    return best


def phase_at(run: Run, at: float) -> str:
    """Which phase of --changes a moment (t) falls in."""
    for index, change in enumerate(run.changes):
        if change.started is not None and change.started <= at and (change.ended is None or at < change.ended):
            return f"phase {index} ({change.title}) +{at - change.started:.2f}s"
    return "outside every phase"


def moment(run: Run, end: float) -> str:
    """A request in context: the phase (--changes) or the last chaos action before it ended."""
    return phase_at(run, end) if run.args.changes else last_action_before(run.actions, end)


def last_action_before(actions: list[Action], at: float) -> str:
    done = [a for a in actions if a.ran_at is not None and a.ran_at <= at and a.name]
    if not done:
        return "before any chaos"
    last = max(done, key=lambda a: a.ran_at)
    return f"{at - last.ran_at:.2f}s after {last.what} #{last.number} of {last.name}"


def verdict(run: Run) -> tuple[int, list[str]]:
    reasons = []
    if run.error:
        reasons.append(run.error)
    if run.interrupted:
        reasons.append(f"interrupted ({run.interrupted})")
    if run.load is not None:
        failed = merged(run.load).failed
        for method in ("GET", "PUT"):
            count = sum(n for (m, _), n in failed.items() if m == method)
            if count:
                reasons.append(f"{count} {method} failure(s)")
        wrong = sum(n for (m, k), n in failed.items() if m == "POST" and k == "wrong answer")
        if wrong:
            reasons.append(f"{wrong} wrong POST answer(s)")
    if run.leaked:
        reasons.append(f"{len(run.leaked)} leaked container(s)")
    if run.service_left:
        reasons.append(f"the swarm service {run.cluster} was left ({run.service_left})")
    if not run.leak_checked:
        reasons.append("could not check for leaked containers")
    if run.args.changes and not run.error and not run.interrupted:
        for index, change in enumerate(run.changes):
            if change.error or change.check:
                reasons.append(f"phase {index} ({change.title}): {change.error or change.check}")
            elif change.started is None:
                reasons.append(f"phase {index} ({change.title}) did not run")
    return conclude(run, reasons)


def conclude(run, reasons: list[str]) -> tuple[int, list[str]]:
    """The exit code of a run (chaos, soak) with these reasons to fail: 130 when interrupted."""
    if run.image_error:
        reasons.append(run.image_error)
    if run.interrupted:
        return 130, reasons
    return (1 if reasons else 0), reasons


def report(run: Run) -> str:
    code, reasons = verdict(run)
    out = []
    add = out.append
    took = time.monotonic() - run.began
    _head(run, add, code, reasons)
    _what(run, add)
    _facts(run, add, took)
    load = run.load
    if load is not None and load.began:
        totals = merged(load)
        _requests(run, add, totals)
        _failures(run, add, totals)
    if run.args.changes:
        report_changes(run, add)
    else:
        report_chaos(run, add)
    if load is not None and load.began:
        _timeline(run, add)
    if run.nmc is not None and run.nmc.lines:
        _nmc_log(run, add)
    return "\n".join(out) + "\n"


def _head(run: Run, add, code: int, reasons: list[str]) -> None:
    args = run.args
    mode = ""
    if args.swarm:
        mode = f" on a swarm (--swarm{', --changes' if args.changes else ''})"
    add(f"# nmc chaos run{mode} {run.began_wall:%Y-%m-%d %H:%M:%S} UTC")
    add("")
    add(f"**{'PASS' if code == 0 else 'FAIL'}**" + (f": {'; '.join(reasons)}" if reasons else
        ": GET and PUT had no failure, every answer was right, nothing leaked"
        + (", every change was made" if args.changes else "")))
    add("")


def _what(run: Run, add) -> None:
    """What was run, and how to run it again."""
    args = run.args
    swarm = " --swarm" if args.swarm else ""
    if args.swarm:
        add(f"- mode: **swarm**: the replicas are the tasks of the Docker Swarm service `{run.cluster}` "
            "(one per slot, replica `<service>.<slot>`, container `<service>.<slot>.<task id>`, an "
            "ephemeral published port each); Swarm replaces a dead task itself")
    if args.changes:
        add(f"- cluster `{run.cluster}`: live changes through the admin API (scale 2 → 6 → 1 → 2, "
            f"rollout to `{run.derived or '?'}` and back to `{SITE_IMAGE}` with max_surge 2) under "
            f"{args.clients} clients, seed {run.seed} (repeat: `make chaos CHAOS_ARGS=\"--changes{swarm} "
            f"--seed {run.seed}" + (f" --clients {args.clients}" if args.clients != 32 else "") + "\"`)")
    else:
        add(f"- cluster `{run.cluster}`: {args.replicas} replicas, {args.clients} clients, "
            f"{args.duration:g} s of load, a kill every {args.kill_every:g} s, seed {run.seed} "
            f"(repeat: `make chaos CHAOS_ARGS=\"{'--swarm ' if args.swarm else ''}--seed {run.seed}"
            + (f" --replicas {args.replicas}" if args.replicas != 3 else "")
            + (f" --duration {args.duration:g}" if args.duration != 30 else "")
            + (f" --clients {args.clients}" if args.clients != 32 else "") + "\"`)")


def _facts(run: Run, add, took: float) -> None:
    args = run.args
    if run.nmc is not None:
        add(f"- nmc: `{run.nmc.command}` ({run.source})")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in run.phases.items())
    add(f"- took {took:.1f} s ({phases})")
    if run.nmc is not None and run.nmc.exit_code is not None:
        add(f"- nmc exited with code {run.nmc.exit_code} after SIGTERM "
            f"(in {run.nmc.stop_took or 0:.1f} s{', after a SIGKILL' if run.nmc.killed else ''})")
    add(f"- **leaked containers: {len(run.leaked) if run.leak_checked else 'unknown'}**"
        + (f" ({', '.join(run.leaked)}; removed)" if run.leaked else ""))
    if args.swarm:
        gone = run.phases.get("task containers gone")
        add("- swarm service: " + (f"**left after nmc exited ({run.service_left})**" if run.service_left else
                                   "gone when nmc exited" if run.leak_checked else "**unknown**")
            + (f"; its task containers gone {gone:.1f} s after nmc exited" if gone is not None
               and not run.leaked else ""))
    if args.changes:
        add(f"- image built for the rollout: removed {', '.join(run.images_removed) or 'nothing'}"
            + (f"; {run.image_error}" if run.image_error else ""))


def _requests(run: Run, add, totals) -> None:
    load = run.load
    sent, ok, failed, latency = totals.sent, totals.ok, totals.failed, totals.latency
    duration = max(1e-9, load.finished() - load.began)
    total = sum(sent.values())
    add("")
    add("## Requests")
    add("")
    add("| method | sent | ok | failed | p50 | p99 | max |")
    add("|---|---:|---:|---:|---:|---:|---:|")
    everything = []
    for method in METHODS:
        values = sorted(latency[method])
        everything.extend(values)
        n_failed = sum(n for (m, _), n in failed.items() if m == method)
        label = {"GET": "GET /whoami", "POST": "POST /echo (4 KiB)", "PUT": "PUT /echo (4 KiB)"}[method]
        add(f"| {label} | {sent[method]} | {ok[method]} | {n_failed} | {ms(percentile(values, 50))} "
            f"| {ms(percentile(values, 99))} | {ms(values[-1] if values else None)} |")
    everything.sort()
    add(f"| **all** | {total} | {sum(ok.values())} | {sum(failed.values())} "
        f"| {ms(percentile(everything, 50))} | {ms(percentile(everything, 99))} "
        f"| {ms(everything[-1] if everything else None)} |")
    add("")
    add(f"{total / duration:.0f} requests/s. Latency is per request, from sending to the whole "
        "answer read, failed ones included.")
    gap_start, gap = longest_gap(totals.ok_ends, duration)
    add(f"Longest time without any good answer: {ms(gap)} (from t={gap_start:.2f}s).")
    if totals.slowest:
        add("Slowest: " + "; ".join(
            f"{method} {ms(latency)} at t={start:.2f}s ({outcome}, answered by {served_by}, "
            f"{moment(run, start)})"
            for latency, start, method, outcome, served_by in totals.slowest) + ".")
    if run.cpu:
        add(f"CPU during the load: this load generator {run.cpu['client']:.0%} of one core "
            f"(Python threads share one: at most ~100%), nmc {run.cpu.get('nmc', 0):.0%} "
            f"of one core (one gevent process: at most 100%)"
            + (f"; the whole machine {run.cpu['machine']:.0%} busy ({os.cpu_count()} cores)."
               if "machine" in run.cpu else "."))
    stuck = sum(1 for s in load.stats if s.left_running)
    if stuck:
        add(f"{stuck} client(s) were still in a request when the run ended (abandoned).")


def _failures(run: Run, add, totals) -> None:
    failed, examples = totals.failed, totals.examples
    add("")
    add("## Failures")
    add("")
    if not failed:
        add("None.")
    else:
        add("| method | kind | count |")
        add("|---|---|---:|")
        for (method, kind), count in sorted(failed.items(), key=lambda kv: (METHODS.index(kv[0][0]), -kv[1])):
            add(f"| {method} | {kind} | {count} |")
        add("")
        add("First examples (t = seconds since the load began; the request id is in nmc's answer):")
        add("")
        for (method, kind) in sorted(failed, key=lambda k: (METHODS.index(k[0]), -failed[k])):
            for f in examples.get((method, kind), []):
                add(f"- {method} {kind}, t={f.start:.2f}-{f.end:.2f}s, {f.request_id}, "
                    f"{moment(run, f.end)}: {f.detail}")


def _timeline(run: Run, add) -> None:
    args, load = run.args, run.load
    per_second = merged(load).per_second
    seconds = sorted({s for s, _ in per_second})
    if seconds:
        add("")
        add("## Timeline")
        add("")
        add(f"| second | ok | failed | {'change' if args.changes else 'chaos'} |")
        add("|---:|---:|---:|---|")
        for second in seconds:
            add(f"| {second} | {per_second[second, 'ok']} | {per_second[second, 'failed']} "
                f"| {events_in(run, second)} |")


def _nmc_log(run: Run, add) -> None:
    add("")
    add("## nmc's log")
    add("")
    add("```")
    for line in run.nmc.lines[:400]:
        add(line)
    if len(run.nmc.lines) > 400:
        add(f"... {len(run.nmc.lines) - 400} more lines")
    add("```")


def events_in(run: Run, second: int) -> str:
    """What was done during one second of the load, for the timeline."""
    if run.args.changes:
        events = []
        for index, change in enumerate(run.changes[1:], 1):
            if change.started is not None and int(change.started) == second:
                events.append(f"{index}. {change.title}: sent")
            if change.answered is not None and int(change.answered) == second:
                events.append(f"{index}. answered" + (" (error)" if change.error else ""))
        return ", ".join(events)
    return ", ".join(f"{a.what} {a.name.rsplit('.' if run.args.swarm else '-', 1)[-1]}" for a in run.actions
                     if a.ran_at is not None and int(a.ran_at) == second and a.name)


