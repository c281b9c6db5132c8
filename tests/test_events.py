"""End to end: the cluster's recent events (nmc/events.py) in /status, /events?after=N and
`nmc-server events [-f]`: a `docker kill` of the test's own shows as the replica's state change,
its exit code and its replacement; a scale shows in a follower's output as it happens."""

from __future__ import annotations

import subprocess
import sys

from conftest import ROOT, NmcProcess, wait_until
from test_admin import AdminCluster, nmc_command


def test_a_kill_and_a_scale_are_events_in_status_the_events_route_and_the_cli(
        run_nmc, cluster_name, docker_client):
    cluster = AdminCluster(run_nmc, cluster_name)
    victim = sorted(r["name"] for r in cluster.status()["replicas"])[0]
    first = cluster.status()["events"]
    assert any(e["replica"] == victim and "starting -> ready" in e["message"] for e in first)
    seen = first[-1]["seq"]

    docker_client.containers.get(victim).kill()
    wait_until(lambda: any(e["replica"] == victim and "starting -> ready" in e["message"]
                           for e in cluster.status()["events"] if e["seq"] > seen), 60,
               what="the replacement among the events")
    new = [e for e in cluster.status()["events"] if e["seq"] > seen]
    assert [e["seq"] for e in new] == list(range(seen + 1, seen + 1 + len(new)))  # numbered
    said = [e["message"] for e in new if e["replica"] == victim]
    assert any("ready -> down" in m for m in said) and any("exited with code 137" in m for m in said)
    exited = next(e for e in new if "exited with code 137 after" in e["message"])
    assert (exited["kind"], exited["level"]) == ("healing", "warning")
    route = __import__("requests").get(f"{cluster.admin}/events?after={seen}", timeout=10).json()
    assert route["events"] == new and route["last"] == new[-1]["seq"]

    # the CLI, by --name over the socket: the same lines, in the log's format
    printed = nmc_command("events", "--name", cluster_name, timeout=60)
    assert printed.returncode == 0, printed.stderr
    assert any(line.endswith(exited["message"]) and line[:4].isdigit()
               for line in printed.stdout.splitlines()), printed.stdout

    # -f: what happens next, as it happens (the follower stopped by us once it printed it)
    follower = NmcProcess(["events", "-f", "--name", cluster_name], merge_output=True)
    try:
        follower.wait_for_line(f"{victim} .*starting -> ready", timeout=30)  # the past first
        grown = nmc_command("scale", "3", "--name", cluster_name, timeout=120)
        assert grown.returncode == 0, grown.stderr
        follower.wait_for_line(r"scaled from 2 to 3 replicas", timeout=30)
    finally:
        follower.stop()
    assert "Traceback" not in follower.log
    assert subprocess.run([sys.executable, str(ROOT / "nmc_server.py"), "events", "--name",
                           "nmct-nobody-here"], capture_output=True, text=True,
                          timeout=60).returncode == 1
