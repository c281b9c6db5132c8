"""The soak's report (markdown, printed and written to bench/results/soak-<time>.md) and verdict."""

from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING

from harness.chaos.report import conclude
from harness.soak.load import Event, Tally, chaos_tallies
from harness.soak.samples import SAMPLE_EVERY, figures, judge

if TYPE_CHECKING:
    from harness.soak.__main__ import SoakRun

EXPLAIN_BEFORE, EXPLAIN_AFTER = 1.0, 2.0  # seconds around a fault's span that it explains


def log(message: str) -> None:
    print(f"soak: {message}", file=sys.stderr, flush=True)


def tallies(run: SoakRun) -> list[Tally]:
    out = chaos_tallies(run.load) if run.load is not None and run.load.began else []
    return out + [load.tally for load in run.loads]


def unexplained(run: SoakRun, tally: Tally) -> list[Event]:
    """Failures and cuts of a kind a fault may cause that no fault's span explains."""
    began = run.load.began
    spans = [f.span for f in run.faults if f.span is not None]
    return [e for e in tally.events
            if not any(s0 - EXPLAIN_BEFORE <= e.end - began and e.start - began <= s1 + EXPLAIN_AFTER
                       for s0, s1 in spans)]


def judgements(run: SoakRun) -> list:
    samples = run.sampler.samples if run.sampler is not None else []
    return [judge(figure, run.warmup) for figure in figures(samples)]


def verdict(run: SoakRun) -> tuple[int, list[str]]:
    reasons = []
    if run.error:
        reasons.append(run.error)
    if run.interrupted:
        reasons.append(f"interrupted ({run.interrupted})")
    if not run.error and not run.interrupted:
        for j in judgements(run):
            if j.growing is None:
                reasons.append(f"{j.figure.name}: too few samples after the warm-up to judge")
            elif j.growing:
                reasons.append(f"{j.figure.name} keeps growing ({j.slope_per_min:+.2f}{j.figure.unit}/min)")
        for tally in tallies(run):
            failed = sum(tally.failed.values())
            wrong = tally.failed.get("wrong answer", 0)
            if tally.idempotent and failed:
                reasons.append(f"{failed} failed: {tally.name}")
            elif wrong:
                reasons.append(f"{wrong} wrong answer(s): {tally.name}")
            elif run.faults and unexplained(run, tally):
                reasons.append(f"{len(unexplained(run, tally))} failed or cut with no fault under "
                               f"them: {tally.name}")
        for fault in run.faults:
            if fault.change is not None and (fault.change.error or fault.change.check):
                reasons.append(f"{fault.what}: {fault.change.error or fault.change.check}")
    if run.nmc is not None and run.nmc.exit_code != 0:
        reasons.append(f"nmc exited with code {run.nmc.exit_code}"
                       + (" (killed: it did not exit after SIGTERM)" if run.nmc.killed else ""))
    if run.leaked:
        reasons.append(f"{len(run.leaked)} leaked container(s)")
    if not run.leak_checked:
        reasons.append("could not check for leaked containers")
    if run.proxies_after:
        reasons.append(f"{run.proxies_after} docker-proxy process(es) of the cluster's ports left")
    if run.run_dir_left:
        reasons.append(f"left in the run directory: {', '.join(run.run_dir_left)}")
    return conclude(run, reasons)


def report(run: SoakRun) -> str:
    code, reasons = verdict(run)
    out: list[str] = []
    add = out.append
    add(f"# nmc soak {run.began_wall:%Y-%m-%d %H:%M:%S} UTC{' (quick)' if run.quick else ''}")
    add("")
    add(f"**{'PASS' if code == 0 else 'FAIL'}**" + (f": {'; '.join(reasons)}" if reasons else
        ": no figure kept growing, no idempotent request failed, every cut fell in a fault's span, "
        "every change was made, nothing leaked"))
    add("")
    _setup(run, add)
    _figures(run, add)
    _requests(run, add)
    _faults(run, add)
    _end(run, add)
    _samples(run, add)
    if run.nmc is not None and run.nmc.lines:
        add("")
        add("## nmc's log (without the per-request lines)")
        add("")
        add("```")
        add(run.nmc.log_summary(150))
        add("```")
    return "\n".join(out) + "\n"


def _setup(run: SoakRun, add) -> None:
    add(f"- cluster `{run.cluster}`: {run.minutes:g} min of load{' (--quick)' if run.quick else ''}, "
        f"seed {run.seed}; repeat: `make soak" + (" QUICK=1" if run.quick else
                                                  f" SOAK_MINUTES={run.minutes:g}") + "`")
    if run.nmc is not None:
        add(f"- nmc: `{run.nmc.command}` ({run.source})")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in run.phases.items())
    add(f"- took {time.monotonic() - run.began:.1f} s ({phases})")
    add(f"- samples every {SAMPLE_EVERY:g} s; judged from t = {run.warmup:g} s (the warm-up before "
        "is left out)")


def _sample_columns(run: SoakRun, samples: list) -> list:
    """The samples nearest to 1, 5 and 10 minutes (and the last); quick: every one."""
    if run.quick or not samples:
        return samples
    wanted = [t for t in (60.0, 300.0, 600.0) if t < samples[-1].t] + [samples[-1].t]
    chosen = []
    for t in wanted:
        nearest = min(samples, key=lambda s: abs(s.t - t))
        if nearest not in chosen:
            chosen.append(nearest)
    return chosen


def _figures(run: SoakRun, add) -> None:
    samples = run.sampler.samples if run.sampler is not None else []
    add("")
    add("## Figures over time")
    add("")
    if not samples:
        add("No samples.")
        return
    columns = _sample_columns(run, samples)
    add("A figure keeps growing when the least-squares line through its samples after the warm-up "
        "grows, over that window, by more than its limit: a floor plus a share of its mean there "
        "(`harness/soak/samples.py`: a leak of one per kill passes every count's floor in a "
        "10-minute run; for RSS 4 MiB + 10 % of the mean, about 1 MiB/min for a 50 MiB nmc).")
    add("")
    add("| figure | " + " | ".join(f"t={s.t / 60:.1f} min" if not run.quick else f"t={s.t:g} s"
                                   for s in columns)
        + " | mean | slope /min | growth over the window | limit | |")
    add("|---|" + "---:|" * len(columns) + "---:|---:|---:|---:|---|")
    by_time = {}
    for j in judgements(run):
        values = dict(j.figure.values)
        by_time[j.figure.name] = values
        unit = j.figure.unit
        cells = [_num(values.get(s.t)) for s in columns]
        growing = "n/a" if j.growing is None else "**growing**" if j.growing else "flat"
        add(f"| {j.figure.name}{f' ({unit})' if unit else ''} | " + " | ".join(cells)
            + f" | {_num(j.mean)} | {_num(j.slope_per_min, signed=True)} | {_num(j.growth, signed=True)}"
            f" | {_num(j.limit)} | {growing} |")
    missed = [s for s in samples if s.error]
    if missed:
        add("")
        add(f"{len(missed)} sample(s) incomplete: " + "; ".join(f"t={s.t:g} s {s.error}" for s in missed[:8]))


def _num(value, signed: bool = False) -> str:
    if value is None:
        return "-"
    text = f"{value:+.2f}" if signed else f"{value:.1f}" if value != int(value) else f"{int(value)}"
    return text


def _requests(run: SoakRun, add) -> None:
    add("")
    add("## Requests")
    add("")
    add("| kind | sent | ok | failed | cut by a fault | not explained by a fault | failures and cuts by kind |")
    add("|---|---:|---:|---:|---:|---:|---|")
    all_tallies = tallies(run)
    for tally in all_tallies:
        kinds = {**tally.failed, **tally.cut}
        lost = unexplained(run, tally) if run.load is not None and run.faults else []
        add(f"| {tally.name}{'' if tally.idempotent else ' (not idempotent)'} | {tally.sent} | {tally.ok} "
            f"| {sum(tally.failed.values())} | {sum(tally.cut.values())} | {len(lost)} | "
            + (", ".join(f"{k}: {n}" for k, n in sorted(kinds.items(), key=lambda kv: -kv[1])) or "-") + " |")
    add("")
    add("Idempotent requests (GET, PUT; a stream's head) must never fail: nmc retries them on another "
        "replica. A POST without an Idempotency-Key in flight on a killed replica may fail (`502`), a "
        "stream or WebSocket session may be cut when its replica dies under it: each must fall in a "
        f"fault's span ({EXPLAIN_BEFORE:g} s before it to {EXPLAIN_AFTER:g} s after; a kill's until "
        "its replica answered again).")
    examples = [(tally, e) for tally in all_tallies for e in tally.examples() if e.detail]
    if examples and run.load is not None:
        add("")
        add("First examples (t = seconds since the load began):")
        add("")
        for tally, e in examples[:24]:
            add(f"- {tally.name}: {e.kind}, t={e.start - run.load.began:.2f}-{e.end - run.load.began:.2f} s: "
                f"{e.detail}")


def _faults(run: SoakRun, add) -> None:
    add("")
    add("## Faults")
    add("")
    if not run.faults:
        add("None ran.")
        return
    add("| planned t | ran t | fault | outcome |")
    add("|---:|---:|---|---|")
    for fault in run.faults:
        ran = fault.ran_at
        add(f"| {fault.at:g} s | {'-' if ran is None else f'{ran:.1f} s'} | {fault.what} | "
            f"{fault.outcome.replace('|', '/')} |")
    kills = [f.action.measure.healthy_after for f in run.faults
             if f.action is not None and f.action.what == "kill" and f.action.measure is not None
             and f.action.measure.healthy_after is not None]
    if kills:
        add("")
        add(f"Killed replicas answered again after {min(kills):.2f}-{max(kills):.2f} s "
            f"(median {sorted(kills)[len(kills) // 2]:.2f} s, {len(kills)} kills).")


def _end(run: SoakRun, add) -> None:
    nmc = run.nmc
    add("")
    add("## At the end")
    add("")
    if nmc is not None:
        add(f"- nmc exited with code {nmc.exit_code} after SIGTERM (in {nmc.stop_took or 0:.1f} s"
            f"{', after a SIGKILL' if nmc.killed else ''})")
    add(f"- containers of the cluster left: {len(run.leaked) if run.leak_checked else 'unknown'}"
        + (f" ({', '.join(run.leaked)}; removed)" if run.leaked else ""))
    add(f"- docker-proxy processes of the cluster's ports left: "
        f"{'unknown' if run.proxies_after is None else run.proxies_after} (the ports were free at the start)")
    before, after = run.machine_proxies
    add(f"- docker-proxy processes on the whole machine: {before} at the start, {after} at the end "
        "(other users of the engine count here too)")
    add("- files left in nmc's run directory: "
        + ("unknown" if run.run_dir_left is None else ", ".join(run.run_dir_left) or "none"))
    add(f"- the image built for the rollout: removed {', '.join(run.images_removed) or 'nothing'}"
        + (f"; {run.image_error}" if run.image_error else ""))


def _samples(run: SoakRun, add) -> None:
    samples = run.sampler.samples if run.sampler is not None else []
    if not samples:
        return
    add("")
    add("## Every sample")
    add("")
    add("| t (s) | RSS (MiB) | fds | fds by kind | greenlets | client connections | replica connections "
        "| containers (running) | docker-proxy (RSS MiB) |")
    add("|---:|---:|---:|---|---:|---|---|---:|---:|")
    for s in samples:
        p = s.process
        if p is None:
            add(f"| {s.t:g} | - | - | - | - | {s.error} | - | {s.containers} ({s.running}) "
                f"| {s.proxies} ({s.proxy_rss_kib / 1024:.1f}) |")
            continue
        clients, replicas = (", ".join(f"{n} {state}" for state, n in p[group].items()) or "0"
                             for group in ("client_connections", "replica_connections"))
        kinds = ", ".join(f"{n} {kind}" for kind, n in s.fd_kinds.items()) or "-"
        add(f"| {s.t:g} | {p['rss_bytes'] / 2**20:.1f} | {p['open_fds']} | {kinds} | {p['greenlets']} | {clients} "
            f"| {replicas} | {s.containers} ({s.running}) | {s.proxies} ({s.proxy_rss_kib / 1024:.1f}) |")
