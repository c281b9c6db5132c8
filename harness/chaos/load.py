"""The chaos run's load: GET /whoami, POST /echo and PUT /echo with a 4 KiB body from --clients
threads (harness.load.Clients), every answer checked, counted per method, kind of failure,
second and (--changes) phase."""

from __future__ import annotations

import hashlib
import heapq
import random
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

import requests

from harness.chaos.common import BODY_SIZE, EXAMPLES, METHODS, MIX, SLOWEST, failure_kind
from harness.load import Clients


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


class Load(Clients):
    """--clients threads (daemons, no proxy from the environment) for `duration` seconds from
    start(); each request's method (MIX) and body from the seed."""

    def __init__(self, url: str, clients: int, seed: int, timeout: float):
        super().__init__(clients, daemon=True, trust_env=False)
        self.url, self.seed, self.timeout = url, seed, timeout
        body_rng = random.Random(f"{seed}-bodies")
        alphabet = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_"
        self.bodies = [bytes(body_rng.choice(alphabet) for _ in range(BODY_SIZE)) for _ in range(4)]
        self.digests = [hashlib.sha256(b).hexdigest() for b in self.bodies]
        self.stats = [ClientStats() for _ in range(clients)]
        self.rngs = [random.Random(f"{seed}-client-{index}") for index in range(clients)]
        self.methods = [m for m, weight in MIX for _ in range(weight)]
        self.began_wall: datetime | None = None
        self.phase: int | None = None   # --changes: the phase a request is sent in (set by main)

    def start(self, duration: float) -> None:
        self.began_wall = datetime.now(timezone.utc)
        super().start(duration)

    def join(self, deadline: float) -> list[bool]:
        running = super().join(deadline)
        for stats, left in zip(self.stats, running):
            stats.left_running = left
        return running

    def one(self, session: requests.Session, index: int, number: int) -> None:
        rng = self.rngs[index]
        method = rng.choice(self.methods)
        self._one(session, self.stats[index], method, rng.randrange(len(self.bodies)),
                  f"chaos-{index}-{number}")

    def _one(self, session: requests.Session, stats: ClientStats, method: str, which: int,
             request_id: str) -> None:
        stats.sent[method] += 1
        phase = self.phase
        started = time.monotonic()
        kind, detail, served_by = self._send(session, method, which, request_id)
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
        if kind is None:
            stats.ok[method] += 1
            stats.per_second[int(started - self.began), "ok"] += 1
            stats.ok_ends.append(ended - self.began)
            return
        stats.per_second[int(started - self.began), "failed"] += 1
        stats.failures.append((ended - self.began, method, kind))
        stats.failed[method, kind] += 1
        examples = stats.examples.setdefault((method, kind), [])
        if len(examples) < EXAMPLES:
            examples.append(Failure(started - self.began, ended - self.began, method, kind, detail,
                                    request_id))

    def _send(self, session: requests.Session, method: str, which: int,
              request_id: str) -> tuple[str | None, str | None, str]:
        """One request: (kind of failure, its detail), both None when the answer was right, and
        who answered (X-Served-By)."""
        headers = {"X-Request-ID": request_id}
        body = None
        if method == "GET":
            url = self.url + "/whoami"
        else:
            url = self.url + "/echo"
            body = self.bodies[which]
            headers["Content-Type"] = "application/octet-stream"
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
        return kind, detail, served_by

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
