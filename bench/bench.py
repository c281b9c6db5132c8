#!/usr/bin/env python3
"""`make bench`: nmc against the limit (direct), nginx and a naive gevent + requests relay, all on
the SAME two replicas, in one bounded run; a markdown table printed and written to
bench/results/bench-<UTC time>.md.

  1. starts ./nmc_server.py --name nmc-bench-<rand> --bind 127.0.0.1 --port P --base-port B -n 2 -q
     (config `nmc`); every other config is pointed at its two replica ports B and B+1;
  2. `direct`   wrk straight at 127.0.0.1:B (one replica: the limit);
  3. `nginx-w1` nginx, 1 worker, round-robin upstream B/B+1, keepalive 256 (bench/nginx.conf.tmpl);
  4. `naive`    bench/naive_proxy.py (gevent pywsgi + one default requests.Session);
  5. `pm2-i2`   PM2 cluster mode running the site itself: `pm2 start nodejs/server.js -i 2` with
     PORT=<free port> (no containers, no docker-proxy: an anchor, not a like-for-like); CPU of
     the PM2 daemon (the cluster primary, "front") and of its 2 workers (in the replicas column);
  6. `http-proxy` bench/node/hp_proxy.js: node's npm http-proxy 1.18.1, round-robin over B/B+1,
     keep-alive agent (maxSockets 256), an 'error' handler answering 502;
     pm2@7 and http-proxy@1.18.1 are `npm install`ed into the run's temp folder (PM2_HOME there
     too; `pm2 kill` at the end, the folder removed); without npm/node both are skipped;
  then per config: GET /healthz with wrk -t1 -c64 and -c256 --latency (10 s, 3 s with --quick),
  GET /big?mb=10 with wrk -t1 -c4; a warm-up first, then --reps interleaved repetitions (the
  order of the configs rotated each time), medians. CPU per request = utime+stime from
  /proc/PID/stat (parsed after the `(comm)` field) of the proxy's process tree, and separately
  of Docker's userland proxies (`docker-proxy ... -host-port B`) and of the replicas' node
  processes. RSS of the proxy's tree at start and after all load.

Everything started here is stopped at the end by PID (try/finally, also on Ctrl-C / SIGTERM):
PM2 with `pm2 kill` (then SIGKILL by PID for any of its daemon/workers left), wrk, nginx, the
naive relay, http-proxy, and nmc (SIGTERM: it removes its replicas; the run then checks that
no container labelled nmc.cluster=<its name> is left, and removes any it finds).

Needs wrk and nginx (installed with apt-get when missing and run as root), Docker, the
nodejs.org image and .venv (make bench does venv + nodejs first); node + npm and the npm
registry for pm2-i2 and http-proxy (skipped, with a note, without them).
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import random
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONFIGS = ("direct", "nginx-w1", "naive", "nmc", "pm2-i2", "http-proxy")
NODE_CONFIGS = ("pm2-i2", "http-proxy")  # need node + npm (pm2, http-proxy from the registry)
TODO = (("gunicorn-w2", "gunicorn -k gevent -w 2 nmc.wsgi:app (nmc's WSGI app, coming)"),)
NPM_PACKAGES = ("pm2@7", "http-proxy@1.18.1")
NPM_LIMIT = 300.0
PM2_LIMIT = 60.0
NMC_START_LIMIT = 120.0
NMC_STOP_LIMIT = 30.0
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
BUNIT = {"B": 1 / 2**20, "KB": 1 / 1024, "MB": 1.0, "GB": 1024.0}


class Interrupted(Exception):
    pass


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


# -- /proc ---------------------------------------------------------------------------------------

def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after `pid (comm)`: [0] = state, [1] = ppid, [11]/[12] = utime/stime."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def ticks(pid: int) -> int:
    f = stat_fields(pid)
    return int(f[11]) + int(f[12]) if f else 0


def tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx's worker, ...)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = stat_fields(int(d))
            if f:
                parent[int(d)] = int(f[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def rss_mib(pids: list[int]) -> float:
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def machine_ticks() -> tuple[int, int]:
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)  # busy, total (both CPUs)


def docker_proxy_pids(port: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"docker-proxy") and b"-host-port" in argv:
            i = argv.index(b"-host-port")
            if i + 1 < len(argv) and argv[i + 1] == str(port).encode():
                out.append(int(d))
    return out


# -- ports, HTTP probe, tools --------------------------------------------------------------------

def port_is_free(port: int) -> bool:
    for address in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def free_ports(count: int) -> int:
    pick = random.SystemRandom()
    for _ in range(500):
        base = pick.randrange(20000, 30000)
        if all(port_is_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def http_ok(port: int, path: str = "/healthz", timeout: float = 2.0) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        c.close()
        return 200 <= r.status < 300
    except (OSError, http.client.HTTPException):
        return False


def wait_http(port: int, limit: float, proc: subprocess.Popen | None = None) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if http_ok(port):
            return True
        if proc is not None and proc.poll() is not None:
            return False
        time.sleep(0.1)
    return False


def which(name: str) -> str | None:
    return shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/local/sbin/{name}")
                                       if os.access(p, os.X_OK)), None)


def ensure_tools() -> dict[str, str | None]:
    missing = [t for t in ("wrk", "nginx") if not which(t)]
    if missing:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            log(f"installing {' '.join(missing)} with apt-get (up to 5 min)")
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                               env=env, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:  # the package lists may be stale: update once and retry
                subprocess.run(["apt-get", "update"], env=env, capture_output=True, timeout=300)
                r = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing],
                                   env=env, capture_output=True, text=True, timeout=300)
            if r.returncode != 0:
                log("apt-get install failed:\n" + r.stdout[-1500:] + r.stderr[-1500:])
        else:
            log(f"missing {' '.join(missing)}: install them first, e.g. "
                f"`sudo apt-get install -y {' '.join(missing)}` (Debian/Ubuntu) or "
                f"`brew install {' '.join(missing)}`")
    return {t: which(t) for t in ("wrk", "nginx")}


def cmd_out(args: list[str], timeout: float = 15) -> str:
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"


# -- wrk -----------------------------------------------------------------------------------------

def lat_ms(s: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    return float(m.group(1)) * UNIT[m.group(2)] if m else float("nan")


def parse_wrk(text: str) -> dict | None:
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        return None
    d = {"rps": float(m.group(1))}
    for p in ("50", "99"):
        m = re.search(r"^\s+%s(?:\.0+)?%%\s+(\S+)" % p, text, re.M)
        d["p" + p] = lat_ms(m.group(1)) if m else float("nan")
    m = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", text)
    d["mibs"] = float(m.group(1)) * BUNIT.get(m.group(2), float("nan")) if m else float("nan")
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    d["reqs"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    d["sock_err"] = sum(map(int, m.groups())) if m else 0
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    d["non2xx"] = int(m.group(1)) if m else 0
    d["err"] = d["sock_err"] + d["non2xx"]
    return d


# -- the processes under test --------------------------------------------------------------------

def _die_with_parent() -> None:  # in the child, between fork and exec
    try:
        import ctypes
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM if bench.py dies
    except Exception:
        pass


class Run:
    """Everything this run started (by PID) and how to stop it."""

    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="nmc-bench-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.port: dict[str, int] = {}
        self.commands: dict[str, str] = {}
        self.wrk: subprocess.Popen | None = None
        self.name = "nmc-bench-%06x" % random.SystemRandom().randrange(16**6)
        self.leftovers: list[str] = []
        self.nmc_exit: str = "not started"
        self.deps = self.tmp / "deps"
        self.pm2_home = self.tmp / "pm2home"
        self.pm2_daemon: int | None = None
        self.pm2_workers: list[int] = []
        self.pm2_stop: str = "not started"
        self.versions: dict[str, str] = {}

    def start(self, name: str, argv: list[str], port: int, display: str, **kw) -> None:
        self.commands[name] = display
        self.port[name] = port
        self.procs[name] = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, preexec_fn=_die_with_parent, **kw)

    def start_nmc(self, port: int, base: int) -> None:
        argv = ["./nmc_server.py", "--name", self.name, "--bind", "127.0.0.1", "--port", str(port),
                "--base-port", str(base), "-n", "2", "-q"]
        self.nmc_log = open(self.tmp / "nmc.log", "wb")
        self.start("nmc", [sys.executable, *argv], port, " ".join(argv),
                   stdout=self.nmc_log, stderr=subprocess.STDOUT,
                   env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def start_nginx(self, nginx: str, port: int, base: int) -> None:
        d = self.tmp / "nginx-w1"
        d.mkdir()
        conf = (BENCH / "nginx.conf.tmpl").read_text()
        for k, v in {"@WORKERS@": "1", "@PORT@": str(port), "@PREFIX@": str(d),
                     "@B1@": str(base), "@B2@": str(base + 1)}.items():
            conf = conf.replace(k, v)
        (d / "nginx.conf").write_text(conf)
        self.start("nginx-w1", [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")],
                   port, f"nginx -p TMP -e TMP/error.log -c TMP/nginx.conf   "
                         f"(bench/nginx.conf.tmpl, 1 worker, upstream {base},{base + 1}, port {port})",
                   stdout=subprocess.DEVNULL, stderr=open(d / "stderr.log", "wb"))

    def start_naive(self, port: int, base: int) -> None:
        argv = ["bench/naive_proxy.py", str(port), str(base), str(base + 1)]
        self.start("naive", [sys.executable, *argv], port, " ".join(argv),
                   stdout=subprocess.DEVNULL, stderr=open(self.tmp / "naive.log", "wb"))

    def npm_install(self) -> str | None:
        """pm2 and http-proxy into TMP/deps; None when done, else why not."""
        npm, node = shutil.which("npm"), shutil.which("node")
        if not npm or not node:
            return "node/npm not found"
        self.deps.mkdir()
        with open(self.tmp / "npm.log", "wb") as f:
            try:
                for argv in (["npm", "init", "-y"],
                             ["npm", "install", "--no-audit", "--no-fund", *NPM_PACKAGES]):
                    r = subprocess.run(argv, cwd=self.deps, stdin=subprocess.DEVNULL, stdout=f,
                                       stderr=subprocess.STDOUT, timeout=NPM_LIMIT)
                    if r.returncode != 0:
                        break
            except subprocess.TimeoutExpired:
                return f"npm install took more than {NPM_LIMIT:g} s"
        if r.returncode != 0:
            return ("npm install failed: " +
                    (self.tmp / "npm.log").read_text(errors="replace")[-400:].replace("\n", " "))
        for pkg in ("pm2", "http-proxy"):
            self.versions[pkg] = self._pkg_version(pkg)
        self.versions["node"] = cmd_out([node, "--version"])
        return None

    def _pkg_version(self, pkg: str) -> str:
        import json
        try:
            return json.loads((self.deps / "node_modules" / pkg / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            return "?"

    def start_http_proxy(self, port: int, base: int) -> None:
        argv = ["node", "bench/node/hp_proxy.js", str(port), str(base), str(base + 1)]
        self.start("http-proxy", argv, port,
                   f"NODE_PATH=TMP/deps/node_modules {' '.join(argv)}   (http-proxy "
                   f"{self.versions.get('http-proxy', '?')}, keep-alive agent maxSockets 256)",
                   stdout=subprocess.DEVNULL, stderr=open(self.tmp / "http-proxy.log", "wb"),
                   env={**os.environ, "NODE_PATH": str(self.deps / "node_modules")})

    def pm2(self, *args: str, timeout: float = PM2_LIMIT, env: dict | None = None) -> int:
        with open(self.tmp / "pm2-cli.log", "ab") as f:
            try:
                return subprocess.run([str(self.deps / "node_modules" / ".bin" / "pm2"), *args],
                                      cwd=ROOT, stdin=subprocess.DEVNULL, stdout=f,
                                      stderr=subprocess.STDOUT, timeout=timeout,
                                      env={**os.environ, "PM2_HOME": str(self.pm2_home),
                                           **(env or {})}).returncode
            except subprocess.TimeoutExpired:
                return -1

    def start_pm2(self, port: int) -> bool:
        """pm2 start nodejs/server.js -i 2 on PORT; True once the daemon has its 2 workers."""
        self.commands["pm2-i2"] = (f"PM2_HOME=TMP/pm2home PORT={port} pm2 start nodejs/server.js "
                                   f"-i 2 --name {self.name}-pm2 --no-autorestart   (pm2 {self.versions.get('pm2', '?')}, "
                                   f"host node {self.versions.get('node', '?')}, no Docker)")
        self.port["pm2-i2"] = port
        self.pm2_stop = "started"
        rc = self.pm2("start", "nodejs/server.js", "-i", "2", "--name", f"{self.name}-pm2",
                      "--no-autorestart", env={"PORT": str(port), "NMC_REPLICA": "pm2"})
        try:
            self.pm2_daemon = int((self.pm2_home / "pm2.pid").read_text().strip())
        except (OSError, ValueError):
            self.pm2_daemon = None
        if rc != 0 or self.pm2_daemon is None:
            return False
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            self.pm2_workers = [p for p in tree(self.pm2_daemon) if p != self.pm2_daemon]
            if len(self.pm2_workers) >= 2 and http_ok(port):
                return True
            time.sleep(0.2)
        return False

    def stop_pm2(self) -> None:
        """pm2 kill (daemon + workers), then SIGKILL by PID whatever of them is left."""
        if self.pm2_stop != "started":  # never started, or already stopped
            return
        pids = ([self.pm2_daemon] if self.pm2_daemon else []) + self.pm2_workers
        if self.pm2_daemon:
            pids = list(dict.fromkeys(pids + tree(self.pm2_daemon)))
        # only with a daemon there: `pm2 kill` without one would first spawn one
        rc = self.pm2("kill", timeout=30) if (self.pm2_home / "pm2.pid").exists() else "(no pm2.pid)"
        left = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            left = [p for p in pids if (f := stat_fields(p)) and f[0] != "Z"]
            if not left:
                break
            time.sleep(0.1)
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        self.pm2_stop = (f"pm2 kill exit code {rc}" +
                         (f"; SIGKILLed {len(left)} process(es) still there" if left else
                          "; daemon and workers gone"))

    def nmc_log_tail(self, n: int = 20) -> str:
        try:
            return "\n".join((self.tmp / "nmc.log").read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def containers(self) -> list[str]:
        out = cmd_out(["docker", "ps", "-aq", "--filter", f"label=nmc.cluster={self.name}"], 30)
        return [x for x in out.split() if re.fullmatch(r"[0-9a-f]{6,64}", x)]

    def stop_all(self) -> None:
        if self.wrk is not None and self.wrk.poll() is None:
            self.wrk.kill()
            self.wrk.wait(5)
        try:
            self.stop_pm2()
        except Exception as e:  # never skip the rest of the stopping
            log(f"stopping pm2: {e!r}")
        for name in ("naive", "nginx-w1", "http-proxy"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)  # nginx: fast shutdown of master + worker
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    log(f"{name} (pid {p.pid}) did not exit on SIGTERM: SIGKILL")
                    p.kill()
                    p.wait(5)
        p = self.procs.get("nmc")
        if p is not None:
            if p.poll() is None:
                t0 = time.monotonic()
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(NMC_STOP_LIMIT)
                    self.nmc_exit = f"exit code {p.returncode} {time.monotonic() - t0:.1f} s after SIGTERM"
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait(5)
                    self.nmc_exit = f"did not exit within {NMC_STOP_LIMIT:g} s of SIGTERM: SIGKILLed"
            else:
                self.nmc_exit = f"had already exited (code {p.returncode})"
            left = self.containers()
            if left:
                self.leftovers = left
                log(f"containers of cluster {self.name} left after nmc stopped: {left}: removing them")
                cmd_out(["docker", "rm", "-f", *left], 60)
                if self.containers():
                    log(f"!! containers labelled nmc.cluster={self.name} still there")
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- measuring -----------------------------------------------------------------------------------

def measure(run: Run, wrk: str, cfg: str, path: str, wrk_args: list[str], dur: float,
            groups: dict[str, list[int]]) -> dict:
    """One wrk run against cfg; CPU ticks of each group of PIDs around it."""
    t0 = {g: sum(ticks(p) for p in pids) for g, pids in groups.items()}
    m0 = machine_ticks()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # only wrk is reaped in here: its CPU
    w0 = time.monotonic()
    argv = [wrk, *wrk_args, f"http://127.0.0.1:{run.port[cfg]}{path}"]
    run.wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = run.wrk.communicate(timeout=dur + 40)
    except subprocess.TimeoutExpired:
        run.wrk.kill()
        out, _ = run.wrk.communicate(timeout=5)
        out += "\n(wrk killed: took too long)"
    wall = time.monotonic() - w0
    run.wrk = None
    m1 = machine_ticks()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    d = parse_wrk(out) or {"rps": float("nan"), "p50": float("nan"), "p99": float("nan"),
                           "mibs": float("nan"), "reqs": 0, "sock_err": 0, "non2xx": 0, "err": 0,
                           "failed": out[-500:]}
    d["wall"] = wall
    d["machine_busy_pct"] = 100.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * os.cpu_count()
    for g, pids in groups.items():
        dt = sum(ticks(p) for p in pids) - t0[g]
        d[f"us_{g}"] = 1e6 * dt / CLK_TCK / d["reqs"] if d["reqs"] else float("nan")
        d[f"pct_{g}"] = 100.0 * dt / CLK_TCK / wall
    d["us_total"] = sum(d[f"us_{g}"] for g in groups if groups[g])
    d["pct_wrk"] = 100.0 * (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall
    d["pct_other"] = d["machine_busy_pct"] - d["pct_wrk"] - sum(
        d[f"pct_{g}"] for g in groups if groups[g])
    return d


def med(runs: list[dict], key: str) -> float:
    vals = [r[key] for r in runs if key in r and r[key] == r[key]]
    return statistics.median(vals) if vals else float("nan")


def fmt(x: float, nd: int = 0) -> str:
    if x != x:
        return "—"
    return f"{x:,.{nd}f}"


def ratio(a: float, b: float) -> str:
    return "—" if a != a or b != b or b == 0 else f"{a / b:.2f}"


# -- main ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 s per wrk run, 1 repetition (~2 min)")
    ap.add_argument("--duration", type=float, help="seconds per wrk run [10; 3 with --quick]")
    ap.add_argument("--reps", type=int, help="interleaved repetitions [3; 1 with --quick]")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated subset of {','.join(CONFIGS)} [all]")
    a = ap.parse_args(argv)
    a.duration = a.duration or (3.0 if a.quick else 10.0)
    a.reps = a.reps or (1 if a.quick else 3)
    if not 1 <= a.duration <= 60:
        ap.error("--duration must be from 1 to 60 seconds")
    if not 1 <= a.reps <= 10:
        ap.error("--reps must be from 1 to 10")
    a.configs = [c for c in a.configs.split(",") if c]
    bad = [c for c in a.configs if c not in CONFIGS]
    if bad:
        ap.error(f"unknown config(s) {bad}; known: {', '.join(CONFIGS)}")
    if "direct" not in a.configs:
        a.configs.insert(0, "direct")
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    started_at = datetime.now(timezone.utc)
    stamp = started_at.strftime("%Y%m%dT%H%M%SZ")

    def on_signal(signum, frame):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted(signal.Signals(signum).name)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))

    tools = ensure_tools()
    if not tools["wrk"]:
        log("wrk is needed: nothing measured")
        return 1
    if not tools["nginx"] and "nginx-w1" in args.configs:
        log("nginx missing: nginx-w1 skipped (ratios to nginx will be —)")
        args.configs.remove("nginx-w1")
    wrk = tools["wrk"]

    run = Run(args)
    rows: dict[tuple[str, str], list[dict]] = {}
    rss0: dict[str, float] = {}
    rss1: dict[str, float] = {}
    notes: list[str] = []
    groups_of: dict[str, dict[str, list[int]]] = {}
    interrupted = None
    node_version, t_nmc = "?", None
    try:
        # P = base, replicas base+1 / base+2, nginx base+3, naive base+4, pm2 base+5, http-proxy base+6
        base = free_ports(7)
        P, B = base, base + 1
        log(f"starting nmc (cluster {run.name}) on 127.0.0.1:{P}, replicas on {B} and {B + 1}")
        run.start_nmc(P, B)
        if any(c in args.configs for c in NODE_CONFIGS):  # while nmc starts its replicas
            log(f"npm install {' '.join(NPM_PACKAGES)} into the run's temp folder")
            why = run.npm_install()
            if why:
                log(f"{why}: {', '.join(NODE_CONFIGS)} skipped")
                notes.append(f"{', '.join(NODE_CONFIGS)} skipped: {why}")
                args.configs = [c for c in args.configs if c not in NODE_CONFIGS]
        if not wait_http(P, NMC_START_LIMIT, run.procs["nmc"]):
            log("nmc did not answer /healthz in time; its log:\n" + run.nmc_log_tail())
            return 1
        t_nmc = time.monotonic() - began
        if not (wait_http(B, 10) and wait_http(B + 1, 10)):
            log("the replicas do not answer on their own ports")
            return 1
        run.port["direct"] = B
        run.commands["direct"] = f"(none: wrk straight at 127.0.0.1:{B}, replica 1 of nmc)"
        if "nginx-w1" in args.configs:
            run.start_nginx(tools["nginx"], base + 3, B)
        if "naive" in args.configs:
            run.start_naive(base + 4, B)
        if "http-proxy" in args.configs:
            run.start_http_proxy(base + 6, B)
        for cfg in ("nginx-w1", "naive", "http-proxy"):
            if cfg in args.configs and not wait_http(run.port[cfg], 15, run.procs[cfg]):
                log(f"{cfg} does not answer: skipped")
                notes.append(f"{cfg} did not start (answer /healthz within 15 s): skipped")
                args.configs.remove(cfg)
        if "pm2-i2" in args.configs:
            log(f"pm2 start nodejs/server.js -i 2 on 127.0.0.1:{base + 5} (PM2_HOME in the temp folder)")
            if not run.start_pm2(base + 5):
                log("pm2-i2 did not start (2 workers answering /healthz): skipped; pm2 kill")
                notes.append("pm2-i2 did not start (daemon + 2 workers answering /healthz within "
                             f"{PM2_LIMIT:g} + 15 s): skipped")
                args.configs.remove("pm2-i2")
                run.stop_pm2()
        dp = {B: docker_proxy_pids(B), B + 1: docker_proxy_pids(B + 1)}
        ids = run.containers()
        node_pids = []
        for cid in ids:
            pid = cmd_out(["docker", "inspect", "-f", "{{.State.Pid}}", cid])
            if pid.isdigit() and int(pid) > 0:
                node_pids += tree(int(pid))
        node_version = cmd_out(["docker", "exec", ids[0], "node", "--version"]) if ids else "?"
        for cfg in args.configs:
            if cfg == "pm2-i2":  # front = the daemon (cluster primary), app = its 2 workers
                groups_of[cfg] = {"proxy": [run.pm2_daemon], "dproxy": [], "node": run.pm2_workers}
                rss0[cfg] = rss_mib([run.pm2_daemon])
                rss0["pm2-workers"] = rss_mib(run.pm2_workers)
                continue
            proxy = [] if cfg == "direct" else tree(run.procs[cfg].pid)
            dproxy = dp[B] if cfg == "direct" else dp[B] + dp[B + 1]
            groups_of[cfg] = {"proxy": proxy, "dproxy": dproxy, "node": node_pids}
            rss0[cfg] = rss_mib(proxy) if proxy else float("nan")
        if not dp[B]:
            notes.append("no `docker-proxy -host-port B` process found (userland-proxy off?): "
                         "its CPU is not measured")

        dur = args.duration
        warm = 1 if args.quick else 2
        log(f"warm-up ({warm} s per config, wrk -t1 -c256)")
        for cfg in args.configs:
            measure(run, wrk, cfg, "/healthz", ["-t1", "-c256", f"-d{warm}s"], warm, groups_of[cfg])
        n = len(args.configs)
        for r in range(args.reps):
            order = [args.configs[(i + r) % n] for i in range(n)]  # rotated each repetition
            for c in (64, 256):
                for cfg in order:
                    log(f"rep {r + 1}/{args.reps} c{c} {cfg}")
                    d = measure(run, wrk, cfg, "/healthz",
                                ["-t1", f"-c{c}", f"-d{dur:g}s", "--latency"], dur, groups_of[cfg])
                    d["rep"] = r + 1
                    rows.setdefault((cfg, f"c{c}"), []).append(d)
            for cfg in order:
                log(f"rep {r + 1}/{args.reps} /big {cfg}")
                d = measure(run, wrk, cfg, "/big?mb=10",
                            ["-t1", "-c4", f"-d{dur:g}s", "--latency", "--timeout", "30s"], dur,
                            groups_of[cfg])
                d["rep"] = r + 1
                rows.setdefault((cfg, "big"), []).append(d)
        for cfg in args.configs:
            if cfg == "pm2-i2":
                rss1[cfg] = rss_mib([run.pm2_daemon])
                rss1["pm2-workers"] = rss_mib(run.pm2_workers)
                if any(stat_fields(p) is None for p in [run.pm2_daemon, *run.pm2_workers]):
                    notes.append("a PM2 process (daemon or worker) exited during the run")
                continue
            rss1[cfg] = rss_mib(tree(run.procs[cfg].pid)) if cfg != "direct" else float("nan")
        if "nmc" in run.procs and run.procs["nmc"].poll() is not None:
            notes.append(f"nmc exited during the run (code {run.procs['nmc'].returncode})")
    except Interrupted as e:
        interrupted = str(e)
        log(f"{e}: stopping everything")
    finally:
        nmc_tail = run.nmc_log_tail(10)
        log("stopping pm2 (pm2 kill), nginx, the naive relay, http-proxy and nmc (SIGTERM, by PID)")
        run.stop_all()
        log(f"pm2: {run.pm2_stop}; nmc {run.nmc_exit}; containers left of {run.name}: "
            f"{len(run.leftovers)}{' (removed)' if run.leftovers else ''}")

    if not rows:
        return 130 if interrupted else 1

    # -- the report ----------------------------------------------------------------------------
    took = time.monotonic() - began
    ng = {k: med(rows.get(("nginx-w1", k), []), "rps" if k != "big" else "mibs")
          for k in ("c64", "c256", "big")}
    ng_cpu = med(rows.get(("nginx-w1", "c64"), []), "us_proxy")
    cfg_names = {"direct": "direct (1 replica)", "nginx-w1": "nginx-w1", "naive": "naive (before)",
                 "nmc": "**nmc** (./nmc_server.py)",
                 "pm2-i2": "pm2-i2 (PM2 cluster, 2 workers, no Docker: anchor)",
                 "http-proxy": "http-proxy (node, keep-alive agent)"}
    L = []
    L.append(f"# nmc benchmark, {started_at.strftime('%Y-%m-%d %H:%M:%S UTC')}"
             f"{' (--quick)' if args.quick else ''}")
    L.append("")
    L.append(f"{args.reps} interleaved repetition(s) (config order rotated each time), medians; "
             f"wrk -t1, {args.duration:g} s per run; small = GET /healthz, big = GET /big?mb=10 "
             f"with -c4. All configs relay to the same 2 replicas of one nmc cluster "
             f"(`{run.name}`), published on 127.0.0.1:{run.port.get('direct')} and "
             f"{run.port.get('direct', 0) + 1} through Docker's userland proxy.")
    L.append("")
    L.append("| config | c64 req/s | c64 p50 / p99 ms | c256 req/s | c256 p50 / p99 ms | errors "
             "| CPU µs/req c64 / c256 | x nginx req/s c64 / c256 | x nginx CPU | "
             "docker-proxy µs/req c64 | replicas µs/req c64 | total µs/req c64 | big MiB/s | x nginx big | "
             "RSS MiB start → after |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cfg in args.configs:
        a, b, g = rows.get((cfg, "c64"), []), rows.get((cfg, "c256"), []), rows.get((cfg, "big"), [])
        errs = sum(r["err"] for r in a + b + g)
        sock = sum(r["sock_err"] for r in a + b + g)
        cpu64, cpu256 = med(a, "us_proxy"), med(b, "us_proxy")
        cpu = "— (no proxy)" if cfg == "direct" else f"{fmt(cpu64, 1)} / {fmt(cpu256, 1)}"
        L.append("| " + " | ".join([
            cfg_names[cfg],
            fmt(med(a, "rps")), f"{fmt(med(a, 'p50'), 2)} / {fmt(med(a, 'p99'), 1)}",
            fmt(med(b, "rps")), f"{fmt(med(b, 'p50'), 2)} / {fmt(med(b, 'p99'), 1)}",
            f"{errs}" + (f" ({sock} socket)" if errs and sock else ""),
            cpu,
            f"{ratio(med(a, 'rps'), ng['c64'])} / {ratio(med(b, 'rps'), ng['c256'])}",
            "—" if cfg == "direct" else ratio(cpu64, ng_cpu),
            "— (no Docker)" if cfg == "pm2-i2" else fmt(med(a, "us_dproxy"), 1),
            fmt(med(a, "us_node"), 1), fmt(med(a, "us_total"), 1),
            fmt(med(g, "mibs")), ratio(med(g, "mibs"), ng["big"]),
            "—" if cfg == "direct" else f"{fmt(rss0.get(cfg, float('nan')), 1)} → "
                                        f"{fmt(rss1.get(cfg, float('nan')), 1)}" + (
                " (daemon; workers {} → {})".format(fmt(rss0.get("pm2-workers", float("nan")), 1),
                                                    fmt(rss1.get("pm2-workers", float("nan")), 1))
                if cfg == "pm2-i2" else ""),
        ]) + " |")
    for name, what in TODO:
        L.append(f"| {name} | TODO: {what} |" + " |" * 13)
    L.append("")
    L.append("Columns: errors = wrk socket errors (connect/read/write/timeout) + non-2xx answers, "
             "summed over all runs of the config. CPU µs/req = utime+stime of the proxy's process "
             "tree (nginx master+worker; the Python process with its threads; the node process of "
             "http-proxy; for pm2-i2 the PM2 daemon only) ÷ requests; "
             "x nginx = ratio to nginx-w1 in the same run (req/s: higher is better; CPU: how many "
             "times nginx's CPU per request). docker-proxy = the `docker-proxy -host-port` "
             "processes in the path (B only for direct, B and B+1 for the relays); replicas = the "
             "two containers' node processes; total = the three (what the machine spends per "
             "request, wrk and the kernel's loopback work aside). RSS = VmRSS of the proxy's "
             "process tree after start-up and after all load. CPU % of the machine (2 CPUs = "
             "200 %) during each run is in the per-run table below, with the share no measured "
             "process accounts for (\"unattributed\": the kernel's softirq work on loopback, "
             "dockerd, and anything else running on the machine at the same time; a high value "
             "flags a run disturbed by other load).")
    if "pm2-i2" in args.configs:
        L.append("")
        L.append("pm2-i2 is an anchor, not a like-for-like: PM2 cluster mode runs the site itself "
                 "(nodejs/server.js, 2 workers on the host's node, outside Docker), so there is no "
                 "proxy and no docker-proxy in its path: the daemon (cluster primary) accepts each "
                 "connection once and hands its fd to a worker. Its CPU µs/req column is the PM2 "
                 "daemon alone (front); its replicas column is its 2 workers; total = the two. "
                 "Compare its total with the relays' totals (proxy + docker-proxy + replicas). "
                 "Balance is per connection, not per request (a keep-alive connection stays on one "
                 "worker). http-proxy is a per-request relay like nginx and nmc, on the same "
                 "replicas and docker-proxies.")
    if notes:
        L.append("")
        L += [f"- {n}" for n in notes]
    if interrupted:
        L.append(f"\n**Interrupted by {interrupted}: partial results.**")

    L.append("\n## Per run\n")
    L.append("| config | load | rep | req/s | p50 ms | p99 ms | MiB/s | errors | proxy CPU % | "
             "proxy µs/req | docker-proxy CPU % / µs/req | replicas CPU % | wrk CPU % | machine busy % | "
             "unattributed % |")
    L.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for cfg in args.configs:
        for kind in ("c64", "c256", "big"):
            for r in rows.get((cfg, kind), []):
                L.append("| " + " | ".join([
                    cfg, kind, str(r.get("rep", "")), fmt(r["rps"]), fmt(r["p50"], 2),
                    fmt(r["p99"], 1), fmt(r["mibs"]), str(r["err"]),
                    "—" if cfg == "direct" else fmt(r.get("pct_proxy", float("nan"))),
                    "—" if cfg == "direct" else fmt(r.get("us_proxy", float("nan")), 1),
                    "— (no Docker)" if cfg == "pm2-i2" else
                    f"{fmt(r.get('pct_dproxy', float('nan')))} / {fmt(r.get('us_dproxy', float('nan')), 1)}",
                    fmt(r.get("pct_node", float("nan"))), fmt(r.get("pct_wrk", float("nan"))),
                    fmt(r["machine_busy_pct"]), fmt(r.get("pct_other", float("nan"))),
                ]) + " |" + (f" wrk failed: {r['failed']!r}" if "failed" in r else ""))

    L.append("\n## Commands\n")
    L.append("```")
    L.append(f"make bench{' QUICK=1' if args.quick else ''}   ->   "
             f"{Path(sys.executable).relative_to(ROOT) if str(sys.executable).startswith(str(ROOT)) else sys.executable} "
             f"bench/bench.py {' '.join(sys.argv[1:])}")
    for cfg in args.configs:
        L.append(f"{cfg:9} {run.commands.get(cfg, '')}")
    warm = 1 if args.quick else 2
    L.append(f"warm-up   wrk -t1 -c256 -d{warm}s http://127.0.0.1:PORT/healthz   (once per config)")
    L.append(f"small     wrk -t1 -c64 -d{args.duration:g}s --latency http://127.0.0.1:PORT/healthz")
    L.append(f"          wrk -t1 -c256 -d{args.duration:g}s --latency http://127.0.0.1:PORT/healthz")
    L.append(f"big       wrk -t1 -c4 -d{args.duration:g}s --latency --timeout 30s "
             f"'http://127.0.0.1:PORT/big?mb=10'")
    L.append("order     per repetition: c64 for every config, c256 for every config, big for "
             "every config; config order rotated by one each repetition")
    L.append("```")

    L.append("\n## Machine and versions\n")
    model = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                  if l.startswith("model name")), "?")
    try:
        import importlib.metadata as md
        pyver = ", ".join(f"{p} {md.version(p)}" for p in ("gevent", "greenlet", "requests", "urllib3"))
    except Exception:
        pyver = "?"
    load = Path("/proc/loadavg").read_text().split()[:3]
    L.append(f"- nproc {os.cpu_count()}, CPU `{model}`, kernel {platform.release()}, "
             f"load average at the end {' '.join(load)}")
    L.append(f"- {cmd_out([wrk, '-v']).splitlines()[0] if cmd_out([wrk, '-v']) else 'wrk ?'}; "
             f"{cmd_out([tools['nginx'], '-v']) if tools['nginx'] else 'nginx: not installed'}; "
             f"Docker {cmd_out(['docker', 'version', '-f', '{{.Server.Version}}'])}; "
             f"node in the image {node_version}" +
             (f"; host node {run.versions.get('node', '?')}, pm2 {run.versions.get('pm2', '?')}, "
              f"http-proxy {run.versions.get('http-proxy', '?')} (npm, temp folder)"
              if run.versions else ""))
    L.append(f"- Python {platform.python_version()}, {pyver}; "
             f"{cmd_out([sys.executable, str(ROOT / 'nmc_server.py'), '-v'])}")
    L.append(f"- source: {source_state()}")
    if run.pm2_stop != "not started":
        L.append(f"- pm2 stop: {run.pm2_stop}")
    L.append(f"- nmc stop: {run.nmc_exit}; containers labelled nmc.cluster={run.name} left: "
             f"{len(run.leftovers)}{' (removed by bench.py)' if run.leftovers else ''}")
    L.append(f"- run took {took:.0f} s" + (f" (nmc answered after {t_nmc:.1f} s)" if t_nmc else ""))
    if nmc_tail:
        L.append("\nnmc's last log lines:\n\n```\n" + nmc_tail + "\n```")

    report = "\n".join(L) + "\n"
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{stamp}.md"
    out.write_text(report)
    log(f"written {out.relative_to(ROOT)} ({took:.0f} s)")
    return 130 if interrupted else 0


def source_state() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "nmc", "nmc_server.py"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=5).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    files = [line[3:] for line in changed if line.strip()]
    return f"commit {head or '?'}" + (f", with uncommitted changes to {', '.join(files)}" if files else "")


if __name__ == "__main__":
    sys.exit(main())
