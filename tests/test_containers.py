"""nmc.containers against the real Docker engine."""

import threading
import time

import pytest

from conftest import IMAGE, free_port_block, get, wait_until
from nmc.containers import (LABEL_CLUSTER, LABEL_PORT, LABEL_SETTINGS, Engine, EngineUnreachable,
                            ImageMissing, NameTaken, PortBusy, ReplicaSpec)


@pytest.fixture
def engine(docker_client):
    engine = Engine.connect()
    yield engine
    engine.close()


def spec(cluster_name, port, **overrides):
    values = dict(cluster=cluster_name, name=f"{cluster_name}-{port}", image=IMAGE, host_port=port,
                  container_port=8080)
    values.update(overrides)
    return ReplicaSpec(**values)


def test_run_labels_publishes_on_loopback_and_answers(engine, cluster_name):
    port = free_port_block(1)
    image_id = engine.image_id(IMAGE)
    info = engine.run(spec(cluster_name, port), image_id)
    assert info.running and info.name == f"{cluster_name}-{port}"
    assert info.labels[LABEL_CLUSTER] == cluster_name and info.port == port
    assert info.labels[LABEL_SETTINGS] == spec(cluster_name, port).settings_hash(image_id)
    assert info.image_id == image_id
    wait_until(lambda: _answers(port), what="the replica answers")
    assert get(f"http://127.0.0.1:{port}/whoami").json()["replica"] == info.name
    assert [c.id for c in engine.list_cluster(cluster_name)] == [info.id]


def _answers(port):
    try:
        return get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
    except Exception:
        return False


def test_remove_stops_and_removes_and_tolerates_gone(engine, cluster_name):
    port = free_port_block(1)
    info = engine.run(spec(cluster_name, port), engine.image_id(IMAGE))
    engine.remove(info.id, stop_timeout=5)
    assert engine.inspect(info.id) is None
    engine.remove(info.id)  # already gone: fine
    assert engine.list_cluster(cluster_name) == []


def test_events_since_a_moment_include_those_before_the_stream_opened(engine, cluster_name):
    """The supervisor follows the events from when it began watching, not from when its stream
    opened (after "serving on"): a replica killed in between is heard of."""
    port = free_port_block(1)
    since = time.time()
    info = engine.run(spec(cluster_name, port), engine.image_id(IMAGE))
    engine.remove(info.id, stop_timeout=5)  # all of its events before the stream opens
    stream = engine.events(cluster_name, since)
    ends = threading.Timer(20, stream.close)  # what has not come by then is not coming
    ends.start()
    heard = []
    try:
        for event in stream:
            if event.container_id == info.id:
                heard.append(event.action)
                if event.action == "destroy":
                    break
    except EngineUnreachable:  # closed by the timer
        pass
    finally:
        ends.cancel()
        stream.close()
    assert heard[:2] == ["create", "start"] and "die" in heard and heard[-1] == "destroy", heard


def test_settings_hash_changes_with_what_makes_a_replica():
    base = spec("c", 3001)
    assert base.settings_hash("sha256:a") == spec("c", 3001).settings_hash("sha256:a")
    assert base.settings_hash("sha256:a") != base.settings_hash("sha256:b")
    assert base.settings_hash("sha256:a") != spec("c", 3001, container_port=80).settings_hash("sha256:a")


def test_a_missing_image_says_how_to_get_it(engine):
    with pytest.raises(ImageMissing, match="'nmct-none:1' is not on this Docker engine"):
        engine.image_id("nmct-none:1")


def test_a_name_held_by_someone_else_is_not_touched(engine, docker_client, cluster_name):
    port = free_port_block(1)
    foreign = docker_client.containers.create(IMAGE, name=f"{cluster_name}-{port}",
                                              labels={"nmct.owner": cluster_name})
    with pytest.raises(NameTaken, match="nmc did not start it"):
        engine.run(spec(cluster_name, port), engine.image_id(IMAGE))
    foreign.reload()
    assert foreign.status == "created"  # still there, untouched


def test_a_busy_host_port_is_named_and_leaves_nothing(engine, docker_client, cluster_name):
    import socket

    port = free_port_block(1)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        with pytest.raises(PortBusy, match=f"host port {port} is already in use"):
            engine.run(spec(cluster_name, port), engine.image_id(IMAGE))
    assert engine.list_cluster(cluster_name) == []


def test_tail_logs_returns_the_last_lines(engine, cluster_name):
    port = free_port_block(1)
    info = engine.run(spec(cluster_name, port), engine.image_id(IMAGE))
    lines = wait_until(lambda: engine.tail_logs(info.id, 5), what="the replica logged")
    assert any("listening on :8080" in line for line in lines)
    assert LABEL_PORT in info.labels


def test_an_unreachable_engine_is_one_clear_error(monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///tmp/nmct-no-engine.sock")
    with pytest.raises(EngineUnreachable) as error:
        Engine.connect(timeout=5)
    assert "unix:///tmp/nmct-no-engine.sock" in str(error.value)
    assert "start Docker" in str(error.value)
