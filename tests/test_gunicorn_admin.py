"""The admin interface, the access log and --logs under gunicorn, as with ./nmc_server.py
(tests/test_admin.py): the supervising worker serves the admin port, with the requests that
every worker relayed, and a worker that takes supervision over serves it again.

gunicorn runs as a user starts it (`gunicorn -c python:nmc.gunicorn_conf -w 3 nmc.wsgi:app`, NMC_* variables),
over real sockets and containers.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, admin_auth, free_port_block, wait_until
from test_gunicorn import Gunicorn, assert_no_traceback

SENT = 60


@pytest.fixture
def with_admin(cluster_name, tmp_path):
    """Start gunicorn (3 workers) with an admin port: (server, admin URL, admin port); stopped
    (TERM, then KILL) at the end."""
    started: list[Gunicorn] = []

    def start(replica_room: int = 2, **env: str):
        port = free_port_block(1)
        server = Gunicorn(cluster_name, tmp_path, workers=3, replica_room=replica_room,
                          env={"NMC_ADMIN_PORT": str(port), **env})
        started.append(server)
        server.wait_ready()
        return server, f"http://127.0.0.1:{port}", port

    yield start
    for server in started:
        server.process.stop()


def send(server, count: int = SENT, path: str = "/whoami") -> None:
    """Fresh connections: gunicorn's workers each take some."""
    for _ in range(count):
        answer = requests.get(server.url + path, headers={"Connection": "close"}, timeout=10)
        assert answer.status_code == 200


def settled_total(admin: str) -> int:
    """The requests /status counts once every worker has written its counts (each writes them
    about once a second): the same number twice, PUBLISH_EVERY and more apart."""
    before = status(admin)["totals"]["requests"]
    while True:
        time.sleep(1.5)
        now = status(admin)["totals"]["requests"]
        if now == before:
            return now
        before = now


def status(admin: str) -> dict:
    answer = requests.get(admin + "/status", timeout=10)
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_status_and_metrics_count_the_requests_of_every_worker(with_admin, cluster_name):
    server, admin, port = with_admin()
    base = settled_total(admin)  # wait_ready's own requests
    send(server)
    wait_until(lambda: status(admin)["totals"]["requests"] == base + SENT, 10,
               what=f"/status counting all {SENT} requests, whichever worker relayed them")
    found = status(admin)
    assert found["cluster"] == cluster_name and found["totals"]["ready"] == 2
    assert sum(r["requests"] for r in found["replicas"]) == base + SENT
    assert all(r["requests"] > 0 for r in found["replicas"])  # round robin in every worker
    samples = {}
    for family in text_string_to_metric_families(requests.get(admin + "/metrics", timeout=10).text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    total = sum(value for (name, labels), value in samples.items()
                if name == "nmc_requests_total" and ("code", "2xx") in labels)
    assert total == base + SENT
    table = subprocess.run([sys.executable, "nmc_server.py", "status", "--admin-port", str(port)],
                           cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["REPLICA", "PORT", "STATE"]
    assert all(f"{cluster_name}-{p}" in table.stdout for p in server.replica_ports)
    assert_no_traceback(server)


def test_scale_and_rollout_through_the_admin_port(with_admin, cluster_name, tmp_path):
    server, admin, _port = with_admin(replica_room=3)
    answer = requests.post(admin + "/scale", json={"replicas": 3}, timeout=120,
                           headers=admin_auth(cluster_name, tmp_path))
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"].startswith("scaled from 2 to 3 replicas")
    # every worker relays to the new replica once the leader has said so
    wait_until(lambda: {requests.get(server.url + "/whoami", headers={"Connection": "close"},
                                     timeout=10).headers["X-Served-By"] for _ in range(12)}
               == {r["name"] for r in status(admin)["replicas"]}, 15, what="all three in use")
    answer = requests.post(admin + "/rollout", json={}, timeout=120,
                           headers=admin_auth(cluster_name, tmp_path))
    assert answer.status_code == 200, answer.text
    assert answer.json()["message"].startswith("nothing to roll out: every replica runs")
    answer = requests.post(admin + "/scale", json={"replicas": 2}, timeout=120,
                           headers=admin_auth(cluster_name, tmp_path))
    assert answer.status_code == 200 and len(status(admin)["replicas"]) == 2
    assert_no_traceback(server)


def test_the_admin_port_keeps_its_guards_under_gunicorn(with_admin, cluster_name, tmp_path):
    """As tests/test_admin.py checks them: the Host check against DNS rebinding, the token for
    a change, JSON-only POSTs, and the public port never answering admin paths."""
    server, admin, port = with_admin()
    assert requests.get(admin + "/status", headers={"Host": "evil.example"}, timeout=5).status_code == 403
    assert requests.post(admin + "/scale", json={"replicas": 3}, headers={"Host": "evil.example"},
                         timeout=5).status_code == 403
    assert requests.post(admin + "/scale", json={"replicas": 3}, timeout=5).status_code == 401
    answer = requests.post(admin + "/scale", data=b"{not json", timeout=5,
                           headers=admin_auth(cluster_name, tmp_path))
    assert answer.status_code == 415 and "JSON" in answer.json()["error"]
    assert requests.get(admin + "/scale", timeout=5).status_code == 405
    answer = requests.get(server.url + "/status", timeout=5)
    assert answer.status_code == 404 and "X-Served-By" in answer.headers  # a replica's answer
    assert_no_traceback(server)


def test_a_new_supervising_worker_serves_the_admin_port_and_the_counts_go_on(with_admin, tmp_path):
    server, admin, _port = with_admin()
    leader = server.leaders()[-1]
    base = settled_total(admin)
    send(server)
    wait_until(lambda: status(admin)["totals"]["requests"] == base + SENT, 10, what="all counted")
    # every worker writes its counts about once a second: the leader's own are in /status at
    # once, in its file up to a second later. Killed before that, it takes them along (the test
    # once allowed for 20 of them, and a leader's share of 60 requests is sometimes more).
    wait_until(lambda: sum(n for n in _count_files(tmp_path).values() if isinstance(n, int))
               == base + SENT, 10, what="every worker's counts written")
    os.kill(leader, signal.SIGKILL)
    wait_until(lambda: len(server.leaders()) == 2, 10, what="a new supervising worker")
    wait_until(lambda: _answers(admin), 10, what="the admin port served by the new leader")
    # the killed worker's counts, all written before, stay in the totals
    send(server)
    wait_until(lambda: status(admin)["totals"]["requests"] >= base + SENT, 10, what="counts kept")
    os.kill(server.master, signal.SIGHUP)  # a reload: a new generation, a new leader
    wait_until(lambda: len(server.leaders()) == 3, 15, what="a worker of the new generation")
    seen: list = []

    def back_with_the_totals() -> bool:
        seen.append(_totals_or_why(admin))
        return isinstance(seen[-1], int) and seen[-1] >= base + 2 * SENT

    try:
        wait_until(back_with_the_totals, 15, what="the admin port again, the totals not gone back")
    except AssertionError as e:
        raise AssertionError(f"{e}: wanted {base + 2 * SENT} (base {base}), last seen "
                             f"{seen[-5:]}; the counts' files: {_count_files(tmp_path)}; gunicorn "
                             "said:\n" + "\n".join(server.process.lines[-40:])) from None
    assert_no_traceback(server)


def _count_files(run_dir) -> dict:
    """Each worker's counts file (nmc.shared_counts): its total of requests."""
    totals = {}
    for path in sorted(run_dir.glob("*.counts/*.json")):
        try:
            totals[path.name] = sum(c["requests"] for c in json.loads(path.read_text()).values())
        except (OSError, ValueError, KeyError) as e:
            totals[path.name] = repr(e)
    return totals


def _totals_or_why(admin: str):
    """/status's total of requests, or why there is none."""
    try:
        answer = requests.get(admin + "/status", timeout=2)
    except requests.RequestException as e:
        return type(e).__name__
    return answer.json()["totals"]["requests"] if answer.status_code == 200 else answer.status_code


def _answers(admin: str) -> bool:
    try:
        return requests.get(admin + "/status", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def test_access_log_and_replica_logs_under_gunicorn(with_admin, tmp_path, cluster_name):
    access = tmp_path / "access.log"
    server, _admin, _port = with_admin(NMC_ACCESS_LOG=str(access), NMC_LOGS="1")
    send(server, path="/whoami?sent=by-the-test")  # (wait_ready sent its own before)
    ours = lambda: [line for line in access.read_text().splitlines() if "by-the-test" in line]  # noqa: E731
    wait_until(lambda: len(ours()) == SENT, 10,
               what="one access log line per request, from every worker")
    assert all('"GET /whoami?sent=by-the-test HTTP/1.1" 200' in line for line in ours()), ours()[:3]
    start = len(server.process.lines)
    answer = requests.get(server.url + "/crash", headers={"Connection": "close"}, timeout=10)
    assert answer.status_code == 200
    crashed = answer.headers["X-Served-By"]
    server.process.wait_for_line(rf"replica {crashed} .*starting -> ready", start=start)
    # the replicas' lines on stdout, as ./nmc_server.py --logs prints them: by the supervising
    # worker only, once
    said = lambda: [line for line in server.process.stdout if "/crash requested" in line]  # noqa: E731
    wait_until(said, 10, what="the crashed replica's last line on stdout")
    assert re.match(rf"{crashed}\s+\| exiting with code 1: /crash requested", said()[0]), said()
    time.sleep(1)  # (another worker printing it too would have done so by now)
    assert len(said()) == 1, said()
    assert_no_traceback(server)
