"""End to end: --build DIR runs the user's own app: a folder with a Dockerfile, or a Node.js app
folder without one (`npm start` on the project's Node.js base image)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import requests

from conftest import IMAGE, ROOT, free_port_block

APP_JS = """\
const http = require('http');
http.createServer((req, res) => {
  res.setHeader('Content-Type', 'application/json');
  res.end(JSON.stringify({app: 'own', port: process.env.PORT, greeting: process.env.GREETING || null}));
}).listen(Number(process.env.PORT), () => console.log('own app listening on ' + process.env.PORT));
process.on('SIGTERM', () => process.exit(0));
"""


def start_built(run_nmc, cluster_name: str, folder, *extra: str):
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "-n", "2", "--build", str(folder), *extra)
    return process, f"http://127.0.0.1:{base + 2}"


def test_a_node_app_without_a_dockerfile_runs_with_npm_start(run_nmc, cluster_name, tmp_path,
                                                             scratch_images, docker_client):
    scratch_images.append(f"{cluster_name}-app")
    (tmp_path / "package.json").write_text(json.dumps(
        {"name": "own", "version": "1.0.0", "scripts": {"start": "node app.js"}}))
    (tmp_path / "app.js").write_text(APP_JS)
    process, url = start_built(run_nmc, cluster_name, tmp_path, "--health-path", "/",
                               "-e", "GREETING=hello")
    process.wait_serving(timeout=120)
    assert "build: Step 1/" in process.log  # the build's progress is shown
    answers = [requests.get(url + "/", timeout=5) for _ in range(4)]
    assert {a.json()["app"] for a in answers} == {"own"}
    assert {a.json()["port"] for a in answers} == {"8080"}  # PORT is the container port
    assert {a.json()["greeting"] for a in answers} == {"hello"}
    assert {a.headers["X-Served-By"] for a in answers} == {f"{cluster_name}-{p}" for p in
                                                           (int(url.rsplit(":", 1)[1]) - 2,
                                                            int(url.rsplit(":", 1)[1]) - 1)}
    image = docker_client.images.get(f"{cluster_name}-app")
    running = docker_client.containers.list(ignore_removed=True, filters={"label": f"nmc.cluster={cluster_name}"})
    assert {c.attrs["Image"] for c in running} == {image.id}
    assert image.attrs["Config"]["Cmd"] == ["npm", "start"]


def test_a_folder_with_a_dockerfile_is_built_as_it_is(run_nmc, cluster_name, tmp_path,
                                                      scratch_images):
    scratch_images.append(f"{cluster_name}:own")
    (tmp_path / "Dockerfile").write_text(f"FROM {IMAGE}\nLABEL nmct.built=yes\n")
    process, url = start_built(run_nmc, cluster_name, tmp_path, "--image", f"{cluster_name}:own")
    process.wait_serving(timeout=120)
    assert requests.get(url + "/healthz", timeout=5).status_code == 200


def test_build_args_reach_the_build_and_its_output_comes_without_colour_codes(
        run_nmc, cluster_name, tmp_path, scratch_images):
    scratch_images.append(f"{cluster_name}:own")
    (tmp_path / "Dockerfile").write_text(
        f"FROM {IMAGE}\nARG GREETING\nRUN echo \"said on stderr: $GREETING\" 1>&2\n")
    process, url = start_built(run_nmc, cluster_name, tmp_path, "--image", f"{cluster_name}:own",
                               "--build-arg", "GREETING=hello there")
    process.wait_serving(timeout=120)
    built = [line for line in process.lines if " build: " in line]
    # the builder wraps a step's stderr in colour codes (\x1b[91m ... \x1b[0m): not in a log
    assert any(line.endswith("build: said on stderr: hello there") for line in built), built
    assert "\x1b" not in process.log
    assert all(line.split(" build: ", 1)[1].strip() for line in built), built  # no empty lines


def test_an_npm_install_that_cannot_reach_its_registry_is_one_line_that_says_what_to_do(
        run_nmc, cluster_name, tmp_path, scratch_images, docker_client):
    scratch_images.append(f"{cluster_name}-app")
    (tmp_path / "package.json").write_text(json.dumps(
        {"name": "own", "version": "1.0.0", "scripts": {"start": "node app.js"},
         "dependencies": {"left-pad": "1.3.0"}}))
    (tmp_path / "app.js").write_text(APP_JS)
    # a registry nobody answers at (in the build's own network namespace), tried once: the
    # same words as a machine without the registry, in seconds
    process, url = start_built(run_nmc, cluster_name, tmp_path,
                               "--build-arg", "NPM_CONFIG_REGISTRY=http://127.0.0.1:9/",
                               "--build-arg", "NPM_CONFIG_FETCH_RETRIES=0")
    assert process.wait_exit(180) == 1
    errors = [line for line in process.lines if "nmc-server: error:" in line]
    assert errors == [
        f"nmc-server: error: building {tmp_path} failed: `npm install` in the build could not "
        "reach the npm registry (ECONNREFUSED): install the dependencies here first (`npm "
        f"install --omit=dev` in {tmp_path}; its node_modules is then used as it is), or give "
        "the build a registry or a proxy it can reach (--build-arg NPM_CONFIG_REGISTRY=... or "
        "--build-arg HTTPS_PROXY=...)"], process.log_summary()
    assert "Traceback" not in process.log
    assert docker_client.containers.list(all=True, filters={"label": f"nmc.cluster={cluster_name}"}) == []


@pytest.mark.parametrize("files, message", [
    ({}, "neither a Dockerfile nor a package.json"),
    ({"package.json": '{"name": "x"}'}, 'package.json has no "start" script'),
    ({"package.json": "{broken"}, "package.json cannot be read"),
    ({"Dockerfile": "FROM nmc-no-such-base-image:1\n"}, "failed"),
])
def test_a_folder_that_cannot_be_built_gives_one_line(run_nmc, cluster_name, tmp_path,
                                                      scratch_images, docker_client, files, message):
    scratch_images.append(f"{cluster_name}-app")
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    process, url = start_built(run_nmc, cluster_name, tmp_path)
    code = process.wait_exit(120)
    assert code in (1, 2)
    errors = [line for line in process.lines if "nmc-server: error:" in line]
    assert len(errors) == 1 and message in errors[0], process.log_summary()
    assert "Traceback" not in process.log
    assert docker_client.containers.list(ignore_removed=True, all=True, filters={"label": f"nmc.cluster={cluster_name}"}) == []


def test_build_of_a_folder_that_does_not_exist_is_a_usage_error(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "nmc_server.py"), "--build",
                             str(tmp_path / "missing"), "--admin-port", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"nmc-server: error: --build {tmp_path / 'missing'}: no such folder"
