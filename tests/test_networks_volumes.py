"""--network and --volume, end to end: replicas reach a service of the test's own by name on a
Docker network of the test's own, through nmc; every replica sees the same files in a host
folder and in a named volume; :ro is read-only; a missing network is one line at start."""

from __future__ import annotations

import json
import uuid

import docker.errors
import pytest

from conftest import IMAGE, build_on_site_image, free_port_block, get

# A tiny database stand-in, from this machine's Node (the site's image): a TCP service that
# answers each connection with one line.
DB = ("require('net').createServer(c => c.end('pong from ' + require('os').hostname() + '\\n'))"
      ".listen(7000)")
# The site, with one more route: GET /db asks the service `db` on port 7000, by name.
ASKS_DB = (
    "const http = require('http'); const made = http.createServer;"
    "http.createServer = (handle) => made((q, s) => {"
    " if (q.url !== '/db') return handle(q, s);"
    " const c = require('net').connect(7000, 'db'); let got = '';"
    " c.on('data', d => got += d); c.on('end', () => s.end(got));"
    " c.on('error', e => { s.statusCode = 502; s.end(String(e)); }); });"
    "require('/app/server.js');")


@pytest.fixture
def network_with_db(docker_client):
    """A bridge network of this test's own with the service `db` on it; removed at the end,
    after the replicas (list this fixture first: it is torn down last)."""
    name = f"nmct-net-{uuid.uuid4().hex[:8]}"
    network = docker_client.networks.create(name, labels={"nmct.owner": name})
    db = None
    try:
        db = docker_client.containers.create(IMAGE, ["node", "-e", DB], name=f"{name}-db",
                                             labels={"nmct.owner": name}, network=name)
        docker_client.api.disconnect_container_from_network(db.id, name)
        docker_client.api.connect_container_to_network(db.id, name, aliases=["db"])
        db.start()
        yield name, db.name
    finally:
        if db is not None:
            db.remove(force=True)
        network.reload()
        for container in network.containers:  # a replica left attached by a failed test
            try:
                network.disconnect(container, force=True)
            except docker.errors.APIError:
                pass
        network.remove()


def start(run_nmc, cluster_name, image, *extra):
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "-n", "2", "-q", "--image", image, *extra)
    process.wait_serving()
    return f"http://127.0.0.1:{base + 2}", process


def test_the_replicas_reach_a_service_by_name_on_a_network_and_keep_their_ports_on_loopback(
        network_with_db, run_nmc, cluster_name, docker_client, scratch_images):
    network, db_name = network_with_db
    tag = f"nmct-asksdb-{uuid.uuid4().hex[:8]}"
    scratch_images.append(tag)
    build_on_site_image(docker_client, tag, "CMD " + json.dumps(["node", "-e", ASKS_DB]),
                        labels={"nmct.owner": cluster_name})
    url, _ = start(run_nmc, cluster_name, tag, "--network", network)
    answers = {get(url + "/db").text for _ in range(4)}  # through both replicas
    assert answers == {f"pong from {docker_client.containers.get(db_name).attrs['Config']['Hostname']}\n"}
    replicas = docker_client.containers.list(filters={"label": f"nmc.cluster={cluster_name}"})
    assert len(replicas) == 2
    for replica in replicas:
        assert set(replica.attrs["NetworkSettings"]["Networks"]) == {network}
        (binding,) = replica.attrs["HostConfig"]["PortBindings"]["8080/tcp"]
        assert binding["HostIp"] == "127.0.0.1"
    assert get(url + "/whoami").status_code == 200


def read(container, path: str) -> bytes:
    """A file as a replica reads it (the site's image has node and sh, no cat)."""
    done = container.exec_run(["node", "-e", f"process.stdout.write(require('fs').readFileSync({path!r}))"])
    assert done.exit_code == 0, done.output
    return done.output


@pytest.fixture
def named_volume(docker_client):
    """A named volume of this test's own, removed at the end, after the replicas (list this
    fixture first: it is torn down last)."""
    volume = docker_client.volumes.create(f"nmct-vol-{uuid.uuid4().hex[:8]}")
    yield volume.name
    volume.remove(force=True)


def test_every_replica_sees_the_same_files_in_a_folder_and_a_named_volume(
        named_volume, run_nmc, cluster_name, docker_client, tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # the replicas run as uid 1000
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "settings.json").write_text('{"from": "the host"}')
    url, _ = start(run_nmc, cluster_name, IMAGE, "--volume", f"{shared}:/shared",
                   "--volume", f"{named_volume}:/named",
                   "--volume", f"{tmp_path / 'config'}:/config:ro")
    first, second = sorted(docker_client.containers.list(
        filters={"label": f"nmc.cluster={cluster_name}"}), key=lambda c: c.name)
    assert first.exec_run(["sh", "-c", "echo written by one > /shared/note"]).exit_code == 0
    assert first.exec_run(["sh", "-c", "echo named too > /named/note"], user="root").exit_code == 0
    assert read(second, "/shared/note") == b"written by one\n"
    assert read(second, "/named/note") == b"named too\n"
    assert (shared / "note").read_text() == "written by one\n"  # the host's folder itself
    assert read(second, "/config/settings.json") == b'{"from": "the host"}'
    refused = second.exec_run(["sh", "-c", "echo x > /config/other"])
    assert refused.exit_code != 0 and b"Read-only file system" in refused.output
    assert get(url + "/whoami").status_code == 200


def test_a_missing_network_is_one_line_and_leaves_nothing(run_nmc, cluster_name, docker_client):
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "-n", "2", "--network", "nmct-no-such-network")
    assert process.wait_exit(60) != 0
    errors = [line for line in process.lines if "error" in line]
    assert errors == ["nmc-server: error: network 'nmct-no-such-network' does not exist on this "
                      "Docker engine: create it (`docker network create nmct-no-such-network`) "
                      "and start the services the replicas should reach on it"], process.log
    assert "Traceback" not in process.log
    assert docker_client.containers.list(all=True, filters={"label": f"nmc.cluster={cluster_name}"}) == []
