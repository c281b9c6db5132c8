"""Bad input, end to end: ./nmc_server.py run as its own process against the real Docker engine.

The promise under test: every bad input ends with exactly one line `nmc-server: error: ...` on
stderr (any other stderr line is a timestamped log line), a non-zero exit code, never a
traceback, and nothing lost: no container labelled with the test's cluster name is left behind,
and nothing that is not nmc's own is touched.

Every run uses the test's own `--name`, `--bind 127.0.0.1` and free ports, so tests never meet
each other or a user's cluster. Containers and images made here carry `nmct.owner=<cluster name>`
and are removed at the end, pass or fail.

Two kinds of failure are told apart, so a failure says at once which promise broke:
`StderrNotClean` (a traceback or other noise on stderr) and `LeftBehind` (containers left after
nmc exited); any other failed check is a plain AssertionError.
"""

from __future__ import annotations

import io
import signal
import socket
import time
import uuid

import docker
import pytest

from conftest import LOG_LINE, IMAGE, free_port_block, remove_cluster, wait_until

ERROR_PREFIX = "nmc-server: error: "
NO_SUCH_SOCKET = "/tmp/nmct-no-such-docker.sock"


class StderrNotClean(AssertionError):
    """stderr holds something besides log lines and the one error line (a traceback, ...)."""


class LeftBehind(AssertionError):
    """Containers of the test's cluster are still there after nmc exited."""


# ------------------------------------------------------------------------------------------------
# helpers


def nmc_args(cluster_name: str, port: int, base_port: int, *extra: str, omit: tuple = ()) -> list[str]:
    """The options every run gets (own name, loopback, free ports), minus `omit`, plus `extra`."""
    standard = {"--name": cluster_name, "--bind": "127.0.0.1", "--port": str(port),
                "--base-port": str(base_port)}
    args = []
    for option, value in standard.items():
        if option not in omit:
            args += [option, value]
    return args + list(extra)


def error_line(process, code: int, *fragments: str) -> str:
    """Check the exit code and the one `nmc-server: error:` line (last on stderr); return it."""
    assert process.proc.returncode == code, (
        f"exit code {process.proc.returncode}, expected {code}; stderr:\n{process.log}")
    errors = [line for line in process.lines if line.startswith(ERROR_PREFIX)]
    assert len(errors) == 1, f"expected exactly one {ERROR_PREFIX!r} line; stderr:\n{process.log}"
    line = errors[0]
    assert line.strip() != ERROR_PREFIX.strip(), "the error line says nothing"
    non_empty = [text for text in process.lines if text.strip()]
    assert non_empty[-1] == line, f"the error line is not the last on stderr:\n{process.log}"
    for fragment in fragments:
        assert fragment in line, f"{fragment!r} is not in the error line: {line}"
    return line


def assert_stderr_clean(process) -> None:
    """No traceback; every stderr line is a log line or the (one) error line."""
    if "Traceback" in process.log:
        raise StderrNotClean(f"a traceback on stderr:\n{process.log}")
    noise = [line for line in process.lines
             if not line.startswith(ERROR_PREFIX) and not LOG_LINE.match(line)]
    if noise:
        raise StderrNotClean(f"stderr lines that are neither log lines nor the error line: "
                             f"{noise!r}; stderr:\n{process.log}")


def cluster_containers(client, cluster_name: str) -> list:
    # ignore_removed: one removed between the listing and its inspection is simply gone
    return client.containers.list(all=True, filters={"label": f"nmc.cluster={cluster_name}"},
                                  ignore_removed=True)


def assert_nothing_left(client, cluster_name: str) -> None:
    left = cluster_containers(client, cluster_name)
    if left:
        raise LeftBehind("containers left behind: "
                         + ", ".join(f"{c.name} ({c.short_id}, {c.status})" for c in left))


def container_events(client, cluster_name: str, since: int) -> list[str]:
    """Actions (create, start, ...) on containers labelled with the cluster, since `since`."""
    until = int(time.time()) + 1  # the engine ends the stream once `until` has passed
    events = client.events(since=since, until=until, decode=True,
                           filters={"type": "container", "label": f"nmc.cluster={cluster_name}"})
    try:
        return [event.get("Action") or event.get("status") for event in events]
    finally:
        events.close()


def hold_port(address: str, port: int) -> socket.socket:
    """A listening socket on address:port, as another program would hold it."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((address, port))
        sock.listen(1)
    except OSError:
        sock.close()
        raise
    return sock


def run_to_exit(run_nmc, args: list[str], timeout: float = 60, env: dict | None = None):
    """Start nmc, wait for it to exit; (process, seconds it ran)."""
    started = time.monotonic()
    process = run_nmc(*args, env=env)
    process.wait_exit(timeout)
    return process, time.monotonic() - started


def loopback_connections_to(ports) -> set[int]:
    """Those of `ports` with an established TCP connection to 127.0.0.1:<port> on this host.

    Only nmc's health checks connect to a replica's port here, and it checks a replica only
    once the container is registered as the replica's: a connection proves nmc knows it.
    """
    wanted = {f"0100007F:{port:04X}": port for port in ports}
    found = set()
    with open("/proc/net/tcp") as table:
        for row in table.readlines()[1:]:
            fields = row.split()
            if fields[3] == "01" and fields[2] in wanted:  # 01: ESTABLISHED
                found.add(wanted[fields[2]])
    return found


def foreign_container(client, cluster_name: str, name: str, labels: dict | None = None):
    """A running container of the site that nmc did not start (removed by the cluster_name fixture)."""
    return client.containers.run(IMAGE, name=name, detach=True,
                                 labels={"nmct.owner": cluster_name, **(labels or {})})


# ------------------------------------------------------------------------------------------------
# 1. bad option values: exit 2, one line naming the option, nothing else (no Docker needed)

# (test id, standard options left out, extra arguments, what the line must contain)
# "{base}" in the extra arguments or fragments is the run's base port, "{base1}" the next one.
BAD_OPTIONS = [
    ("replicas-0", (), ["-n", "0"], ["--replicas", "0"]),
    ("replicas-abc", (), ["-n", "abc"], ["--replicas", "abc"]),
    ("port-70000", ("--port",), ["-p", "70000"], ["--port", "70000"]),
    ("port-0", ("--port",), ["-p", "0"], ["--port", "0"]),
    ("check-interval-abc", (), ["--check-interval", "abc"], ["--check-interval", "abc"]),
    ("check-interval-0", (), ["--check-interval", "0"], ["--check-interval"]),
    ("check-interval-negative", (), ["--check-interval", "-1"], ["--check-interval"]),
    ("base-port-past-65535", ("--base-port",), ["--base-port", "65535", "-n", "2"],
     ["--base-port", "65535"]),
    ("name-with-slash", ("--name",), ["--name", "bad/name"], ["--name", "bad/name"]),
    ("health-path-without-slash", (), ["--health-path", "nope"], ["--health-path", "nope"]),
    ("unknown-option", (), ["--bogus"], ["--bogus"]),
    ("stray-argument", (), ["extra"], ["extra"]),
    ("port-without-value", ("--port",), ["--port"], ["--port"]),
    ("port-is-a-replica-port", ("--port",), ["-n", "2", "-p", "{base1}"], ["--port", "{base1}"]),
]


@pytest.mark.parametrize("omit, extra, fragments", [case[1:] for case in BAD_OPTIONS],
                         ids=[case[0] for case in BAD_OPTIONS])
def test_bad_option_value(docker_client, cluster_name, run_nmc, omit, extra, fragments):
    port = free_port_block(3)
    base = port + 1
    fill = {"base": str(base), "base1": str(base + 1)}
    extra = [arg.format(**fill) for arg in extra]
    process, took = run_to_exit(run_nmc, nmc_args(cluster_name, port, base, *extra, omit=omit),
                                timeout=30)

    line = error_line(process, 2, *(fragment.format(**fill) for fragment in fragments))
    assert process.lines == [line], f"stderr is more than the one error line:\n{process.log}"
    assert process.stdout == [], f"stdout is not empty: {process.stdout!r}"
    assert took < 10, f"a bad option took {took:.1f}s to be reported"
    assert_stderr_clean(process)
    assert_nothing_left(docker_client, cluster_name)


# ------------------------------------------------------------------------------------------------
# 2. no Docker engine: exit 3, where it looked and how to start Docker


def test_docker_engine_unreachable(docker_client, cluster_name, run_nmc):
    port = free_port_block(3)
    process, took = run_to_exit(run_nmc, nmc_args(cluster_name, port, port + 1), timeout=60,
                                env={"DOCKER_HOST": f"unix://{NO_SUCH_SOCKET}"})

    line = error_line(process, 3, NO_SUCH_SOCKET)
    assert "start Docker" in line, f"the line does not say how to start Docker: {line}"
    assert took < 30, f"took {took:.1f}s to notice there is no engine"
    assert_stderr_clean(process)
    assert_nothing_left(docker_client, cluster_name)


# ------------------------------------------------------------------------------------------------
# 3. the image is missing: exit 1, the line names it and says to build or pull it


def test_image_missing(docker_client, cluster_name, run_nmc):
    image = "nmct-no-such-image:latest"
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image)
    port = free_port_block(3)
    process, _ = run_to_exit(run_nmc, nmc_args(cluster_name, port, port + 1, "--image", image))

    line = error_line(process, 1, repr(image))
    assert "build or pull" in line, f"the line does not say to build or pull the image: {line}"
    assert_nothing_left(docker_client, cluster_name)
    assert_stderr_clean(process)


# ------------------------------------------------------------------------------------------------
# 4. the proxy's own port is busy: exit 1, the line names it, no container was ever created


@pytest.mark.parametrize("holder_address", ["127.0.0.1", "0.0.0.0"])
def test_proxy_port_busy(docker_client, cluster_name, run_nmc, holder_address):
    port = free_port_block(3)
    since = int(time.time()) - 1
    holder = hold_port(holder_address, port)
    try:
        process, _ = run_to_exit(run_nmc, nmc_args(cluster_name, port, port + 1))
        line = error_line(process, 1, f"port {port}")
        assert "--port" in line, f"the line does not point at --port: {line}"
        # the holder is untouched: still listening
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        holder.close()
    assert_nothing_left(docker_client, cluster_name)
    actions = container_events(docker_client, cluster_name, since)
    assert "create" not in actions, f"nmc created containers although it could not listen: {actions}"
    assert_stderr_clean(process)


# ------------------------------------------------------------------------------------------------
# 5. a replica's host port is busy: exit 1, the line names that port, nothing left


def test_replica_port_busy(docker_client, cluster_name, run_nmc):
    port = free_port_block(3)
    base = port + 1
    holder = hold_port("127.0.0.1", base + 1)
    try:
        process, _ = run_to_exit(run_nmc, nmc_args(cluster_name, port, base, "-n", "2"))
        line = error_line(process, 1, f"port {base + 1}")
        assert "in use" in line, f"the line does not say the port is in use: {line}"
        assert f"port {base} " not in line, f"the line blames the free port {base}: {line}"
    finally:
        holder.close()
    assert_nothing_left(docker_client, cluster_name)
    assert_stderr_clean(process)


# ------------------------------------------------------------------------------------------------
# 6. a replica's container name is held by a container nmc did not start: never touched


def test_name_held_by_foreign_container(docker_client, cluster_name, run_nmc):
    port = free_port_block(3)
    base = port + 1
    name = f"{cluster_name}-{base}"
    foreign = foreign_container(docker_client, cluster_name, name)
    wait_until(lambda: docker_client.containers.get(foreign.id).status == "running", 30,
               what="the foreign container running")

    process, _ = run_to_exit(run_nmc, nmc_args(cluster_name, port, base, "-n", "2"))

    line = error_line(process, 1, name)
    assert "did not start" in line, f"the line does not say nmc did not start {name}: {line}"
    after = docker_client.containers.get(foreign.id)  # NotFound here: nmc removed it
    assert after.status == "running", f"the foreign container is {after.status}, not running"
    assert after.name == name
    assert "nmc.cluster" not in after.labels, f"nmc relabelled the foreign container: {after.labels}"
    assert_nothing_left(docker_client, cluster_name)
    assert_stderr_clean(process)


# ------------------------------------------------------------------------------------------------
# 7. a replica that never becomes ready: exit 1 soon after --start-timeout, nothing left


def test_replica_never_ready(docker_client, cluster_name, run_nmc):
    port = free_port_block(3)
    process, took = run_to_exit(run_nmc, nmc_args(cluster_name, port, port + 1, "--health-path",
                                                  "/status/500", "--start-timeout", "2"), timeout=30)

    error_line(process, 1, "did not answer /status/500 within 2s")
    assert took < 10, f"nmc gave up after {took:.1f}s, with --start-timeout 2"
    assert_nothing_left(docker_client, cluster_name)
    assert_stderr_clean(process)


# ------------------------------------------------------------------------------------------------
# 8. a replica that exits while starting: its exit code and its last log lines


@pytest.fixture
def crash_image(docker_client, cluster_name):
    """An image of the site whose container prints one line and exits with code 3."""
    dockerfile = (f"FROM {IMAGE}\n"
                  """CMD ["node", "-e", "console.log('boom at start'); process.exit(3)"]\n""")
    tag = f"nmct-crash-{uuid.uuid4().hex[:10]}"
    image, _ = docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag,
                                          labels={"nmct.owner": cluster_name}, rm=True,
                                          forcerm=True)
    yield tag
    remove_cluster(docker_client, cluster_name)  # containers first: then the image can go
    try:
        docker_client.images.remove(image.id, force=True)
    except docker.errors.NotFound:
        pass


def test_replica_exits_while_starting(docker_client, cluster_name, run_nmc, crash_image):
    port = free_port_block(3)
    process, took = run_to_exit(run_nmc, nmc_args(cluster_name, port, port + 1,
                                                  "--image", crash_image), timeout=60)

    error_line(process, 1, "exited with code 3", "boom at start")
    assert took < 20, f"nmc took {took:.1f}s to notice a replica that exits at once"
    assert_nothing_left(docker_client, cluster_name)
    assert_stderr_clean(process)


# ------------------------------------------------------------------------------------------------
# 9. a leftover that does not match is replaced, never duplicated; other clusters are not touched


def test_leftover_replaced_not_duplicated(docker_client, cluster_name, run_nmc):
    port = free_port_block(3)
    base = port + 1
    leftover = foreign_container(docker_client, cluster_name, f"{cluster_name}-{base}",
                                 {"nmc.cluster": cluster_name, "nmc.port": str(base)})
    # a neighbouring cluster whose name starts with ours: not ours, never touched
    neighbour = foreign_container(docker_client, cluster_name, f"{cluster_name}-x-{base}",
                                  {"nmc.cluster": f"{cluster_name}-x", "nmc.port": str(base)})
    wait_until(lambda: all(docker_client.containers.get(c.id).status == "running"
                           for c in (leftover, neighbour)), 30, what="the leftover running")

    process = run_nmc(*nmc_args(cluster_name, port, base, "-n", "2"))
    process.wait_serving(60)

    removal = process.wait_for_line(r"leftover.*" + leftover.short_id, 1)
    assert f"{cluster_name}-{base}" in removal.string, removal.string
    with pytest.raises(docker.errors.NotFound):
        docker_client.containers.get(leftover.id)
    running = cluster_containers(docker_client, cluster_name)
    assert len(running) == 2, f"expected 2 containers, found {[c.name for c in running]}"
    assert leftover.id not in {c.id for c in running}
    assert sorted(c.name for c in running) == [f"{cluster_name}-{base}", f"{cluster_name}-{base + 1}"]
    assert all(c.status == "running" for c in running), [(c.name, c.status) for c in running]

    process.signal(signal.SIGTERM)
    assert process.wait_exit(30) == 0, f"exit code {process.proc.returncode}; stderr:\n{process.log}"
    assert_nothing_left(docker_client, cluster_name)
    assert docker_client.containers.get(neighbour.id).status == "running", \
        "nmc touched another cluster's container"
    assert_stderr_clean(process)
    assert not [line for line in process.lines if line.startswith(ERROR_PREFIX)], process.log


# ------------------------------------------------------------------------------------------------
# 10. Ctrl-C while the replicas start: exit 130 at once, nothing left


SLOW_START = ("--health-path", "/slow?ms=5000", "--start-timeout", "20")  # check timeout 2 s: never ready


def interrupt_and_expect_clean_exit(process, docker_client, cluster_name):
    """Ctrl-C: exit 130 within seconds, says it was interrupted, nothing left, no traceback."""
    sent = time.monotonic()
    process.signal(signal.SIGINT)
    code = process.wait_exit(30)
    took = time.monotonic() - sent

    assert code == 130, f"exit code {code}, expected 130; stderr:\n{process.log}"
    assert took < 10, f"nmc took {took:.1f}s to stop after Ctrl-C"
    assert any("interrupted" in line for line in process.lines), process.log
    assert_nothing_left(docker_client, cluster_name)
    assert_stderr_clean(process)


def test_sigint_while_starting(docker_client, cluster_name, run_nmc):
    port = free_port_block(3)
    process = run_nmc(*nmc_args(cluster_name, port, port + 1, "-n", "2", *SLOW_START))
    wait_until(lambda: len([c for c in cluster_containers(docker_client, cluster_name)
                            if c.status == "running"]) == 2, 30, what="both replicas' containers running")
    # and nmc has them: it is checking both (a container can run before nmc has its id)
    wait_until(lambda: loopback_connections_to([port + 1, port + 2]) == {port + 1, port + 2}, 15,
               interval=0.05, what="nmc health-checking both replicas")
    assert process.proc.poll() is None, f"nmc exited early; stderr:\n{process.log}"
    assert not any("serving on" in line for line in process.lines), "the start was already over"

    interrupt_and_expect_clean_exit(process, docker_client, cluster_name)


def test_sigint_while_containers_are_created(docker_client, cluster_name, run_nmc):
    """Ctrl-C the moment the first container exists, while the others are still being made."""
    port = free_port_block(5)
    process = run_nmc(*nmc_args(cluster_name, port, port + 1, "-n", "4", *SLOW_START))
    deadline = time.monotonic() + 30
    while not docker_client.api.containers(all=True, filters={"label": f"nmc.cluster={cluster_name}"}):
        assert process.proc.poll() is None, f"nmc exited early; stderr:\n{process.log}"
        assert time.monotonic() < deadline, "no container was created within 30s"
        time.sleep(0.005)

    interrupt_and_expect_clean_exit(process, docker_client, cluster_name)
