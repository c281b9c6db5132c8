"""--memory and --cpus, end to end: the limits the replicas' containers get from the engine, and a
replica killed at its memory limit: logged once as out of memory with its limit, shown in
/status and `nmc-server status`, and replaced as a crash would be while the others serve."""

from __future__ import annotations

import json
import uuid

import requests

from conftest import admin_auth, build_on_site_image, free_port_block, get
from nmc.admin import format_status

# The site, with one more route: GET /hog answers, then takes memory (8 MiB every 10 ms, written
# so the kernel must really give it) until the kernel kills it.
HOG = (
    "const http = require('http'); const made = http.createServer; const kept = [];"
    "http.createServer = (handle) => made((q, s) => {"
    " if (q.url !== '/hog') return handle(q, s);"
    " s.end('hogging');"
    " setInterval(() => kept.push(Buffer.alloc(8 << 20, 1)), 10); });"
    "require('/app/server.js');")


def test_the_replicas_get_the_memory_and_cpu_limits(run_nmc, cluster_name, docker_client):
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "-n", "2", "-q", "--memory", "96m", "--cpus", "0.5")
    process.wait_serving()
    assert get(f"http://127.0.0.1:{base + 2}/whoami").status_code == 200
    containers = docker_client.containers.list(filters={"label": f"nmc.cluster={cluster_name}"})
    assert len(containers) == 2
    for container in containers:
        host = container.attrs["HostConfig"]
        assert host["Memory"] == 96 * 1024 ** 2
        assert host["MemorySwap"] == 96 * 1024 ** 2  # no swap beyond the limit
        assert host["NanoCpus"] == 500_000_000


def test_a_replica_killed_out_of_memory_is_said_shown_and_replaced(run_nmc, cluster_name,
                                                                   docker_client, scratch_images):
    tag = f"nmct-hog-{uuid.uuid4().hex[:8]}"
    scratch_images.append(tag)
    build_on_site_image(docker_client, tag, "CMD " + json.dumps(["node", "-e", HOG]),
                        labels={"nmct.owner": cluster_name})
    base = free_port_block(4)
    admin, port = base + 3, base + 2
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(port),
                      "--base-port", str(base), "-n", "2", "-q", "--image", tag,
                      "--memory", "64m", "--admin-port", str(admin))
    process.wait_serving()
    victim = f"{cluster_name}-{base}"
    old_id = docker_client.containers.get(victim).id
    start = len(process.lines)
    assert requests.get(f"http://127.0.0.1:{base}/hog", timeout=5).text == "hogging"
    process.wait_for_line(rf"replica {victim} was killed out of memory \(its limit: 64 MiB\) "
                          r"with code 137 after [\d.]+s in the rotation", timeout=60, start=start)
    process.wait_for_line(rf"replica {victim} .*starting -> ready", timeout=60, start=start)
    assert docker_client.containers.get(victim).id != old_id
    assert process.log.count("killed out of memory") == 1, process.log
    for _ in range(6):  # both serve again
        assert get(f"http://127.0.0.1:{port}/whoami").status_code == 200
    status = requests.get(f"http://127.0.0.1:{admin}/status", timeout=5,
                          headers=admin_auth(cluster_name)).json()
    replica = next(r for r in status["replicas"] if r["name"] == victim)
    assert replica["last_exit_code"] == 137 and replica["last_exit_out_of_memory"] is True
    assert replica["oom_kills"] == 1 and replica["restarts"] == 1
    row = next(line for line in format_status(status).splitlines() if line.startswith(victim))
    assert row.endswith("137 (out of memory)"), row
