"""--watch with --build DIR: an edit under load is built and rolled out and no request fails; what
is ignored (node_modules, .git, .dockerignore's patterns) starts nothing; a build that fails
leaves the replicas serving. And .dockerignore's patterns, read as Docker reads them."""

from __future__ import annotations

import json

import pytest
import requests

from conftest import Load, free_port_block, wait_until
from nmc.watch import Ignored

VERSIONED_APP = """\
const http = require('http');
const VERSION = %d;
http.createServer((req, res) => res.end(JSON.stringify({version: VERSION})))
  .listen(Number(process.env.PORT));
process.on('SIGTERM', () => process.exit(0));
"""


def version(url: str) -> int:
    return requests.get(url + "/", timeout=5).json()["version"]


def test_an_edit_under_load_is_built_and_rolled_out_and_no_request_fails(
        run_nmc, cluster_name, tmp_path, scratch_images):
    scratch_images.append(f"{cluster_name}-app")
    app = tmp_path / "app"
    (app / "node_modules").mkdir(parents=True)
    (app / ".git").mkdir()
    (app / "package.json").write_text(json.dumps(
        {"name": "own", "version": "1.0.0", "scripts": {"start": "node app.js"}}))
    (app / "app.js").write_text(VERSIONED_APP % 1)
    (app / ".dockerignore").write_text("*.log\n")
    base = free_port_block(4)  # two replicas, the rollout's one more, and nmc's own
    url = f"http://127.0.0.1:{base + 3}"
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 3),
                      "--base-port", str(base), "-n", "2", "-q", "--build", str(app),
                      "--watch", "--health-path", "/")
    process.wait_serving(timeout=120)
    process.wait_for_line(r"watching .*: a change is built and rolled out")
    assert version(url) == 1
    keep_alive, fresh = Load(url, clients=2), Load(url, clients=2, fresh_connections=True)
    try:
        start = len(process.lines)
        # ignored ones first, the app's own file last: one round, which names only the latter
        (app / "node_modules" / "dep.js").write_text("module.exports = 1;\n")
        (app / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
        (app / "debug.log").write_text("noise\n")
        (app / "app.js").write_text(VERSIONED_APP % 2)
        process.wait_for_line(r"watch: app\.js changed: building and rolling out$", start=start)
        try:
            wait_until(lambda: {version(url) for _ in range(4)} == {2}, 120, interval=0.5,
                       what="every replica answering with the new version")
        except AssertionError:
            raise AssertionError(process.log_summary()) from None
        process.wait_for_line(r"watch: rolled out", start=start, timeout=60)
        watch_lines = [line for line in process.lines[start:] if " watch: " in line]
        assert all("node_modules" not in line and ".git" not in line and ".log" not in line
                   for line in watch_lines), watch_lines

        start = len(process.lines)  # a change that cannot be built: the replicas keep serving
        (app / "package.json").write_text("{broken")
        process.wait_for_line(r"watch: .*package\.json cannot be read.*; the replicas keep "
                              r"serving the image they run", start=start, timeout=60)
        assert {version(url) for _ in range(4)} == {2}
    finally:
        keep_alive.stop()
        fresh.stop()
    assert len(keep_alive.statuses) > 50 and len(fresh.statuses) > 20
    assert keep_alive.failures() == [] and fresh.failures() == [], process.log
    assert "Traceback" not in process.log


def test_watch_without_build_is_one_line(run_nmc):
    process = run_nmc("--watch")
    assert process.wait_exit(30) == 2
    assert process.lines[-1] == ("nmc-server: error: --watch goes with --build DIR: it rebuilds "
                                 "and rolls out DIR when a file in it changes")


@pytest.mark.parametrize("patterns, path, ignored", [
    ("", "app.js", False),
    ("", "node_modules/x/index.js", True),     # never watched, whatever .dockerignore says
    ("", "src/.git/HEAD", True),
    ("*.log", "debug.log", True),
    ("*.log", "logs/debug.log", False),        # `*` stays within one folder, as in Docker
    ("**/*.log", "logs/deep/debug.log", True),
    ("dist", "dist/bundle.js", True),          # a folder's pattern covers what is in it
    ("dist/", "dist/bundle.js", True),
    ("docs\n!docs/keep.md", "docs/keep.md", False),  # an exception, later, wins
    ("docs\n!docs/keep.md", "docs/other.md", True),
    ("te?t", "test", True),
    ("# a comment\n\n", "app.js", False),
])
def test_dockerignore_patterns_are_read_as_docker_reads_them(tmp_path, patterns, path, ignored):
    (tmp_path / ".dockerignore").write_text(patterns)
    assert Ignored(tmp_path)(path) is ignored


def test_a_missing_dockerignore_ignores_only_what_is_never_watched(tmp_path):
    rule = Ignored(tmp_path)
    assert not rule("app.js") and rule("node_modules") and rule(".git")
