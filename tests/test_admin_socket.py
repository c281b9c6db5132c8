"""End to end: the admin interface on the cluster's Unix socket, `<run dir>/<name>.sock`, and the
subcommands (status, scale, rollout) that find their cluster on it by --name, under both hosts.

Each test has a run directory of its own (NMC_RUN_DIR, under tmp_path), given to the server and
to the subcommands alike.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import stat
import uuid

import pytest

from conftest import IMAGE, NmcProcess, free_port_block, get, remove_cluster, wait_until
from harness.ports import port_is_free
from test_admin import nmc_command, running
from test_gunicorn import Gunicorn, assert_no_traceback


@pytest.fixture
def run_dir(tmp_path):
    """The test's own run directory; nmc makes it (so that its mode is nmc's)."""
    return tmp_path / "run"


@pytest.fixture
def other_name(docker_client):
    """A second cluster name of the test's own, its containers removed at the end (after the
    processes: list it before run_nmc)."""
    name = "nmct-" + uuid.uuid4().hex[:10]
    yield name
    remove_cluster(docker_client, name)


def start(run_nmc, name: str, run_dir, *extra: str):
    """A two-replica cluster on ports of its own (no admin port unless `extra` gives one)."""
    base = free_port_block(5)  # two replicas, room for a third, the public port
    process = run_nmc("--name", name, "--bind", "127.0.0.1", "--port", str(base + 4),
                      "--base-port", str(base), "-n", "2", "--check-interval", "1", "-q", *extra,
                      env={"NMC_RUN_DIR": str(run_dir)})
    process.wait_serving()
    return process


def command(run_dir, *args: str):
    return nmc_command(*args, env={"NMC_RUN_DIR": str(run_dir)}, timeout=180)


def one_line_error(result, *expected: str, code: int = 1) -> None:
    assert result.returncode == code, result
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("nmc-server: error: "), result.stderr
    for text in expected:
        assert text in result.stderr, result.stderr


def answers(path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as probe:
            probe.settimeout(2)
            probe.connect(str(path))
        return True
    except OSError:
        return False


def test_the_subcommands_reach_the_cluster_by_name_with_no_admin_port(run_nmc, cluster_name,
                                                                      run_dir, docker_client):
    process = start(run_nmc, cluster_name, run_dir)  # run_nmc: --admin-port 0
    path = run_dir / f"{cluster_name}.sock"
    assert stat.S_ISSOCK(path.stat().st_mode) and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    process.wait_for_line(f"admin socket {path}", timeout=10)
    table = command(run_dir, "status", "--name", cluster_name)
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:3] == ["REPLICA", "PORT", "STATE"]
    assert all(name in table.stdout for name in running(docker_client, cluster_name))
    assert f"cluster {cluster_name}: 2/2 ready" in table.stdout
    # a change with no token: the socket's mode is the credential (and no token was made)
    grown = command(run_dir, "scale", "3", "--name", cluster_name)
    assert grown.returncode == 0 and "scaled from 2 to 3" in grown.stdout, grown.stderr
    assert len(running(docker_client, cluster_name)) == 3
    assert not (run_dir / f"{cluster_name}.admin-token").exists()
    rollout = command(run_dir, "rollout", "--image", IMAGE, "--name", cluster_name)
    assert rollout.returncode == 0 and "nothing to roll out" in rollout.stdout, rollout.stderr
    bad = command(run_dir, "scale", "0", "--name", cluster_name)
    one_line_error(bad, "from 1 to 64")
    process.stop()
    assert process.exit_code == 0 and not process.killed, process.log_summary()
    assert not path.exists()
    assert running(docker_client, cluster_name) == {}
    gone = command(run_dir, "status", "--name", cluster_name)
    one_line_error(gone, f"no nmc-server named {cluster_name} runs here", f"no socket at {path}")


def test_two_clusters_side_by_side_each_answer_by_name(other_name, run_nmc, cluster_name, run_dir,
                                                       docker_client):
    admin_ports = free_port_block(2)
    first = start(run_nmc, cluster_name, run_dir, "--admin-port", str(admin_ports))
    second = start(run_nmc, other_name, run_dir, "--admin-port", str(admin_ports + 1))
    for name in (cluster_name, other_name):
        table = command(run_dir, "status", "--name", name)
        assert table.returncode == 0, table.stderr
        assert f"cluster {name}: 2/2 ready" in table.stdout
        assert set(running(docker_client, name)) <= set(table.stdout.split())
    grown = command(run_dir, "scale", "3", "--name", other_name)
    assert grown.returncode == 0, grown.stderr
    assert len(running(docker_client, other_name)) == 3
    assert len(running(docker_client, cluster_name)) == 2
    # given --admin-port, the subcommand talks HTTP to that port, with the token, as before
    over_http = command(run_dir, "scale", "2", "--name", other_name, "--admin-port",
                        str(admin_ports + 1))
    assert over_http.returncode == 0 and "scaled from 3 to 2" in over_http.stdout, over_http.stderr
    first.stop()
    assert not (run_dir / f"{cluster_name}.sock").exists()
    assert command(run_dir, "status", "--name", other_name).returncode == 0
    second.stop()
    assert not (run_dir / f"{other_name}.sock").exists()


class _AnyUptime(str):
    """Equal to any duration `nmc-server ls` prints (3s, 1m02s)."""

    def __eq__(self, other):
        return isinstance(other, str) and bool(re.fullmatch(r"\d+s|\d+m\d\ds|\d+h\d\dm", other))

    __hash__ = str.__hash__


ANY_UPTIME = _AnyUptime("<uptime>")


def ports_with_room_for_the_defaults() -> int:
    """A free port P whose default neighbours are free too: P+1, P+2 (the replicas) and P+100
    (the admin port)."""
    for _ in range(100):
        port = free_port_block(3)
        if port_is_free(port + 100):
            return port
    raise RuntimeError("no port with its default neighbours free")


def test_two_clusters_with_nothing_but_another_name_and_port_run_side_by_side(
        other_name, cluster_name, run_dir, docker_client):
    """The replicas' ports and the admin port follow --port (3001, 3002 and 3100 for 3000), so
    the second cluster takes none of the first one's."""
    first_port = ports_with_room_for_the_defaults()
    second_port = ports_with_room_for_the_defaults()
    while abs(second_port - first_port) <= 100:
        second_port = ports_with_room_for_the_defaults()
    clusters = [NmcProcess(["--name", name, "--port", str(port), "--bind", "127.0.0.1", "-q"],
                           env={"NMC_RUN_DIR": str(run_dir)})
                for name, port in ((cluster_name, first_port), (other_name, second_port))]
    try:
        for process, name, port in zip(clusters, (cluster_name, other_name),
                                       (first_port, second_port)):
            process.wait_serving()
            process.wait_for_line(rf"admin interface on http://127\.0\.0\.1:{port + 100} ")
            assert sorted(running(docker_client, name)) == [f"{name}-{port + 1}",
                                                            f"{name}-{port + 2}"]
            assert get(f"http://127.0.0.1:{port}/whoami").status_code == 200
            table = command(run_dir, "status", "--name", name)
            assert f"cluster {name}: 2/2 ready" in table.stdout, table.stderr
        (run_dir / "gone.sock").touch()  # not a socket that answers: not listed
        listed = command(run_dir, "ls")
        assert listed.returncode == 0, listed.stderr
        assert [line.split() for line in listed.stdout.splitlines()] == [
            ["NAME", "ADDRESS", "READY", "IMAGE", "UPTIME", "ADMIN"],
            *sorted([name, f"127.0.0.1:{port}", "2/2", IMAGE, ANY_UPTIME,
                     f"http://127.0.0.1:{port + 100}/"]
                    for name, port in ((cluster_name, first_port), (other_name, second_port)))]
    finally:
        for process in clusters:
            process.stop()
    assert all(process.exit_code == 0 for process in clusters), clusters[1].log_summary()


def test_a_stale_socket_is_replaced(run_nmc, cluster_name, run_dir):
    """A socket file that nobody answers on (an nmc-server killed with SIGKILL leaves one)."""
    run_dir.mkdir(mode=0o700)
    path = run_dir / f"{cluster_name}.sock"
    with socket.socket(socket.AF_UNIX) as left:
        left.bind(str(path))  # closed without listening: a connect is refused
    stale = command(run_dir, "status", "--name", cluster_name)
    one_line_error(stale, f"no nmc-server named {cluster_name} runs here", "nothing answers on")
    process = start(run_nmc, cluster_name, run_dir)
    assert answers(path) and stat.S_IMODE(path.stat().st_mode) == 0o600
    table = command(run_dir, "status", "--name", cluster_name)
    assert table.returncode == 0 and f"cluster {cluster_name}: 2/2 ready" in table.stdout, table.stderr
    process.stop()
    assert not path.exists()


def test_a_second_start_with_the_same_name_fails_in_one_line_and_takes_nothing(
        run_nmc, cluster_name, run_dir, docker_client):
    """Without the socket, a second nmc-server of the same name on other ports adopted the
    first one's containers and removed them when it stopped."""
    admin_port = free_port_block(1)
    first = start(run_nmc, cluster_name, run_dir, "--admin-port", str(admin_port))
    token = run_dir / f"{cluster_name}.admin-token"
    wait_until(token.exists, 20, what="the first cluster's admin token")
    before = running(docker_client, cluster_name)
    base = free_port_block(3)
    second = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                     "--base-port", str(base), "-n", "2", env={"NMC_RUN_DIR": str(run_dir)})
    assert second.wait_exit(60) == 1
    assert second.lines == [f"nmc-server: error: another nmc-server named {cluster_name} runs "
                            f"here (its admin socket {run_dir / (cluster_name + '.sock')} "
                            "answers): stop it first, or choose another --name"], second.log
    assert second.stdout == []
    assert running(docker_client, cluster_name) == before
    assert token.exists()  # the first one's, still there
    table = command(run_dir, "status", "--name", cluster_name)
    assert table.returncode == 0 and f"cluster {cluster_name}: 2/2 ready" in table.stdout
    first.stop()
    assert first.exit_code == 0


def test_a_failed_start_leaves_no_socket(run_nmc, cluster_name, run_dir, docker_client):
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "--health-path", "/status/500",
                      "--start-timeout", "2", env={"NMC_RUN_DIR": str(run_dir)})
    assert process.wait_exit(60) == 1
    assert "did not answer /status/500" in process.lines[-1], process.log_summary()
    assert "Traceback" not in process.log
    assert not (run_dir / f"{cluster_name}.sock").exists()
    assert running(docker_client, cluster_name) == {}


def test_no_socket_no_cluster_says_so_in_one_line(run_dir):
    name = "nmct-" + uuid.uuid4().hex[:10]
    for args in (["status"], ["scale", "3"], ["rollout"]):
        result = command(run_dir, *args, "--name", name)
        one_line_error(result, f"no nmc-server named {name} runs here "
                               f"(no socket at {run_dir / (name + '.sock')}); started with another --name?")
    one_line_error(command(run_dir, "status", "--name", "no/such"), "not a valid container name",
                   code=2)
    one_line_error(command(run_dir, "status", "--admin-port", "0"), "--admin-port 0", code=2)


def test_under_gunicorn_the_subcommands_find_the_leader_by_name_also_after_a_takeover(
        cluster_name, tmp_path, docker_client):
    server = Gunicorn(cluster_name, tmp_path, workers=3, replica_room=3)  # NMC_ADMIN_PORT=0
    try:
        server.wait_ready()
        path = tmp_path / f"{cluster_name}.sock"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        table = command(tmp_path, "status", "--name", cluster_name)
        assert table.returncode == 0, table.stderr
        assert all(f"{cluster_name}-{port}" in table.stdout for port in server.replica_ports)
        grown = command(tmp_path, "scale", "3", "--name", cluster_name)
        assert grown.returncode == 0 and "scaled from 2 to 3" in grown.stdout, grown.stderr
        os.kill(server.leaders()[-1], signal.SIGKILL)  # its socket file stays, stale
        wait_until(lambda: len(server.leaders()) == 2, 15, what="a new supervising worker")
        wait_until(lambda: command(tmp_path, "status", "--name", cluster_name).returncode == 0,
                   30, interval=0.5, what="the new leader answering on the socket")
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        shrunk = command(tmp_path, "scale", "2", "--name", cluster_name)
        assert shrunk.returncode == 0 and "scaled from 3 to 2" in shrunk.stdout, shrunk.stderr
        assert len(running(docker_client, cluster_name)) == 2
        server.process.stop()
        assert server.process.exit_code == 0, server.process.log_summary()
        assert not path.exists()
        assert_no_traceback(server)
    finally:
        server.process.stop()
