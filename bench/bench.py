#!/usr/bin/env python3
"""`make bench`: nmc against the limit (direct), nginx and a naive gevent + requests relay, all on
the SAME two replicas, in one bounded run; a markdown table printed and written to
bench/results/bench-<UTC time>.md.

  1. starts ./nmc_server.py --name nmc-bench-<rand> --bind 127.0.0.1 --port P --base-port B -n 2 -q
     (config `nmc`); every other config is pointed at its two replica ports B and B+1;
  2. `direct`   wrk straight at 127.0.0.1:B (one replica: the limit);
  3. `nginx-w1` nginx, 1 worker, round-robin upstream B/B+1, keepalive 256 (bench/nginx.conf.tmpl);
  4. `naive`    bench/naive_proxy.py (gevent pywsgi + one default requests.Session);
  then per config: GET /healthz with wrk -t1 -c64 and -c256 --latency (10 s, 3 s with --quick),
  GET /big?mb=10 with wrk -t1 -c4; a warm-up first, then --reps interleaved repetitions (the
  order of the configs rotated each time), medians. CPU per request = utime+stime from
  /proc/PID/stat (parsed after the `(comm)` field) of the proxy's process tree, and separately
  of Docker's userland proxies (`docker-proxy ... -host-port B`) and of the replicas' node
  processes. RSS of the proxy's tree at start and after all load.

Everything started here is stopped at the end by PID (try/finally, also on Ctrl-C / SIGTERM):
wrk, nginx, the naive relay, and nmc (SIGTERM: it removes its replicas; the run then checks that
no container labelled nmc.cluster=<its name> is left, and removes any it finds).

Needs wrk and nginx (installed with apt-get when missing and run as root), Docker, the
nodejs.org image and .venv (make bench does venv + nodejs first).
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
CONFIGS = ("direct", "nginx-w1", "naive", "nmc")
TODO = (("gunicorn-w2", "gunicorn -k gevent -w 2 nmc.wsgi:app (nmc's WSGI app, coming)"),
        ("pm2-i2", "PM2 cluster mode, 2 instances (see baselines/node/run_node.sh)"),
        ("http-proxy", "node http-proxy, keep-alive agent (see baselines/node/hp_proxy.js)"))
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
        for name in ("naive", "nginx-w1"):
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
        base = free_ports(5)  # P = base, replicas base+1 / base+2, nginx base+3, naive base+4
        P, B = base, base + 1
        log(f"starting nmc (cluster {run.name}) on 127.0.0.1:{P}, replicas on {B} and {B + 1}")
        run.start_nmc(P, B)
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
        for cfg in ("nginx-w1", "naive"):
            if cfg in args.configs and not wait_http(run.port[cfg], 15, run.procs[cfg]):
                log(f"{cfg} does not answer: skipped")
                notes.append(f"{cfg} did not start (answer /healthz within 15 s): skipped")
                args.configs.remove(cfg)
        dp = {B: docker_proxy_pids(B), B + 1: docker_proxy_pids(B + 1)}
        ids = run.containers()
        node_pids = []
        for cid in ids:
            pid = cmd_out(["docker", "inspect", "-f", "{{.State.Pid}}", cid])
            if pid.isdigit() and int(pid) > 0:
                node_pids += tree(int(pid))
        node_version = cmd_out(["docker", "exec", ids[0], "node", "--version"]) if ids else "?"
        for cfg in args.configs:
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
            rss1[cfg] = rss_mib(tree(run.procs[cfg].pid)) if cfg != "direct" else float("nan")
        if "nmc" in run.procs and run.procs["nmc"].poll() is not None:
            notes.append(f"nmc exited during the run (code {run.procs['nmc'].returncode})")
    except Interrupted as e:
        interrupted = str(e)
        log(f"{e}: stopping everything")
    finally:
        nmc_tail = run.nmc_log_tail(10)
        log("stopping nginx, the naive relay and nmc (SIGTERM, by PID)")
        run.stop_all()
        log(f"nmc {run.nmc_exit}; containers left of {run.name}: "
            f"{len(run.leftovers)}{' (removed)' if run.leftovers else ''}")

    if not rows:
        return 130 if interrupted else 1

    # -- the report ----------------------------------------------------------------------------
    took = time.monotonic() - began
    ng = {k: med(rows.get(("nginx-w1", k), []), "rps" if k != "big" else "mibs")
          for k in ("c64", "c256", "big")}
    ng_cpu = med(rows.get(("nginx-w1", "c64"), []), "us_proxy")
    cfg_names = {"direct": "direct (1 replica)", "nginx-w1": "nginx-w1", "naive": "naive (before)",
                 "nmc": "**nmc** (./nmc_server.py)"}
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
            fmt(med(a, "us_dproxy"), 1), fmt(med(a, "us_node"), 1), fmt(med(a, "us_total"), 1),
            fmt(med(g, "mibs")), ratio(med(g, "mibs"), ng["big"]),
            "—" if cfg == "direct" else f"{fmt(rss0.get(cfg, float('nan')), 1)} → "
                                        f"{fmt(rss1.get(cfg, float('nan')), 1)}",
        ]) + " |")
    for name, what in TODO:
        L.append(f"| {name} | TODO: {what} |" + " |" * 13)
    L.append("")
    L.append("Columns: errors = wrk socket errors (connect/read/write/timeout) + non-2xx answers, "
             "summed over all runs of the config. CPU µs/req = utime+stime of the proxy's process "
             "tree (nginx master+worker; the Python process with its threads) ÷ requests; "
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
             f"node in the image {node_version}")
    L.append(f"- Python {platform.python_version()}, {pyver}; "
             f"{cmd_out([sys.executable, str(ROOT / 'nmc_server.py'), '-v'])}")
    L.append(f"- source: {source_state()}")
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
