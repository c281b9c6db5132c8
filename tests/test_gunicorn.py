"""End to end: nmc under gunicorn's gevent worker (nmc/wsgi.py, nmc/workers.py).

gunicorn runs as a user would start it (`gunicorn -c python:nmc.gunicorn_conf -w N
nmc.wsgi:app`, settings in NMC_* variables), in its own process, over real sockets and real
containers. The points: one supervisor however many workers, every worker routing over the same
replicas, supervision surviving a `kill -9` of the supervising worker and a --max-requests
restart, zero restarts and zero failed requests across a graceful reload (HUP), and a clean
stop (TERM) that removes the replicas.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import sys
import threading
import time

import docker
import pytest
import requests

from conftest import IMAGE, Load, NmcProcess, free_port_block, wait_until
from test_relay import exchange, seen_by_replica
from test_supervisor import live_restore, own_dockerd, start_dockerd, stop_dockerd
from test_websocket import TEXT, WsClient

SUPERVISES = re.compile(r"worker (\d+) supervises cluster")


class Gunicorn:
    """gunicorn serving nmc.wsgi:app for one test's cluster."""

    def __init__(self, cluster_name: str, run_dir, workers: int = 3, env: dict | None = None,
                 args: tuple[str, ...] = (), replica_room: int = 2):
        """`replica_room`: the free ports kept for replicas (a scale up takes the next ones)."""
        base = free_port_block(replica_room + 1)
        self.port = base + replica_room
        self.replica_ports = [base, base + 1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = NmcProcess(
            ["-c", "python:nmc.gunicorn_conf", "-w", str(workers), "-b", f"127.0.0.1:{self.port}",
             "--graceful-timeout", "10", *args, "nmc.wsgi:app"],
            env={"NMC_NAME": cluster_name, "NMC_BASE_PORT": str(base), "NMC_REPLICAS": "2",
                 "NMC_IMAGE": IMAGE, "NMC_CHECK_INTERVAL": "1", "NMC_QUIET": "1",
                 "NMC_RUN_DIR": str(run_dir), "NMC_ADMIN_PORT": "0", **(env or {})},
            command=[sys.executable, "-m", "gunicorn"])

    @property
    def master(self) -> int:
        return self.process.proc.pid

    def leaders(self) -> list[int]:
        return [int(m.group(1)) for line in self.process.lines if (m := SUPERVISES.search(line))]

    def wait_ready(self) -> int:
        """Until both replicas answer through gunicorn; the supervising worker's pid."""
        self.process.wait_for_line(r"supervises cluster", timeout=30)
        wait_until(lambda: served_by_both(self.url), timeout=30, what="both replicas answering")
        return self.leaders()[-1]


def served_by_both(url: str) -> bool:
    seen = set()
    for _ in range(12):
        try:
            answer = requests.get(url + "/whoami", headers={"Connection": "close"}, timeout=5)
        except requests.RequestException:
            return False
        if answer.status_code != 200:
            return False
        seen.add(answer.headers["X-Served-By"])
    return len(seen) == 2


def container_ids(docker_client, cluster_name: str) -> dict[str, str]:
    return {c.name: c.id for c in docker_client.containers.list(
        all=True, filters={"label": f"nmc.cluster={cluster_name}"}, ignore_removed=True)}


@pytest.fixture
def gunicorn(cluster_name, tmp_path):
    """Start gunicorn for this test's cluster; stopped (TERM, then KILL) at the end."""
    started: list[Gunicorn] = []

    def start(**kwargs) -> Gunicorn:
        server = Gunicorn(cluster_name, tmp_path, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.process.stop()


def assert_no_traceback(server: Gunicorn) -> None:
    assert "Traceback" not in server.process.log, server.process.log_summary()


# ------------------------------------------------------------------------------------------------
# one supervisor, shared routing


def test_three_workers_run_one_supervisor_over_two_replicas(gunicorn, docker_client, cluster_name):
    server = gunicorn(workers=3)
    server.wait_ready()
    before = container_ids(docker_client, cluster_name)
    assert sorted(before) == [f"{cluster_name}-{p}" for p in server.replica_ports]
    time.sleep(3)  # three check intervals: nobody starts a duplicate or replaces anything
    assert container_ids(docker_client, cluster_name) == before
    assert len(server.leaders()) == 1, server.process.log_summary()
    served = [requests.get(server.url + "/whoami", headers={"Connection": "close"},
                           timeout=5).headers["X-Served-By"] for _ in range(40)]
    assert set(served) == set(before), served
    assert_no_traceback(server)


def test_every_worker_learns_of_a_replacement_and_no_request_fails(gunicorn, docker_client,
                                                                    cluster_name):
    server = gunicorn(workers=3)
    server.wait_ready()
    victim = f"{cluster_name}-{server.replica_ports[0]}"
    old_id = container_ids(docker_client, cluster_name)[victim]
    start = len(server.process.lines)
    load = Load(server.url, fresh_connections=True)
    try:
        time.sleep(0.5)
        docker_client.containers.get(victim).kill()
        server.process.wait_for_line(rf"replica {victim} .*starting -> ready", start=start)
        new_id = container_ids(docker_client, cluster_name)[victim]
        assert new_id != old_id
        time.sleep(1.5)  # "within about a second": then every worker routes to the new one
        served = []
        for _ in range(30):  # fresh connections: spread over the three workers
            answer = requests.get(server.url + "/whoami", headers={"Connection": "close"}, timeout=5)
            assert answer.status_code == 200
            served.append(answer.headers["X-Served-By"])
        assert served.count(victim) >= 10, served  # round robin again, the new container in it
    finally:
        load.stop()
    assert load.statuses and not load.failures(), load.failures()[:5]
    assert len(server.leaders()) == 1
    assert_no_traceback(server)


def test_kill_9_of_the_supervising_worker_hands_supervision_over_without_a_gap(
        gunicorn, docker_client, cluster_name):
    server = gunicorn(workers=3)
    leader = server.wait_ready()
    before = container_ids(docker_client, cluster_name)
    load = Load(server.url, fresh_connections=True)
    try:
        time.sleep(0.5)
        killed_at = time.monotonic()
        os.kill(leader, signal.SIGKILL)
        wait_until(lambda: len(server.leaders()) == 2, timeout=10, what="a new supervising worker")
        successor = server.leaders()[-1]
        assert successor != leader
        time.sleep(1)
        assert container_ids(docker_client, cluster_name) == before  # adopted: zero restarts
        # and it supervises: a killed replica is replaced by the new leader
        start = len(server.process.lines)
        victim = f"{cluster_name}-{server.replica_ports[1]}"
        docker_client.containers.get(victim).kill()
        server.process.wait_for_line(rf"replica {victim} .*starting -> ready", start=start)
    finally:
        load.stop()
    # The requests that the killed worker was handling die with it (as with any server's
    # process), at most one per client; none fails afterwards, while supervision moves over.
    assert len(load.statuses) > 20
    assert len(load.failures()) <= load.clients, load.failures()
    assert all(killed_at - 10 <= sent <= killed_at for sent in load.failed_at), \
        [round(sent - killed_at, 3) for sent in load.failed_at]
    assert_no_traceback(server)


# ------------------------------------------------------------------------------------------------
# reload and stop


def test_hup_reload_under_load_keeps_the_replicas_and_fails_no_request(gunicorn, docker_client,
                                                                        cluster_name):
    server = gunicorn(workers=2)
    leader = server.wait_ready()
    before = {c.name: (c.id, c.attrs["State"]["StartedAt"]) for c in docker_client.containers.list(ignore_removed=True,
        filters={"label": f"nmc.cluster={cluster_name}"})}
    load = Load(server.url, fresh_connections=True)
    try:
        time.sleep(1)
        os.kill(server.master, signal.SIGHUP)
        wait_until(lambda: len(server.leaders()) == 2, timeout=15,
                   what="a worker of the new generation supervising")
        assert server.leaders()[-1] != leader
        time.sleep(2)
    finally:
        load.stop()
    after = {c.name: (c.id, c.attrs["State"]["StartedAt"]) for c in docker_client.containers.list(ignore_removed=True,
        filters={"label": f"nmc.cluster={cluster_name}"})}
    assert after == before  # same containers, never restarted
    assert "handed over to the next worker" in server.process.log
    assert len(load.statuses) > 20 and not load.failures(), load.failures()[:5]
    assert_no_traceback(server)


def test_term_lets_requests_finish_then_removes_the_replicas(gunicorn, docker_client, cluster_name):
    server = gunicorn(workers=2)
    server.wait_ready()
    answers: list = []

    def slow_request():
        answers.append(requests.get(server.url + "/slow?ms=2000", timeout=20).status_code)

    slow = threading.Thread(target=slow_request)
    slow.start()
    time.sleep(0.5)
    os.kill(server.master, signal.SIGTERM)
    assert server.process.wait_exit(40) == 0
    slow.join(10)
    assert answers == [200]
    assert container_ids(docker_client, cluster_name) == {}
    assert "stopped" in server.process.log
    assert_no_traceback(server)


def test_a_worker_restarted_by_max_requests_hands_over_and_no_request_fails(
        gunicorn, docker_client, cluster_name):
    """gunicorn ends a worker after --max-requests; the supervising one hands over (it is no
    shutdown: the master did not stop), and the replicas run on, never restarted."""
    server = gunicorn(workers=2, args=("--max-requests", "20"))
    server.wait_ready()
    before = container_ids(docker_client, cluster_name)
    statuses = []
    # which worker accepts a connection is the kernel's choice: send until the supervising one
    # has served its 20 and handed over (bounded in count and time)
    deadline = time.monotonic() + 60
    while len(server.leaders()) < 2 and len(statuses) < 2000 and time.monotonic() < deadline:
        statuses.append(requests.get(server.url + "/whoami", headers={"Connection": "close"},
                                     timeout=10).status_code)
    assert len(server.leaders()) >= 2, f"no hand-over after {len(statuses)} requests"
    assert statuses == [200] * len(statuses)
    assert container_ids(docker_client, cluster_name) == before
    assert "handed over to the next worker" in server.process.log
    assert_no_traceback(server)


def test_term_with_keep_leaves_the_replicas_running(gunicorn, docker_client, cluster_name):
    server = gunicorn(workers=2, env={"NMC_KEEP": "1"})
    server.wait_ready()
    before = container_ids(docker_client, cluster_name)
    os.kill(server.master, signal.SIGTERM)
    assert server.process.wait_exit(40) == 0
    running = {c.name: c.id for c in docker_client.containers.list(ignore_removed=True,
        filters={"label": f"nmc.cluster={cluster_name}"})}
    assert running == before


# ------------------------------------------------------------------------------------------------
# the relay under gunicorn


def test_websocket_and_streaming_work_under_gunicorn(gunicorn):
    server = gunicorn(workers=2)
    server.wait_ready()
    client = WsClient(server.port)
    try:
        for i in range(50):
            client.send(TEXT, b"message %d" % i)
            fin, opcode, payload = client.recv()
            assert (fin, opcode, payload) == (True, TEXT, b"message %d" % i)
    finally:
        client.close()
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(b"GET /stream?n=4&ms=400 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        arrivals = []
        data = b""
        while True:
            piece = sock.recv(65536)
            if not piece:
                break
            data += piece
            arrivals.append((time.monotonic(), data.count(b"chunk ")))
    assert all(b"chunk %d\n" % i in data for i in range(4)), data
    first = next(t for t, seen in arrivals if seen >= 1)
    last = next(t for t, seen in arrivals if seen >= 4)
    assert last - first >= 0.8, "the chunks arrived together: buffered"


def test_requests_are_read_by_nmcs_own_server_as_under_nmc_server(gunicorn):
    """nmc's worker (nmc.gunicorn_worker) reads requests with nmc's HTTP server: the replica hears
    the header names spelled as the client sent them (gunicorn's parser upper-cases them, and
    the relay could only guess the spelling back), and the answer is nmc's, not gunicorn's."""
    server = gunicorn(workers=1)
    server.wait_ready()
    answer = exchange(server.port, "GET", "/echo", [("Host", "h"), ("x-lower-case", "1"),
                                                    ("X-MiXeD", "2")])
    _, pairs = seen_by_replica(answer)
    assert ("x-lower-case", "1") in pairs and ("X-MiXeD", "2") in pairs, pairs
    assert not answer.values("Server"), answer  # gunicorn's Response says "Server: gunicorn"


def test_gunicorns_access_log_gets_a_line_per_request(gunicorn, tmp_path):
    access_log = tmp_path / "access.log"
    server = gunicorn(workers=1, args=("--access-logfile", str(access_log)))
    server.wait_ready()
    for n in range(3):
        assert requests.get(f"{server.url}/whoami?n={n}", timeout=5).status_code == 200

    def logged():
        text = access_log.read_text() if access_log.exists() else ""
        return all(f'"GET /whoami?n={n} HTTP/1.1" 200' in text for n in range(3))
    wait_until(logged, 10, what="three access log lines")


# ------------------------------------------------------------------------------------------------
# bad settings: one line, gunicorn stops


@pytest.mark.parametrize("env, args, message", [
    ({"NMC_REPLICAS": "many"}, (), "--replicas must be a whole number"),
    ({"NMC_IMAGE": "nmc-no-such-image"}, (), "nmc-no-such-image"),
    ({}, ("-k", "sync"), "needs gunicorn's gevent worker"),
    ({"NMC_PORT": "4000"}, (), "NMC_PORT (or create_app's port) does not apply under gunicorn: "
                               "gunicorn's -b sets the listener"),
    ({"NMC_BUILD": "nodejs"}, (), "NMC_BUILD (or create_app's build) does not apply"),
    ({"NMC_CERTFILE": "site.pem"}, (), "gunicorn's own --certfile and --keyfile serve TLS"),
    ({}, ("-c", "/dev/null", "-k", "gevent"), "needs its gunicorn hooks: gunicorn -c "
                                              "python:nmc.gunicorn_conf"),
    ({}, ("--limit-request-line", "100"), "--limit-request-line does not apply with nmc's worker"),
])
def test_bad_settings_stop_gunicorn_with_one_line(gunicorn, docker_client, cluster_name,
                                                  env, args, message):
    server = gunicorn(workers=2, env=env, args=args)  # a -k or -c in args comes last: it wins
    assert server.process.wait_exit(60) != 0
    errors = [line for line in server.process.lines if "nmc-server: error:" in line]
    assert errors and message in errors[0], server.process.log_summary()
    assert_no_traceback(server)
    assert container_ids(docker_client, cluster_name) == {}


def test_an_engine_restart_with_live_restore_costs_no_replica_and_no_request(
        gunicorn, docker_client, cluster_name):
    """As with ./nmc_server.py (test_supervisor.py): every worker, not only the supervising one,
    holds its requests while the engine's port proxies are away (the leader's word reaches them
    through the state file)."""
    pid, command = own_dockerd()
    with live_restore(pid):
        server = gunicorn(workers=3)
        server.wait_ready()
        before = container_ids(docker_client, cluster_name)
        load = Load(server.url, clients=4, fresh_connections=True)
        try:
            wait_until(lambda: len(load.statuses) > 100, 30, what="the load under way")
            stop_dockerd(pid)
            start_dockerd(command)
            server.process.wait_for_line(r"the Docker engine is back", timeout=60)
            served = len(load.statuses)
            wait_until(lambda: len(load.statuses) > served + 200, 30,
                       what="requests served after the restart")
        finally:
            load.stop()
        assert container_ids(docker.from_env(), cluster_name) == before  # none replaced
    assert load.statuses and not load.failures(), load.failures()[:5]
    assert_no_traceback(server)
