"""One chaos run: nmc started on free ports, the load with the chaos or the changes, and the
clean-up that runs whatever happened (the cluster, the swarm service, the image built)."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import docker
import docker.errors
import requests

from harness.chaos.actions import Action, Chaos
from harness.chaos.changes import Change, Changes, describe_replicas, remove_derived
from harness.chaos.common import (CHANGES_LIMIT, CHANGES_PORTS, ENGINE_WAIT, LABEL_CHAOS, SETTLE,
                                  START_LIMIT, STEADY, STOP_LIMIT, SWARM_GONE_LIMIT,
                                  SWARM_GONE_POLL, engine, log, own_cpu)
from harness.chaos.load import Load
from harness.cleanup import cluster_containers, remove_cluster, remove_service
from harness.ports import free_port_block
from harness.processes import NmcProcess
from harness.procfs import cpu_seconds, machine_seconds
from nmc.containers import LABEL_CLUSTER


class Nmc(NmcProcess):
    """./nmc_server.py in its own process group (a Ctrl-C reaches it only through us: one
    SIGTERM), stopped when we die; its stdout and stderr in one log (`lines`)."""

    def __init__(self, name: str, port: int, base_port: int | None, replicas: int, admin_port: int):
        """base_port None: --swarm (Swarm picks each task's published port)."""
        self.name, self.port, self.base_port, self.replicas = name, port, base_port, replicas
        self.admin_port = admin_port  # a free one: runs must not meet on the default 3100
        where = ["--swarm"] if base_port is None else ["--base-port", str(base_port)]
        args = ["--name", name, "--bind", "127.0.0.1", "--port", str(port), *where, "-n", str(replicas),
                "--admin-port", str(admin_port), "-q"]
        self.command = " ".join(["./nmc_server.py", *args])
        super().__init__(args, merge_output=True, detached=True)

    def wait_serving(self, limit: float) -> bool:
        return self.find_line("serving on http://", limit) is not None

    def stop(self) -> None:
        """SIGTERM (nmc drains and removes its replicas itself); SIGKILL when it takes too long."""
        super().stop(STOP_LIMIT)
        if self.killed:
            log(f"nmc did not exit within {STOP_LIMIT:g}s of SIGTERM: killed it")


@dataclass
class Run:
    args: argparse.Namespace
    cluster: str = ""
    seed: int = 0
    began_wall: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    began: float = field(default_factory=time.monotonic)
    nmc: Nmc | None = None
    load: Load | None = None
    chaos: Chaos | None = None
    actions: list[Action] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)   # --changes: the phases
    changer: Changes | None = None
    derived: str = ""                                      # --changes: the second image's tag ...
    image_ids: dict = field(default_factory=dict)          # ... and image name -> id
    images_removed: list[str] = field(default_factory=list)
    image_error: str = ""
    phases: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)
    source: str = ""
    leaked: list[str] = field(default_factory=list)
    leak_checked: bool = False
    service_left: str = ""                                 # --swarm: nmc left its service: what was done
    interrupted: str = ""
    error: str = ""


def start_nmc(run: Run) -> float:
    began = time.monotonic()
    # --changes grows the cluster to 6 replicas, on the lowest free ports from the base port on
    # (--swarm: none, Swarm publishes each task on an ephemeral port of its own)
    span = 0 if run.args.swarm else CHANGES_PORTS if run.args.changes else run.args.replicas
    for attempt in range(3):  # a free port can be taken between our probe and nmc's bind
        base = free_port_block(span) if span else None
        kept = set(range(base, base + span)) if span else set()
        port = free_port_block(1, kept)
        admin_port = free_port_block(1, kept | {port})
        run.nmc = Nmc(run.cluster, port, base, run.args.replicas, admin_port)
        log(f"starting {run.nmc.command}")
        if run.nmc.wait_serving(START_LIMIT):
            log(f"nmc is serving on 127.0.0.1:{port} (admin port {admin_port}), "
                + (f"tasks of the swarm service {run.cluster}" if base is None else
                   f"replicas from {base} (ports up to {base + span - 1} kept free)"))
            return time.monotonic() - began
        run.nmc.stop()
        output = run.nmc.tail()
        if "in use" not in output or attempt == 2:
            run.error = (f"nmc did not start within {START_LIMIT:g}s (exit code {run.nmc.exit_code}): "
                         f"{output.strip()[-600:] or 'no output'}")
            log(run.error)
            break
    return time.monotonic() - began


def load_and_changes(run: Run) -> None:
    """The steady phase, then each change in turn (waited for, then SETTLE seconds of load);
    a change that fails or leaves other replicas than it should ends the sequence."""
    load, changer, changes = run.load, run.changer, run.changes
    cpu = cpu_mark(run)
    steady = changes[0]
    steady.before = changer.replicas()
    load.phase = 0
    load.start(CHANGES_LIMIT)
    steady.started = 0.0
    log(f"load: {run.args.clients} clients against {load.url}; changes through {changer.admin_url} "
        f"(at most {CHANGES_LIMIT:g}s in all)")
    try:
        time.sleep(STEADY)
        steady.after = changer.replicas()
        steady.check = changer.check(steady)
        last = steady
        for index, change in enumerate(changes[1:], 1):
            if run.nmc.proc.poll() is not None:
                raise RuntimeError(f"nmc exited during the run with code {run.nmc.proc.poll()}:\n"
                                   f"{run.nmc.tail()}")
            limit = load.end - SETTLE - time.monotonic()
            if limit < 10:
                change.error = f"not run: the load's limit of {CHANGES_LIMIT:g}s was near"
                break
            change.before = changer.replicas()
            change.started = last.ended = time.monotonic() - load.began
            load.phase = index
            log(f"t={change.started:5.1f}s {index}. {change.title}: {change.call}")
            changer.call(change, limit)
            change.answered = time.monotonic() - load.began
            change.after = changer.replicas()
            change.check = changer.check(change)
            if run.args.swarm and change.check and not change.error:
                changer.converge(change, load.began)
            last = change
            log(f"t={change.answered:5.1f}s {index}. answered after {change.took:.1f}s: "
                f"{change.message or change.error}; replicas: {describe_replicas(change.after)}"
                + (f" (once Swarm stopped what it retired, {change.converged - change.answered:.1f}s "
                   "after the answer)" if change.converged is not None else "")
                + (f"; {change.check}" if change.check else ""))
            if change.error or change.check:
                break  # nmc may still be busy with it: what follows would measure nothing sure
            time.sleep(SETTLE)
        load.halt()
        last.ended = load.stopped - load.began
    finally:
        changer.close()
    wall = max(1e-9, load.finished() - load.began)
    cpu_record(run, cpu, wall)
    run.phases["load"] = wall


def cpu_mark(run: Run) -> tuple:
    return own_cpu(), cpu_seconds(run.nmc.proc.pid), machine_seconds()


def cpu_record(run: Run, mark: tuple, wall: float) -> None:
    """CPU shares over `wall` seconds since `mark`, into run.cpu."""
    cpu_client, cpu_nmc, cpu_machine = mark
    nmc_now = cpu_seconds(run.nmc.proc.pid)
    run.cpu["client"] = (own_cpu() - cpu_client) / wall
    if cpu_nmc is not None and nmc_now is not None:
        run.cpu["nmc"] = (nmc_now - cpu_nmc) / wall
    machine_now = machine_seconds()
    if cpu_machine is not None and machine_now is not None and machine_now[1] > cpu_machine[1]:
        run.cpu["machine"] = (machine_now[0] - cpu_machine[0]) / (machine_now[1] - cpu_machine[1])


def load_and_chaos(run: Run) -> None:
    load, chaos, args = run.load, run.chaos, run.args
    cpu = cpu_mark(run)
    load.start(args.duration)
    log(f"load: {args.clients} clients for {args.duration:g}s against {load.url}")
    for action in run.actions:
        wait = load.began + action.at - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # a signal interrupts it (Interrupted)
        if run.nmc.proc.poll() is not None:
            raise RuntimeError(f"nmc exited during the run with code {run.nmc.proc.poll()}:\n{run.nmc.tail()}")
        chaos.run(action)
    remaining = load.end - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    wall = max(1e-9, time.monotonic() - load.began)
    cpu_record(run, cpu, wall)
    run.phases["load"] = wall


def clean_up(run: Run, client) -> None:
    """Stop the clients and the measurements (bounded), SIGTERM nmc, then check for and remove
    whatever of the cluster is left. Runs whatever happened before."""
    stop_run(run)
    remove_leftovers(run, client)


def stop_run(run: Run) -> None:
    """Stop the clients and the measurements (bounded), then nmc (SIGTERM)."""
    began = time.monotonic()
    if run.load is not None:
        run.load.join(began + run.args.timeout + 1)  # a request in flight ends within its timeout
        run.phases["join clients"] = time.monotonic() - began
        if run.chaos is not None:
            measures = time.monotonic()
            run.chaos.join(measures + 3)
            run.phases["join measurements"] = time.monotonic() - measures
    if run.nmc is not None:
        stopping = time.monotonic()
        run.nmc.stop()
        run.phases["stop nmc"] = time.monotonic() - stopping


def remove_leftovers(run: Run, client) -> None:
    """What of the cluster is left once nmc stopped: checked for (run.leaked) and removed; the
    image built for --changes removed."""
    # The engine may be away for a moment (restarted by someone else): try again, for a while.
    deadline = time.monotonic() + ENGINE_WAIT
    for attempt in range(int(ENGINE_WAIT) + 1):
        try:
            client = client or engine()
            if run.args.swarm:
                run.leaked = swarm_leftovers(run, client)
                run.leak_checked = True
                break
            leaked = remove_cluster(client, run.cluster, warn=log)
            time.sleep(0.5)  # a create cut short by a killed nmc can still land a moment later
            run.leaked = leaked + remove_cluster(client, run.cluster, warn=log)
            run.leak_checked = True
            break
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            if time.monotonic() >= deadline:
                log(f"could not check the cluster's containers: {e}; remove them with: docker rm -f "
                    f"$(docker ps -aq --filter label={LABEL_CLUSTER}={run.cluster})")
                break
            if attempt == 0:
                log(f"the Docker engine does not answer ({type(e).__name__}); trying again for "
                    f"{ENGINE_WAIT:g}s to remove the cluster")
            time.sleep(1)
    if run.args.changes:
        try:
            client = client or engine()
            run.images_removed = remove_derived(client, run.cluster)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            run.image_error = (f"could not remove the image built for the rollout ({e}); remove it with: "
                               f"docker rmi -f $(docker images -aq --filter label={LABEL_CHAOS}={run.cluster})")
            log(run.image_error)
    if client is not None:
        client.close()
    if run.leaked:
        log(f"leaked containers: {len(run.leaked)} ({', '.join(run.leaked)}); removed")


def swarm_leftovers(run: Run, client: docker.DockerClient) -> list[str]:
    """--swarm: the service must be gone (else it is removed, and noted in run.service_left),
    then its task containers, which Swarm removes a moment later, within SWARM_GONE_LIMIT
    seconds; those still there are leaked: force-removed and returned."""
    began = time.monotonic()
    run.service_left = remove_service(client, run.cluster, "chaos.py") or run.service_left
    if run.service_left:
        log(f"the swarm service {run.cluster} was still there after nmc exited: {run.service_left}")
    deadline = began + SWARM_GONE_LIMIT
    for _ in range(int(SWARM_GONE_LIMIT / SWARM_GONE_POLL) + 1):
        if not cluster_containers(client, run.cluster) or time.monotonic() >= deadline:
            break
        time.sleep(SWARM_GONE_POLL)
    run.phases["task containers gone"] = time.monotonic() - began
    return remove_cluster(client, run.cluster, warn=log)
