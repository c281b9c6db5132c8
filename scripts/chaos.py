#!/usr/bin/env python3
"""A bounded chaos run against an nmc cluster of its own: `make chaos CHAOS_ARGS="..."`.

It starts its own nmc-server (cluster `nmc-chaos-<random>` on free loopback ports, its admin
port included, so that runs never meet on the default 3100), puts a steady load on it (GET
/whoami, POST /echo and PUT /echo with a 4 KiB body, from --clients threads with a keep-alive
session each) and meanwhile, on a schedule fixed by --seed:

  * every --kill-every seconds `docker kill`s a replica (SIGKILL),
  * once `docker pause`s one (and unpauses it 3 s later if it still exists),
  * once makes one crash through the site: GET /crash straight to the replica's own port.

For every kill, pause and crash it measures the time to replace: from the action until a new
container of the same name is running and answers /healthz on its port (polled every 20 ms).
At the end it stops nmc with SIGTERM, checks that no container of its cluster is left (and
removes any), prints one report and writes it to bench/results/chaos-<UTC time>.md.

Only the cluster's own containers are touched (found by the label nmc.cluster=<its name>); the
Docker engine is never restarted. Everything is bounded in time: the run takes about
--duration + 15 s, and Ctrl-C (or SIGTERM) at any point still removes the cluster.

--no-chaos runs the load alone (a baseline for latency and throughput).

--changes runs, instead of the chaos, a fixed sequence of live changes through nmc's admin API
(POST /scale, POST /rollout on a free admin port of its own) under the same load (32 clients by
default), each call waited for, with SETTLE seconds of load after it:

  0. steady load, no change (STEADY seconds),
  1. scale 2 -> 6,   2. scale 6 -> 1,   3. scale 1 -> 2,
  4. rollout to a second image: FROM nodejs.org plus one LABEL nmc.chaos=<cluster>, built through
     the Docker SDK (no registry), tagged <cluster>:changes and removed at the end,
  5. rollout back to nodejs.org with max_surge 2.

A phase lasts from its call until the next call; a request counts as sent in the phase it was
sent in, a failure in the phase it failed in, so the phases add up to the totals. For each phase
the report gives its times, the call's answer, requests and failures by method, and the replicas
(container and image ids) before and after, checked against what the change should leave. A run
takes about 25 s (at most CHANGES_LIMIT seconds of load); Ctrl-C cleans up as above, the image
included.

--swarm runs either mode against `nmc-server --swarm` (the engine must be a swarm manager, else
it says so in one line and exits 2, the engine left as it is): the replicas are the tasks of the
Swarm service named after the cluster, replica `<cluster>.<slot>`, each a container named
`<cluster>.<slot>.<task id>` (labelled nmc.cluster as well) on an ephemeral published port. The
chaos kills, pauses and crashes task containers; Swarm replaces a dead task itself, so the time
to replace runs from the action until a NEW container of the same slot is running and answers
/healthz on its own published port. --changes goes through the admin API as above (nmc drives
Swarm: the scale is the service's replica count, a rollout Swarm's start-first update; the
second image is on the same engine, so the one-node swarm runs it without a registry). At the
end the service must be gone (nmc removes it on SIGTERM) and its task containers too, within
SWARM_GONE_LIMIT seconds: what is left is a leak, and removed (the service first).

Exit code: 0 when GET and PUT (idempotent) had no failure, no answer was wrong, nothing leaked
and (--changes) every change answered and left the expected replicas; 1 otherwise; 2 bad
options; 130 interrupted. POST failures are reported and explained but do not fail the run: a
POST cut off mid-way cannot be retried safely by a relay.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import heapq
import io
import json
import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import docker
import docker.errors
import requests

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
LABEL_CLUSTER = "nmc.cluster"
LABEL_PORT = "nmc.port"

METHODS = ("GET", "POST", "PUT")
MIX = (("GET", 2), ("POST", 1), ("PUT", 1))   # GET /whoami half of the time, POST and PUT a quarter
BODY_SIZE = 4096
EXAMPLES = 3                 # examples kept per (method, kind) of failure
SLOWEST = 5                  # slowest requests shown
POLL = 0.020                 # seconds between polls while measuring a replacement
REPLACE_LIMIT = 20.0         # seconds a replacement is waited for, at most
PAUSE_FOR = 3.0              # seconds before the paused replica is unpaused (if it still exists)
START_LIMIT = 60.0           # seconds nmc has to say "serving on"
STOP_LIMIT = 20.0            # seconds nmc has to exit after SIGTERM (then SIGKILL)
MAX_RATE = 20000             # requests per second per client, an upper bound on every load loop
ENGINE_TIMEOUT = 10          # seconds for one Docker API call
ENGINE_WAIT = 15.0           # seconds the final clean-up waits for an engine that is away
SITE_IMAGE = "nodejs.org"    # the image nmc runs by default (`make nodejs` builds it)
LABEL_CHAOS = "nmc.chaos"    # on the image --changes builds: finds it again, even untagged
CHANGES_PORTS = 8            # replica ports kept free for --changes: 6 replicas at most, and room
STEADY = 3.0                 # seconds of load before the first change (--changes)
SETTLE = 2.0                 # seconds of load after each change, before the next one
CHANGES_LIMIT = 240.0        # seconds the load of --changes may last at most, changes included
ADMIN_CONNECT = 3.0          # seconds to connect to the admin port
LABEL_SWARM_SERVICE = "com.docker.swarm.service.name"  # on a task's container (--swarm)
LABEL_SWARM_TASK = "com.docker.swarm.task.name"        # <service>.<slot>.<task id>
SWARM_GONE_LIMIT = 20.0      # seconds the task containers have to go once the service is removed
                             # (Swarm stops them: SIGTERM, 10 s of grace at most, then SIGKILL)
SWARM_GONE_POLL = 0.2        # seconds between looks while waiting for them
SWARM_CONVERGE_LIMIT = 20.0  # --changes --swarm: seconds after a change's answer for Swarm to stop
                             # the tasks it retired (nmc answers once they left its rotation)


class Interrupted(Exception):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) asked the run to stop."""


# -- small helpers --------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"chaos: {message}", file=sys.stderr, flush=True)


def port_is_free(port: int) -> bool:
    for address in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


def free_ports(count: int, avoid: set[int] = frozenset()) -> int:
    """The first of `count` consecutive free ports, at random (parallel runs rarely meet)."""
    pick = random.SystemRandom()
    for _ in range(500):
        base = pick.randrange(20000, 45000)
        ports = range(base, base + count)
        if not avoid.intersection(ports) and all(port_is_free(p) for p in ports):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), int(round(q / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception wrapped in requests' and urllib3's layers."""
    seen: set[int] = set()
    current = error
    while id(current) not in seen:
        seen.add(id(current))
        inner = next((a for a in getattr(current, "args", ()) if isinstance(a, BaseException)), None)
        inner = inner or getattr(current, "reason", None) or current.__cause__ or current.__context__
        if not isinstance(inner, BaseException):
            break
        current = inner
    return current


def failure_kind(error: BaseException) -> str:
    outer, inner = type(error).__name__, type(root_cause(error)).__name__
    return outer if inner == outer else f"{outer}({inner})"


def process_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a process, from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def machine_cpu() -> tuple[float, float] | None:
    """(busy, total) CPU seconds of the whole machine so far, from /proc/stat (None elsewhere)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(values[:8]) - idle) / tick, sum(values[:8]) / tick


def source_state() -> str:
    """The commit, and nmc's files changed since it (others may be editing them)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "nmc", "nmc_server.py"], cwd=ROOT,
                                 capture_output=True, text=True, timeout=5).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    files = [line[3:] for line in changed if line.strip()]
    return f"commit {head or '?'}" + (f", with uncommitted changes to {', '.join(files)}" if files else "")


def swarm_problem(client: docker.DockerClient) -> str | None:
    """Why --swarm cannot run on this engine (it is no swarm manager), or None."""
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") == "active" and swarm.get("ControlAvailable"):
        return None
    return (f"--swarm: this Docker engine is not a swarm manager (swarm state "
            f"{swarm.get('LocalNodeState') or 'unknown'}): run `docker swarm init --advertise-addr "
            "127.0.0.1` (a one-node swarm), or point DOCKER_HOST at a manager")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _die_with_parent() -> None:  # runs in the child between fork and exec
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: nmc stops if we are killed
    except Exception:
        pass


# -- nmc, the process under test ------------------------------------------------------------------


class Nmc:
    """./nmc_server.py in its own process group (a Ctrl-C reaches it only through us: one SIGTERM)."""

    def __init__(self, name: str, port: int, base_port: int | None, replicas: int, admin_port: int):
        """base_port None: --swarm (Swarm picks each task's published port)."""
        self.name, self.port, self.base_port, self.replicas = name, port, base_port, replicas
        self.admin_port = admin_port  # a free one: runs must not meet on the default 3100
        self.lines: list[tuple[float, str]] = []
        self.serving = threading.Event()
        self.exit_code: int | None = None
        self.stop_took: float | None = None
        self.killed = False
        where = ["--swarm"] if base_port is None else ["--base-port", str(base_port)]
        args = [sys.executable, str(ROOT / "nmc_server.py"), "--name", name, "--bind", "127.0.0.1",
                "--port", str(port), *where, "-n", str(replicas),
                "--admin-port", str(admin_port), "-q"]
        self.command = " ".join(["./nmc_server.py", *args[2:]])
        self.proc = subprocess.Popen(
            args, cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace", start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.started = time.monotonic()
        self.reader = threading.Thread(target=self._read, name="nmc-log", daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append((time.monotonic(), line))
            if "serving on http://" in line:
                self.serving.set()

    def wait_serving(self, limit: float) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if self.serving.wait(0.1):
                return True
            if self.proc.poll() is not None:
                self.reader.join(2)
                return self.serving.is_set()
        return False

    def stop(self) -> None:
        """SIGTERM (nmc drains and removes its replicas itself); SIGKILL when it takes too long."""
        if self.proc.poll() is None:
            began = time.monotonic()
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(STOP_LIMIT)
            except subprocess.TimeoutExpired:
                log(f"nmc did not exit within {STOP_LIMIT:g}s of SIGTERM: killing it")
                self.killed = True
                self.proc.kill()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            self.stop_took = time.monotonic() - began
        self.exit_code = self.proc.poll()
        self.reader.join(2)

    def tail(self, count: int = 15) -> str:
        return "\n".join(line for _, line in self.lines[-count:])


# -- the cluster's containers, through the Docker SDK ---------------------------------------------


def engine() -> docker.DockerClient:
    return docker.from_env(timeout=ENGINE_TIMEOUT)


def cluster_containers(client: docker.DockerClient, cluster: str) -> list[dict]:
    """The cluster's containers (any state) as the engine lists them: Id, Names, State, Labels."""
    return client.api.containers(all=True, filters={"label": f"{LABEL_CLUSTER}={cluster}"})


def container_name(summary: dict) -> str:
    return (summary.get("Names") or ["/?"])[0].lstrip("/")


def task_slot(summary: dict, cluster: str) -> int | None:
    """--swarm: the slot of a task container of the service `cluster` (from its task name
    <service>.<slot>.<task id>, else from its container name, which is the same), or None."""
    labels = summary.get("Labels") or {}
    if labels.get(LABEL_SWARM_SERVICE) != cluster:
        return None
    task = labels.get(LABEL_SWARM_TASK) or container_name(summary)
    service, _, rest = task.partition(".")
    slot = rest.partition(".")[0]
    return int(slot) if service == cluster and slot.isdigit() else None


def published_port(client: docker.DockerClient, summary: dict) -> int | None:
    """--swarm: the host port a task container publishes (ephemeral, host mode): from the engine's
    listing, else from the container itself (`docker port`); IPv4's first."""
    ports = [p for p in summary.get("Ports") or () if p.get("PublicPort") and p.get("Type", "tcp") == "tcp"]
    if not ports:
        bindings = (client.api.inspect_container(summary["Id"]).get("NetworkSettings") or {}).get("Ports") or {}
        ports = [{"IP": b.get("HostIp", ""), "PublicPort": int(b["HostPort"])}
                 for key, found in bindings.items() if key.endswith("/tcp") and found
                 for b in found if b.get("HostPort")]
    ports.sort(key=lambda p: ":" in p.get("IP", ""))  # IPv4 first
    return int(ports[0]["PublicPort"]) if ports else None


def remove_service(client: docker.DockerClient, cluster: str) -> str:
    """--swarm: remove the service `cluster` if it is still there (nmc left it): what was done,
    "" when it was gone."""
    try:
        service = client.api.inspect_service(cluster)
    except docker.errors.NotFound:
        return ""
    if (service.get("Spec", {}).get("Labels") or {}).get(LABEL_CLUSTER) != cluster:  # belt and braces
        return f"left alone: it has no label {LABEL_CLUSTER}={cluster}"
    try:
        client.api.remove_service(service["ID"])
    except docker.errors.NotFound:
        pass
    return "removed by chaos.py"


def remove_cluster(client: docker.DockerClient, cluster: str) -> list[str]:
    """Force-remove every container labelled with `cluster`; their names and states."""
    removed = []
    for summary in cluster_containers(client, cluster):
        if summary.get("Labels", {}).get(LABEL_CLUSTER) != cluster:  # belt and braces
            continue
        removed.append(f"{container_name(summary)} ({summary['Id'][:12]}, {summary.get('State')})")
        try:
            client.api.remove_container(summary["Id"], force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError:
            try:  # a paused container that would not go: unpause, then again
                client.api.unpause(summary["Id"])
                client.api.remove_container(summary["Id"], force=True)
            except docker.errors.APIError as e:
                log(f"could not remove {container_name(summary)}: {e}")
    return removed


# -- the load -------------------------------------------------------------------------------------


@dataclass
class Failure:
    start: float      # seconds since the load began
    end: float
    method: str
    kind: str
    detail: str
    request_id: str


@dataclass
class ClientStats:
    sent: Counter = field(default_factory=Counter)
    ok: Counter = field(default_factory=Counter)
    failed: Counter = field(default_factory=Counter)        # (method, kind) -> count
    examples: dict = field(default_factory=dict)            # (method, kind) -> [Failure]
    latency: dict = field(default_factory=lambda: {m: [] for m in METHODS})
    per_second: Counter = field(default_factory=Counter)    # (second, "ok" | "failed") -> count
    ok_ends: list = field(default_factory=list)             # when each good answer was read
    failures: list = field(default_factory=list)            # (end, method, kind) of every failure
    slowest: list = field(default_factory=list)             # heap of (latency, start, method, outcome)
    phase_sent: Counter = field(default_factory=Counter)    # (phase sent in, method) -> count (--changes)
    phase_failed: Counter = field(default_factory=Counter)  # (phase failed in, method, kind) -> count
    phase_latency: dict = field(default_factory=dict)       # phase sent in -> [seconds]
    left_running: bool = False


class Load:
    def __init__(self, url: str, clients: int, seed: int, timeout: float):
        self.url, self.clients, self.seed, self.timeout = url, clients, seed, timeout
        body_rng = random.Random(f"{seed}-bodies")
        alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
        self.bodies = [bytes(body_rng.choice(alphabet) for _ in range(BODY_SIZE)) for _ in range(4)]
        self.digests = [hashlib.sha256(b).hexdigest() for b in self.bodies]
        self.stop = threading.Event()
        self.stats = [ClientStats() for _ in range(clients)]
        self.threads = [threading.Thread(target=self._client, args=(i,), name=f"client-{i}", daemon=True)
                        for i in range(clients)]
        self.began = 0.0
        self.began_wall: datetime | None = None
        self.end = 0.0
        self.stopped: float | None = None
        self.phase: int | None = None   # --changes: the phase a request is sent in (set by main)

    def start(self, duration: float) -> None:
        self.began = time.monotonic()
        self.began_wall = datetime.now(timezone.utc)
        self.end = self.began + duration
        for thread in self.threads:
            thread.start()

    def halt(self) -> None:
        """No new request from now on (those in flight finish)."""
        if self.stopped is None:
            self.stopped = time.monotonic()
        self.stop.set()

    def finished(self) -> float:
        """When the load ended (or now, while it runs)."""
        return min(time.monotonic(), self.end, self.stopped or self.end)

    def join(self, deadline: float) -> None:
        self.halt()
        for index, thread in enumerate(self.threads):
            thread.join(max(0.0, deadline - time.monotonic()))
            self.stats[index].left_running = thread.is_alive()

    def _client(self, index: int) -> None:
        stats = self.stats[index]
        rng = random.Random(f"{self.seed}-client-{index}")
        methods = [m for m, weight in MIX for _ in range(weight)]
        session = requests.Session()
        session.trust_env = False
        limit = int((self.end - self.began) * MAX_RATE) + 1  # bounded in count, not only in time
        try:
            for number in range(limit):
                if self.stop.is_set() or time.monotonic() >= self.end:
                    break
                method = rng.choice(methods)
                self._one(session, stats, method, rng.randrange(len(self.bodies)), f"chaos-{index}-{number}")
        finally:
            session.close()

    def _one(self, session: requests.Session, stats: ClientStats, method: str, which: int,
             request_id: str) -> None:
        headers = {"X-Request-ID": request_id}
        body = None
        if method == "GET":
            url = self.url + "/whoami"
        else:
            url = self.url + "/echo"
            body = self.bodies[which]
            headers["Content-Type"] = "application/octet-stream"
        stats.sent[method] += 1
        phase = self.phase
        started = time.monotonic()
        kind = detail = None
        served_by = "-"
        try:
            response = session.request(method, url, data=body, headers=headers,
                                       timeout=(self.timeout, self.timeout), allow_redirects=False)
            served_by = response.headers.get("X-Served-By", "nmc itself")
            if not 200 <= response.status_code < 300:
                kind = f"HTTP {response.status_code}"
                detail = repr(response.text.strip()[:160])
                if response.headers.get("X-Served-By"):  # a replica's own answer, not nmc's
                    detail += f" (X-Served-By: {response.headers['X-Served-By']})"
            else:
                problem = self._check(method, which, response)
                if problem:
                    kind, detail = "wrong answer", problem
        except requests.exceptions.RequestException as e:
            kind, detail = failure_kind(e), str(e)[:240]
        ended = time.monotonic()
        stats.latency[method].append(ended - started)
        if phase is not None:
            stats.phase_sent[phase, method] += 1
            stats.phase_latency.setdefault(phase, []).append(ended - started)
            if kind is not None:  # in the phase it failed in: its change is the likely cause
                stats.phase_failed[self.phase, method, kind] += 1
        entry = (ended - started, started - self.began, method, kind or "ok", served_by)
        if len(stats.slowest) < SLOWEST:
            heapq.heappush(stats.slowest, entry)
        elif entry > stats.slowest[0]:
            heapq.heapreplace(stats.slowest, entry)
        second = int(started - self.began)
        if kind is None:
            stats.ok[method] += 1
            stats.per_second[second, "ok"] += 1
            stats.ok_ends.append(ended - self.began)
            return
        stats.per_second[second, "failed"] += 1
        stats.failures.append((ended - self.began, method, kind))
        stats.failed[method, kind] += 1
        examples = stats.examples.setdefault((method, kind), [])
        if len(examples) < EXAMPLES:
            examples.append(Failure(started - self.began, ended - self.began, method, kind, detail,
                                    request_id))

    def _check(self, method: str, which: int, response: requests.Response) -> str | None:
        """What is wrong with a 2xx answer, or None."""
        try:
            answer = response.json()
        except ValueError:
            return f"not JSON: {response.text[:80]!r}"
        if answer.get("method") != method:
            return f"answer for method {answer.get('method')!r}"
        if method == "GET":
            return None if answer.get("url") == "/whoami" else f"answer for {answer.get('url')!r}"
        if answer.get("bodyLength") != BODY_SIZE or answer.get("bodySha256") != self.digests[which]:
            return (f"echoed {answer.get('bodyLength')} bytes, sha256 {str(answer.get('bodySha256'))[:12]}"
                    f" (sent {BODY_SIZE}, {self.digests[which][:12]})")
        return None


# -- the chaos ------------------------------------------------------------------------------------


@dataclass
class Action:
    at: float           # seconds after the load began
    what: str           # kill, pause, unpause, crash
    port: int           # the replica preferred by the schedule
    number: int = 0
    # filled in when it runs
    ran_at: float | None = None
    name: str = ""
    container: str = ""
    outcome: str = ""
    call_took: float | None = None
    measure: "Replacement | None" = None


class Replacement(threading.Thread):
    """Measures the time from an action until a new container with the same name is running
    and answers /healthz on its port. Polls every POLL seconds, for REPLACE_LIMIT at most.
    --swarm (`slot` given): a new task container of the same slot of the service `cluster`,
    and its own published port (Swarm names it after the new task and picks a new port)."""

    def __init__(self, name: str, port: int, old_id: str, since: float, stop: threading.Event,
                 slot: int | None = None, cluster: str = ""):
        super().__init__(name=f"measure-{name}", daemon=True)
        self.replica, self.port, self.old_id, self.since, self.halt = name, port, old_id, since, stop
        self.slot, self.cluster = slot, cluster
        self.superseded = ""  # swarm: a later action hit the same container before it was replaced
        self.running_after: float | None = None
        self.healthy_after: float | None = None
        self.new_id = ""
        self.error = ""

    def run(self) -> None:
        client = session = None
        try:
            client = engine()
            session = requests.Session()
            session.trust_env = False
            deadline = self.since + REPLACE_LIMIT
            for _ in range(int(REPLACE_LIMIT / POLL) + 1):
                if time.monotonic() >= deadline or self.halt.is_set() or self.superseded:
                    break
                if self._poll(client, session):
                    return
                time.sleep(POLL)
            waited = time.monotonic() - self.since
            if self.superseded:
                self.running_after = None
                self.error = f"not replaced before {self.superseded} hit the same container"
                return
            self.error = (f"not replaced when the run ended ({waited:.1f}s after)" if self.halt.is_set()
                          else f"not replaced within {min(REPLACE_LIMIT, waited):.1f}s")
        except Exception as e:  # a measurement must never take the run down
            self.error = f"measurement failed: {type(e).__name__}: {e}"
        finally:
            if session is not None:
                session.close()
            if client is not None:
                client.close()

    def _poll(self, client: docker.DockerClient, session: requests.Session) -> bool:
        if self.slot is not None:
            return self._poll_task(client, session)
        try:
            state = client.api.inspect_container(self.replica)
        except docker.errors.NotFound:
            return False
        running = (state.get("State") or {}).get("Status") == "running"
        if state["Id"] == self.old_id or not running:
            return False
        if self.running_after is None or state["Id"] != self.new_id:
            self.new_id = state["Id"]
            self.running_after = time.monotonic() - self.since
        return self._healthy(session)

    def _poll_task(self, client: docker.DockerClient, session: requests.Session) -> bool:
        new = [c for c in client.api.containers(filters={"label": f"{LABEL_CLUSTER}={self.cluster}",
                                                         "status": "running"})
               if c["Id"] != self.old_id and task_slot(c, self.cluster) == self.slot]
        if not new:
            return False
        if self.running_after is None or all(c["Id"] != self.new_id for c in new):
            self.new_id = new[0]["Id"]
            self.running_after = time.monotonic() - self.since
            self.port = 0
        if not self.port:
            self.port = published_port(client, next(c for c in new if c["Id"] == self.new_id)) or 0
            if not self.port:
                return False
        return self._healthy(session)

    def _healthy(self, session: requests.Session) -> bool:
        try:
            answer = session.get(f"http://127.0.0.1:{self.port}/healthz", timeout=0.5)
        except requests.exceptions.RequestException:
            return False
        if answer.status_code != 200:
            return False
        self.healthy_after = time.monotonic() - self.since
        return True


def task_slot_of_name(replica: str, cluster: str) -> int | None:
    """--swarm: the slot of a replica named <cluster>.<slot>."""
    slot = replica[len(cluster) + 1:] if replica.startswith(cluster + ".") else ""
    return int(slot) if slot.isdigit() else None


def make_schedule(seed: int, duration: float, every: float, ports: list[int]) -> list[Action]:
    """Kills every `every` seconds, one pause (then its unpause) and one crash, half-way between
    two kills; which replica each one prefers comes from the seed."""
    rng = random.Random(seed)
    actions = []
    at = every
    while at < duration - 0.5:
        actions.append(Action(at, "kill", rng.choice(ports)))
        at += every
    pause_at = every * max(1, round(0.3 * duration / every)) + every / 2
    crash_at = every * max(1, round(0.6 * duration / every)) + every / 2
    pause_port, crash_port = rng.choice(ports), rng.choice(ports)
    if pause_at < duration - 0.5:
        actions.append(Action(pause_at, "pause", pause_port))
        actions.append(Action(pause_at + PAUSE_FOR, "unpause", pause_port))
    if crash_at < duration - 0.5:
        actions.append(Action(crash_at, "crash", crash_port))
    actions.sort(key=lambda a: a.at)
    counts: Counter = Counter()
    for action in actions:
        counts[action.what] += 1
        action.number = counts[action.what]
    return actions


class Chaos:
    """ports: the replicas' ports (one host), or with swarm the service's slots; an action's
    `port` is one of them."""

    def __init__(self, client: docker.DockerClient, cluster: str, ports: list[int], load: Load,
                 swarm: bool = False):
        self.client, self.cluster, self.ports, self.load = client, cluster, ports, load
        self.swarm = swarm
        self.halt = threading.Event()          # stops the measurements
        self.paused: Action | None = None
        self.measures: list[Replacement] = []

    def running(self) -> dict[int, dict]:
        """port (swarm: slot) -> summary of the running container serving it."""
        by_port = {}
        for summary in cluster_containers(self.client, self.cluster):
            if summary.get("State") != "running":
                continue
            if self.swarm:
                slot = task_slot(summary, self.cluster)
                if slot is not None:
                    by_port[slot] = summary
                continue
            try:
                by_port[int(summary.get("Labels", {}).get(LABEL_PORT, ""))] = summary
            except ValueError:
                pass
        return by_port

    def victim_port(self, action: Action, victim: dict) -> int:
        """Names the action's replica and container; the victim's port (swarm: published)."""
        action.container = victim["Id"][:12]
        if not self.swarm:
            action.name = container_name(victim)
            return int(victim["Labels"][LABEL_PORT])  # the replica's published port, as nmc labels it
        action.name = f"{self.cluster}.{task_slot(victim, self.cluster)}"
        for measure in self.measures:  # its replacement, if any now, is this action's
            if measure.old_id == victim["Id"] and measure.is_alive():
                measure.superseded = f"{action.what} #{action.number} ({time.monotonic() - self.load.began:.1f} s)"
        return published_port(self.client, victim) or 0

    def target(self, action: Action) -> dict | None:
        """The running container of the preferred replica, else of the next one in port order."""
        running = self.running()
        start = self.ports.index(action.port)
        for step in range(len(self.ports)):
            port = self.ports[(start + step) % len(self.ports)]
            if port in running:
                if step:
                    action.outcome = (f"(preferred {'slot' if self.swarm else 'port'} {action.port} "
                                      "had no running container) ")
                return running[port]
        return None

    def run(self, action: Action) -> None:
        action.ran_at = time.monotonic() - self.load.began
        try:
            getattr(self, "_" + action.what)(action)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            action.outcome += f"failed: {type(e).__name__}: {str(e)[:160]}"
        log(f"t={action.ran_at:5.1f}s {action.what} #{action.number} {action.name or '-'}: {action.outcome}")

    def _measure(self, action: Action, port: int, old_id: str, since: float) -> None:
        slot = task_slot_of_name(action.name, self.cluster) if self.swarm else None
        action.measure = Replacement(action.name, port, old_id, since, self.halt, slot, self.cluster)
        self.measures.append(action.measure)
        action.measure.start()

    def _kill(self, action: Action) -> None:
        victim = self.target(action)
        if victim is None:
            action.outcome += "skipped: no replica is running"
            return
        port = self.victim_port(action, victim)
        began = time.monotonic()
        self.client.api.kill(victim["Id"])  # SIGKILL
        action.call_took = time.monotonic() - began
        action.outcome += "killed (SIGKILL)"
        self._measure(action, port, victim["Id"], began)

    def _pause(self, action: Action) -> None:
        victim = self.target(action)
        if victim is None:
            action.outcome += "skipped: no replica is running"
            return
        port = self.victim_port(action, victim)
        began = time.monotonic()
        self.client.api.pause(victim["Id"])
        action.call_took = time.monotonic() - began
        action.outcome += "paused"
        self.paused = action
        self._measure(action, port, victim["Id"], began)

    def _unpause(self, action: Action) -> None:
        paused = self.paused
        if paused is None or not paused.container:
            action.outcome = "nothing to unpause (the pause was skipped)"
            return
        action.name, action.container = paused.name, paused.container
        try:
            state = self.client.api.inspect_container(paused.container)
        except docker.errors.NotFound:
            action.outcome = "not needed: nmc had already removed the paused container"
            return
        status = (state.get("State") or {}).get("Status")
        if status == "paused":
            self.client.api.unpause(paused.container)
            action.outcome = "unpaused: it was still there and paused after 3 s"
        else:
            action.outcome = f"not needed: the paused container is now {status}"

    def _crash(self, action: Action) -> None:
        victim = self.target(action)
        if victim is None:
            action.outcome += "skipped: no replica is running"
            return
        port = self.victim_port(action, victim)
        began = time.monotonic()
        try:
            answer = requests.get(f"http://127.0.0.1:{port}/crash", timeout=5)
            action.outcome += f"GET 127.0.0.1:{port}/crash answered {answer.status_code} {answer.text.strip()!r}"
        except requests.exceptions.RequestException as e:
            action.outcome += f"GET 127.0.0.1:{port}/crash failed: {failure_kind(e)}"
        action.call_took = time.monotonic() - began
        self._measure(action, port, victim["Id"], began)

    def join(self, deadline: float) -> None:
        for measure in self.measures:
            measure.join(max(0.0, deadline - time.monotonic()))
        self.halt.set()
        for measure in self.measures:
            measure.join(0.5)
            if measure.is_alive() and not measure.error:
                measure.error = "measurement still running at the end of the run"


# -- the live changes (--changes) -----------------------------------------------------------------


@dataclass
class Change:
    """One phase of --changes: its call to the admin API (none for the steady phase), and what
    it should leave: `replicas` running replicas, all of `image`."""
    title: str
    path: str = ""
    body: dict = field(default_factory=dict)
    replicas: int = 0
    image: str = ""
    # filled in when it runs; t = seconds since the load began
    started: float | None = None
    answered: float | None = None
    ended: float | None = None      # when the next phase began, or the load ended
    status: int | None = None
    message: str = ""
    error: str = ""
    before: list = field(default_factory=list)   # [(name, container id, image id)], running ones
    after: list = field(default_factory=list)
    check: str = ""                 # what differs from what it should leave; "" when nothing
    converged: float | None = None  # --swarm: when the replicas were as expected (t), if after the answer

    @property
    def took(self) -> float | None:
        return None if self.started is None or self.answered is None else self.answered - self.started

    @property
    def call(self) -> str:
        return f"POST {self.path} {json.dumps(self.body)}" if self.path else "no call"


def changes_sequence(derived: str) -> list[Change]:
    """Phase 0 is the steady load before the first change; the rest are the fixed changes."""
    return [
        Change("steady load, no change", replicas=2, image=SITE_IMAGE),
        Change("scale 2 → 6", "/scale", {"replicas": 6}, 6, SITE_IMAGE),
        Change("scale 6 → 1", "/scale", {"replicas": 1}, 1, SITE_IMAGE),
        Change("scale 1 → 2", "/scale", {"replicas": 2}, 2, SITE_IMAGE),
        Change(f"rollout to {derived}", "/rollout", {"image": derived}, 2, derived),
        Change(f"rollout back to {SITE_IMAGE}, max_surge 2", "/rollout",
               {"image": SITE_IMAGE, "max_surge": 2}, 2, SITE_IMAGE),
    ]


def short_id(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def build_derived(client: docker.DockerClient, cluster: str) -> tuple[str, str]:
    """A second image to roll out: the site's image plus one label (a new image id, no new
    layer, no registry); its tag and id. The label names the run, so no cache of another run's
    build is reused and remove_derived finds it again even untagged."""
    tag = f"{cluster}:changes"
    dockerfile = f"FROM {SITE_IMAGE}\nLABEL {LABEL_CHAOS}={cluster}\n".encode()
    image, _ = client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True, forcerm=True,
                                   pull=False, timeout=120)
    return tag, image.id


def remove_derived(client: docker.DockerClient, cluster: str) -> list[str]:
    """Remove the image(s) built by this run (labelled nmc.chaos=<cluster>); what was removed."""
    removed = []
    for image in client.images.list(all=True, filters={"label": f"{LABEL_CHAOS}={cluster}"}):
        if image.labels.get(LABEL_CHAOS) != cluster:  # belt and braces
            continue
        client.images.remove(image.id, force=True)  # force: untag all of its (our) tags
        removed.append(f"{', '.join(image.tags) or 'untagged'} ({short_id(image.id)})")
    return removed


class Changes:
    """Sends the changes to nmc's admin port, one at a time, and looks at the replicas around each."""

    def __init__(self, client: docker.DockerClient, cluster: str, admin_url: str, image_ids: dict):
        self.client, self.cluster, self.admin_url, self.image_ids = client, cluster, admin_url, image_ids
        self.session = requests.Session()
        self.session.trust_env = False

    def replicas(self) -> list[tuple[str, str, str]]:
        """(name, container id, image id) of the cluster's running containers, by name."""
        return sorted((container_name(c), c["Id"][:12], short_id(c.get("ImageID", "")))
                      for c in cluster_containers(self.client, self.cluster) if c.get("State") == "running")

    def call(self, change: Change, limit: float) -> None:
        """The change's POST; it answers when the change is done (or failed)."""
        try:
            answer = self.session.post(self.admin_url + change.path, json=change.body,
                                       timeout=(ADMIN_CONNECT, limit))
        except requests.exceptions.RequestException as e:
            change.error = f"{failure_kind(e)}: {str(e)[:200]}"
            return
        change.status = answer.status_code
        try:
            data = answer.json()
        except ValueError:
            data = {"error": f"not JSON: {answer.text[:160]!r}"}
        if answer.status_code == 200 and isinstance(data, dict) and "message" in data:
            change.message = str(data["message"])
        else:
            change.error = f"HTTP {answer.status_code}: {data.get('error') if isinstance(data, dict) else data}"

    def check(self, change: Change) -> str:
        want = short_id(self.image_ids[change.image])
        found = Counter(image for _, _, image in change.after)
        if len(change.after) == change.replicas and set(found) == {want}:
            return ""
        return (f"expected {change.replicas} replica(s) of {change.image} ({want}), found "
                f"{describe_replicas(change.after)}")

    def converge(self, change: Change, began: float) -> None:
        """--swarm: nmc answers a change once its rotation is as asked; Swarm stops the tasks it
        retired (a scale-down, an update's old tasks) a moment later: wait for the replicas to be
        as expected, SWARM_CONVERGE_LIMIT seconds at most (what is left then fails the check)."""
        deadline = time.monotonic() + SWARM_CONVERGE_LIMIT
        for _ in range(int(SWARM_CONVERGE_LIMIT / SWARM_GONE_POLL) + 1):
            if time.monotonic() >= deadline:
                break
            time.sleep(SWARM_GONE_POLL)
            change.after = self.replicas()
            change.check = self.check(change)
            if not change.check:
                change.converged = time.monotonic() - began
                return
        change.check += f" (still, {SWARM_CONVERGE_LIMIT:g} s after the answer)"

    def close(self) -> None:
        self.session.close()


def describe_replicas(replicas: list) -> str:
    """'2 × e1b2332aa912' (or '1 × a…, 1 × b…'; 'none')."""
    found = Counter(image for _, _, image in replicas)
    return ", ".join(f"{n} × {image}" for image, n in sorted(found.items())) or "none"


# -- the report -----------------------------------------------------------------------------------


@dataclass
class Run:
    args: argparse.Namespace
    cluster: str = ""
    seed: int = 0
    began_wall: datetime = field(default_factory=lambda: datetime.now(timezone.utc))
    began: float = field(default_factory=time.monotonic)
    nmc: Nmc | None = None
    load: Load | None = None
    chaos: Chaos | None = None
    actions: list[Action] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)   # --changes: the phases
    changer: Changes | None = None
    derived: str = ""                                      # --changes: the second image's tag ...
    image_ids: dict = field(default_factory=dict)          # ... and image name -> id
    images_removed: list[str] = field(default_factory=list)
    image_error: str = ""
    phases: dict = field(default_factory=dict)
    cpu: dict = field(default_factory=dict)
    source: str = ""
    leaked: list[str] = field(default_factory=list)
    leak_checked: bool = False
    service_left: str = ""                                 # --swarm: nmc left its service: what was done
    interrupted: str = ""
    error: str = ""


@dataclass
class Totals:
    sent: Counter
    ok: Counter
    failed: Counter
    examples: dict
    latency: dict
    per_second: Counter
    ok_ends: list
    failures: list
    slowest: list


def merged(load: Load) -> Totals:
    totals = Totals(Counter(), Counter(), Counter(), {}, {m: [] for m in METHODS}, Counter(), [], [], [])
    for stats in load.stats:
        totals.sent.update(stats.sent)
        totals.ok.update(stats.ok)
        totals.failed.update(stats.failed)
        totals.per_second.update(stats.per_second)
        totals.ok_ends.extend(stats.ok_ends)
        totals.failures.extend(stats.failures)
        totals.slowest.extend(stats.slowest)
        for key, items in stats.examples.items():
            totals.examples.setdefault(key, []).extend(items)
        for method in METHODS:
            totals.latency[method].extend(stats.latency[method])
    for key in totals.examples:
        totals.examples[key] = sorted(totals.examples[key], key=lambda f: f.start)[:EXAMPLES]
    totals.slowest = sorted(totals.slowest, reverse=True)[:SLOWEST]
    totals.ok_ends.sort()
    totals.failures.sort()
    return totals


def longest_gap(ends: list[float], until: float) -> tuple[float, float]:
    """The longest time without a good answer (start, length), from the load's start to `until`."""
    best, previous = (0.0, 0.0), 0.0
    for end in [*ends, until]:
        if end - previous > best[1]:
            best = (previous, end - previous)
        previous = max(previous, end)
    return best


def failures_after(run: Run, totals: Totals) -> dict[int, Counter]:
    """Each failure counted against the last chaos action that ran before it ended."""
    done = sorted((a.ran_at, index) for index, a in enumerate(run.actions)
                  if a.ran_at is not None and a.what != "unpause")
    counts: dict[int, Counter] = {}
    for end, method, kind in totals.failures:
        last = None
        for ran_at, index in done:
            if ran_at > end:
                break
            last = index
        if last is not None:
            counts.setdefault(last, Counter())[f"{method} {kind}"] += 1
    return counts


def phase_at(run: Run, at: float) -> str:
    """Which phase of --changes a moment (t) falls in."""
    for index, change in enumerate(run.changes):
        if change.started is not None and change.started <= at and (change.ended is None or at < change.ended):
            return f"phase {index} ({change.title}) +{at - change.started:.2f}s"
    return "outside every phase"


def moment(run: Run, end: float) -> str:
    """A request in context: the phase (--changes) or the last chaos action before it ended."""
    return phase_at(run, end) if run.args.changes else last_action_before(run.actions, end)


def last_action_before(actions: list[Action], at: float) -> str:
    done = [a for a in actions if a.ran_at is not None and a.ran_at <= at and a.name]
    if not done:
        return "before any chaos"
    last = max(done, key=lambda a: a.ran_at)
    return f"{at - last.ran_at:.2f}s after {last.what} #{last.number} of {last.name}"


def verdict(run: Run) -> tuple[int, list[str]]:
    reasons = []
    if run.error:
        reasons.append(run.error)
    if run.interrupted:
        reasons.append(f"interrupted ({run.interrupted})")
    if run.load is not None:
        failed = merged(run.load).failed
        for method in ("GET", "PUT"):
            count = sum(n for (m, _), n in failed.items() if m == method)
            if count:
                reasons.append(f"{count} {method} failure(s)")
        wrong = sum(n for (m, k), n in failed.items() if m == "POST" and k == "wrong answer")
        if wrong:
            reasons.append(f"{wrong} wrong POST answer(s)")
    if run.leaked:
        reasons.append(f"{len(run.leaked)} leaked container(s)")
    if run.service_left:
        reasons.append(f"the swarm service {run.cluster} was left ({run.service_left})")
    if not run.leak_checked:
        reasons.append("could not check for leaked containers")
    if run.args.changes and not run.error and not run.interrupted:
        for index, change in enumerate(run.changes):
            if change.error or change.check:
                reasons.append(f"phase {index} ({change.title}): {change.error or change.check}")
            elif change.started is None:
                reasons.append(f"phase {index} ({change.title}) did not run")
    if run.image_error:
        reasons.append(run.image_error)
    if run.interrupted:
        return 130, reasons
    return (1 if reasons else 0), reasons


def report(run: Run) -> str:
    code, reasons = verdict(run)
    out = []
    add = out.append
    took = time.monotonic() - run.began
    args = run.args
    mode = ""
    if args.swarm:
        mode = f" on a swarm (--swarm{', --changes' if args.changes else ''})"
    add(f"# nmc chaos run{mode} {run.began_wall:%Y-%m-%d %H:%M:%S} UTC")
    add("")
    add(f"**{'PASS' if code == 0 else 'FAIL'}**" + (f": {'; '.join(reasons)}" if reasons else
        ": GET and PUT had no failure, every answer was right, nothing leaked"
        + (", every change was made" if args.changes else "")))
    add("")
    swarm = " --swarm" if args.swarm else ""
    if args.swarm:
        add(f"- mode: **swarm**: the replicas are the tasks of the Docker Swarm service `{run.cluster}` "
            "(one per slot, replica `<service>.<slot>`, container `<service>.<slot>.<task id>`, an "
            "ephemeral published port each); Swarm replaces a dead task itself")
    if args.changes:
        add(f"- cluster `{run.cluster}`: live changes through the admin API (scale 2 → 6 → 1 → 2, "
            f"rollout to `{run.derived or '?'}` and back to `{SITE_IMAGE}` with max_surge 2) under "
            f"{args.clients} clients, seed {run.seed} (repeat: `make chaos CHAOS_ARGS=\"--changes{swarm} "
            f"--seed {run.seed}" + (f" --clients {args.clients}" if args.clients != 32 else "") + "\"`)")
    else:
        add(f"- cluster `{run.cluster}`: {args.replicas} replicas, {args.clients} clients, "
            f"{args.duration:g} s of load, a kill every {args.kill_every:g} s, seed {run.seed} "
            f"(repeat: `make chaos CHAOS_ARGS=\"{'--swarm ' if args.swarm else ''}--seed {run.seed}"
            + (f" --replicas {args.replicas}" if args.replicas != 3 else "")
            + (f" --duration {args.duration:g}" if args.duration != 30 else "")
            + (f" --clients {args.clients}" if args.clients != 32 else "") + "\"`)")
    if run.nmc is not None:
        add(f"- nmc: `{run.nmc.command}` ({run.source})")
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in run.phases.items())
    add(f"- took {took:.1f} s ({phases})")
    if run.nmc is not None and run.nmc.exit_code is not None:
        add(f"- nmc exited with code {run.nmc.exit_code} after SIGTERM "
            f"(in {run.nmc.stop_took or 0:.1f} s{', after a SIGKILL' if run.nmc.killed else ''})")
    add(f"- **leaked containers: {len(run.leaked) if run.leak_checked else 'unknown'}**"
        + (f" ({', '.join(run.leaked)}; removed)" if run.leaked else ""))
    if args.swarm:
        gone = run.phases.get("task containers gone")
        add("- swarm service: " + (f"**left after nmc exited ({run.service_left})**" if run.service_left else
                                   "gone when nmc exited" if run.leak_checked else "**unknown**")
            + (f"; its task containers gone {gone:.1f} s after nmc exited" if gone is not None
               and not run.leaked else ""))
    if args.changes:
        add(f"- image built for the rollout: removed {', '.join(run.images_removed) or 'nothing'}"
            + (f"; {run.image_error}" if run.image_error else ""))

    load = run.load
    if load is not None and load.began:
        totals = merged(load)
        sent, ok, failed, examples, latency = (totals.sent, totals.ok, totals.failed, totals.examples,
                                               totals.latency)
        duration = max(1e-9, load.finished() - load.began)
        total = sum(sent.values())
        add("")
        add("## Requests")
        add("")
        add("| method | sent | ok | failed | p50 | p99 | max |")
        add("|---|---:|---:|---:|---:|---:|---:|")
        everything = []
        for method in METHODS:
            values = sorted(latency[method])
            everything.extend(values)
            n_failed = sum(n for (m, _), n in failed.items() if m == method)
            label = {"GET": "GET /whoami", "POST": "POST /echo (4 KiB)", "PUT": "PUT /echo (4 KiB)"}[method]
            add(f"| {label} | {sent[method]} | {ok[method]} | {n_failed} | {ms(percentile(values, 50))} "
                f"| {ms(percentile(values, 99))} | {ms(values[-1] if values else None)} |")
        everything.sort()
        add(f"| **all** | {total} | {sum(ok.values())} | {sum(failed.values())} "
            f"| {ms(percentile(everything, 50))} | {ms(percentile(everything, 99))} "
            f"| {ms(everything[-1] if everything else None)} |")
        add("")
        add(f"{total / duration:.0f} requests/s. Latency is per request, from sending to the whole "
            "answer read, failed ones included.")
        gap_start, gap = longest_gap(totals.ok_ends, duration)
        add(f"Longest time without any good answer: {ms(gap)} (from t={gap_start:.2f}s).")
        if totals.slowest:
            add("Slowest: " + "; ".join(
                f"{method} {ms(latency)} at t={start:.2f}s ({outcome}, answered by {served_by}, "
                f"{moment(run, start)})"
                for latency, start, method, outcome, served_by in totals.slowest) + ".")
        if run.cpu:
            add(f"CPU during the load: this load generator {run.cpu['client']:.0%} of one core "
                f"(Python threads share one: at most ~100%), nmc {run.cpu.get('nmc', 0):.0%} "
                f"of one core (one gevent process: at most 100%)"
                + (f"; the whole machine {run.cpu['machine']:.0%} busy ({os.cpu_count()} cores)."
                   if "machine" in run.cpu else "."))
        stuck = sum(1 for s in load.stats if s.left_running)
        if stuck:
            add(f"{stuck} client(s) were still in a request when the run ended (abandoned).")

        add("")
        add("## Failures")
        add("")
        if not failed:
            add("None.")
        else:
            add("| method | kind | count |")
            add("|---|---|---:|")
            for (method, kind), count in sorted(failed.items(), key=lambda kv: (METHODS.index(kv[0][0]), -kv[1])):
                add(f"| {method} | {kind} | {count} |")
            add("")
            add("First examples (t = seconds since the load began; the request id is in nmc's answer):")
            add("")
            for (method, kind) in sorted(failed, key=lambda k: (METHODS.index(k[0]), -failed[k])):
                for f in examples.get((method, kind), []):
                    add(f"- {method} {kind}, t={f.start:.2f}-{f.end:.2f}s, {f.request_id}, "
                        f"{moment(run, f.end)}: {f.detail}")

    if args.changes:
        report_changes(run, add)
    else:
        report_chaos(run, add)

    if load is not None and load.began:
        per_second = merged(load).per_second
        seconds = sorted({s for s, _ in per_second})
        if seconds:
            add("")
            add("## Timeline")
            add("")
            add(f"| second | ok | failed | {'change' if args.changes else 'chaos'} |")
            add("|---:|---:|---:|---|")
            for second in seconds:
                add(f"| {second} | {per_second[second, 'ok']} | {per_second[second, 'failed']} "
                    f"| {events_in(run, second)} |")

    if run.nmc is not None and run.nmc.lines:
        add("")
        add("## nmc's log")
        add("")
        add("```")
        for _at, line in run.nmc.lines[:400]:
            add(line)
        if len(run.nmc.lines) > 400:
            add(f"... {len(run.nmc.lines) - 400} more lines")
        add("```")
    return "\n".join(out) + "\n"


def events_in(run: Run, second: int) -> str:
    """What was done during one second of the load, for the timeline."""
    if run.args.changes:
        events = []
        for index, change in enumerate(run.changes[1:], 1):
            if change.started is not None and int(change.started) == second:
                events.append(f"{index}. {change.title}: sent")
            if change.answered is not None and int(change.answered) == second:
                events.append(f"{index}. answered" + (" (error)" if change.error else ""))
        return ", ".join(events)
    return ", ".join(f"{a.what} {a.name.rsplit('.' if run.args.swarm else '-', 1)[-1]}" for a in run.actions
                     if a.ran_at is not None and int(a.ran_at) == second and a.name)


def report_changes(run: Run, add) -> None:
    add("")
    add("## Live changes, phase by phase")
    add("")
    add("A phase lasts from its call to the admin port until the next call (sent "
        f"{SETTLE:g} s after the answer{', or after Swarm had stopped what it retired' if run.args.swarm else ''}"
        "), the last one until the load stopped; t = seconds since "
        "the load began. A request counts as sent (and in p99, max) in the phase it was sent in, "
        "a failure in the phase it failed in (the change under way is its likely cause); each "
        "adds up to the totals above. Replicas: the cluster's running containers by image id, "
        "right after the call answered" + (
            " (--swarm: or, when Swarm had not stopped the tasks it retired yet, once it had: "
            f"waited for {SWARM_CONVERGE_LIMIT:g} s at most, the time is given below)" if run.args.swarm else "")
        + ".")
    add("")
    add("| # | phase | from t | call took | to t | sent GET / POST / PUT | failed GET | failed POST "
        "| failed PUT | p99 | max | replicas after |")
    add("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    load = run.load
    totals = phase_totals(load) if load is not None else None
    end_of_load = load.finished() - load.began if load is not None and load.began else None
    for index, change in enumerate(run.changes):
        if change.started is None:
            add(f"| {index} | {change.title} | not run | | | | | | | | | |")
            continue
        ended = change.ended if change.ended is not None else end_of_load
        sent, failed, latency = totals.sent, totals.failed, sorted(totals.latency.get(index, []))
        fails = {m: sum(n for (p, mm, _), n in failed.items() if p == index and mm == m) for m in METHODS}
        add(f"| {index} | {change.title} | {change.started:.1f} | {ms(change.took) if change.path else '-'} "
            f"| {'-' if ended is None else f'{ended:.1f}'} "
            f"| {' / '.join(str(sent[index, m]) for m in METHODS)} "
            + "".join(f"| {'**' + str(fails[m]) + '**' if fails[m] else 0} " for m in METHODS)
            + f"| {ms(percentile(latency, 99))} | {ms(latency[-1] if latency else None)} "
            f"| {describe_replicas(change.after) if change.answered is not None or not change.path else '-'}"
            f"{' (not as expected)' if change.check else ''} |")
    if totals is not None:
        add("")
        for label, phases in (("during scale 2 → 6 → 1 → 2 (phases 1-3)", (1, 2, 3)),
                              ("during the two rollouts (phases 4-5)", (4, 5))):
            ran = [p for p in phases if p < len(run.changes) and run.changes[p].started is not None]
            if not ran:
                continue
            sent = {m: sum(totals.sent[p, m] for p in ran) for m in METHODS}
            fails = {m: sum(n for (p, mm, _), n in totals.failed.items() if p in ran and mm == m)
                     for m in METHODS}
            add(f"**Failed requests {label}: "
                + ", ".join(f"{m} {fails[m]} of {sent[m]}" for m in METHODS) + ".**")
            add("")
    began_wall = load.began_wall if load is not None else None
    for index, change in enumerate(run.changes):
        if change.started is None and not change.error:
            continue
        add(f"- **{index}. {change.title}**: `{change.call}`")
        if change.started is not None:
            ended = change.ended if change.ended is not None else end_of_load
            add(f"  - {clock(began_wall, change.started)} → {clock(began_wall, ended)} UTC "
                f"(t={change.started:.2f} → {'-' if ended is None else f'{ended:.2f}'} s)"
                + (f"; the call answered after {ms(change.took)}" if change.path and change.took is not None else ""))
        if change.path:
            add("  - answer: " + (f"{change.status} `{change.message}`" if change.message
                                   else f"**{change.error or 'none: the run ended before it answered'}**"))
        if change.before or change.path:
            add(f"  - replicas before: {replica_list(change.before)}")
        if change.answered is not None or not change.path:
            add(f"  - replicas after: {replica_list(change.after)}"
                + (f" (once Swarm had stopped the tasks it retired, {change.converged - change.answered:.2f} s "
                   f"after the answer, t={change.converged:.2f} s)" if change.converged is not None else "")
                + (f" — **{change.check}**" if change.check else
                   f" — as expected ({change.replicas} of {change.image})" if change.after else ""))
        if totals is not None:
            failed = {(m, k): n for (p, m, k), n in totals.failed.items() if p == index}
            if failed:
                add("  - failures: " + ", ".join(f"{m} {k} × {n}" for (m, k), n in sorted(failed.items())))
    posts = sum(n for (p, m, _), n in totals.failed.items() if m == "POST") if totals is not None else 0
    if posts:
        add("")
        add("POST failures do not fail the run (a relay cannot safely resend a POST cut off mid-way), "
            "but in this mode nothing kills a replica: each one here is a request that a change cut "
            "short, on a replica it took out of the rotation and stopped (see the examples under "
            "Failures, and nmc's log at that moment).")


@dataclass
class PhaseTotals:
    sent: Counter
    failed: Counter
    latency: dict


def phase_totals(load: Load) -> PhaseTotals:
    totals = PhaseTotals(Counter(), Counter(), {})
    for stats in load.stats:
        totals.sent.update(stats.phase_sent)
        totals.failed.update(stats.phase_failed)
        for phase, values in stats.phase_latency.items():
            totals.latency.setdefault(phase, []).extend(values)
    return totals


def clock(began_wall: datetime | None, at: float | None) -> str:
    if began_wall is None or at is None:
        return "-"
    return f"{began_wall + timedelta(seconds=at):%H:%M:%S.%f}"[:-5]


def replica_list(replicas: list) -> str:
    """'1 (id, image i), ...'; a swarm task container <service>.<slot>.<task id> as '<slot>.<task id>'."""
    return ", ".join(f"{short_name(name)} ({cid}, image {image})" for name, cid, image in replicas) or "none"


def short_name(name: str) -> str:
    if "." in name:  # a swarm task's container (cluster names have no dot)
        slot, _, task = name.split(".", 1)[1].partition(".")
        return f"{slot}.{task[:12]}" if task else slot
    return name.rsplit('-', 1)[-1]


def report_chaos(run: Run, add) -> None:
    add("")
    add("## Chaos and time to replace")
    add("")
    if run.args.swarm:
        add("Time to replace: from the kill (pause, crash) until a new task container of the same slot "
            "(Swarm's replacement, `<service>.<slot>.<new task id>`) is running, and until it answers "
            f"/healthz on its own published port (polled every {POLL * 1000:.0f} ms).")
    else:
        add("Time to replace: from the kill (pause, crash) until a new container with the same name is "
            f"running, and until it answers /healthz on its port (polled every {POLL * 1000:.0f} ms).")
    add("")
    add("| # | t | replica | container | outcome | call took | running after | healthy after "
        "| failures until the next action |")
    add("|---|---:|---|---|---|---:|---:|---:|---|")
    after = failures_after(run, merged(run.load)) if run.load is not None else {}
    for index, action in enumerate(run.actions):
        if action.ran_at is None:
            continue
        measure = action.measure
        running = ms(measure.running_after) if measure else ""
        if measure and run.args.swarm and measure.new_id:
            running += f" ({measure.new_id[:12]})"  # Swarm's new task container
        healthy = (ms(measure.healthy_after) if measure and measure.healthy_after is not None
                   else (measure.error if measure else ""))
        add(f"| {action.what} #{action.number} | {action.ran_at:.1f} s | {action.name or '-'} "
            f"| {action.container or '-'} | {action.outcome} | {ms(action.call_took)} | {running} | {healthy} "
            f"| {', '.join(f'{k} x{n}' for k, n in sorted(after.get(index, {}).items())) or '-'} |")
    kills = [a.measure.healthy_after for a in run.actions
             if a.what == "kill" and a.measure and a.measure.healthy_after is not None]
    add("")
    if kills:
        add(f"**Kills: {len(kills)} measured; time to replace (healthy) median {ms(statistics.median(kills))}, "
            f"max {ms(max(kills))}, min {ms(min(kills))}.**")
    unmeasured = [a for a in run.actions if a.what == "kill" and a.ran_at is not None
                  and not (a.measure and a.measure.healthy_after is not None)]
    if unmeasured:
        notes = "; ".join(f"#{a.number}: {a.outcome} {a.measure.error if a.measure else ''}".strip()
                          for a in unmeasured)
        add(f"Kills without a measured replacement: {len(unmeasured)} ({notes}).")
    for what in ("pause", "unpause", "crash"):
        for action in run.actions:
            if action.what == what and action.ran_at is not None:
                extra = ""
                if action.measure:
                    extra = (f"; replaced: running after {ms(action.measure.running_after)}, healthy after "
                             f"{ms(action.measure.healthy_after)}" if action.measure.healthy_after is not None
                             else f"; {action.measure.error}")
                add(f"- **{what}** at t={action.ran_at:.1f}s of {action.name or '-'}: {action.outcome}{extra}")


# -- the run --------------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="chaos.py", description="A bounded chaos run against an nmc cluster of its own "
        "(kills, a pause, a crash under load; or, with --changes, live scaling and rolling "
        "updates under load); see the module docstring.")
    parser.add_argument("--replicas", "-n", type=int, default=None, help="replicas (default 3)")
    parser.add_argument("--duration", type=float, default=None, help="seconds of load (default 30)")
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (default 32)")
    parser.add_argument("--seed", type=int, default=None, help="fixes the chaos schedule and the "
                        "request mix (default: a random one, printed)")
    parser.add_argument("--kill-every", type=float, default=None, help="seconds between kills (default 2)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (default 10)")
    parser.add_argument("--no-chaos", action="store_true", help="the load alone: a baseline to "
                        "compare latency and throughput with")
    parser.add_argument("--changes", action="store_true", help="instead of the chaos, live changes "
                        "through the admin API: scale 2 -> 6 -> 1 -> 2, a rollout to a second image "
                        "and back (max_surge 2); failures per phase")
    parser.add_argument("--swarm", action="store_true", help="run nmc with --swarm: the replicas "
                        "are the tasks of a Docker Swarm service (the engine must be a swarm manager)")
    args = parser.parse_args(argv)
    if args.changes:
        given = [name for name, value in (("--replicas", args.replicas), ("--duration", args.duration),
                                          ("--kill-every", args.kill_every), ("--no-chaos", args.no_chaos or None))
                 if value is not None]
        if given:
            parser.error(f"not with --changes: {', '.join(given)} (its replicas and "
                         "duration follow from its fixed sequence of changes)")
        args.replicas, args.duration, args.kill_every = 2, CHANGES_LIMIT, 0.0
        if not 1 <= args.clients <= 1024:
            parser.error("--clients must be from 1 to 1024")
        if not 0.1 <= args.timeout <= 60:
            parser.error("--timeout must be from 0.1 to 60 seconds")
        return args
    args.replicas = 3 if args.replicas is None else args.replicas
    args.duration = 30.0 if args.duration is None else args.duration
    args.kill_every = 2.0 if args.kill_every is None else args.kill_every
    if not 1 <= args.replicas <= 64:
        parser.error("--replicas must be from 1 to 64")
    if not 1 <= args.duration <= 3600:
        parser.error("--duration must be from 1 to 3600 seconds")
    if not 1 <= args.clients <= 1024:
        parser.error("--clients must be from 1 to 1024")
    if not 0.2 <= args.kill_every <= 3600:
        parser.error("--kill-every must be at least 0.2 seconds")
    if not 0.1 <= args.timeout <= 60:
        parser.error("--timeout must be from 0.1 to 60 seconds")
    return args


class Signals:
    """The first SIGINT/SIGTERM/SIGHUP raises Interrupted (the finally blocks clean up); later ones
    while cleaning up are only noted, so that the clean-up itself is never cut short."""

    def __init__(self):
        self.count = 0
        self.cleaning = False
        self.name = ""

    def install(self) -> None:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self.handle)

    def handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            self.name = signal.Signals(signum).name
        if self.cleaning or self.count > 1:
            log(f"{signal.Signals(signum).name}: still removing the cluster, a few seconds more")
            return
        raise Interrupted(self.name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    signals = Signals()
    signals.install()
    run = Run(args)
    run.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    run.cluster = f"nmc-chaos-{uuid.uuid4().hex[:8]}"
    run.source = source_state()
    client = None
    if args.swarm:  # before anything is made: nothing to clean up, no report
        probe = None
        try:
            probe = engine()
            problem = swarm_problem(probe)
        except (docker.errors.DockerException, requests.exceptions.RequestException):
            problem = None  # said below, as without --swarm
        finally:
            if probe is not None:
                probe.close()
        if problem:
            log(problem)
            return 2
    try:
        try:
            client = engine()
            client.ping()
        except docker.errors.DockerException as e:
            run.error = f"no Docker engine answers ({e})"
            log(run.error)
            return 1
        if args.changes:
            began = time.monotonic()
            try:
                site_id = client.images.get(SITE_IMAGE).id
            except docker.errors.ImageNotFound:
                raise RuntimeError(f"image {SITE_IMAGE} is missing: `make nodejs` builds it") from None
            run.derived, derived_id = build_derived(client, run.cluster)
            run.image_ids = {SITE_IMAGE: site_id, run.derived: derived_id}
            run.phases["build image"] = time.monotonic() - began
            log(f"built {run.derived} ({short_id(derived_id)}) FROM {SITE_IMAGE} ({short_id(site_id)}) "
                f"in {run.phases['build image']:.1f}s")
        run.phases["start nmc"] = _start_nmc(run)
        if run.error:
            return 1
        if args.changes:
            run.changes = changes_sequence(run.derived)
            run.load = Load(f"http://127.0.0.1:{run.nmc.port}", args.clients, run.seed, args.timeout)
            run.changer = Changes(client, run.cluster, f"http://127.0.0.1:{run.nmc.admin_port}",
                                  run.image_ids)
            _load_and_changes(run)
        else:
            base = 1 if args.swarm else run.nmc.base_port  # swarm: the service's slots, from 1
            ports = list(range(base, base + args.replicas))
            run.actions = [] if args.no_chaos else make_schedule(run.seed, args.duration, args.kill_every, ports)
            log(f"seed {run.seed}: {sum(a.what == 'kill' for a in run.actions)} kills, "
                + ", ".join(f"{a.what} at {a.at:g}s" for a in run.actions if a.what != "kill"))
            run.load = Load(f"http://127.0.0.1:{run.nmc.port}", args.clients, run.seed, args.timeout)
            run.chaos = Chaos(client, run.cluster, ports, run.load, args.swarm)
            _load_and_chaos(run)
    except Interrupted as e:
        run.interrupted = str(e)
        log(f"interrupted ({e}): stopping the load and removing the cluster")
    except Exception as e:
        run.error = f"{type(e).__name__}: {e}"
        log(f"error: {run.error}; removing the cluster")
    finally:
        signals.cleaning = True
        _clean_up(run, client)
        if signals.count and not run.interrupted:
            run.interrupted = signals.name
    text = report(run)
    print(text, flush=True)
    try:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"chaos-{run.began_wall:%Y%m%dT%H%M%SZ}.md"
        path.write_text(text)
        log(f"report written to {path.relative_to(ROOT)}")
    except OSError as e:
        log(f"could not write the report: {e}")
    code, reasons = verdict(run)
    log(f"leaked containers: {len(run.leaked) if run.leak_checked else 'unknown'}")
    log(f"{'PASS' if code == 0 else 'FAIL'} in {time.monotonic() - run.began:.1f}s"
        + (f": {'; '.join(reasons)}" if reasons else ""))
    return code


def _start_nmc(run: Run) -> float:
    began = time.monotonic()
    # --changes grows the cluster to 6 replicas, on the lowest free ports from the base port on
    # (--swarm: none, Swarm publishes each task on an ephemeral port of its own)
    span = 0 if run.args.swarm else CHANGES_PORTS if run.args.changes else run.args.replicas
    for attempt in range(3):  # a free port can be taken between our probe and nmc's bind
        base = free_ports(span) if span else None
        kept = set(range(base, base + span)) if span else set()
        port = free_ports(1, kept)
        admin_port = free_ports(1, kept | {port})
        run.nmc = Nmc(run.cluster, port, base, run.args.replicas, admin_port)
        log(f"starting {run.nmc.command}")
        if run.nmc.wait_serving(START_LIMIT):
            log(f"nmc is serving on 127.0.0.1:{port} (admin port {admin_port}), "
                + (f"tasks of the swarm service {run.cluster}" if base is None else
                   f"replicas from {base} (ports up to {base + span - 1} kept free)"))
            return time.monotonic() - began
        run.nmc.stop()
        output = run.nmc.tail()
        if "in use" not in output or attempt == 2:
            run.error = (f"nmc did not start within {START_LIMIT:g}s (exit code {run.nmc.exit_code}): "
                         f"{output.strip()[-600:] or 'no output'}")
            log(run.error)
            break
    return time.monotonic() - began


def _load_and_changes(run: Run) -> None:
    """The steady phase, then each change in turn (waited for, then SETTLE seconds of load);
    a change that fails or leaves other replicas than it should ends the sequence."""
    load, changer, changes = run.load, run.changer, run.changes
    cpu = cpu_mark(run)
    steady = changes[0]
    steady.before = changer.replicas()
    load.phase = 0
    load.start(CHANGES_LIMIT)
    steady.started = 0.0
    log(f"load: {run.args.clients} clients against {load.url}; changes through {changer.admin_url} "
        f"(at most {CHANGES_LIMIT:g}s in all)")
    try:
        time.sleep(STEADY)
        steady.after = changer.replicas()
        steady.check = changer.check(steady)
        last = steady
        for index, change in enumerate(changes[1:], 1):
            if run.nmc.proc.poll() is not None:
                raise RuntimeError(f"nmc exited during the run with code {run.nmc.proc.poll()}:\n"
                                   f"{run.nmc.tail()}")
            limit = load.end - SETTLE - time.monotonic()
            if limit < 10:
                change.error = f"not run: the load's limit of {CHANGES_LIMIT:g}s was near"
                break
            change.before = changer.replicas()
            change.started = last.ended = time.monotonic() - load.began
            load.phase = index
            log(f"t={change.started:5.1f}s {index}. {change.title}: {change.call}")
            changer.call(change, limit)
            change.answered = time.monotonic() - load.began
            change.after = changer.replicas()
            change.check = changer.check(change)
            if run.args.swarm and change.check and not change.error:
                changer.converge(change, load.began)
            last = change
            log(f"t={change.answered:5.1f}s {index}. answered after {change.took:.1f}s: "
                f"{change.message or change.error}; replicas: {describe_replicas(change.after)}"
                + (f" (once Swarm stopped what it retired, {change.converged - change.answered:.1f}s "
                   "after the answer)" if change.converged is not None else "")
                + (f"; {change.check}" if change.check else ""))
            if change.error or change.check:
                break  # nmc may still be busy with it: what follows would measure nothing sure
            time.sleep(SETTLE)
        load.halt()
        last.ended = load.stopped - load.began
    finally:
        changer.close()
    wall = max(1e-9, load.finished() - load.began)
    cpu_record(run, cpu, wall)
    run.phases["load"] = wall


def cpu_mark(run: Run) -> tuple:
    return own_cpu(), process_cpu(run.nmc.proc.pid), machine_cpu()


def cpu_record(run: Run, mark: tuple, wall: float) -> None:
    """CPU shares over `wall` seconds since `mark`, into run.cpu."""
    cpu_client, cpu_nmc, cpu_machine = mark
    nmc_now = process_cpu(run.nmc.proc.pid)
    run.cpu["client"] = (own_cpu() - cpu_client) / wall
    if cpu_nmc is not None and nmc_now is not None:
        run.cpu["nmc"] = (nmc_now - cpu_nmc) / wall
    machine_now = machine_cpu()
    if cpu_machine is not None and machine_now is not None and machine_now[1] > cpu_machine[1]:
        run.cpu["machine"] = (machine_now[0] - cpu_machine[0]) / (machine_now[1] - cpu_machine[1])


def _load_and_chaos(run: Run) -> None:
    load, chaos, args = run.load, run.chaos, run.args
    cpu = cpu_mark(run)
    load.start(args.duration)
    log(f"load: {args.clients} clients for {args.duration:g}s against {load.url}")
    for action in run.actions:
        wait = load.began + action.at - time.monotonic()
        if wait > 0:
            time.sleep(wait)  # a signal interrupts it (Interrupted)
        if run.nmc.proc.poll() is not None:
            raise RuntimeError(f"nmc exited during the run with code {run.nmc.proc.poll()}:\n{run.nmc.tail()}")
        chaos.run(action)
    remaining = load.end - time.monotonic()
    if remaining > 0:
        time.sleep(remaining)
    wall = max(1e-9, time.monotonic() - load.began)
    cpu_record(run, cpu, wall)
    run.phases["load"] = wall


def _clean_up(run: Run, client) -> None:
    """Stop the clients and the measurements (bounded), SIGTERM nmc, then check for and remove
    whatever of the cluster is left. Runs whatever happened before."""
    began = time.monotonic()
    if run.load is not None:
        run.load.join(began + run.args.timeout + 1)  # a request in flight ends within its timeout
        run.phases["join clients"] = time.monotonic() - began
        if run.chaos is not None:
            measures = time.monotonic()
            run.chaos.join(measures + 3)
            run.phases["join measurements"] = time.monotonic() - measures
    if run.nmc is not None:
        stopping = time.monotonic()
        run.nmc.stop()
        run.phases["stop nmc"] = time.monotonic() - stopping
    # The engine may be away for a moment (restarted by someone else): try again, for a while.
    deadline = time.monotonic() + ENGINE_WAIT
    for attempt in range(int(ENGINE_WAIT) + 1):
        try:
            client = client or engine()
            if run.args.swarm:
                run.leaked = swarm_leftovers(run, client)
                run.leak_checked = True
                break
            leaked = remove_cluster(client, run.cluster)
            time.sleep(0.5)  # a create cut short by a killed nmc can still land a moment later
            run.leaked = leaked + remove_cluster(client, run.cluster)
            run.leak_checked = True
            break
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            if time.monotonic() >= deadline:
                log(f"could not check the cluster's containers: {e}; remove them with: docker rm -f "
                    f"$(docker ps -aq --filter label={LABEL_CLUSTER}={run.cluster})")
                break
            if attempt == 0:
                log(f"the Docker engine does not answer ({type(e).__name__}); trying again for "
                    f"{ENGINE_WAIT:g}s to remove the cluster")
            time.sleep(1)
    if run.args.changes:
        try:
            client = client or engine()
            run.images_removed = remove_derived(client, run.cluster)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            run.image_error = (f"could not remove the image built for the rollout ({e}); remove it with: "
                               f"docker rmi -f $(docker images -aq --filter label={LABEL_CHAOS}={run.cluster})")
            log(run.image_error)
    if client is not None:
        client.close()
    if run.leaked:
        log(f"leaked containers: {len(run.leaked)} ({', '.join(run.leaked)}); removed")


def swarm_leftovers(run: Run, client: docker.DockerClient) -> list[str]:
    """--swarm: the service must be gone (else it is removed, and noted in run.service_left),
    then its task containers, which Swarm removes a moment later, within SWARM_GONE_LIMIT
    seconds; those still there are leaked: force-removed and returned."""
    began = time.monotonic()
    run.service_left = remove_service(client, run.cluster) or run.service_left
    if run.service_left:
        log(f"the swarm service {run.cluster} was still there after nmc exited: {run.service_left}")
    deadline = began + SWARM_GONE_LIMIT
    for _ in range(int(SWARM_GONE_LIMIT / SWARM_GONE_POLL) + 1):
        if not cluster_containers(client, run.cluster) or time.monotonic() >= deadline:
            break
        time.sleep(SWARM_GONE_POLL)
    run.phases["task containers gone"] = time.monotonic() - began
    return remove_cluster(client, run.cluster)


if __name__ == "__main__":
    sys.exit(main())
