#!/usr/bin/env python3
"""`make bench`: nmc against the limit (direct), nginx, a naive gevent + requests relay, nmc under
gunicorn, PM2 and node's http-proxy, nmc and nginx over HTTPS, and a WebSocket echo, in one
bounded run on one machine; one markdown table (with the issue's targets, met or not, under it)
printed and written to bench/results/bench-<UTC time>.md.

Configs (all but pm2-i2 and gunicorn-w2 relay to the SAME two replicas, those of `nmc`):
  `nmc`         ./nmc_server.py --name nmc-bench-<rand> --bind 127.0.0.1 --port P --base-port B -n 2 -q
  `direct`      wrk straight at 127.0.0.1:B (one replica: the limit)
  `nginx-w1`    nginx, 1 worker, round-robin upstream B/B+1, keepalive 256 (bench/nginx.conf.tmpl)
  `naive`       bench/naive_proxy.py (gevent pywsgi + one default requests.Session)
  `pywsgi-floor` bench/floor_relay.py: pywsgi with nmc's fixes for small answers + the least
                exchange with a replica, nothing else (not a proxy: the floor under nmc's design)
  `gunicorn-w2` gunicorn -c python:nmc.gunicorn_conf -w 2 nmc.wsgi:app with NMC_* variables: a cluster of its own
                (nmc-bench-<rand>-g, 2 replicas of the same image on ports G/G+1), since its
                supervising worker starts and removes its replicas itself
  `pm2-i2`      PM2 cluster mode running the site itself (nodejs/server.js -i 2, no containers,
                no docker-proxy: an anchor, not a like-for-like)
  `http-proxy`  bench/node/hp_proxy.js (npm http-proxy 1.18.1, keep-alive agent; WebSocket
                upgrades through proxy.ws, round-robin too)
  `nmc-tls`     ./nmc_server.py --name <nmc's> --port T --base-port B -n 2 -q --keep --admin-port 0
                --certfile C --keyfile K: a second nmc that adopts nmc's two replicas (same name,
                same settings; NMC_RUN_DIR of its own, for its socket) and, with --keep, leaves
                them to nmc on exit; stopped before nmc
  `nginx-tls`   nginx-w1's configuration with `listen ... ssl` and NGINX_TLS (Mozilla's
                "intermediate": TLS 1.2 and 1.3, shared session cache 10m, no tickets)
C and K: a self-signed ECDSA P-256 certificate for localhost and 127.0.0.1 that the run makes with
openssl in its temp folder (removed with it).
pm2@7 and http-proxy@1.18.1 are `npm install`ed into the run's temp folder (PM2_HOME there too);
without node/npm, or without gunicorn / nmc/wsgi.py, those configs are written as skipped.

Loads, per config (wrk -t1): GET /healthz at -c64 and -c256 (--latency); GET /big?mb=10 and POST
/echo with a 10 MiB body (wrk Lua script), both at -c4; for nginx-w1, nmc, gunicorn-w2, pm2-i2 and
http-proxy also GET /healthz at -c64 with a new connection per request ("fresh"). The TLS configs:
GET /healthz at -c64 only, kept alive and with a new connection per request ("fresh": -H
'Connection: close', so a full TLS handshake each, wrk resumes no session); no idle test
(bench/idle_conns.py speaks plain HTTP). pywsgi-floor: GET /healthz at -c64 only, no idle test. A
warm-up (wrk -c256 /healthz) first, then --reps interleaved repetitions (every config at c64, then
c256, GET 10 MiB, POST 10 MiB, fresh, then the WebSocket echo; the order of the configs rotated each
repetition), medians. The WebSocket echo (bench/ws_echo.py; not with --no-ws), for direct, nginx-w1
(a `location = /ws` with Upgrade and Connection: upgrade), nmc and http-proxy:
bench/node/ws_echo_client.js (the host's node, one process) opens 64 WebSockets to /ws, then each
sends a 32-byte masked text message and waits for its echo, again and again for --duration s;
messages/s, round trip p50/p99, errors (sockets that failed to open, closed early or echoed
something else) and CPU µs per message of each group below during the messages only, and the
client's own CPU. Each repetition ends with the start-up test: ./nmc_server.py -n 1 and -n 8
(throwaway cluster, free ports, image already built) from process start to its "serving on" line,
and `docker run` x1 / x8 alone (the floor), in alternating order; all their containers removed.
After the repetitions: RSS after load, then per proxy the idle test (bench/idle_conns.py: 5,000
keep-alive client connections that did one request each, held idle; RSS and kB per connection).

Measured: req/s, p50/p99 (wrk), errors (socket errors + non-2xx), CPU µs per request of the
proxy's process tree (utime+stime from /proc/PID/stat), and separately of Docker's userland
proxies and of the replicas' node processes; MiB/s of the 10 MiB transfers (good answers x
10 MiB / s); RSS of the proxy's tree at start, after load, its peak during the 10 MiB runs
(sampled every 0.1 s) and with 5,000 idle connections; ratios to nginx-w1 from the same run.

Duration: a full run is (7 configs x 4 loads + 2 TLS configs x 2 loads + pywsgi-floor's 1) x --reps
3 x --duration 5 s = 495 s of wrk, plus ~0.3 s per wrk run (99 runs), the WebSocket echo 4 configs x
3 x 5 s (+ ~0.3 s each to open and close: ~64 s), warm-up 10 x 2 s, start-up tests 3 x ~7 s, idle
tests 6 x 5-17 s (held 3 s), set-up (npm install ~10 s, up to 60 s on a cold npm cache) and stopping
(~5 s): about 11-12 minutes (measured: 539 s on the 2-core dev VM, busy with other work, before the
TLS configs, which add ~70 s, and the WebSocket echo, ~64 s). --quick: 1 repetition of 2 s runs (64
s of wrk), warm-up 9 x 1 s, one start-up test, idle tests held 1 s: about 2.5 minutes (measured: 128
to 154 s before the TLS configs, which add ~12 s, and the WebSocket echo, ~10 s; the idle tests are
half of it). An apt-get install of wrk/nginx on a fresh machine comes on top, once.

Everything started here is stopped at the end by PID (try/finally, also on Ctrl-C / SIGTERM): PM2
with `pm2 kill` (then SIGKILL by PID for any of its daemon/workers left), wrk, the WebSocket client
(it ends by itself; killed by ws_echo.py otherwise), both nginx, the naive relay, pywsgi-floor,
http-proxy, nmc-tls (SIGTERM, first), gunicorn (SIGTERM to the master) and nmc (SIGTERM); both
remove their replicas, and the run then removes any container still labelled with their cluster
names, and the temp folder (certificate and key included).

Needs wrk and nginx (installed with apt-get when missing and run as root), Docker, the
nodejs.org image and .venv (make bench does venv + nodejs first).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: harness/

from harness import ROOT  # noqa: E402
from harness.ports import free_port_block, http_ok  # noqa: E402
from harness.processes import cmd_out, own_session  # noqa: E402
from harness.procfs import (CLK_TCK, alive, docker_proxy_pids, machine_ticks, rss_kib,  # noqa: E402
                            rss_mib, stat_fields, ticks, tree)
from idle_conns import idle_test  # noqa: E402
from nmc.containers import LABEL_CLUSTER  # noqa: E402
from report import TLS_CONFIGS  # noqa: E402
from startup_time import admin_args, labelled, remove_labelled, time_docker, time_nmc  # noqa: E402
from ws_echo import CONFIGS as WS_CONFIGS, ws_echo  # noqa: E402

BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
CONFIGS = ("direct", "nginx-w1", "naive", "pywsgi-floor", "nmc", "gunicorn-w2", "pm2-i2",
           "http-proxy", "nmc-tls", "nginx-tls")
NODE_CONFIGS = ("pm2-i2", "http-proxy")  # need node + npm (pm2, http-proxy from the registry)
PLAIN_LOADS = ("c64", "c256", "get10", "post10")
TLS_LOADS = ("c64", "fresh")  # fresh: a new connection (so a TLS handshake) per request
LOADS = (*PLAIN_LOADS, "fresh")
# The relays measured with a new connection per request over plain HTTP too, as health checkers
# and webhooks send (not direct: no relay; not naive: too slow to say anything)
FRESH_CONFIGS = ("nginx-w1", "nmc", "gunicorn-w2", "pm2-i2", "http-proxy")


def loads_of(cfg: str) -> tuple[str, ...]:
    if cfg in TLS_CONFIGS:
        return TLS_LOADS
    if cfg == "pywsgi-floor":  # GET without a body only; what it tells is CPU per request at c64
        return ("c64",)
    return (*PLAIN_LOADS, "fresh") if cfg in FRESH_CONFIGS else PLAIN_LOADS
# Mozilla's "intermediate" server settings (ssl-config.mozilla.org, nginx), without the DHE
# suites (no dhparam file): TLS 1.2 and 1.3, a shared session cache, no session tickets
TLS12_SUITES = ":".join(f"ECDHE-{key}-{cipher}" for cipher in ("AES128-GCM-SHA256",
                        "AES256-GCM-SHA384", "CHACHA20-POLY1305") for key in ("ECDSA", "RSA"))
NGINX_TLS = f"""        ssl_certificate @CERT@;
        ssl_certificate_key @KEY@;
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_ciphers {TLS12_SUITES};
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:MozSSL:10m;
        ssl_session_timeout 1d;
        ssl_session_tickets off;"""
CERT_KEY = "ECDSA P-256"  # certbot's default key since 2.0
NPM_PACKAGES = ("pm2@7", "http-proxy@1.18.1")
NPM_LIMIT = 300.0
PM2_LIMIT = 60.0
NMC_START_LIMIT = 120.0
NMC_STOP_LIMIT = 30.0
GUNICORN_STOP_LIMIT = 45.0  # its graceful timeout (30 s) + removing the replicas
ENGINE_PATIENCE = 90.0  # seconds the clean-up waits for an engine that does not answer
BIG_MIB = 10
IDLE_CONNS = 5000
UNIT = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}
NAN = float("nan")


class Interrupted(Exception):
    pass


BEGAN = time.monotonic()


def log(msg: str) -> None:
    print(f"bench: [{time.monotonic() - BEGAN:3.0f} s] {msg}", file=sys.stderr, flush=True)


def wait_http(port: int, limit: float, proc: subprocess.Popen | None = None,
              in_a_row: int = 1, context: ssl.SSLContext | None = None) -> bool:
    """Until IN_A_ROW GETs of /healthz in a row (each on a new connection; over TLS with
    CONTEXT) answer 2xx."""
    deadline = time.monotonic() + limit
    good = 0
    while time.monotonic() < deadline:
        good = good + 1 if http_ok(port, context=context) else 0
        if good >= in_a_row:
            return True
        if proc is not None and proc.poll() is not None:
            return False
        if not good:
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


# -- wrk -----------------------------------------------------------------------------------------

def lat_ms(s: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", s)
    return float(m.group(1)) * UNIT[m.group(2)] if m else NAN


def parse_wrk(text: str) -> dict | None:
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        return None
    d = {"rps": float(m.group(1))}
    for p in ("50", "99"):
        m = re.search(r"^\s+%s(?:\.0+)?%%\s+(\S+)" % p, text, re.M)
        d["p" + p] = lat_ms(m.group(1)) if m else NAN
    m = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    d["reqs"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    d["sock"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups()))) if m else {}
    d["sock_err"] = sum(d["sock"].values())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    d["non2xx"] = int(m.group(1)) if m else 0
    d["err"] = d["sock_err"] + d["non2xx"]
    # the 10 MiB loads: good answers x 10 MiB per second, the same way for GET and POST (wrk's
    # Transfer/sec counts only what it read: the echo's JSON for the POST)
    d["mibs"] = d["rps"] * (1 - d["non2xx"] / d["reqs"]) * BIG_MIB if d["reqs"] else NAN
    return d


POST_LUA = f"""-- POST /echo with a {BIG_MIB} MiB body (wrk sets Content-Length); the site hashes it
wrk.method = "POST"
wrk.body = string.rep("x", {BIG_MIB} * 1024 * 1024)
wrk.headers["Content-Type"] = "application/octet-stream"
"""


def load_args(load: str, dur: float, lua: Path) -> tuple[list[str], str]:
    """wrk options and URL path of one load."""
    if load in ("c64", "c256"):
        return ["-t1", f"-{load}", f"-d{dur:g}s", "--latency"], "/healthz"
    if load == "fresh":  # the server closes after each answer; wrk connects again
        return ["-t1", "-c64", f"-d{dur:g}s", "--latency", "-H", "Connection: close"], "/healthz"
    big = ["-t1", "-c4", f"-d{dur:g}s", "--latency", "--timeout", "30s"]
    if load == "get10":
        return big, f"/big?mb={BIG_MIB}"
    return [*big, "-s", str(lua)], "/echo"


# -- the processes under test --------------------------------------------------------------------

class Run:
    """Everything this run started (by PID) and how to stop it."""

    def __init__(self, args):
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="nmc-bench-"))
        self.procs: dict[str, subprocess.Popen] = {}
        self.port: dict[str, int] = {}
        self.commands: dict[str, str] = {}
        self.logs: dict[str, str] = {}  # config -> its log file in TMP
        self.wrk: subprocess.Popen | None = None
        self.name = "nmc-bench-%06x" % random.SystemRandom().randrange(16**6)
        self.g_name = self.name + "-g"
        self.leftovers: dict[str, int] = {}
        self.exits: dict[str, str] = {}
        self.deps = self.tmp / "deps"
        self.pm2_home = self.tmp / "pm2home"
        self.pm2_daemon: int | None = None
        self.pm2_workers: list[int] = []
        self.pm2_stop: str = "not started"
        self.versions: dict[str, str] = {}
        self.cert = self.key = self.client_tls = None  # make_cert
        self.tls: dict[str, str] = {}  # what a client negotiated with each TLS config

    def start(self, name: str, argv: list[str], port: int, display: str, log_name: str, **kw) -> None:
        self.commands[name] = display
        self.port[name] = port
        self.logs[name] = log_name
        with open(self.tmp / log_name, "wb") as out:
            self.procs[name] = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                                stdout=out, stderr=subprocess.STDOUT,
                                                **own_session(), **kw)

    def start_nmc(self, cfg: str, port: int, base: int, *more: str,
                  run_dir: Path | None = None) -> None:
        """`run_dir`: a run directory of its own (NMC_RUN_DIR), for a second nmc-server of
        the same --name (its socket there does not meet the first one's)."""
        argv = ["./nmc_server.py", "--name", self.name, "--bind", "127.0.0.1", "--port", str(port),
                "--base-port", str(base), "-n", "2", "-q", *more]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if run_dir is not None:
            run_dir.mkdir(mode=0o700, exist_ok=True)
            env["NMC_RUN_DIR"] = str(run_dir)
        self.start(cfg, [sys.executable, *argv], port,
                   " ".join(argv).replace(str(self.tmp), "TMP"), f"{cfg}.log", env=env)

    def make_cert(self) -> str | None:
        """A self-signed certificate for localhost and 127.0.0.1 (CERT_KEY) and its key in
        TMP/tls, removed with TMP, and a client context that trusts it; None when done, else
        why not."""
        d = self.tmp / "tls"
        d.mkdir()
        self.cert, self.key = d / "cert.pem", d / "key.pem"
        argv = ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(self.key), "-out",
                str(self.cert), "-days", "2", "-subj", "/CN=localhost",
                "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
        self.commands["certificate"] = " ".join(argv).replace(str(self.tmp), "TMP")
        self.cert_key = CERT_KEY
        try:
            r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"openssl: {e}"
        if r.returncode != 0:
            return "openssl req failed: " + r.stderr[-300:].replace("\n", " ")
        self.client_tls = ssl.create_default_context(cafile=str(self.cert))
        return None

    def tls_of(self, cfg: str) -> str:
        """What a default client (Python's ssl, OpenSSL as wrk's) negotiates with CFG."""
        try:
            with socket.create_connection(("127.0.0.1", self.port[cfg]), timeout=5) as raw, \
                    self.client_tls.wrap_socket(raw, server_hostname="127.0.0.1") as s:
                return f"{s.version()} {s.cipher()[0]}"
        except (OSError, ValueError) as e:
            return f"? ({e})"

    def gunicorn_missing(self) -> str | None:
        """Why gunicorn-w2 cannot run here, or None."""
        if not (ROOT / "nmc" / "wsgi.py").exists():
            return "nmc/wsgi.py does not exist (yet)"
        if not (Path(sys.executable).parent / "gunicorn").exists():
            return f"no gunicorn next to {sys.executable} (pip install -e '.[test]')"
        return None

    def start_gunicorn(self, port: int, base: int, admin: int) -> None:
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        # gunicorn's defaults would cap and cut the idle test (--worker-connections 1000 per
        # worker, --keep-alive 2 s): each worker gets nmc's own --max-connections 10000 and
        # --idle-timeout 60 instead. No control socket: not in $HOME, shared with other runs.
        opts = ["-c", "python:nmc.gunicorn_conf", "-w", "2", "-b", f"127.0.0.1:{port}",
                "--worker-connections", "10000", "--keep-alive", "60"]
        if "--no-control-socket" in cmd_out([gunicorn, "--help"]):
            opts.append("--no-control-socket")
        env = {"NMC_NAME": self.g_name, "NMC_REPLICAS": "2", "NMC_BASE_PORT": str(base),
               "NMC_QUIET": "1", "NMC_ADMIN_PORT": str(admin),  # ignored by an nmc without one
               "NMC_RUN_DIR": str(self.tmp / "gunicorn-run")}
        (self.tmp / "gunicorn-run").mkdir()
        shown = " ".join(f"{k}={v}" for k, v in env.items() if k != "NMC_RUN_DIR")
        self.start("gunicorn-w2", [gunicorn, *opts, "nmc.wsgi:app"], port,
                   f"{shown} NMC_RUN_DIR=TMP gunicorn {' '.join(opts)} nmc.wsgi:app",
                   "gunicorn.log", env={**os.environ, **env, "PYTHONUNBUFFERED": "1"})

    def start_nginx(self, cfg: str, nginx: str, port: int, base: int) -> None:
        d = self.tmp / cfg
        d.mkdir()
        conf = (BENCH / "nginx.conf.tmpl").read_text()
        tls = cfg in TLS_CONFIGS
        for k, v in {"@WORKERS@": "1", "@PORT@": str(port), "@PREFIX@": str(d),
                     "@B1@": str(base), "@B2@": str(base + 1), "@SSL@": " ssl" if tls else "",
                     "@TLS@": NGINX_TLS if tls else ""}.items():
            conf = conf.replace(k, v)
        if tls:
            conf = conf.replace("@CERT@", str(self.cert)).replace("@KEY@", str(self.key))
        (d / "nginx.conf").write_text(conf)
        self.start(cfg, [nginx, "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")],
                   port, f"nginx -p TMP -e TMP/error.log -c TMP/nginx.conf   "
                         f"(bench/nginx.conf.tmpl, 1 worker, upstream {base},{base + 1}, port {port}"
                         f"{', listen ssl, NGINX_TLS of bench.py' if tls else ''})",
                   f"{cfg}/stderr.log")

    def start_naive(self, port: int, base: int) -> None:
        argv = ["bench/naive_proxy.py", str(port), str(base), str(base + 1)]
        self.start("naive", [sys.executable, *argv], port, " ".join(argv), "naive.log")

    def start_floor(self, port: int, base: int) -> None:
        argv = ["bench/floor_relay.py", str(port), str(base), str(base + 1)]
        self.start("pywsgi-floor", [sys.executable, *argv], port, " ".join(argv),
                   "pywsgi-floor.log")

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
        try:
            return json.loads((self.deps / "node_modules" / pkg / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            return "?"

    def start_http_proxy(self, port: int, base: int) -> None:
        argv = ["node", "bench/node/hp_proxy.js", str(port), str(base), str(base + 1)]
        self.start("http-proxy", argv, port,
                   f"NODE_PATH=TMP/deps/node_modules {' '.join(argv)}   (http-proxy "
                   f"{self.versions.get('http-proxy', '?')}, keep-alive agent maxSockets 256)",
                   "http-proxy.log", env={**os.environ, "NODE_PATH": str(self.deps / "node_modules")})

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
            left = [p for p in pids if alive(p)]
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

    def log_tail(self, log_name: str, n: int = 20) -> str:
        try:
            return "\n".join((self.tmp / log_name).read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def pm2_pids(self) -> list[int]:
        return ([self.pm2_daemon] if self.pm2_daemon else []) + self.pm2_workers

    def stop_all(self) -> None:
        if self.wrk is not None and self.wrk.poll() is None:
            self.wrk.kill()
            self.wrk.wait(5)
        try:
            self.stop_pm2()
        except Exception as e:  # never skip the rest of the stopping
            log(f"stopping pm2: {e!r}")
        for name in ("naive", "pywsgi-floor", "nginx-w1", "nginx-tls", "http-proxy"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)  # nginx: fast shutdown of master + worker
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    log(f"{name} (pid {p.pid}) did not exit on SIGTERM: SIGKILL")
                    p.kill()
                    p.wait(5)
        # nmc-tls first: it serves nmc's replicas (--keep: it leaves them), and would replace
        # them if nmc removed them under it
        if "nmc-tls" in self.procs:
            self.stop_and_wait("nmc-tls", NMC_STOP_LIMIT)
        # both at once: each removes its own replicas
        stopping = {cfg: time.monotonic() for cfg in ("nmc", "gunicorn-w2")
                    if cfg in self.procs and self.procs[cfg].poll() is None}
        for cfg in stopping:
            self.procs[cfg].send_signal(signal.SIGTERM)  # gunicorn: to the master
        for cfg, cluster, limit in (("nmc", self.name, NMC_STOP_LIMIT),
                                    ("gunicorn-w2", self.g_name, GUNICORN_STOP_LIMIT)):
            if cfg not in self.procs:
                continue
            self.stop_and_wait(cfg, limit, stopping.get(cfg))
            # with the patience for an engine being restarted (others' tests do that here), in
            # which nmc's own removal fails and live-restore keeps the replicas running
            left = remove_labelled(cluster, patience=ENGINE_PATIENCE)
            self.leftovers[cluster] = left
            if left:
                log(f"{left} container(s) of cluster {cluster} left after {cfg} stopped: removed")
                if labelled(cluster):
                    log(f"!! containers labelled {LABEL_CLUSTER}={cluster} still there")
        shutil.rmtree(self.tmp, ignore_errors=True)

    def stop_and_wait(self, cfg: str, limit: float, since: float | None = None) -> None:
        """SIGTERM to CFG (unless sent at SINCE already), up to LIMIT s from then for it to exit,
        then SIGKILL to its tree (gunicorn's workers too); how it went into self.exits."""
        p = self.procs[cfg]
        if since is None:
            if p.poll() is not None:
                self.exits[cfg] = f"had already exited (code {p.returncode})"
                return
            since = time.monotonic()
            p.send_signal(signal.SIGTERM)
        try:
            p.wait(max(0.1, since + limit - time.monotonic()))
            self.exits[cfg] = (f"exit code {p.returncode} "
                               f"{time.monotonic() - since:.1f} s after SIGTERM")
        except subprocess.TimeoutExpired:
            for pid in reversed(tree(p.pid)):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            p.wait(5)
            self.exits[cfg] = f"did not exit within {limit:g} s of SIGTERM: SIGKILLed"


# -- measuring -----------------------------------------------------------------------------------

def measure(run: Run, wrk: str, cfg: str, path: str, wrk_args: list[str], dur: float,
            groups: dict[str, list[int]], rss_pids: list[int] | None = None) -> dict:
    """One wrk run against cfg; CPU ticks of each group of PIDs around it; with RSS_PIDS, their
    RSS before the run and its peak during it (sampled every 0.1 s)."""
    t0 = {g: sum(ticks(p) for p in pids) for g, pids in groups.items()}
    m0 = machine_ticks()
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # only wrk is reaped in here: its CPU
    rss0 = peak = rss_kib(rss_pids) if rss_pids else 0
    w0 = time.monotonic()
    scheme = "https" if cfg in TLS_CONFIGS else "http"
    argv = [wrk, *wrk_args, f"{scheme}://127.0.0.1:{run.port[cfg]}{path}"]
    run.wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = w0 + dur + 40
    while run.wrk.poll() is None and time.monotonic() < deadline:  # its output fits the pipe
        time.sleep(0.1)
        if rss_pids:
            peak = max(peak, rss_kib(rss_pids))
    killed = run.wrk.poll() is None
    if killed:
        run.wrk.kill()
    out, _ = run.wrk.communicate(timeout=5)
    if killed:
        out += "\n(wrk killed: took too long)"
    wall = time.monotonic() - w0
    run.wrk = None
    m1 = machine_ticks()
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    d = parse_wrk(out) or {"rps": NAN, "p50": NAN, "p99": NAN, "mibs": NAN, "reqs": 0,
                           "sock_err": 0, "non2xx": 0, "err": 0, "failed": out[-500:]}
    d["wall"] = wall
    if rss_pids:
        d["rss_before"], d["rss_growth"] = rss0 / 1024, (peak - rss0) / 1024
    d["machine_busy_pct"] = 100.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * os.cpu_count()
    for g, pids in groups.items():
        dt = sum(ticks(p) for p in pids) - t0[g]
        d[f"us_{g}"] = 1e6 * dt / CLK_TCK / d["reqs"] if d["reqs"] else NAN
        d[f"pct_{g}"] = 100.0 * dt / CLK_TCK / wall
    d["us_total"] = sum(d[f"us_{g}"] for g in groups if groups[g])
    d["pct_wrk"] = 100.0 * (r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime) / wall
    d["pct_other"] = d["machine_busy_pct"] - d["pct_wrk"] - sum(
        d[f"pct_{g}"] for g in groups if groups[g])
    return d


def node_pids(cluster: str) -> list[int]:
    """The node processes inside the containers of CLUSTER."""
    pids = []
    for cid in labelled(cluster):
        pid = cmd_out(["docker", "inspect", "-f", "{{.State.Pid}}", cid])
        if pid.isdigit() and int(pid) > 0:
            pids += tree(int(pid))
    return pids


# -- main ----------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="bench.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="2 s per wrk run, 1 repetition, idle connections held 1 s (~2.5 min)")
    ap.add_argument("--duration", type=float, help="seconds per wrk run [5; 2 with --quick]")
    ap.add_argument("--reps", type=int, help="interleaved repetitions [3; 1 with --quick]")
    ap.add_argument("--configs", default=",".join(CONFIGS),
                    help=f"comma-separated subset of {','.join(CONFIGS)} [all]")
    ap.add_argument("--no-idle", action="store_true", help="skip the 5,000 idle connections test")
    ap.add_argument("--no-startup", action="store_true", help="skip the start-up time test")
    ap.add_argument("--no-ws", action="store_true", help="skip the WebSocket echo")
    a = ap.parse_args(argv)
    a.duration = a.duration or (2.0 if a.quick else 5.0)
    a.reps = a.reps or (1 if a.quick else 3)
    a.hold = 1.0 if a.quick else 3.0
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
    a.asked = list(a.configs)
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
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the idle test's 5,000 and more

    skipped: dict[str, str] = {}

    def skip(cfg: str, why: str) -> None:
        log(f"{cfg} skipped: {why}")
        skipped[cfg] = why
        if cfg in args.configs:
            args.configs.remove(cfg)

    tools = ensure_tools()
    if not tools["wrk"]:
        log("wrk is needed: nothing measured")
        return 1
    if not tools["nginx"] and "nginx-w1" in args.configs:
        skip("nginx-w1", "nginx is not installed (ratios to nginx are —)")
    wrk = tools["wrk"]

    run = Run(args)
    lua = run.tmp / "post10m.lua"
    lua.write_text(POST_LUA)
    rows: dict[tuple[str, str], list[dict]] = {}
    rss0: dict[str, float] = {}
    rss1: dict[str, float] = {}
    idle: dict[str, dict] = {}
    starts: list[dict] = []
    notes: list[str] = []
    groups_of: dict[str, dict[str, list[int]]] = {}
    ws: dict[str, list[dict]] = {}  # config -> its WebSocket echo runs
    node = shutil.which("node")
    ws_why = "--no-ws" if args.no_ws else None if node else "node not found (the client is node's)"
    proxy_pids: dict[str, list[int]] = {}
    interrupted = None
    node_version, t_ready = "?", {}
    try:
        # P = base, replicas base+1 / base+2, nginx base+3, naive base+4, pm2 base+5,
        # http-proxy base+6, gunicorn base+7 with its replicas base+8 / base+9; the admin
        # interfaces of nmc and gunicorn base+10 / base+11; nmc-tls base+12, nginx-tls base+13,
        # pywsgi-floor base+14
        base = free_port_block(15, high=30000)
        P, B, G = base, base + 1, base + 8
        if any(c in args.configs for c in TLS_CONFIGS):
            why = run.make_cert()
            if why:
                for cfg in TLS_CONFIGS:
                    if cfg in args.configs:
                        skip(cfg, why)
        log(f"starting nmc (cluster {run.name}) on 127.0.0.1:{P}, replicas on {B} and {B + 1}")
        run.start_nmc("nmc", P, B, *admin_args(base + 10))
        if "gunicorn-w2" in args.configs:
            why = run.gunicorn_missing()
            if why:
                skip("gunicorn-w2", why)
            else:
                log(f"starting gunicorn -w 2 nmc.wsgi:app (cluster {run.g_name}) on "
                    f"127.0.0.1:{base + 7}, replicas on {G} and {G + 1}")
                run.start_gunicorn(base + 7, G, base + 11)
        if any(c in args.configs for c in NODE_CONFIGS):  # while nmc starts its replicas
            log(f"npm install {' '.join(NPM_PACKAGES)} into the run's temp folder")
            why = run.npm_install()
            if why:
                for cfg in NODE_CONFIGS:
                    if cfg in args.configs:
                        skip(cfg, why)
        if not wait_http(P, NMC_START_LIMIT, run.procs["nmc"]):
            p = run.procs["nmc"]
            log((f"nmc exited (code {p.returncode})" if p.poll() is not None else
                 f"nmc did not answer /healthz within {NMC_START_LIMIT:g} s") +
                ": nothing measured (every config needs its replicas); its log:\n" +
                run.log_tail("nmc.log"))
            return 1
        t_ready["nmc"] = time.monotonic() - began
        if not (wait_http(B, 10) and wait_http(B + 1, 10)):
            log("the replicas do not answer on their own ports")
            return 1
        if "gunicorn-w2" in args.configs:
            # 10 in a row on new connections: both workers relay (one supervises, one follows)
            if wait_http(base + 7, NMC_START_LIMIT, run.procs["gunicorn-w2"], in_a_row=10) and \
                    wait_http(G, 10) and wait_http(G + 1, 10):
                t_ready["gunicorn-w2"] = time.monotonic() - began
            else:
                tail = run.log_tail("gunicorn.log", 6).replace("\n", " | ")
                skip("gunicorn-w2", f"did not answer /healthz through its port within "
                                    f"{NMC_START_LIMIT:g} s (its log: {tail})")
        run.port["direct"] = B
        run.commands["direct"] = f"(none: wrk straight at 127.0.0.1:{B}, replica 1 of nmc)"
        if "nginx-w1" in args.configs:
            run.start_nginx("nginx-w1", tools["nginx"], base + 3, B)
        if "naive" in args.configs:
            run.start_naive(base + 4, B)
        if "pywsgi-floor" in args.configs:
            run.start_floor(base + 14, B)
        if "http-proxy" in args.configs:
            run.start_http_proxy(base + 6, B)
        replicas = labelled(run.name)
        if "nmc-tls" in args.configs:  # the same cluster's name: it adopts nmc's two replicas
            # (in a run directory of its own: one nmc-server of a name per run directory)
            log(f"starting nmc-tls on 127.0.0.1:{base + 12}: --certfile, the same replicas")
            run.start_nmc("nmc-tls", base + 12, B, "--keep", "--admin-port", "0",
                          "--certfile", str(run.cert), "--keyfile", str(run.key),
                          run_dir=run.tmp / "nmc-tls-run")
        if "nginx-tls" in args.configs:
            run.start_nginx("nginx-tls", tools["nginx"], base + 13, B)
        for cfg in ("nginx-w1", "naive", "pywsgi-floor", "http-proxy", "nmc-tls", "nginx-tls"):
            limit = 60 if cfg == "nmc-tls" else 15
            if cfg in args.configs and not wait_http(
                    run.port[cfg], limit, run.procs[cfg],
                    context=run.client_tls if cfg in TLS_CONFIGS else None):
                tail = run.log_tail(run.logs[cfg], 4).replace("\n", " | ")
                skip(cfg, f"did not answer /healthz within {limit} s (its log: {tail})")
            elif cfg in args.configs and cfg in TLS_CONFIGS:
                run.tls[cfg] = run.tls_of(cfg)
        if "pm2-i2" in args.configs:
            log(f"pm2 start nodejs/server.js -i 2 on 127.0.0.1:{base + 5} (PM2_HOME in the temp folder)")
            if not run.start_pm2(base + 5):
                skip("pm2-i2", f"did not start (daemon + 2 workers answering /healthz within "
                               f"{PM2_LIMIT:g} + 15 s)")
                run.stop_pm2()
        dp = {p: docker_proxy_pids(p) for p in (B, B + 1, G, G + 1)}
        ids = labelled(run.name)
        if sorted(ids) != sorted(replicas):
            notes.append(f"nmc's replicas changed while the others started ({len(replicas)} "
                         f"containers before, {len(ids)} after, {len(set(ids) - set(replicas))} "
                         "new): did nmc-tls replace them instead of adopting them? (its log)")
        nodes = node_pids(run.name)
        node_version = cmd_out(["docker", "exec", ids[0], "node", "--version"]) if ids else "?"
        for cfg in args.configs:
            if cfg == "pm2-i2":  # front = the daemon (cluster primary), app = its 2 workers
                groups_of[cfg] = {"proxy": [run.pm2_daemon], "dproxy": [], "node": run.pm2_workers}
                proxy_pids[cfg] = [run.pm2_daemon]
            elif cfg == "gunicorn-w2":  # its own replicas
                proxy_pids[cfg] = tree(run.procs[cfg].pid)
                groups_of[cfg] = {"proxy": proxy_pids[cfg], "dproxy": dp[G] + dp[G + 1],
                                  "node": node_pids(run.g_name)}
            else:
                proxy_pids[cfg] = [] if cfg == "direct" else tree(run.procs[cfg].pid)
                groups_of[cfg] = {"proxy": proxy_pids[cfg],
                                  "dproxy": dp[B] if cfg == "direct" else dp[B] + dp[B + 1],
                                  "node": nodes}
            rss0[cfg] = rss_mib(proxy_pids[cfg]) if proxy_pids[cfg] else NAN
        if "pm2-i2" in args.configs:
            rss0["pm2-workers"] = rss_mib(run.pm2_workers)
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
            for load in LOADS:
                wrk_args, path = load_args(load, dur, lua)
                for cfg in order:
                    if load not in loads_of(cfg):
                        continue
                    log(f"rep {r + 1}/{args.reps} {load} {cfg}")
                    d = measure(run, wrk, cfg, path, wrk_args, dur, groups_of[cfg],
                                proxy_pids[cfg] if load in ("get10", "post10") else None)
                    d["rep"] = r + 1
                    rows.setdefault((cfg, load), []).append(d)
            for cfg in order if not ws_why else ():
                if cfg in WS_CONFIGS:
                    log(f"rep {r + 1}/{args.reps} WebSocket echo {cfg}")
                    d = ws_echo(node, run.port[cfg], dur, groups_of[cfg])
                    d["rep"] = r + 1
                    ws.setdefault(cfg, []).append(d)
            if not args.no_startup:
                tests = [("nmc", 1), ("nmc", 8), ("docker", 1), ("docker", 8)]
                for what, nrep in (tests[::-1] if r % 2 else tests):  # alternating order
                    log(f"rep {r + 1}/{args.reps} start-up: {what} with {nrep} replica(s)")
                    s = (time_nmc if what == "nmc" else time_docker)(nrep)
                    s.update(what=what, rep=r + 1)
                    starts.append(s)
                    if s.get("leftovers"):
                        notes.append(f"start-up test {s['name']}: {s['leftovers']} container(s) "
                                     "left after nmc stopped (removed by bench.py)")
        for cfg in args.configs:
            rss1[cfg] = rss_mib(proxy_pids[cfg]) if proxy_pids[cfg] else NAN
        if "pm2-i2" in args.configs:
            rss1["pm2-workers"] = rss_mib(run.pm2_workers)
            if any(stat_fields(p) is None for p in run.pm2_pids()):
                notes.append("a PM2 process (daemon or worker) exited during the run")
        if not args.no_idle:
            for cfg in args.configs:
                # idle_conns.py speaks plain HTTP; pywsgi-floor is no proxy to hold connections
                if cfg in ("direct", "pywsgi-floor") or cfg in TLS_CONFIGS:
                    continue
                pids = run.pm2_pids() if cfg == "pm2-i2" else proxy_pids[cfg]
                log(f"idle test: {IDLE_CONNS} keep-alive connections to {cfg}, held {args.hold:g} s")
                idle[cfg] = idle_test(run.port[cfg], lambda pids=pids: pids, n=IDLE_CONNS,
                                      hold=args.hold)
        for cfg in ("nmc", "gunicorn-w2", "nmc-tls"):
            if cfg in run.procs and run.procs[cfg].poll() is not None:
                notes.append(f"{cfg} exited during the run (code {run.procs[cfg].returncode})")
    except Interrupted as e:
        interrupted = str(e)
        log(f"{e}: stopping everything")
    finally:
        tails = {cfg: run.log_tail(f, 10) for cfg, f in (("nmc", "nmc.log"),
                                                         ("gunicorn-w2", "gunicorn.log"),
                                                         ("nmc-tls", "nmc-tls.log"))}
        log("stopping pm2 (pm2 kill), nginx, the naive relay, pywsgi-floor, http-proxy, nmc-tls, "
            "gunicorn and nmc (SIGTERM, by PID)")
        run.stop_all()
        log(f"pm2: {run.pm2_stop}; " + "; ".join(f"{k} {v}" for k, v in run.exits.items()) +
            "; containers left: " + ", ".join(f"{k} {v}" for k, v in run.leftovers.items()))

    if not rows:
        return 130 if interrupted else 1

    from report import render  # the table, the targets and the details
    report = render(args=args, run=run, rows=rows, rss0=rss0, rss1=rss1, idle=idle,
                    starts=starts, notes=notes, skipped=skipped, interrupted=interrupted,
                    tails=tails, t_ready=t_ready, took=time.monotonic() - began,
                    started_at=started_at, wrk=wrk, nginx=tools["nginx"],
                    node_version=node_version, ws=ws, ws_why=ws_why)
    print(report)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"bench-{stamp}.md"
    out.write_text(report)
    log(f"written {out.relative_to(ROOT)} ({time.monotonic() - began:.0f} s)")
    return 130 if interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
