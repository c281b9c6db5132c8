"""End to end: nmc_server.py as a user runs it, real containers, real sockets."""

from __future__ import annotations

import re
import signal
import time

import pytest
import requests

from conftest import LOG_LINE, free_port_block, get


def hostname(url: str) -> str:
    return get(url + "/whoami").json()["hostname"]


def cluster_containers(docker_client, name):
    return docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"nmc.cluster={name}"})


def test_requests_alternate_between_the_replicas_and_are_logged(cluster, cluster_name):
    process, url, ports = cluster
    start = len(process.lines)
    names = [hostname(url) for _ in range(6)]
    assert set(names) == {f"{cluster_name}-{port}" for port in ports}
    assert names[0::2] == [names[0]] * 3 and names[1::2] == [names[1]] * 3  # strict alternation
    process.wait_for_line(r"Forwarding request to port: \d+$", start=start)
    forwarded = [line for line in process.lines[start:] if "Forwarding request to port" in line]
    assert len(forwarded) == 6
    for line in forwarded:  # Go's log format: 2020/08/05 22:16:19 Forwarding request to port: 3002
        assert re.fullmatch(r"\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} Forwarding request to port: \d+", line)
    logged_ports = [int(line.rsplit(" ", 1)[1]) for line in forwarded]
    assert sorted(set(logged_ports)) == ports
    # the port logged is the replica that answered
    assert [f"{cluster_name}-{port}" for port in logged_ports] == names


def test_start_prints_the_check_mark_and_serves_the_home_page(cluster):
    process, url, ports = cluster
    assert process.stdout == ["✓ Starting cluster..."]
    page = get(url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["Content-Type"]
    assert any(f"-{port}" in page.text for port in ports)
    assert all(LOG_LINE.match(line) for line in process.lines)


def test_replicas_are_named_labelled_and_published_on_loopback(cluster, docker_client, cluster_name):
    process, url, ports = cluster
    containers = cluster_containers(docker_client, cluster_name)
    assert sorted(c.name for c in containers) == [f"{cluster_name}-{p}" for p in ports]
    for container in containers:
        port = int(container.labels["nmc.port"])
        assert container.name == f"{cluster_name}-{port}"
        assert container.status == "running"
        bindings = container.attrs["HostConfig"]["PortBindings"]["8080/tcp"]
        assert bindings == [{"HostIp": "127.0.0.1", "HostPort": str(port)}]
        assert container.attrs["Config"]["Hostname"] == container.name
        assert container.labels["nmc.settings"]


def test_a_killed_replica_is_replaced_and_serves_again(cluster, docker_client, cluster_name):
    process, url, ports = cluster
    victim = docker_client.containers.get(f"{cluster_name}-{ports[0]}")
    start = len(process.lines)
    killed_at = time.monotonic()
    victim.kill()
    # requests keep being answered by the surviving replica while the victim is replaced
    for _ in range(10):
        assert get(url + "/whoami").status_code == 200
    process.wait_for_line(rf"replica {cluster_name}-{ports[0]} .*ready -> down", start=start)
    process.wait_for_line(rf"replica {cluster_name}-{ports[0]} .*starting -> ready", start=start,
                          timeout=30)
    replaced_after = time.monotonic() - killed_at
    replacement = docker_client.containers.get(f"{cluster_name}-{ports[0]}")
    assert replacement.id != victim.id and replacement.status == "running"
    names = {hostname(url) for _ in range(4)}
    assert names == {f"{cluster_name}-{ports[0]}", f"{cluster_name}-{ports[1]}"}
    assert replaced_after < 30
    assert len(cluster_containers(docker_client, cluster_name)) == 2  # the dead one was removed


def test_a_hung_replica_is_taken_out_and_replaced(cluster, docker_client, cluster_name):
    process, url, ports = cluster
    victim = docker_client.containers.get(f"{cluster_name}-{ports[1]}")
    start = len(process.lines)
    victim.pause()  # still "there", but answers nothing: only a check with a timeout sees it
    process.wait_for_line(rf"replica {cluster_name}-{ports[1]} .*ready -> down", start=start,
                          timeout=20)
    process.wait_for_line(rf"replica {cluster_name}-{ports[1]} .*starting -> ready", start=start,
                          timeout=30)
    replacement = docker_client.containers.get(f"{cluster_name}-{ports[1]}")
    assert replacement.id != victim.id and replacement.status == "running"
    assert {hostname(url) for _ in range(4)} == {f"{cluster_name}-{p}" for p in ports}


def test_sigterm_finishes_in_flight_requests_and_removes_every_container(cluster, docker_client,
                                                                         cluster_name):
    process, url, ports = cluster
    import threading

    idle = requests.Session()  # a keep-alive connection left idle must not hold the stop up
    assert idle.get(url + "/healthz", timeout=5).status_code == 200
    slow: dict = {}
    # 3 s: longer than the site's own drain on SIGTERM (2 s), so only nmc's drain can finish it
    thread = threading.Thread(target=lambda: slow.update(r=get(url + "/slow?ms=3000")))
    start = len(process.lines)
    thread.start()
    process.wait_for_line("Forwarding request", start=start)
    sent = time.monotonic()
    process.signal(signal.SIGTERM)
    assert process.wait_exit(30) == 0
    thread.join(10)
    assert slow["r"].status_code == 200 and slow["r"].headers["Connection"] == "close"
    assert time.monotonic() - sent < 8  # the request's 3 s, not the idle connection's lifetime
    assert cluster_containers(docker_client, cluster_name) == []
    assert "Traceback" not in process.log
    with pytest.raises(requests.ConnectionError):
        requests.get(url, timeout=2)
    with pytest.raises(requests.ConnectionError):
        idle.get(url + "/healthz", timeout=2)


def test_quiet_turns_the_request_lines_off(cluster_name, run_nmc):
    base = free_port_block(2)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 1),
                      "--base-port", str(base), "-n", "1", "-q")
    process.wait_serving()
    for _ in range(3):
        assert get(f"http://127.0.0.1:{base + 1}/healthz").status_code == 200
    process.signal(signal.SIGINT)
    assert process.wait_exit(30) == 0
    assert "Forwarding request" not in process.log
    assert "stopped" in process.lines[-1]


def test_keep_leaves_the_replicas_and_the_next_start_adopts_them(cluster_name, run_nmc, docker_client):
    base = free_port_block(3)
    args = ("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
            "--base-port", str(base), "-n", "2")
    first = run_nmc(*args, "--keep")
    first.wait_serving()
    first.signal(signal.SIGTERM)
    assert first.wait_exit(30) == 0
    kept = {c.name: c.id for c in cluster_containers(docker_client, cluster_name)}
    assert len(kept) == 2 and all(c.status == "running"
                                  for c in cluster_containers(docker_client, cluster_name))

    second = run_nmc(*args)
    second.wait_serving()
    assert second.log.count("adopting running container") == 2
    assert {c.name: c.id for c in cluster_containers(docker_client, cluster_name)} == kept
    assert get(f"http://127.0.0.1:{base + 2}/healthz").status_code == 200
    second.signal(signal.SIGTERM)
    assert second.wait_exit(30) == 0
    assert cluster_containers(docker_client, cluster_name) == []


def test_a_second_ctrl_c_stops_at_once_and_still_removes_the_replicas(cluster, docker_client,
                                                                      cluster_name):
    process, url, ports = cluster
    import threading

    cut: dict = {}

    def slow_request():
        try:
            cut["r"] = requests.get(url + "/slow?ms=20000", timeout=30)
        except requests.RequestException as e:
            cut["error"] = e

    thread = threading.Thread(target=slow_request)
    start = len(process.lines)
    thread.start()
    process.wait_for_line("Forwarding request", start=start)
    process.signal(signal.SIGINT)
    process.wait_for_line(r"in-flight requests get up to 10s")
    sent = time.monotonic()
    process.signal(signal.SIGINT)
    assert process.wait_exit(30) == 0
    assert time.monotonic() - sent < 8  # not the 10 s drain, nor the 20 s request
    process.wait_for_line(r"second signal: stopping at once")
    thread.join(30)
    # the in-flight request was cut short with a proper answer, not relayed
    assert cut["r"].status_code == 503 and "stopping" in cut["r"].text
    assert cluster_containers(docker_client, cluster_name) == []
    assert "Traceback" not in process.log


def test_the_engines_events_alone_get_a_replica_replaced(cluster_name, run_nmc, docker_client):
    """With checks all but off, only the event stream can notice: kill, pause and removal."""
    base = free_port_block(4)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 3),
                      "--base-port", str(base), "-n", "3", "--check-interval", "3600")
    process.wait_serving()
    actions = [(base, lambda c: c.kill(), "container is being stopped (signal 9)"),
               (base + 1, lambda c: c.pause(), "container was paused"),
               (base + 2, lambda c: c.remove(force=True), "container is being stopped (signal 9)")]
    for port, act, reason in actions:
        name = f"{cluster_name}-{port}"
        victim = docker_client.containers.get(name)
        start = len(process.lines)
        act(victim)
        process.wait_for_line(rf"replica {name} .*ready -> down \({re.escape(reason)}\)", start=start)
        process.wait_for_line(rf"replica {name} .*starting -> ready", start=start)
        assert docker_client.containers.get(name).id != victim.id
    url = f"http://127.0.0.1:{base + 3}"
    assert {hostname(url) for _ in range(6)} == {f"{cluster_name}-{base + i}" for i in range(3)}
    assert len(cluster_containers(docker_client, cluster_name)) == 3


def test_docker_stop_takes_a_replica_out_at_once_and_no_request_fails(cluster, docker_client,
                                                                      cluster_name):
    process, url, ports = cluster
    import threading

    statuses: list = []
    done = threading.Event()

    def steady_load():
        with requests.Session() as session:
            deadline = time.monotonic() + 20
            while not done.is_set() and time.monotonic() < deadline:
                try:
                    statuses.append(session.get(url + "/whoami", timeout=5).status_code)
                except requests.RequestException as e:
                    statuses.append(type(e).__name__)

    load = threading.Thread(target=steady_load)
    load.start()
    name = f"{cluster_name}-{ports[0]}"
    start = len(process.lines)
    try:
        docker_client.containers.get(name).stop(timeout=5)  # SIGTERM: the site drains, then exits
        # the engine's kill event, or the relay seeing the site close its idle connections on
        # SIGTERM, whichever comes first: both take the replica out before any check would
        process.wait_for_line(rf"replica {name} .*ready -> down \((container is being stopped "
                              r"\(signal 15\)|connection broken|connection refused)", start=start)
        process.wait_for_line(rf"replica {name} .*starting -> ready", start=start)
    finally:
        done.set()
        load.join(30)
    assert statuses and set(statuses) == {200}, [s for s in statuses if s != 200][:5]


def test_replicas_get_the_env_options_and_port(run_nmc, cluster_name, docker_client, tmp_path):
    env_file = tmp_path / "site.env"
    env_file.write_text("GREETING=from the file\nLEVEL=file\n")
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "-n", "2", "--env-file", str(env_file),
                      "-e", "LEVEL=cli", "-e", "EXTRA=a b=c")
    process.wait_serving()
    for port in (base, base + 1):
        env = docker_client.containers.get(f"{cluster_name}-{port}").attrs["Config"]["Env"]
        assert {"GREETING=from the file", "LEVEL=cli", "EXTRA=a b=c", "PORT=8080"} <= set(env), env
    assert get(f"http://127.0.0.1:{base + 2}/healthz").status_code == 200
