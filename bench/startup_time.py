"""Time to start N replicas until all are ready: nmc itself, and `docker run` alone as the floor.

nmc: from the start of ./nmc_server.py (image already built, nmc's modules byte-compiled as an
installed nmc's are) to its "serving on" log line, which it prints once every replica answered
its health path; then SIGTERM, timed until nmc exited
(it removes its replicas). docker: N `docker run -d` at once (the docker CLI, one thread each)
until each published port answers GET /healthz, then `docker rm -f`. Both use a throwaway
cluster name (label nmc.cluster=NAME) and free loopback ports; whatever carries that label is
removed at the end, even on an error or Ctrl-C.
"""

from __future__ import annotations

import compileall
import functools
from contextlib import closing
import os
import random
import select
import signal
import subprocess
import sys
import threading
import time

from harness import ROOT
from harness.cleanup import ENGINE_ERRORS, cluster_containers, engine, remove_cluster
from harness.ports import free_port_block, http_ok
from harness.processes import cmd_out, own_session
from nmc.containers import LABEL_CLUSTER, LABEL_PORT

START_LIMIT = 120.0  # seconds for N replicas to be ready
STOP_LIMIT = 45.0    # seconds for nmc to exit after SIGTERM (it removes N containers)


def labelled(name: str) -> list[str]:
    """Ids of the containers labelled nmc.cluster=NAME (running or not); none when the engine
    does not answer."""
    try:
        with closing(engine(30)) as client:
            return [c["Id"] for c in cluster_containers(client, name)]
    except ENGINE_ERRORS:
        return []


def remove_labelled(name: str, patience: float = 0.0) -> int:
    """Force-remove every container of cluster NAME; how many there were. With PATIENCE, an
    engine that does not answer (one being restarted) is asked again, until none is left or
    PATIENCE seconds have passed."""
    deadline = time.monotonic() + patience
    removed: set[str] = set()
    while True:
        try:
            with closing(engine(120)) as client:
                removed.update(r.split(" (")[0] for r in remove_cluster(client, name))
                if not cluster_containers(client, name):
                    return len(removed)
        except ENGINE_ERRORS:
            pass
        if time.monotonic() >= deadline:
            return len(removed)
        time.sleep(2)


@functools.cache
def _nmc_help() -> str:
    return cmd_out([sys.executable, str(ROOT / "nmc_server.py"), "-h"])


def admin_args(port: int) -> list[str]:
    """--admin-port PORT when this nmc has an admin interface (its default port, 3100, may be
    taken by another nmc on the machine); nothing for an nmc without one."""
    return ["--admin-port", str(port)] if "--admin-port" in _nmc_help() else []


@functools.cache
def _byte_compiled() -> None:
    """nmc's modules compiled to bytecode (__pycache__, as pip install and any first run leave
    them): where PYTHONDONTWRITEBYTECODE is set, each timed start would compile nmc's source
    again, 0.05-0.1 s that an installed nmc never spends."""
    compileall.compile_dir(str(ROOT / "nmc"), quiet=1)


def time_nmc(n: int, image: str = "nodejs.org") -> dict:
    """Start ./nmc_server.py -n N on free ports; seconds until "serving on"; then stop it."""
    _byte_compiled()
    name = "nmc-start-%06x" % random.SystemRandom().randrange(16**6)
    base = free_port_block(n + 2, high=30000)  # the proxy, N replicas, the admin interface
    argv = ["./nmc_server.py", "--name", name, "--bind", "127.0.0.1", "--port", str(base),
            "--base-port", str(base + 1), "-n", str(n), "-q", "--image", image,
            *admin_args(base + n + 1)]
    out: dict = {"n": n, "name": name, "command": " ".join(argv)}
    tail: list[str] = []
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, *argv], cwd=ROOT, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"}, **own_session())
    try:
        buf, deadline = b"", t0 + START_LIMIT
        while "ready_s" not in out and time.monotonic() < deadline:
            r, _, _ = select.select([p.stdout], [], [], 0.5)
            if not r:
                if p.poll() is not None:
                    break
                continue
            chunk = os.read(p.stdout.fileno(), 65536)
            if not chunk:  # it closed its output: it is exiting
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                text = line.decode(errors="replace")
                tail = (tail + [text])[-8:]
                if "serving on" in text:
                    out["ready_s"] = time.monotonic() - t0
        if "ready_s" not in out:
            out["why"] = ((f"exited with code {p.returncode} before serving" if p.poll() is not None
                           else f"no 'serving on' line within {START_LIMIT:g} s") +
                          (f" (its last line: {tail[-1][:200]})" if tail else ""))
        else:
            answering = sum(http_ok(port) for port in range(base + 1, base + 1 + n))
            if answering != n:
                out["why"] = f"only {answering} of {n} replica ports answer /healthz after 'serving on'"
    finally:
        out["stop"] = _stop(p)
        out["leftovers"] = remove_labelled(name)
        out["tail"] = tail
    return out


def _stop(p: subprocess.Popen) -> str:
    if p.poll() is not None:
        return f"had exited (code {p.returncode})"
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    deadline = t0 + STOP_LIMIT
    while p.poll() is None and time.monotonic() < deadline:
        try:  # drain its output so that it never blocks on a full pipe
            if select.select([p.stdout], [], [], 0.2)[0] and not os.read(p.stdout.fileno(), 65536):
                p.wait(max(0.1, deadline - time.monotonic()))
        except (OSError, ValueError, subprocess.TimeoutExpired):
            pass
    if p.poll() is None:
        p.kill()
        p.wait(5)
        return f"did not exit within {STOP_LIMIT:g} s of SIGTERM: SIGKILLed"
    return f"exit code {p.returncode} {time.monotonic() - t0:.1f} s after SIGTERM"


def time_docker(n: int, image: str = "nodejs.org", container_port: int = 8080) -> dict:
    """N `docker run -d` at once; seconds until every published port answers /healthz."""
    name = "nmc-floor-%06x" % random.SystemRandom().randrange(16**6)
    base = free_port_block(n, high=30000)
    out: dict = {"n": n, "name": name}
    errors: list[str] = []

    def run_one(port: int) -> None:
        cname = f"{name}-{port}"
        r = subprocess.run(["docker", "run", "-d", "--name", cname, "--hostname", cname,
                            "--label", f"{LABEL_CLUSTER}={name}", "--label", f"{LABEL_PORT}={port}",
                            "-e", f"NMC_REPLICA={cname}",
                            "-p", f"127.0.0.1:{port}:{container_port}", image],
                           capture_output=True, text=True, timeout=START_LIMIT)
        if r.returncode != 0:
            errors.append(r.stderr.strip()[-200:])

    t0 = time.monotonic()
    try:
        threads = [threading.Thread(target=run_one, args=(port,), daemon=True)
                   for port in range(base, base + n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.1, t0 + START_LIMIT - time.monotonic()))
        waiting = set(range(base, base + n))
        deadline = t0 + START_LIMIT
        while waiting and not errors and time.monotonic() < deadline:
            waiting = {port for port in waiting if not http_ok(port, timeout=1.0)}
            if waiting:
                time.sleep(0.02)
        if errors:
            out["why"] = "docker run failed: " + errors[0]
        elif waiting:
            out["why"] = f"{len(waiting)} of {n} did not answer within {START_LIMIT:g} s"
        else:
            out["ready_s"] = time.monotonic() - t0
    finally:
        out["removed"] = remove_labelled(name)  # all of them: this is the clean-up
    return out
