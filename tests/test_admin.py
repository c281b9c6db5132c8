"""End to end: the admin interface and the subcommands that use it (status, scale, rollout), and
the zero-downtime changes themselves, under load, against real containers."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest
import requests

from conftest import IMAGE, ROOT, Load, admin_auth, build_on_site_image, free_port_block
from nmc.admin_auth import token_path


def nmc_command(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """./nmc_server.py with `args` (a subcommand), `env` added to ours (e.g. NMC_RUN_DIR)."""
    return subprocess.run([sys.executable, str(ROOT / "nmc_server.py"), *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


class AdminCluster:
    def __init__(self, run_nmc, cluster_name: str, *extra: str, replicas: int = 2):
        base = free_port_block(12)  # room to grow and to surge
        self.port, self.admin_port = base + 10, base + 11
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin = f"http://127.0.0.1:{self.admin_port}"
        self.process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port",
                               str(self.port), "--base-port", str(base), "-n", str(replicas),
                               "--check-interval", "1", "--admin-port", str(self.admin_port),
                               "-q", *extra)
        self.process.wait_serving()
        self.name = cluster_name
        given = list(extra[extra.index("--admin-token-file") + 1:])[:1] \
            if "--admin-token-file" in extra else None
        # the header with the cluster's admin token: the given file's, or the one nmc made
        self.auth = {"Authorization": "Bearer " + open(given[0]).read().strip()} if given \
            else admin_auth(cluster_name)

    def status(self) -> dict:
        return requests.get(self.admin + "/status", timeout=10).json()

    def command(self, *args: str) -> subprocess.CompletedProcess:
        return nmc_command(*args, "--admin-port", str(self.admin_port), "--name", self.name)


@pytest.fixture
def admin_cluster(run_nmc, cluster_name):
    def start(*extra: str, replicas: int = 2) -> AdminCluster:
        return AdminCluster(run_nmc, cluster_name, *extra, replicas=replicas)
    return start


def running(docker_client, cluster_name: str) -> dict[str, str]:
    """name -> image id of the cluster's running containers."""
    return {c.name: c.attrs["Image"] for c in docker_client.containers.list(ignore_removed=True,
        filters={"label": f"nmc.cluster={cluster_name}"})}


@pytest.fixture
def derived_image(docker_client, cluster_name, scratch_images):
    """Build images FROM the site's image; removed at the end, by id too (a tag built again
    leaves the image it named untagged)."""
    def build(tag_suffix: str, *lines: str) -> str:
        tag = f"{cluster_name}:{tag_suffix}"
        scratch_images.append(tag)
        image_id = build_on_site_image(docker_client, tag, *lines)
        scratch_images.append(image_id)
        return image_id
    return build


# ------------------------------------------------------------------------------------------------
# status


def test_status_shows_every_replica_as_json_and_as_a_table(admin_cluster, docker_client,
                                                           cluster_name):
    cluster = admin_cluster()
    for _ in range(6):
        assert requests.get(cluster.url + "/whoami", timeout=5).status_code == 200
    status = cluster.status()
    containers = {c.name: c.id for c in docker_client.containers.list(ignore_removed=True,
        filters={"label": f"nmc.cluster={cluster_name}"})}
    assert {r["name"]: r["container_id"] for r in status["replicas"]} == containers
    assert [r["state"] for r in status["replicas"]] == ["ready", "ready"]
    assert status["totals"]["ready"] == 2 and status["cluster"] == cluster_name
    assert all(r["image_id"] == docker_client.images.get(IMAGE).id for r in status["replicas"])
    table = cluster.command("status")
    assert table.returncode == 0, table.stderr
    for name in containers:
        assert name in table.stdout and "ready" in table.stdout
    assert table.stdout.splitlines()[0].split()[:3] == ["REPLICA", "PORT", "STATE"]


def test_the_admin_interface_is_not_on_the_public_port(admin_cluster):
    cluster = admin_cluster()
    answer = requests.get(cluster.url + "/status", timeout=5)
    assert "X-Served-By" in answer.headers  # relayed to a replica, not answered by nmc
    assert answer.status_code == 404


def test_the_admin_interface_answers_only_to_an_ip_or_localhost(admin_cluster):
    """A page on another site whose name is made to resolve to 127.0.0.1 (DNS rebinding)
    reaches the port with its own name in Host: refused, GETs and POSTs alike."""
    cluster = admin_cluster()
    for host in ("evil.example", f"evil.example:{cluster.admin_port}", "127.0.0.1.nip.io"):
        assert requests.get(cluster.admin + "/status", headers={"Host": host},
                            timeout=5).status_code == 403
        refused = requests.post(cluster.admin + "/scale", json={"replicas": 3},
                                headers={"Host": host}, timeout=5)
        assert refused.status_code == 403 and "Host" in refused.json()["error"]
    for host in (f"localhost:{cluster.admin_port}", f"127.0.0.1:{cluster.admin_port}"):
        assert requests.get(cluster.admin + "/status", headers={"Host": host},
                            timeout=5).status_code == 200
    assert len(cluster.status()["replicas"]) == 2  # nothing was scaled


def test_changes_need_the_admin_token_and_the_dashboard_gets_it_as_a_cookie(admin_cluster,
                                                                            cluster_name):
    cluster = admin_cluster()
    path = token_path(cluster_name)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    token = path.read_text().strip()
    assert f"/?token={token}" in cluster.process.log  # the dashboard's URL, printed at start
    refused = requests.post(cluster.admin + "/scale", json={"replicas": 3}, timeout=5)
    assert refused.status_code == 401 and str(path) in refused.json()["error"]
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    wrong = requests.post(cluster.admin + "/scale", json={"replicas": 3}, timeout=5,
                          headers={"Authorization": "Bearer " + token[:-1] + "x"})
    assert wrong.status_code == 401
    assert requests.get(cluster.admin + "/status", timeout=5).status_code == 200  # reads: free
    first_visit = requests.get(cluster.admin + f"/?token={token}", timeout=5, allow_redirects=False)
    assert first_visit.status_code == 303 and first_visit.headers["Location"] == "/"
    cookie = first_visit.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    browser = requests.Session()
    browser.get(cluster.admin + f"/?token={token}", timeout=5)  # as the dashboard's first visit
    answer = browser.post(cluster.admin + "/scale", json={"replicas": 3}, timeout=120)
    assert answer.status_code == 200, answer.text  # with the cookie alone
    result = cluster.command("scale", "2")  # the subcommand finds the token by --name
    assert result.returncode == 0, result.stderr
    assert len(cluster.status()["replicas"]) == 2
    cluster.process.stop()
    assert not path.exists()  # made for this run, gone with its replicas


def test_off_loopback_reads_need_the_token_too(admin_cluster, cluster_name, tmp_path):
    given = tmp_path / "token"
    given.write_text("a-token-of-the-test-s-own\n")
    cluster = admin_cluster("--admin-bind", "0.0.0.0", "--admin-token-file", str(given))
    refused = requests.get(cluster.admin + "/status", timeout=5)
    assert refused.status_code == 401 and "every admin request" in refused.json()["error"]
    answer = requests.get(cluster.admin + "/status", timeout=5,
                          headers={"Authorization": "Bearer a-token-of-the-test-s-own"})
    assert answer.status_code == 200
    result = nmc_command("status", "--admin-port", str(cluster.admin_port), "--admin-token-file",
                         str(given), timeout=30)
    assert result.returncode == 0 and cluster_name in result.stdout, result.stderr
    assert not token_path(cluster_name).exists()  # the given file is the token: none was made


def test_subcommands_without_a_cluster_say_so_in_one_line():
    port = free_port_block(1)
    for args in (["status"], ["scale", "3"], ["rollout"]):
        result = nmc_command(*args, "--admin-port", str(port), timeout=30)
        assert result.returncode == 1, result
        assert result.stderr.startswith(f"nmc-server: error: no nmc-server answers on admin port {port}")
        assert len(result.stderr.strip().splitlines()) == 1


def test_bad_scale_requests_are_refused_in_one_line(admin_cluster):
    cluster = admin_cluster()
    for args, message in ((["scale", "0"], "from 1 to 64"), (["scale", "many"], "whole number")):
        result = cluster.command(*args)
        assert result.returncode in (1, 2), result
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    answer = requests.post(cluster.admin + "/scale", data=b"{not json", timeout=5,
                           headers=cluster.auth)
    assert answer.status_code == 415 and "JSON" in answer.json()["error"]  # no JSON content type
    answer = requests.post(cluster.admin + "/scale", data=b"{not json", timeout=5,
                           headers={"Content-Type": "application/json", **cluster.auth})
    assert answer.status_code == 400 and "JSON" in answer.json()["error"]
    assert requests.get(cluster.admin + "/scale", timeout=5).status_code == 405


# ------------------------------------------------------------------------------------------------
# scale


def test_scale_2_to_6_to_1_under_load_fails_no_request(admin_cluster, docker_client, cluster_name):
    cluster = admin_cluster()
    load = Load(cluster.url, clients=8)
    try:
        grown = cluster.command("scale", "6")
        assert grown.returncode == 0, grown.stderr
        assert "scaled from 2 to 6" in grown.stdout
        assert len(running(docker_client, cluster_name)) == 6
        assert [r["state"] for r in cluster.status()["replicas"]] == ["ready"] * 6
        time.sleep(1)
        shrunk = cluster.command("scale", "1")
        assert shrunk.returncode == 0, shrunk.stderr
        assert len(running(docker_client, cluster_name)) == 1
        time.sleep(1)
    finally:
        load.stop()
        failures = load.failures()
    assert len(load.statuses) > 100
    assert failures == [], failures[:5]
    assert [r["state"] for r in cluster.status()["replicas"]] == ["ready"]


# ------------------------------------------------------------------------------------------------
# rollout


def test_rollout_under_32_clients_fails_no_request(admin_cluster, docker_client, cluster_name,
                                                   derived_image):
    cluster = admin_cluster()
    new_id = derived_image("v2", "LABEL nmct.version=2")
    load = Load(cluster.url, clients=32)
    try:
        time.sleep(1)
        result = cluster.command("rollout", "--image", f"{cluster_name}:v2")
        assert result.returncode == 0, result.stderr
        after = running(docker_client, cluster_name)
        assert len(after) == 2 and set(after.values()) == {new_id}
        assert "rolling out" in cluster.process.log and "1 at a time" in cluster.process.log
        back = cluster.command("rollout", "--image", IMAGE, "--max-surge", "2")  # and back
        assert back.returncode == 0, back.stderr
        assert "2 at a time" in cluster.process.log
        time.sleep(1)
    finally:
        load.stop()
        failures = load.failures()
    assert set(running(docker_client, cluster_name).values()) == {docker_client.images.get(IMAGE).id}
    assert len(load.statuses) > 100
    assert failures == [], failures[:5]
    again = cluster.command("rollout", "--image", IMAGE)
    assert again.returncode == 0 and "nothing to roll out" in again.stdout


def test_a_rollout_whose_replicas_never_get_ready_rolls_back(admin_cluster, docker_client,
                                                             cluster_name, derived_image):
    cluster = admin_cluster("--start-timeout", "3")
    derived_image("broken", 'CMD ["node", "-e", "console.log(\'no server here\'); setTimeout(() => {}, 60000)"]')
    before = running(docker_client, cluster_name)
    load = Load(cluster.url, clients=4)
    try:
        result = cluster.command("rollout", "--image", f"{cluster_name}:broken")
    finally:
        load.stop()
        failures = load.failures()
    assert result.returncode == 1
    assert "rollout of" in result.stderr and "keep serving" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert running(docker_client, cluster_name) == before  # the old ones, untouched
    assert failures == [], failures[:5]
    assert cluster.status()["image"] == IMAGE


def test_sighup_rolls_out_the_rebuilt_image(admin_cluster, docker_client, cluster_name,
                                            derived_image):
    first = derived_image("app", "LABEL nmct.version=1")
    cluster = admin_cluster("--image", f"{cluster_name}:app")
    assert set(running(docker_client, cluster_name).values()) == {first}
    second = derived_image("app", "LABEL nmct.version=2")  # `make nodejs` after a change
    start = len(cluster.process.lines)
    cluster.process.signal(signal.SIGHUP)
    cluster.process.wait_for_line(r"SIGHUP: rolled out", timeout=60, start=start)
    assert set(running(docker_client, cluster_name).values()) == {second}
    assert requests.get(cluster.url + "/healthz", timeout=5).status_code == 200
    assert cluster.status()["image"] == f"{cluster_name}:app"


# ------------------------------------------------------------------------------------------------
# metrics


def test_metrics_are_prometheus_text_with_the_cluster_s_numbers(admin_cluster, cluster_name):
    """Parsed by prometheus-client's own parser: the format is right, and the numbers are the
    ones the relay and the supervisor counted."""
    from prometheus_client.parser import text_string_to_metric_families

    cluster = admin_cluster()
    for _ in range(10):
        assert requests.get(cluster.url + "/whoami", timeout=5).status_code == 200
    time.sleep(2.5)  # two rounds of health checks
    answer = requests.get(cluster.admin + "/metrics", timeout=5)
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    samples = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    names = [f"{cluster_name}-{r['port']}" for r in cluster.status()["replicas"]]
    assert samples[("nmc_replicas", (("state", "ready"),))] == 2
    for name in names:
        assert samples[("nmc_health_checks_total", (("replica", name), ("result", "pass")))] >= 2
        assert samples[("nmc_replica_restarts_total", (("replica", name),))] == 0
    served = sum(samples[("nmc_requests_total", (("code", "2xx"), ("replica", name)))]
                 for name in names)
    assert served == 10
    assert sum(samples[("nmc_request_duration_seconds_count", (("replica", name),))]
               for name in names) == 10
    assert sum(samples[("nmc_response_body_bytes_total", (("replica", name),))]
               for name in names) > 0
    assert all(samples[("nmc_requests_in_flight", (("replica", name),))] == 0 for name in names)
    status = cluster.status()
    assert status["totals"]["requests"] == 10 and status["totals"]["errors"] == 0


def test_scaling_down_lets_the_leaving_replica_finish_its_requests(admin_cluster):
    """A POST in flight on a replica that a scale-down removes still gets its whole answer:
    the replica leaves the rotation, and its container is stopped only once it is done."""
    cluster = admin_cluster()
    answers: list = []

    def slow_post():
        answer = requests.post(cluster.url + "/slow?ms=2500", data=b"x" * 100, timeout=20)
        answers.append((answer.status_code, answer.headers.get("X-Served-By")))

    posts = [threading.Thread(target=slow_post) for _ in range(2)]  # one on each replica
    for post in posts:
        post.start()
    time.sleep(0.5)
    assert sum(r["in_flight"] for r in cluster.status()["replicas"]) == 2
    result = cluster.command("scale", "1")
    assert result.returncode == 0, result.stderr
    for post in posts:
        post.join(30)
    assert [status for status, _ in answers] == [200, 200], answers
    assert len({replica for _, replica in answers}) == 2  # one of them was removed meanwhile
