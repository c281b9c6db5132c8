"""Shared fixtures: a real Docker engine, a unique cluster name per test (its containers are
removed at the end, pass or fail), free ports, and nmc-server running as its own process."""

from __future__ import annotations

import io
import os
import re
import time
import uuid
from pathlib import Path

import pytest
import requests

import harness.cleanup
from harness import ROOT  # noqa: F401 (the tests import it from here)
from harness.load import GetLoad
from harness.ports import free_port_block
from harness.processes import NmcProcess
from nmc.admin_auth import token_path
from nmc.containers import LABEL_CLUSTER

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


def admin_auth(cluster_name: str, run_dir: Path | None = None) -> dict[str, str]:
    """The Authorization header with the cluster's admin token (nmc makes it in the run
    directory, the default one or `run_dir`, as its admin interface starts)."""
    where = run_dir / token_path(cluster_name).name if run_dir else token_path(cluster_name)
    path = wait_until(lambda: where.exists() and where, 20, what=f"the admin token of {cluster_name}")
    return {"Authorization": "Bearer " + path.read_text().strip()}


def remove_cluster(client, name: str) -> None:
    """Every container of the test's cluster, and those the test labelled nmct.owner=NAME (and
    the admin token nmc made for it)."""
    harness.cleanup.remove_cluster(client, name, labels=(LABEL_CLUSTER, "nmct.owner"))


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


Load = GetLoad  # the tests' name for it


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
