"""Self-healing, end to end: crash loops, adoption after a SIGKILL of nmc itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from contextlib import contextmanager

import docker
import pytest
import requests

from conftest import build_on_site_image, free_port_block, wait_until
from harness.load import GetLoad


@pytest.fixture
def crashing_image(docker_client, cluster_name, scratch_images):
    """An image whose replica named CRASHING serves for 0.7 s, then exits 3 (after a last word);
    every other replica is the plain site."""
    tag = f"nmct-crashloop-{uuid.uuid4().hex[:8]}"

    def build(crashing_replica: str) -> str:
        script = (
            "if (process.env.NMC_REPLICA === process.env.CRASHING) {"
            " require('http').createServer((q, s) => s.end('ok')).listen(8080);"
            " setTimeout(() => { console.log('giving up, as told'); process.exit(3); }, 700);"
            "} else { require('/app/server.js'); }")
        scratch_images.append(tag)
        build_on_site_image(docker_client, tag, f"ENV CRASHING={crashing_replica}",
                            f'CMD ["node", "-e", "{script}"]', labels={"nmct.owner": cluster_name})
        return tag

    return build


def test_a_crash_loop_backs_off_is_explained_and_the_others_keep_serving(cluster_name, run_nmc,
                                                                        crashing_image):
    base = free_port_block(3)
    crasher = f"{cluster_name}-{base}"
    image = crashing_image(crasher)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "-n", "2", "--image", image)
    process.wait_serving()
    url = f"http://127.0.0.1:{base + 2}"
    deadline = time.monotonic() + 9
    answers = []
    while time.monotonic() < deadline:  # the healthy replica keeps serving all along
        answers.append(requests.get(url + "/whoami", timeout=5).status_code)
        time.sleep(0.05)
    assert set(answers) == {200}, answers
    # each crash explained once, with its exit code and its last words
    process.wait_for_line(rf"replica {crasher} exited with code 3 after 0\.\d+s in the rotation; "
                          r"its last log lines: giving up, as told")
    # and not restarted in a tight loop: delays of 1, 2, 4 s from the second quick crash on
    process.wait_for_line(rf"replica {crasher} failed 2 times in a row within 10s of starting: "
                          r"next start in 1s")
    starts = sum(1 for line in process.lines if f"replica {crasher} " in line
                 and "starting -> ready" in line)
    assert 3 <= starts <= 6, f"{starts} starts in ~9 s:\n{process.log}"  # a tight loop: ~10
    assert "Traceback" not in process.log


def test_nmc_killed_and_started_again_adopts_its_replicas_without_restarting_them(
        cluster_name, run_nmc, docker_client):
    base = free_port_block(4)
    args = ("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 3),
            "--base-port", str(base))
    first = run_nmc(*args, "-n", "3")
    first.wait_serving()
    first.signal(signal.SIGKILL)  # no clean-up at all
    first.wait_exit(10)
    before = {c.name: (c.id, c.attrs["State"]["StartedAt"])
              for c in docker_client.containers.list(ignore_removed=True, filters={"label": f"nmc.cluster={cluster_name}"})}
    assert len(before) == 3

    second = run_nmc(*args, "-n", "2")  # one replica fewer this time
    second.wait_serving()
    after = {c.name: (c.id, c.attrs["State"]["StartedAt"])
             for c in docker_client.containers.list(ignore_removed=True, all=True,
                                                    filters={"label": f"nmc.cluster={cluster_name}"})}
    kept = {f"{cluster_name}-{base}", f"{cluster_name}-{base + 1}"}
    assert set(after) == kept  # the extra one is removed
    for name in kept:  # the same containers, never restarted
        assert after[name] == before[name]
    assert second.log.count("adopting running container") == 2
    assert f"removing leftover container {cluster_name}-{base + 2}" in second.log
    url = f"http://127.0.0.1:{base + 3}"
    assert {requests.get(url + "/whoami", timeout=5).json()["hostname"] for _ in range(4)} == kept


def test_check_thresholds_take_a_hung_replica_out_bring_it_back_or_replace_it(
        cluster_name, run_nmc, docker_client):
    """SIGSTOP: the process hangs and the engine says nothing (unlike a pause), so only the
    checks can tell; counted against --unhealthy-after, --healthy-after and --replace-after."""
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "-n", "2", "--check-interval", "0.3",
                      "--check-timeout", "0.3", "--unhealthy-after", "2", "--replace-after", "4")
    process.wait_serving()
    name = f"{cluster_name}-{base}"
    victim = docker_client.containers.get(name)

    start = len(process.lines)  # a short hang: out after 2 failed checks, back after 1 pass
    victim.kill(signal="SIGSTOP")
    process.wait_for_line(rf"replica {name} .*ready -> down \(no answer within 0.3s; "
                          r"2 failed checks in a row\)", start=start)
    victim.kill(signal="SIGCONT")
    process.wait_for_line(rf"replica {name} .*down -> ready \(status 200; 1 passed checks in a row\)",
                          start=start)
    assert docker_client.containers.get(name).id == victim.id  # not replaced

    start = len(process.lines)  # a long hang: replaced once out for --replace-after
    victim.kill(signal="SIGSTOP")
    process.wait_for_line(rf"replica {name} .*ready -> down", start=start)
    process.wait_for_line(rf"replica {name} .*starting -> ready", start=start, timeout=20)
    assert any(f"replica {name} " in line and "out of the rotation for" in line
               for line in process.lines[start:]), process.log
    assert docker_client.containers.get(name).id != victim.id
    url = f"http://127.0.0.1:{base + 2}"
    assert requests.get(url + "/healthz", timeout=5).status_code == 200


DAEMON_JSON = "/etc/docker/daemon.json"


def own_dockerd() -> tuple[int, list[str]]:
    """The pid and command line of a dockerd this test may restart: only where the run owns its
    engine (CI, or NMC_TEST_ENGINE_RESTART=1), never a developer's own Docker; else a skip."""
    found = _dockerds()
    if (os.environ.get("CI") != "true" and os.environ.get("NMC_TEST_ENGINE_RESTART") != "1"
            or len(found) != 1):
        pytest.skip("restarts the Docker engine: only where the run owns it (CI=true or "
                    "NMC_TEST_ENGINE_RESTART=1, and one dockerd process)")
    with open(f"/proc/{found[0]}/cmdline", "rb") as cmdline:
        return int(found[0]), [part.decode() for part in cmdline.read().split(b"\0") if part]


def stop_dockerd(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not _running(pid), 60, what="dockerd stopped")


def _running(pid: int) -> bool:
    """Whether `pid` runs (a zombie, ended but not yet reaped by its parent, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_dockerd(command: list[str]) -> int:
    """dockerd started again as before (its log where scripts/ensure-docker.sh puts it), once it
    answers; its pid. As scripts/ensure-docker.sh does, in a session of its own and no child of
    ours (`setsid --fork`): it outlives the test run, and the next restart sees it end."""
    with open("/var/log/nmc-dockerd.log", "ab") as log:
        subprocess.run(["setsid", "--fork", *command], stdout=log, stderr=log,
                       stdin=subprocess.DEVNULL, check=True, timeout=30)
    wait_until(lambda: subprocess.run(["docker", "info"], capture_output=True).returncode == 0,
               90, interval=0.5, what="dockerd answering again")
    (found,) = _dockerds()
    return found


def _dockerds() -> list[int]:
    """The dockerd processes that run (pgrep also lists one that ended and awaits its reaping)."""
    found = subprocess.run(["pgrep", "-x", "dockerd"], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split() if _running(int(pid))]


@contextmanager
def live_restore(pid: int):
    """The engine with live-restore on (a setting it reads again on SIGHUP), for the block; then
    off again, and its daemon.json as it was (a dockerd without that file keeps what it read
    last, so the setting is put back through the file first)."""
    original = open(DAEMON_JSON).read() if os.path.exists(DAEMON_JSON) else None
    settings = json.loads(original) if original else {}
    was = settings.get("live-restore", False)
    os.makedirs(os.path.dirname(DAEMON_JSON), exist_ok=True)
    reload_with({**settings, "live-restore": True}, pid)
    try:
        yield
    finally:
        reload_with({**settings, "live-restore": was}, _dockerds()[0])
        if original is None:
            os.unlink(DAEMON_JSON)
        else:
            with open(DAEMON_JSON, "w") as file:
                file.write(original)


def reload_with(settings: dict, pid: int) -> None:
    with open(DAEMON_JSON, "w") as file:
        json.dump(settings, file)
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: docker.from_env().info()["LiveRestoreEnabled"] == settings["live-restore"],
               10, what=f"live-restore {settings['live-restore']}")


def test_the_engine_restarting_is_survived_without_duplicates(cluster_name, run_nmc, docker_client):
    pid, command = own_dockerd()
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "-n", "2", "--check-interval", "1")
    process.wait_serving()
    url = f"http://127.0.0.1:{base + 2}"
    stop_dockerd(pid)  # stops its containers too (no live-restore)
    try:
        process.wait_for_line(r"lost the Docker engine .*; relaying to the replicas that still "
                              r"answer; reconnecting", timeout=20)
        # no replica: a 503 once the hold for the engine's return is over, never a hang or a
        # traceback
        answer = requests.get(url + "/healthz", timeout=30)
        assert answer.status_code == 503 and answer.headers["Retry-After"] == "1"
    finally:
        start_dockerd(command)
    process.wait_for_line(r"the Docker engine is back", timeout=60)
    wait_until(lambda: requests.get(url + "/healthz", timeout=5).status_code == 200, 60,
               what="the cluster serving again")
    wait_until(lambda: {requests.get(url + "/whoami", timeout=5).json()["hostname"]
                        for _ in range(4)} == {f"{cluster_name}-{base}", f"{cluster_name}-{base + 1}"},
               30, what="both replicas serving")
    containers = docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"nmc.cluster={cluster_name}"})
    assert sorted(c.name for c in containers) == [f"{cluster_name}-{base}", f"{cluster_name}-{base + 1}"]
    assert all(c.status == "running" for c in containers)
    assert process.log.count("reconnecting") == 1, process.log  # the loss is said once
    assert "Traceback" not in process.log


def test_with_live_restore_an_engine_restart_costs_no_replica_and_no_request(
        cluster_name, run_nmc, docker_client):
    """The containers live on through the restart; their port proxies go with the engine for a
    few seconds: nmc holds the requests meanwhile and replaces nothing."""
    pid, command = own_dockerd()
    base = free_port_block(3)
    url = f"http://127.0.0.1:{base + 2}"
    with live_restore(pid):
        process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                          "--base-port", str(base), "-n", "2", "--check-interval", "1", "-q")
        process.wait_serving()
        label = {"label": f"nmc.cluster={cluster_name}"}
        before = sorted(c.id for c in docker_client.containers.list(filters=label))
        keep_alive, fresh = GetLoad(url, clients=3), GetLoad(url, clients=2, fresh_connections=True)
        try:
            wait_until(lambda: len(keep_alive.statuses) > 100 and len(fresh.statuses) > 20, 30,
                       what="the load under way")
            stop_dockerd(pid)
            pid = start_dockerd(command)
            process.wait_for_line(r"the Docker engine is back", timeout=60)
            served = len(keep_alive.statuses) + len(fresh.statuses)
            wait_until(lambda: len(keep_alive.statuses) + len(fresh.statuses) > served + 200, 30,
                       what="requests served after the restart")
        finally:
            keep_alive.stop()
            fresh.stop()
        after = sorted(c.id for c in docker.from_env().containers.list(filters=label))
    assert keep_alive.failures() == [] and fresh.failures() == [], process.log
    assert after == before  # adopted again, none replaced
    assert "replacing" not in process.log and "exited with code" not in process.log, process.log
    assert process.log.count("reconnecting") == 1, process.log
    assert "Traceback" not in process.log
