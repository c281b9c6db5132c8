"""--swarm end to end, on a one-node swarm of the test's own making: the replicas are the tasks of
one service; nmc follows Swarm's kills, scale and adoption without a failed request.

Making the engine a swarm changes the engine, so it runs only where the run owns its engine
(CI=true or NMC_TEST_SWARM=1); the swarm is left at the end, and an engine that already was a
swarm manager is used as it is and left one. Every service a test made is removed, pass or fail.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests

from conftest import ROOT, Load, NmcProcess, admin_auth, free_port_block, get, wait_until


def swarm_state(docker_client) -> str:
    return (docker_client.info().get("Swarm") or {}).get("LocalNodeState", "")


@pytest.fixture(scope="module")
def one_node_swarm(docker_client):
    if os.environ.get("CI") != "true" and os.environ.get("NMC_TEST_SWARM") != "1":
        pytest.skip("makes the Docker engine a swarm: only where the run owns it (CI=true or "
                    "NMC_TEST_SWARM=1)")
    made = swarm_state(docker_client) == "inactive"
    if made:
        subprocess.run(["docker", "swarm", "init", "--advertise-addr", "127.0.0.1"], check=True,
                       capture_output=True)
    yield
    if made:
        subprocess.run(["docker", "swarm", "leave", "--force"], capture_output=True)


@pytest.fixture
def service_removed(docker_client, cluster_name):
    """The test's service (named after its cluster) is removed at the end, pass or fail."""
    yield
    subprocess.run(["docker", "service", "rm", cluster_name], capture_output=True)


def admin(port: int, method: str, path: str, body: dict | None = None,
          headers: dict | None = None) -> dict:
    answer = requests.request(method, f"http://127.0.0.1:{port}{path}", json=body, timeout=120,
                              headers=headers)
    assert answer.status_code == 200, answer.text
    return answer.json()


def tasks(cluster_name: str) -> dict[str, str]:
    """The service's running tasks: name (service.slot) -> task id."""
    out = subprocess.run(["docker", "service", "ps", cluster_name, "--filter",
                          "desired-state=running", "--format", "{{.Name}} {{.ID}} {{.CurrentState}}"],
                         capture_output=True, text=True).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines()
            if line.split()[2] == "Running"}


def kill_a_task(docker_client, cluster_name: str, nmc: NmcProcess) -> None:
    """`docker kill` one of the service's task containers; until nmc has its slot ready again."""
    victim = docker_client.containers.list(filters={
        "label": f"com.docker.swarm.service.name={cluster_name}"})[0]
    start = len(nmc.lines)
    victim.kill()
    nmc.wait_for_line(r"starting -> ready", start=start, timeout=30)


def test_on_an_engine_that_is_no_swarm_manager_swarm_is_one_line(run_nmc, cluster_name,
                                                                  docker_client):
    if swarm_state(docker_client) != "inactive":
        pytest.skip("this engine is in a swarm already")
    base = free_port_block(2)
    process = run_nmc("--swarm", "--name", cluster_name, "--bind", "127.0.0.1",
                      "--port", str(base))
    assert process.wait_exit(60) != 0
    errors = [line for line in process.lines if line.strip()]
    assert errors[-1].startswith("nmc-server: error: --swarm: this Docker engine is not a swarm "
                                 "manager"), process.log
    assert "docker swarm init" in errors[-1]
    assert "Traceback" not in process.log


def test_swarm_tasks_serve_and_kills_and_scaling_fail_no_request(
        one_node_swarm, service_removed, run_nmc, cluster_name, docker_client):
    base = free_port_block(2)
    url, admin_port = f"http://127.0.0.1:{base}", base + 1
    process = run_nmc("--swarm", "--name", cluster_name, "--bind", "127.0.0.1", "--port",
                      str(base), "--admin-port", str(admin_port), "-n", "2", "-q",
                      "--memory", "128m", "--cpus", "0.5")
    process.wait_serving(120)
    assert {get(url + "/whoami").json()["replica"] for _ in range(4)} == \
        {f"{cluster_name}.1", f"{cluster_name}.2"}
    status = admin(admin_port, "GET", "/status")
    node = docker_client.info()["Name"]
    for replica in status["replicas"]:  # each task: slot, node, address, both words of its state
        assert replica["name"] == f"{cluster_name}.{replica['slot']}"
        assert replica["node"] == node and replica["address"] == f"127.0.0.1:{replica['port']}"
        assert (replica["state"], replica["engine_state"]) == ("ready", "running")
    assert process.wait_for_line(rf"replica {cluster_name}\.1 \(node {node}, port \d+, task \w+\): "
                                 r"starting -> ready")
    template = docker_client.api.inspect_service(cluster_name)["Spec"]["TaskTemplate"]
    assert template["ContainerSpec"]["CapabilityDrop"] == ["ALL"]  # hardened as on one host
    assert template["Resources"]["Limits"] == {"NanoCPUs": 500_000_000, "MemoryBytes": 128 << 20}
    metrics = requests.get(f"http://127.0.0.1:{admin_port}/metrics", timeout=10).text
    assert f'nmc_replica_info{{address="127.0.0.1:{status["replicas"][0]["port"]}"' in metrics
    load = Load(url, clients=4, limit=90)
    try:
        kill_a_task(docker_client, cluster_name, process)
        wait_until(lambda: admin(admin_port, "GET", "/status")["totals"]["restarts"] == 1, 30,
                   what="Swarm's replacement counted as a restart")
        auth = admin_auth(cluster_name)
        assert admin(admin_port, "POST", "/scale", {"replicas": 3}, auth)["message"] == \
            f"scaled from 2 to 3 replicas: started {cluster_name}.3"
        message = admin(admin_port, "POST", "/scale", {"replicas": 1}, auth)["message"]
        assert message.startswith("scaled from 3 to 1 replicas: removed ")
        status = admin(admin_port, "GET", "/status")
        assert [r["state"] for r in status["replicas"]] == ["ready"]
        assert len(tasks(cluster_name)) == 1
    finally:
        load.stop()
    assert len(load.statuses) > 100 and load.failures() == [], load.failures()[:5]
    assert "Traceback" not in process.log


def test_swarm_nmc_killed_and_started_again_adopts_the_service_without_restarts(
        one_node_swarm, service_removed, run_nmc, cluster_name):
    base = free_port_block(1)
    args = ("--swarm", "--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base), "-n", "2")
    first = run_nmc(*args)
    first.wait_serving(120)
    before = tasks(cluster_name)
    assert len(before) == 2
    first.signal(signal.SIGKILL)
    first.wait_exit(10)
    second = run_nmc(*args)
    second.wait_serving(60)
    assert "adopting swarm service" in second.log
    assert tasks(cluster_name) == before  # the same tasks, never restarted
    second.signal(signal.SIGTERM)
    assert second.wait_exit(60) == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and subprocess.run(
            ["docker", "service", "inspect", cluster_name], capture_output=True).returncode == 0:
        time.sleep(0.2)
    assert subprocess.run(["docker", "service", "inspect", cluster_name],
                          capture_output=True).returncode != 0, "the service was not removed"


def test_swarm_rollout_and_the_automatic_rollback_of_an_image_that_never_answers_fail_no_request(
        one_node_swarm, service_removed, run_nmc, cluster_name, scratch_images, docker_client):
    from conftest import build_on_site_image

    good, bad = f"{cluster_name}-v2", f"{cluster_name}-bad"
    scratch_images.extend([good, bad])
    good_id = build_on_site_image(docker_client, good, "LABEL nmct.version=2",
                                  labels={"nmct.owner": cluster_name})
    build_on_site_image(docker_client, bad, 'CMD ["node", "-e", "setInterval(() => {}, 1000)"]',
                        labels={"nmct.owner": cluster_name})
    base = free_port_block(2)
    url, admin_port = f"http://127.0.0.1:{base}", base + 1
    process = run_nmc("--swarm", "--name", cluster_name, "--bind", "127.0.0.1", "--port",
                      str(base), "--admin-port", str(admin_port), "-n", "2", "-q",
                      "--start-timeout", "3")
    process.wait_serving(120)
    load = Load(url, clients=4, limit=150)
    try:
        auth = admin_auth(cluster_name)
        message = admin(admin_port, "POST", "/rollout", {"image": good}, auth)["message"]
        assert message.startswith(f"rolled out {good} ({good_id.split(':')[1][:12]}) to 2 replicas")
        answer = requests.post(f"http://127.0.0.1:{admin_port}/rollout", json={"image": bad},
                               headers=auth, timeout=300)
        assert answer.status_code == 409, answer.text
        assert "Swarm rolled the service back" in answer.json()["error"]
        status = admin(admin_port, "GET", "/status")
        assert {r["image_id"] for r in status["replicas"]} == {good_id}
        assert [r["state"] for r in status["replicas"]] == ["ready", "ready"]
    finally:
        load.stop()
    assert len(load.statuses) > 100 and load.failures() == [], load.failures()[:5]
    process.wait_for_line(r"rollout: rollback_completed")


def test_swarm_logs_come_through_the_manager_named_by_slot_and_a_crash_says_its_last_lines(
        one_node_swarm, service_removed, run_nmc, cluster_name):
    base = free_port_block(1)
    url = f"http://127.0.0.1:{base}"
    process = run_nmc("--swarm", "--name", cluster_name, "--bind", "127.0.0.1", "--port",
                      str(base), "-n", "2", "-q")
    process.wait_serving(120)
    start = len(process.lines)
    assert get(url + "/crash").text == "crashing\n"  # then the task exits with code 1
    process.wait_for_line(
        rf"replica {cluster_name}\.\d exited with code 1 after [\d.]+s in the rotation; its last "
        r"log lines: .*/crash requested", start=start, timeout=30)
    process.wait_for_line(r"starting -> ready", start=start, timeout=30)
    assert sum("in the rotation; its last log lines" in line for line in process.lines[start:]) == 1
    logs = subprocess.run([sys.executable, "nmc_server.py", "logs", "--name", cluster_name],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert logs.returncode == 0, logs.stderr
    lines = logs.stdout.splitlines()
    for slot in (1, 2):  # each slot's tasks, the crashed one's included, by the slot's name
        assert any(re.match(rf"{cluster_name}\.{slot} \| listening on :8080 as "
                            rf"{cluster_name}\.{slot} ", line) for line in lines), logs.stdout
    assert sum("/crash requested" in line for line in lines) == 1, logs.stdout
    assert "Traceback" not in process.log


def test_swarm_under_gunicorn_follows_a_killed_task_and_fails_no_request(
        one_node_swarm, service_removed, cluster_name, docker_client, tmp_path):
    port = free_port_block(1)
    url = f"http://127.0.0.1:{port}"
    gunicorn = NmcProcess(["-c", "python:nmc.gunicorn_conf", "-w", "2", "-b", f"127.0.0.1:{port}",
                           "nmc.wsgi:app"],
                          env={"NMC_SWARM": "1", "NMC_NAME": cluster_name, "NMC_REPLICAS": "2",
                               "NMC_QUIET": "1", "NMC_ADMIN_PORT": "0", "NMC_RUN_DIR": str(tmp_path)},
                          command=[sys.executable, "-m", "gunicorn"])
    try:
        gunicorn.wait_for_line(r"supervises cluster", timeout=60)
        wait_until(lambda: {get(url + "/whoami").headers["X-Served-By"] for _ in range(8)}
                   == {f"{cluster_name}.1", f"{cluster_name}.2"}, 60, what="both tasks serving")
        load = Load(url, clients=4, limit=90)
        try:
            kill_a_task(docker_client, cluster_name, gunicorn)
            wait_until(lambda: len(tasks(cluster_name)) == 2, 30, what="two running tasks")
        finally:
            load.stop()
        assert len(load.statuses) > 100 and load.failures() == [], load.failures()[:5]
        gunicorn.signal(signal.SIGTERM)
        assert gunicorn.wait_exit(60) == 0
        assert subprocess.run(["docker", "service", "inspect", cluster_name],
                              capture_output=True).returncode != 0, "the service was not removed"
        assert "Traceback" not in gunicorn.log
    finally:
        gunicorn.stop()
