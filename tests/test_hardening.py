"""Hardened replicas, end to end: every capability dropped and no-new-privileges by default,
--cap-add giving one back, --read-only with a writable /tmp. Checked inside the real containers,
in the kernel's own words (/proc/1/status) and by what a process there can and cannot do."""

from __future__ import annotations

import json

from conftest import build_on_site_image, free_port_block, get

PROBE = """
const fs = require("fs");
const status = Object.fromEntries(fs.readFileSync("/proc/1/status", "utf8").split("\\n")
  .filter(l => l.includes(":")).map(l => l.split(/:\\s+/)));
const tryIt = f => { try { f(); return "ok"; } catch (e) { return e.code; } };
console.log(JSON.stringify({
  uid: status.Uid.split(/\\s+/)[0], bounding: status.CapBnd, effective: status.CapEff,
  no_new_privs: status.NoNewPrivs,
  chown: tryIt(() => fs.chownSync("/tmp", 1000, 1000)),
  write_root: tryIt(() => fs.writeFileSync("/nmc-probe", "1")),
  write_tmp: tryIt(() => fs.writeFileSync("/tmp/nmc-probe", "1")),
}));
"""


def probe(docker_client, cluster_name: str) -> dict:
    """What the cluster's one replica may do, asked inside it with its own node."""
    (container,) = docker_client.containers.list(filters={"label": f"nmc.cluster={cluster_name}"})
    code, output = container.exec_run(["node", "-e", PROBE])
    assert code == 0, output
    return json.loads(output)


def start(run_nmc, cluster_name: str, *extra: str):
    base = free_port_block(2)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 1),
                      "--base-port", str(base), "-n", "1", "-q", *extra)
    process.wait_serving()
    assert get(f"http://127.0.0.1:{base + 1}/healthz").status_code == 200  # the site runs
    return process


def test_a_replica_has_no_capability_and_cannot_gain_one(run_nmc, cluster_name, docker_client):
    start(run_nmc, cluster_name)
    found = probe(docker_client, cluster_name)
    assert found["bounding"] == found["effective"] == "0000000000000000", found
    assert found["no_new_privs"] == "1", found
    assert found["write_root"] == "EACCES" and found["write_tmp"] == "ok", found  # user 1000


def test_root_in_a_replica_cannot_chown_until_cap_add_gives_it_back(
        run_nmc, cluster_name, docker_client, scratch_images):
    """The site runs as uid 1000, which holds no capability anyway: an image that runs as root
    shows what dropping them takes away."""
    tag = f"{cluster_name}:root"
    scratch_images.append(tag)
    scratch_images.append(build_on_site_image(docker_client, tag, "USER root",
                                              labels={"nmct.owner": cluster_name}))
    first = start(run_nmc, cluster_name, "--image", tag)
    found = probe(docker_client, cluster_name)
    assert found["uid"] == "0" and found["chown"] == "EPERM", found  # root, without CAP_CHOWN
    first.stop()
    start(run_nmc, cluster_name, "--image", tag, "--cap-add", "chown")
    found = probe(docker_client, cluster_name)
    assert found["bounding"] == "0000000000000001" and found["chown"] == "ok", found  # CHOWN only


def test_read_only_leaves_only_tmp_writable(run_nmc, cluster_name, docker_client, scratch_images):
    tag = f"{cluster_name}:root"
    scratch_images.append(tag)
    scratch_images.append(build_on_site_image(docker_client, tag, "USER root",
                                              labels={"nmct.owner": cluster_name}))
    start(run_nmc, cluster_name, "--image", tag, "--read-only")
    found = probe(docker_client, cluster_name)
    assert found["write_root"] == "EROFS", found  # root, and still not: the filesystem says no
    assert found["write_tmp"] == "ok", found


def test_an_unknown_capability_is_one_line(run_nmc, cluster_name, docker_client):
    process = run_nmc("--name", cluster_name, "--cap-add", "FLY")
    assert process.wait_exit(30) == 2
    errors = [line for line in process.lines if line.strip()]
    assert errors == ["nmc-server: error: --cap-add 'FLY': no such capability (e.g. "
                      "NET_BIND_SERVICE, CHOWN; see capabilities(7))"], errors
    assert docker_client.containers.list(all=True, filters={"label": f"nmc.cluster={cluster_name}"}) == []
