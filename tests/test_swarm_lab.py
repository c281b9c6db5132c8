"""The swarm lab (scripts/swarm_lab.py), for real: up, the demo, down. Three dockerds in network
namespaces of their own make one swarm; a service's tasks spread over them and answer from the
host; node 3's dockerd is killed and its tasks run again, and answer, on the other two; down
leaves nothing. It makes namespaces, a bridge and an iptables rule on the machine, and starts
dockerds beside the host's: only where the run owns its engine (CI=true or
NMC_TEST_SWARM_LAB=1). About 40 s."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "swarm_lab.py"

_spec = importlib.util.spec_from_file_location("swarm_lab", SCRIPT)
lab = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(lab)

pytestmark = pytest.mark.skipif(
    os.environ.get("CI") != "true" and os.environ.get("NMC_TEST_SWARM_LAB") != "1",
    reason="makes network namespaces, a bridge, an iptables rule and three dockerds on this "
           "machine: only where the run owns its engine (CI=true or NMC_TEST_SWARM_LAB=1)")


def swarm_lab(*args: str, timeout: float) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)
    print(f"$ swarm_lab.py {' '.join(args)}  -> {done.returncode}\n{done.stdout}{done.stderr}")
    return done


def skip_if_a_lab_is_up() -> None:
    if lab.lab_remains():
        pytest.skip(f"a swarm lab is already on this machine ({', '.join(lab.lab_remains())}); "
                    "not touching it")


def test_swarm_lab_moves_a_dead_nodes_tasks_and_leaves_nothing(tmp_path):
    skip_if_a_lab_is_up()
    results = tmp_path / "demo.json"
    try:
        started = swarm_lab("up", timeout=400)
        assert started.returncode == 0, started.stderr
        assert f"DOCKER_HOST=unix://{lab.LAB_DIR}/node1/docker.sock" in started.stdout
        shown = swarm_lab("status", timeout=60)
        assert shown.returncode == 0 and shown.stdout.count(" Ready ") == 3, shown.stdout
        demo = swarm_lab("demo", "--results", str(tmp_path), "--json", str(results), timeout=400)
        assert results.exists(), demo.stderr
        r = json.loads(results.read_text())
    finally:
        stopped = swarm_lab("down", timeout=300)

    names = {lab.NETNS.format(n) for n in lab.NODES}
    survivors = names - {r["killed_node"]}
    assert [n["state"] for n in r["nodes"]] == ["ready"] * 3
    assert {n["addr"] for n in r["nodes"]} == {"10.213.0.11", "10.213.0.12", "10.213.0.13"}
    # the tasks spread over all three nodes, each answering at its node's address and port
    assert set(r["spread_before"]) == names, r["spread_before"]
    assert len(r["before"]) == lab.PROBE_REPLICAS
    assert all(row["answered"] for row in r["before"]), r["before"]
    # node 3 gone: every slot runs again on the two others and answers there
    assert r["node_down_seconds"] <= lab.NODE_DOWN_LIMIT
    assert sorted(row["slot"] for row in r["after"]) == list(range(1, lab.PROBE_REPLICAS + 1))
    assert {row["node"] for row in r["after"]} <= survivors, r["after"]
    assert all(row["answered"] for row in r["after"]), r["after"]
    assert all(r["checks"].values()), r["checks"]
    assert demo.returncode == 0, demo.stderr
    assert list(tmp_path.glob("swarm-lab-*.md"))

    # down: no namespace, bridge, veth, rule, process or folder of the lab is left
    assert stopped.returncode == 0, stopped.stderr
    assert lab.lab_remains() == []
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert "nmc-lab-" not in namespaces
    assert subprocess.run(["ip", "link", "show", lab.BRIDGE], capture_output=True).returncode != 0
    assert not lab.LAB_DIR.exists()
    assert not any(lab.alive(pid) for pid in lab.lab_processes())
    assert not any(lab.node_cgroup_dirs(n) for n in lab.NODES)
    assert "nmc-swarm-lab" not in subprocess.run(["iptables", "-S"], capture_output=True,
                                                  text=True).stdout
    # and the host's own engine still answers
    assert subprocess.run(["docker", "info"], capture_output=True, env=lab.host_env(),
                          timeout=30).returncode == 0
    # down again: nothing to do, no error
    assert swarm_lab("down", timeout=120).returncode == 0


def test_nmc_on_the_swarm_lab_relays_to_every_node_and_fails_no_request_when_one_dies(tmp_path):
    """scripts/swarm_lab_nmc.py: nmc --swarm -n 6 on the host, through node 1's socket, under 4
    clients; node 3's dockerd killed."""
    skip_if_a_lab_is_up()
    results = tmp_path / "nmc.json"
    try:
        started = swarm_lab("up", timeout=400)
        assert started.returncode == 0, started.stderr
        ran = subprocess.run([sys.executable, str(ROOT / "scripts" / "swarm_lab_nmc.py"),
                              "--results", str(tmp_path), "--json", str(results)],
                             capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
        print(ran.stdout, ran.stderr)
        assert results.exists(), ran.stderr
        r = json.loads(results.read_text())
    finally:
        stopped = swarm_lab("down", timeout=300)
    names = {lab.NETNS.format(n) for n in lab.NODES}
    assert set(r["spread_before"]) == names, r  # tasks on all three nodes ...
    # ... and requests reaching every one ("?": a replica whose task was not listed at that moment)
    assert names <= set(r["served_by_node_before"]), r
    assert names <= set(r["log_lines_by_node"]), r  # `nmc-server logs` reads every node's tasks
    assert lab.NETNS.format(lab.KILLED_NODE) not in r["spread_after"], r
    assert sum(r["spread_after"].values()) == 6
    assert r["sent"] > 100 and r["failed"] == 0, r["failures"]
    assert r["nmc_exit"] == 0 and r["service_removed"], r["nmc_log_tail"]
    assert ran.returncode == 0, ran.stderr
    assert stopped.returncode == 0 and lab.lab_remains() == []
