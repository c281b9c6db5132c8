"""`make soak` (scripts/soak.py) and `python -m harness.soak`: the options, one run from start to
verdict, the clean-up whatever happens; see harness/soak/__init__.py."""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from harness.chaos.__main__ import Signals, build_image
from harness.chaos.actions import Chaos
from harness.chaos.changes import Changes
from harness.chaos.common import CHANGES_PORTS, engine, publish
from harness.chaos.load import Load
from harness.chaos.run import Run, remove_leftovers, start_nmc, stop_run
from harness.procfs import docker_proxies
from harness.processes import source_state
from harness.soak.faults import REPLICAS, Fault, run_faults, schedule
from harness.soak.load import FreshGets, SoakClients, Streams, WebSockets
from harness.soak.report import log, report, verdict
from harness.soak.samples import Sampler

QUICK_MINUTES = 1.0
TIMEOUT = 10.0           # seconds per request (connect, and between bytes of the answer)
PACE = 0.01              # seconds a keep-alive or fresh-connection client waits between requests:
                         # a steady load well below nmc's capacity, on a machine others share
KEEPALIVE_CLIENTS = 6    # GET / PUT / POST on keep-alive sessions (the chaos run's mix)
FRESH_CLIENTS = 2
STREAM_CLIENTS = 3
WEBSOCKET_CLIENTS = 3
PROXIES_GONE = 10.0      # seconds Docker has to end the proxies of removed containers


@dataclass
class SoakRun(Run):
    quick: bool = False
    minutes: float = 10.0
    loads: list[SoakClients] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    sampler: Sampler | None = None
    ports: set = field(default_factory=set)      # the replicas' ports (kept free for the run)
    run_dir: str = ""
    run_dir_left: list[str] | None = None
    proxies_after: int | None = None             # docker-proxies of the ports (free at the start)
    machine_proxies: tuple = (None, None)        # every docker-proxy on the machine: start, end

    @property
    def duration(self) -> float:
        return self.minutes * 60

    @property
    def warmup(self) -> float:
        return 20.0 if self.quick else 60.0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="soak.py", description="nmc under mixed load and faults "
                                     "for a bounded time, sampled every 10 s and judged on growth; "
                                     "see harness/soak/__init__.py.")
    parser.add_argument("--minutes", type=float, default=None,
                        help="how long (default: $SOAK_MINUTES, else 10)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_MINUTES:g} minute, each fault once (also QUICK=1)")
    parser.add_argument("--seed", type=int, default=None, help="the keep-alive load's request mix")
    args = parser.parse_args(argv)
    args.quick = args.quick or os.environ.get("QUICK", "") not in ("", "0")
    if args.minutes is None:
        try:
            args.minutes = QUICK_MINUTES if args.quick else float(os.environ.get("SOAK_MINUTES") or 10)
        except ValueError:
            parser.error("SOAK_MINUTES must be a number of minutes")
    if args.quick and args.minutes != QUICK_MINUTES:
        parser.error(f"--quick runs {QUICK_MINUTES:g} minute: not with --minutes")
    if not 1 <= args.minutes <= 240:
        parser.error("--minutes must be from 1 to 240")
    # what harness.chaos.run reads: one host, room for the scale up and a surge, a second image
    args.swarm, args.changes, args.replicas, args.timeout = False, True, REPLICAS, TIMEOUT
    args.clients = KEEPALIVE_CLIENTS + FRESH_CLIENTS + STREAM_CLIENTS + WEBSOCKET_CLIENTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signals = Signals()
    signals.install()
    run = SoakRun(args, quick=args.quick, minutes=args.minutes)
    run.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    run.cluster = f"nmc-soak-{uuid.uuid4().hex[:8]}"
    run.source = source_state()
    # a run directory of its own: what nmc leaves in it at the end is a leak
    run.run_dir = tempfile.mkdtemp(prefix=f"{run.cluster}-run-")
    os.environ["NMC_RUN_DIR"] = run.run_dir
    client = None

    def work() -> None:
        nonlocal client
        client = engine()
        client.ping()
        build_image(run, client)
        run.machine_proxies = (len(docker_proxies()), None)
        run.phases["start nmc"] = start_nmc(run)
        if not run.error:
            soak(run, client)

    signals.guard(run, work, lambda: clean_up(run, client))
    return finish(run)


def soak(run: SoakRun, client) -> None:
    nmc = run.nmc
    run.ports = set(range(nmc.base_port, nmc.base_port + CHANGES_PORTS))
    url, admin_url = f"http://127.0.0.1:{nmc.port}", f"http://127.0.0.1:{nmc.admin_port}"
    run.load = Load(url, KEEPALIVE_CLIENTS, run.seed, TIMEOUT)
    run.load.pace = PACE
    run.loads = [FreshGets(url, nmc.port, FRESH_CLIENTS, TIMEOUT, PACE),
                 Streams(url, nmc.port, STREAM_CLIENTS, TIMEOUT, 0.0),
                 WebSockets(url, nmc.port, WEBSOCKET_CLIENTS, TIMEOUT, 0.0)]
    ports = sorted(run.ports)
    run.chaos = Chaos(client, run.cluster, ports, run.load)
    run.changer = Changes(client, run.cluster, admin_url, run.image_ids)
    run.faults = schedule(run.duration, run.quick, run.derived, ports)
    run.load.start(run.duration)
    for load in run.loads:
        load.start(run.duration)
    began, end = run.load.began, run.load.end
    run.sampler = Sampler(admin_url, run.cluster, run.ports, began, end, nmc.proc.pid)
    run.sampler.start()
    log(f"{run.minutes:g} min of load against {url}: {KEEPALIVE_CLIENTS} keep-alive GET/PUT/POST, "
        f"{FRESH_CLIENTS} fresh-connection GET, {STREAM_CLIENTS} stream, {WEBSOCKET_CLIENTS} WebSocket "
        f"clients; {len(run.faults)} faults; samples every 10 s from {admin_url}/status")
    run_faults(run.faults, run.chaos, run.changer, began, end, lambda: nmc.proc.poll() is None)
    while time.monotonic() < end:
        if nmc.proc.poll() is not None:
            raise RuntimeError(f"nmc exited during the soak with code {nmc.proc.poll()}")
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    run.sampler.join(10)  # its last sample, at the end of the load
    run.phases["load"] = time.monotonic() - began


def clean_up(run: SoakRun, client) -> None:
    """The clients, the sampler, nmc (SIGTERM), then what is left: the run directory's files,
    the containers, the docker-proxies of the ports; then the run directory itself."""
    for load in run.loads:
        load.join(time.monotonic() + TIMEOUT + 1)
    if run.sampler is not None:
        run.sampler.stop()
    if run.changer is not None:
        run.changer.close()
    stop_run(run)
    if run.nmc is not None and run.nmc.exit_code is not None:
        run.run_dir_left = sorted(os.listdir(run.run_dir)) if os.path.isdir(run.run_dir) else []
    remove_leftovers(run, client)
    if run.ports:
        deadline = time.monotonic() + PROXIES_GONE
        while docker_proxies(run.ports) and time.monotonic() < deadline:
            time.sleep(0.2)
        run.proxies_after = len(docker_proxies(run.ports))
    run.machine_proxies = (run.machine_proxies[0], len(docker_proxies()))
    shutil.rmtree(run.run_dir, ignore_errors=True)
    os.environ.pop("NMC_RUN_DIR", None)


def finish(run: SoakRun) -> int:
    """The report, printed and written to bench/results/; the exit code."""
    publish(report(run), "soak", run.began_wall, log)
    code, reasons = verdict(run)
    log(f"{'PASS' if code == 0 else 'FAIL'} in {time.monotonic() - run.began:.1f}s"
        + (f": {'; '.join(reasons)}" if reasons else ""))
    return code


if __name__ == "__main__":
    sys.exit(main())
