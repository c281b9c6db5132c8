"""End to end: `nmc-server logs [-f]` shows the replicas' logs merged, prefixed with the replica."""

from __future__ import annotations

import subprocess
import sys
import time

from conftest import ROOT, NmcProcess


def logs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "nmc_server.py"), "logs", *args],
                          capture_output=True, text=True, timeout=60)


def test_logs_prints_every_replicas_lines_prefixed(cluster, cluster_name):
    process, url, ports = cluster
    result = logs("--name", cluster_name)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for port in ports:
        name = f"{cluster_name}-{port}"
        assert f"{name} | listening on :8080 as {name} (pid 1)" in lines, lines


def test_logs_follow_shows_new_lines_and_replicas_started_later(cluster, cluster_name,
                                                                docker_client):
    process, url, ports = cluster
    follower = NmcProcess(["logs", "-f", "--name", cluster_name])
    try:
        victim = f"{cluster_name}-{ports[0]}"
        wait_for_stdout(follower, f"{victim} | listening on :8080")
        start = len(follower.stdout)
        docker_client.containers.get(victim).stop(timeout=5)  # the site logs its SIGTERM exit
        wait_for_stdout(follower, f"{victim} | exiting on SIGTERM", start)
        # its replacement is a new container: followed from its first line
        wait_for_stdout(follower, f"{victim} | listening on :8080", start)
    finally:
        follower.stop()
    assert "Traceback" not in "\n".join(follower.lines)


def wait_for_stdout(process: NmcProcess, text: str, start: int = 0, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(text in line for line in process.stdout[start:]):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not printed within {timeout}s: {process.stdout[-10:]}")


def test_logs_of_a_cluster_that_is_not_there_is_one_line(docker_client, cluster_name):
    result = logs("--name", cluster_name)
    assert result.returncode == 1
    assert result.stderr.startswith("nmc-server: error: no replicas of cluster")
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_server_s_logs_option_prints_the_replicas_output(run_nmc, cluster_name):
    from conftest import free_port_block, get

    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "-n", "2", "--check-interval", "1", "--logs", "-q")
    process.wait_serving()
    victim = f"{cluster_name}-{base}"
    get(f"http://127.0.0.1:{base}/crash")  # the replica itself logs why it exits
    wait_for_stdout(process, f"{victim} | exiting with code 1")
    wait_for_stdout(process, f"{victim} | listening on :8080")  # its replacement, followed too
    assert not any(line.startswith(f"{victim} |") for line in process.lines)  # stdout only
