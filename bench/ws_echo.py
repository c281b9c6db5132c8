"""make bench's WebSocket echo: SOCKETS WebSockets to /ws opened through a config first, then on
each, for the run's duration, one small masked text message and a wait for its echo; messages/s,
round trips, errors and the CPU of each group of processes per message during the message phase.

The sockets are bench/node/ws_echo_client.js's (one node process: a Python client would be the
bottleneck on two cores); it says where it is in lines, and waits for "go" once its sockets are
open, so that the CPU counted here is that of the messages only, not of the upgrades.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import tempfile
import time

from harness import ROOT
from harness.processes import own_session
from harness.procfs import CLK_TCK, machine_ticks, ticks

CONFIGS = ("direct", "nginx-w1", "nmc", "http-proxy")  # the limit, and the relays to nmc's replicas
SOCKETS = 64
SIZE = 32            # bytes of each message (text; the client masks it)
MAX_RATE = 200_000   # messages/s the latency store is sized for (a bound, far above any result)
OPEN_LIMIT = 10.0    # seconds for every socket's upgrade
DRAIN_LIMIT = 5.0    # seconds after the end for the last echoes
NAN = float("nan")


def command(port: int | str, duration: float, sockets: int = SOCKETS,
            size: int = SIZE) -> list[str]:
    """The client's arguments after `node`."""
    cap = int(MAX_RATE * duration)
    return ["bench/node/ws_echo_client.js", str(port), str(sockets), f"{duration:g}", str(size),
            str(cap), f"{OPEN_LIMIT:g}", f"{DRAIN_LIMIT:g}"]


class _Lines:
    """The client's stdout as JSON events, each awaited up to a deadline."""

    def __init__(self, proc: subprocess.Popen):
        self.proc, self.buf = proc, b""
        self.sel = selectors.DefaultSelector()
        self.sel.register(proc.stdout, selectors.EVENT_READ)

    def next(self, limit: float) -> dict:
        deadline = time.monotonic() + limit
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no word from the client within {limit:g} s")
            if self.sel.select(left):
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    raise EOFError("the client ended")
                self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        try:
            return json.loads(line)
        except ValueError:
            return {"event": "?", "line": line[:200].decode(errors="replace")}


def ws_echo(node: str, port: int, duration: float, groups: dict[str, list[int]],
            sockets: int = SOCKETS, size: int = SIZE) -> dict:
    """One run against 127.0.0.1:PORT: a dict of its figures; "failed" says why when it could
    not measure. The client is stopped (SIGKILL by PID) whatever happens, Ctrl-C included."""
    d: dict = {"sockets": sockets, "opened": 0, "open_failed": 0, "ended": 0, "bad": 0,
               "messages": 0, "mps": NAN, "p50": NAN, "p99": NAN, "reasons": {}, "replicas": {}}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([node, *command(port, duration, sockets, size)], cwd=ROOT,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                **own_session())
        ended = False
        try:
            _drive(proc, _Lines(proc), duration, groups, d)
            ended = True
        except (TimeoutError, EOFError, OSError) as e:
            err.seek(0)
            tail = err.read()[-300:].decode(errors="replace").strip().replace("\n", " | ")
            d["failed"] = f"{e}" + (f" (its stderr: {tail})" if tail else "")
        finally:
            try:
                proc.stdin.close()  # before "go", the client exits on it
            except OSError:
                pass
            try:  # it has closed its sockets (bounded) and exits by itself
                proc.wait(3 if ended else 0.5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
            proc.stdout.close()
    d["err"] = d["open_failed"] + d["ended"] + d["bad"]
    return d


def _drive(proc: subprocess.Popen, lines: _Lines, duration: float, groups: dict[str, list[int]],
           d: dict) -> None:
    ev = lines.next(OPEN_LIMIT + 15)
    if ev.get("event") != "open":
        raise EOFError(f"the client said {ev} instead of its sockets' opening")
    d.update(opened=ev["opened"], open_failed=ev["failed"], open_ms=ev["open_ms"],
             replicas=ev["replicas"], reasons=dict(ev["reasons"]))
    if not ev["opened"]:
        d["failed"] = "no socket opened"
        return
    t0 = {g: sum(ticks(p) for p in pids) for g, pids in groups.items()}
    c0, m0, w0 = ticks(proc.pid), machine_ticks(), time.monotonic()
    proc.stdin.write(b"go\n")
    proc.stdin.flush()
    ev = lines.next(duration + DRAIN_LIMIT + 15)
    c1, m1, wall = ticks(proc.pid), machine_ticks(), time.monotonic() - w0
    if ev.get("event") != "done":
        raise EOFError(f"the client said {ev} instead of the end of its messages")
    n = d["messages"] = ev["messages"]
    d.update(ended=ev["ended"], bad=ev["bad"], reasons=dict(ev["reasons"]), capped=ev["capped"],
             elapsed=ev["elapsed"], wall=wall)
    if n and ev["elapsed"] > 0:
        d.update(mps=n / ev["elapsed"], p50=ev["p50"], p99=ev["p99"])
    d["machine_busy_pct"] = 100.0 * (m1[0] - m0[0]) / max(1, m1[1] - m0[1]) * os.cpu_count()
    for g, pids in (*groups.items(), ("client", [proc.pid])):
        dt = (c1 - c0) if g == "client" else sum(ticks(p) for p in pids) - t0[g]
        d[f"us_{g}"] = 1e6 * dt / CLK_TCK / n if n else NAN
        d[f"pct_{g}"] = 100.0 * dt / CLK_TCK / wall
    d["pct_other"] = d["machine_busy_pct"] - sum(d[f"pct_{g}"] for g in (*groups, "client")
                                                 if g == "client" or groups[g])
    try:
        ev = lines.next(5)  # the close handshakes: bounded by the client (2 s)
        d["closed"] = f"{ev.get('clean', '?')} clean, {ev.get('unclean', '?')} cut"
    except (TimeoutError, EOFError) as e:
        d["closed"] = f"? ({e})"


def _reasons(reasons: dict[str, int]) -> str:
    return "; ".join(f"{n} × {why}" for why, n in reasons.items()) or "no reason given"


def describe_errors(cfg: str, runs: list[dict]) -> str | None:
    """One line about the sockets of CFG's runs that failed, or None when none did."""
    failed = [r["failed"] for r in runs if "failed" in r]
    kinds: dict[str, int] = {}
    for r in runs:
        for why, n in r["reasons"].items():
            kinds[why] = kinds.get(why, 0) + n
    bad = sum(r["bad"] for r in runs)
    if not (failed or kinds or bad):
        return None
    parts = [f"{len(failed)} run(s) failed: {failed[0]}"] if failed else []
    if kinds:
        parts.append(f"sockets: {_reasons(kinds)}")
    if bad:
        parts.append(f"{bad} echo(es) that were not the message sent")
    return f"WebSocket echo, {cfg}: " + "; ".join(parts)
