"""Shared fixtures: a real Docker engine, a unique cluster name per test (its containers are
removed at the end, pass or fail), free ports, and nmc-server running as its own process."""

from __future__ import annotations

import io
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
IMAGE = os.environ.get("NMC_TEST_IMAGE", "nodejs.org")
LOG_LINE = re.compile(r"^\d{4}/\d{2}/\d{2} \d{2}:\d{2}:\d{2} ")


def pytest_collection_modifyitems(items):
    # every test outside test_unit_* needs the engine; `make unit` deselects them with -m "not docker"
    for item in items:
        if not Path(str(item.fspath)).name.startswith("test_unit_"):
            item.add_marker(pytest.mark.docker)


@pytest.fixture(scope="session")
def docker_client():
    import docker

    try:
        client = docker.from_env(timeout=60)
        client.ping()
    except Exception as e:  # the whole suite is about a real engine: say so plainly
        pytest.exit(f"no Docker engine answers ({e}); run `make test`, which starts one", returncode=3)
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.exit(f"image {IMAGE} is missing; run `make nodejs` (or `make test`)", returncode=3)
    yield client
    client.close()


@pytest.fixture
def cluster_name(docker_client, request, scratch_images):
    """A cluster name of this test's own; every container labelled with it is removed at the end
    (before the test's scratch_images, which a container may still use)."""
    name = "nmct-" + uuid.uuid4().hex[:10]
    yield name
    remove_cluster(docker_client, name)
    # a create cut short by a killed process can still land a moment later: look once more
    time.sleep(0.5)
    remove_cluster(docker_client, name)


def remove_cluster(client, name: str) -> None:
    for label in (f"nmc.cluster={name}", f"nmct.owner={name}"):
        for container in client.containers.list(all=True, filters={"label": label},
                                                ignore_removed=True):
            try:
                container.remove(force=True)
            except Exception:
                pass


def port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    with socket.socket() as probe:  # nmc listens on all interfaces by default
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free ports, picked at random so parallel runs rarely meet."""
    for _ in range(200):
        base = random.randrange(20000, 45000)
        if all(port_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


class NmcProcess:
    """./nmc_server.py (or `command`, e.g. gunicorn) running in its own process; its stderr and
    stdout are collected by threads."""

    def __init__(self, args: list[str], env: dict | None = None, command: list[str] | None = None):
        self.args = args
        self.lines: list[str] = []   # stderr: the log
        self.stdout: list[str] = []
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, str(ROOT / "nmc_server.py")]), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, encoding="utf-8", errors="replace", cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self._readers = [threading.Thread(target=self._collect, args=(stream, sink), daemon=True)
                         for stream, sink in ((self.proc.stderr, self.lines),
                                              (self.proc.stdout, self.stdout))]
        for reader in self._readers:
            reader.start()

    def _collect(self, stream, sink):
        for line in stream:
            with self._changed:
                sink.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def log_summary(self, limit: int = 60) -> str:
        """The log without the per-request lines (counted instead), its last `limit` lines."""
        kept = [line for line in self.lines if "Forwarding request to port" not in line]
        relayed = len(self.lines) - len(kept)
        return "\n".join(kept[-limit:] + [f"(and {relayed} 'Forwarding request' lines)"] * bool(relayed))

    def wait_for_line(self, pattern: str, timeout: float = 30, start: int = 0) -> re.Match:
        """The first log line (from index `start`) matching `pattern`; fails after `timeout`."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reading()):
                    raise AssertionError(f"no log line matching {pattern!r} within {timeout}s; "
                                         f"exit code {self.proc.poll()}; log:\n{self.log_summary()}")
                self._changed.wait(min(remaining, 0.2))

    def _reading(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def wait_serving(self, timeout: float = 60) -> None:
        self.wait_for_line(r"serving on http://", timeout)

    def signal(self, signum=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        deadline = time.monotonic() + 5
        while self._reading() and time.monotonic() < deadline:  # let the readers drain the pipes
            time.sleep(0.02)
        return code

    def stop(self) -> None:
        """SIGTERM (nmc removes its replicas itself), SIGKILL if it does not exit in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def run_nmc(request, scratch_images):
    """Start nmc_server.py with options; every process still running at the end is stopped
    (and whatever it leaves is removed by the cluster_name fixture), before the test's
    scratch_images are removed."""
    started: list[NmcProcess] = []

    def start(*args: str, env: dict | None = None) -> NmcProcess:
        if not any(arg.startswith("--admin-port") for arg in args):
            args = ("--admin-port", "0", *args)  # tests run side by side: no shared port 3100
        process = NmcProcess(list(args), env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def cluster(cluster_name, run_nmc):
    """A running two-replica cluster of this test's own: (process, proxy URL, replica ports)."""
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "--replicas", "2", "--check-interval", "1")
    process.wait_serving()
    return process, f"http://127.0.0.1:{base + 2}", [base, base + 1]


def wait_until(condition, timeout: float = 20, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what} did not hold within {timeout}s")
        time.sleep(interval)


def get(url: str, **kwargs) -> requests.Response:
    kwargs.setdefault("timeout", 10)
    return requests.get(url, **kwargs)


class Load:
    """`clients` threads sending GET /whoami until stopped (at most `limit` seconds), each with a
    keep-alive session, or with a fresh connection per request (`fresh_connections`: under
    gunicorn, every worker then gets some). The statuses, or exception names, in order, and
    when each failed request was sent."""

    def __init__(self, url: str, clients: int = 4, limit: float = 120,
                 fresh_connections: bool = False):
        self.url, self.clients = url, clients
        self.statuses: list = []
        self.failed_at: list[float] = []  # when each failed request was sent (monotonic)
        self._headers = {"Connection": "close"} if fresh_connections else {}
        self._done = threading.Event()
        self._deadline = time.monotonic() + limit
        self._threads = [threading.Thread(target=self._client) for _ in range(clients)]
        for thread in self._threads:
            thread.start()

    def _client(self) -> None:
        with requests.Session() as session:
            while not self._done.is_set() and time.monotonic() < self._deadline:
                sent = time.monotonic()
                try:
                    status = session.get(self.url + "/whoami", headers=self._headers,
                                         timeout=10).status_code
                except requests.RequestException as e:
                    status = type(e).__name__
                self.statuses.append(status)
                if status != 200:
                    self.failed_at.append(sent)

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(30)

    def failures(self) -> list:
        return [s for s in self.statuses if s != 200]


@pytest.fixture
def scratch_images(docker_client):
    """Tags (or ids) of the images a test builds: removed at the end, pass or fail."""
    tags: list[str] = []
    yield tags
    for tag in tags:
        try:
            docker_client.images.remove(tag, force=True)
        except Exception:
            pass


def build_on_site_image(client, tag: str, *lines: str, **build_args) -> str:
    """Build an image FROM the site's with a few more Dockerfile lines (no registry needed)."""
    dockerfile = "\n".join([f"FROM {IMAGE}", *lines]).encode()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, forcerm=True,
                                   **build_args)
    return image.id
