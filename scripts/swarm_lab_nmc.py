#!/usr/bin/env python3
"""nmc on the swarm lab: `nmc-server --swarm -n 6` on the host, talking to the lab's manager
through its socket, relaying to tasks on all three nodes; node 3's dockerd killed under load.

Needs the lab up (`scripts/swarm_lab.py up`) with every node Ready. Runs nmc_server.py from this
checkout with the project's .venv (or this Python), sends 4 clients of GET /whoami through it,
and reports: the time from start to the first served request, the requests per node, the lines
of `nmc-server logs` per node (read through the manager), the node loss (when the node was
marked down, when every slot served again on the others) and the failed requests out of those
sent, in bench/results/swarm-lab-nmc-<time>.md. Traffic goes only to
127.0.0.1 (nmc) and, from nmc, to the lab's 10.213.0.x addresses. Every wait has a deadline.
Exit code 0 when no request failed and every check held.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import swarm_lab as lab

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "nmclab"
REPLICAS = 6
PORT, ADMIN_PORT = 23900, 23901  # nmc on the host's loopback
CLIENTS = 4
START_LIMIT = 120      # seconds for nmc to serve with every replica ready
LOSS_LIMIT = 120       # seconds for the swarm to move node 3's tasks and nmc to follow
STOP_LIMIT = 60        # seconds for nmc to drain and remove the service
AFTER_LOSS = 3         # seconds of load kept up once every slot serves again


def python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def admin(path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ADMIN_PORT}{path}", timeout=10) as answer:
        return json.loads(answer.read())


def ready_count() -> int:
    try:
        return admin("/status")["totals"]["ready"]
    except (OSError, ValueError, KeyError):
        return 0


def task_nodes() -> dict[str, str]:
    """The service's running tasks: replica name (<service>.<slot>) -> node hostname."""
    out = lab.docker(lab.MANAGER, "service", "ps", SERVICE, "--filter", "desired-state=running",
                     "--format", "{{.Name}} {{.Node}} {{.CurrentState}}", check=False).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines()
            if len(line.split()) > 2 and line.split()[2] == "Running"}


class Load:
    """CLIENTS threads of GET /whoami through nmc, keep-alive, until stopped: each answer's
    replica (X-Served-By), or the failure."""

    def __init__(self):
        self.served: list[str] = []
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _client(self) -> None:
        deadline = time.monotonic() + START_LIMIT + LOSS_LIMIT + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/whoami", timeout=10) as answer:
                    self.served.append(answer.headers.get("X-Served-By", "?"))
            except (urllib.error.HTTPError, OSError) as e:
                self.failed.append(f"{type(e).__name__}: {e}")

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)


def run() -> dict:
    result: dict = {"replicas": REPLICAS, "service": SERVICE}
    found = lab.nodes()
    if len(found) != len(lab.NODES) or any(node["state"] != "ready" for node in found):
        raise lab.LabError("the lab is not up with every node Ready: run scripts/swarm_lab.py "
                           "down, then up")
    env = {**os.environ, "DOCKER_HOST": lab.docker_host(lab.MANAGER), "PYTHONUNBUFFERED": "1"}
    command = [python(), str(ROOT / "nmc_server.py"), "--swarm", "--name", SERVICE, "-n",
               str(REPLICAS), "--bind", "127.0.0.1", "--port", str(PORT), "--admin-port",
               str(ADMIN_PORT), "-q"]
    log_path = lab.LAB_DIR / "nmc.log"
    started = time.monotonic()
    with open(log_path, "w") as log_file:
        nmc = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=ROOT)
    load = None
    try:
        lab.wait_for(lambda: nmc.poll() is None and ready_count() == REPLICAS, START_LIMIT,
                     f"nmc serving {REPLICAS} ready replicas")
        result["first_served_seconds"] = round(time.monotonic() - started, 1)
        result["spread_before"] = dict(Counter(task_nodes().values()))
        result["log_lines_by_node"] = log_lines_by_node(env)
        load = Load()
        time.sleep(3)
        result["served_by_node_before"] = served_by_node(load.served)
        killed = time.monotonic()
        pid = lab.lab_dockerd_pid(lab.KILLED_NODE)
        if pid is None:
            raise lab.LabError(f"node {lab.KILLED_NODE}'s dockerd is not running")
        os.kill(pid, signal.SIGKILL)
        lab.log(f"killed node {lab.KILLED_NODE}'s dockerd (pid {pid}) under load")
        killed_name = lab.NETNS.format(lab.KILLED_NODE)
        lab.wait_for(lambda: any(n["hostname"] == killed_name and n["state"] == "down"
                                 for n in lab.nodes()), LOSS_LIMIT, f"{killed_name} marked down")
        result["node_down_seconds"] = round(time.monotonic() - killed, 1)
        lab.wait_for(lambda: len(task_nodes()) == REPLICAS and killed_name not in
                     task_nodes().values() and ready_count() == REPLICAS, LOSS_LIMIT,
                     "every slot serving again on the surviving nodes")
        result["served_again_seconds"] = round(time.monotonic() - killed, 1)
        result["spread_after"] = dict(Counter(task_nodes().values()))
        time.sleep(AFTER_LOSS)
    finally:
        if load is not None:
            load.stop()
            result["sent"] = len(load.served) + len(load.failed)
            result["failed"] = len(load.failed)
            result["failures"] = load.failed[:5]
            result["served_by_replica"] = dict(Counter(load.served))
        if nmc.poll() is None:
            nmc.send_signal(signal.SIGTERM)
            try:
                result["nmc_exit"] = nmc.wait(STOP_LIMIT)
            except subprocess.TimeoutExpired:
                nmc.kill()
                result["nmc_exit"] = "killed"
        result["service_removed"] = lab.docker(lab.MANAGER, "service", "inspect", SERVICE,
                                               check=False).returncode != 0
        result["nmc_log_tail"] = log_path.read_text().splitlines()[-12:]
    return result


def log_lines_by_node(env: dict) -> dict[str, int]:
    """`nmc-server logs --name SERVICE` through the manager: its lines, counted by the node of
    the task (slot) that logged them."""
    out = subprocess.run([python(), str(ROOT / "nmc_server.py"), "logs", "--name", SERVICE],
                         env=env, capture_output=True, text=True, timeout=60, cwd=ROOT,
                         stdin=subprocess.DEVNULL).stdout
    where = task_nodes()
    return dict(Counter(where.get(line.split(" |")[0].strip(), "?") for line in out.splitlines()
                        if " |" in line))


def served_by_node(served: list[str]) -> dict[str, int]:
    where = task_nodes()
    return dict(Counter(where.get(name, "?") for name in served))


def report(result: dict, folder: Path) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"swarm-lab-nmc-{stamp}.md"
    lines = [f"# nmc --swarm on the swarm lab, {stamp}", "",
             f"`nmc-server --swarm -n {REPLICAS}` on the host, DOCKER_HOST = node 1's socket "
             f"(scripts/swarm_lab_nmc.py); {CLIENTS} clients of GET /whoami through nmc.", "",
             f"- start to every replica ready and served: {result.get('first_served_seconds')} s",
             f"- tasks per node before: {result.get('spread_before')}",
             f"- requests per node before the loss: {result.get('served_by_node_before')}",
             f"- lines of `nmc-server logs` per node: {result.get('log_lines_by_node')}",
             f"- node {lab.KILLED_NODE}'s dockerd killed: marked down after "
             f"{result.get('node_down_seconds')} s, every slot serving again on the others "
             f"after {result.get('served_again_seconds')} s",
             f"- tasks per node after: {result.get('spread_after')}",
             f"- requests: {result.get('sent')} sent, **{result.get('failed')} failed** "
             f"{result.get('failures') or ''}",
             f"- nmc exit code on SIGTERM: {result.get('nmc_exit')}; service removed: "
             f"{result.get('service_removed')}", "", "nmc's last log lines:", "", "```",
             *result.get("nmc_log_tail", []), "```", ""]
    path.write_text("\n".join(lines))
    return path


def main() -> int:
    options = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    options.add_argument("--results", default=str(ROOT / "bench" / "results"),
                         help="folder for the report [bench/results]")
    options.add_argument("--json", help="also write what was measured to this file")
    args = options.parse_args()
    try:
        lab.require_root()
        result = run()
    except lab.LabError as e:
        print(f"swarm-lab-nmc: {e}", file=sys.stderr)
        return 1
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    path = report(result, Path(args.results))
    print(path.read_text())
    ok = result.get("failed") == 0 and result.get("service_removed") and result.get("nmc_exit") == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
