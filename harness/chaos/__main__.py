"""`make chaos` (scripts/chaos.py) and `python -m harness.chaos`: the options, the signals, and
one run from start to verdict; see harness/chaos/__init__.py."""

from __future__ import annotations

import argparse
import random
import signal
import sys
import time
import uuid
from typing import Callable

import docker
import docker.errors
import requests

from harness.chaos.actions import Chaos, make_schedule
from harness.chaos.changes import Changes, build_derived, changes_sequence
from harness.chaos.common import (CHANGES_LIMIT, SITE_IMAGE, Interrupted, engine, log, publish,
                                  short_id, swarm_problem)
from harness.chaos.load import Load
from harness.chaos.report import report, verdict
from harness.chaos.run import Run, clean_up, load_and_changes, load_and_chaos, start_nmc
from harness.processes import source_state


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chaos.py", description="A bounded chaos run against an nmc cluster of its own "
        "(kills, a pause, a crash under load; or, with --changes, live scaling and rolling "
        "updates under load); see the module docstring.")
    parser.add_argument("--replicas", "-n", type=int, default=None, help="replicas (default 3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load (default 30)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seed", type=int, default=None, help="fixes the chaos schedule and the "
                        "request mix (default: a random one, printed)")
    parser.add_argument("--kill-every", type=float, default=None, help="seconds between kills (default 2)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--no-chaos", action="store_true", help="the load alone: a baseline to "
                        "compare latency and throughput with")
    parser.add_argument("--changes", action="store_true", help="instead of the chaos, live changes "
                        "through the admin API: scale 2 -> 6 -> 1 -> 2, a rollout to a second image "
                        "and back (max_surge 2); failures per phase")
    parser.add_argument("--swarm", action="store_true", help="run nmc with --swarm: the replicas "
                        "are the tasks of a Docker Swarm service (the engine must be a swarm manager)")
    args = parser.parse_args(argv)
    if args.changes:
        given = [name for name, value in (("--replicas", args.replicas), ("--duration", args.duration),
                                          ("--kill-every", args.kill_every), ("--no-chaos", args.no_chaos or None))
                 if value is not None]
        if given:
            parser.error(f"not with --changes: {', '.join(given)} (its replicas and "
                         "duration follow from its fixed sequence of changes)")
        args.replicas, args.duration, args.kill_every = 2, CHANGES_LIMIT, 0.0
        if not 1 <= args.clients <= 1024:
            parser.error("--clients must be from 1 to 1024")
        if not 0.1 <= args.timeout <= 60:
            parser.error("--timeout must be from 0.1 to 60 seconds")
        return args
    args.replicas = 3 if args.replicas is None else args.replicas
    args.duration = 30.0 if args.duration is None else args.duration
    args.kill_every = 2.0 if args.kill_every is None else args.kill_every
    if not 1 <= args.replicas <= 64:
        parser.error("--replicas must be from 1 to 64")
    if not 1 <= args.duration <= 3600:
        parser.error("--duration must be from 1 to 3600 seconds")
    if not 1 <= args.clients <= 1024:
        parser.error("--clients must be from 1 to 1024")
    if not 0.2 <= args.kill_every <= 3600:
        parser.error("--kill-every must be at least 0.2 seconds")
    if not 0.1 <= args.timeout <= 60:
        parser.error("--timeout must be from 0.1 to 60 seconds")
    return args


class Signals:
    """The first SIGINT/SIGTERM/SIGHUP raises Interrupted (the finally blocks clean up); later ones
    while cleaning up are only noted, so that the clean-up itself is never cut short."""

    def __init__(self):
        self.count = 0
        self.cleaning = False
        self.name = ""

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.handle)

    def handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            self.name = signal.Signals(signum).name
        if self.cleaning or self.count > 1:
            log(f"{signal.Signals(signum).name}: still removing the cluster, a few seconds more")
            return
        raise Interrupted(self.name)

    def guard(self, run, work: Callable[[], int | None], clean: Callable[[], None]) -> int | None:
        """work(), then clean() whatever happened: an interruption or an error is noted in the
        run (and said), not raised. What work() returned (an exit code that skips the report)."""
        try:
            return work()
        except Interrupted as e:
            run.interrupted = str(e)
            log(f"interrupted ({e}): stopping the load and removing the cluster")
        except Exception as e:  # whatever it is, the cluster is removed and the report says it
            run.error = f"{type(e).__name__}: {e}"
            log(f"error: {run.error}; removing the cluster")
        finally:
            self.cleaning = True
            clean()
            if self.count and not run.interrupted:
                run.interrupted = self.name
        return None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signals = Signals()
    signals.install()
    run = Run(args)
    run.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    run.cluster = f"nmc-chaos-{uuid.uuid4().hex[:8]}"
    run.source = source_state()
    client = None
    if args.swarm and swarm_refused():  # before anything is made: nothing to clean up, no report
        return 2

    def work() -> int | None:
        nonlocal client
        try:
            client = engine()
            client.ping()
        except docker.errors.DockerException as e:
            run.error = f"no Docker engine answers ({e})"
            log(run.error)
            return 1
        if args.changes:
            build_image(run, client)
        run.phases["start nmc"] = start_nmc(run)
        if run.error:
            return 1
        if args.changes:
            run_changes(run, client)
        else:
            run_chaos(run, client)
        return None

    code = signals.guard(run, work, lambda: clean_up(run, client))
    if code is not None:
        return code
    return finish(run)


def swarm_refused() -> bool:
    """--swarm on an engine that is no swarm manager: said in one line."""
    probe = None
    try:
        probe = engine()
        problem = swarm_problem(probe)
    except (docker.errors.DockerException, requests.exceptions.RequestException):
        problem = None  # said later, as without --swarm
    finally:
        if probe is not None:
            probe.close()
    if problem:
        log(problem)
    return bool(problem)


def build_image(run: Run, client: docker.DockerClient) -> None:
    """--changes: the second image to roll out, built FROM the site's."""
    began = time.monotonic()
    try:
        site_id = client.images.get(SITE_IMAGE).id
    except docker.errors.ImageNotFound:
        raise RuntimeError(f"image {SITE_IMAGE} is missing: `make nodejs` builds it") from None
    run.derived, derived_id = build_derived(client, run.cluster)
    run.image_ids = {SITE_IMAGE: site_id, run.derived: derived_id}
    run.phases["build image"] = time.monotonic() - began
    log(f"built {run.derived} ({short_id(derived_id)}) FROM {SITE_IMAGE} ({short_id(site_id)}) "
        f"in {run.phases['build image']:.1f}s")


def run_changes(run: Run, client: docker.DockerClient) -> None:
    args = run.args
    run.changes = changes_sequence(run.derived)
    run.load = Load(f"http://127.0.0.1:{run.nmc.port}", args.clients, run.seed, args.timeout)
    run.changer = Changes(client, run.cluster, f"http://127.0.0.1:{run.nmc.admin_port}",
                          run.image_ids)
    load_and_changes(run)


def run_chaos(run: Run, client: docker.DockerClient) -> None:
    args = run.args
    base = 1 if args.swarm else run.nmc.base_port  # swarm: the service's slots, from 1
    ports = list(range(base, base + args.replicas))
    run.actions = [] if args.no_chaos else make_schedule(run.seed, args.duration, args.kill_every, ports)
    log(f"seed {run.seed}: {sum(a.what == 'kill' for a in run.actions)} kills, "
        + ", ".join(f"{a.what} at {a.at:g}s" for a in run.actions if a.what != "kill"))
    run.load = Load(f"http://127.0.0.1:{run.nmc.port}", args.clients, run.seed, args.timeout)
    run.chaos = Chaos(client, run.cluster, ports, run.load, args.swarm)
    load_and_chaos(run)


def finish(run: Run) -> int:
    """The report, printed and written to bench/results/; the verdict; the exit code."""
    publish(report(run), "chaos", run.began_wall, log)
    code, reasons = verdict(run)
    log(f"leaked containers: {len(run.leaked) if run.leak_checked else 'unknown'}")
    log(f"{'PASS' if code == 0 else 'FAIL'} in {time.monotonic() - run.began:.1f}s"
        + (f": {'; '.join(reasons)}" if reasons else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
