"""The last five minutes of the relay, for the dashboard's charts: every SAMPLE_EVERY seconds the
replicas' counts are read, and each interval between two readings becomes a point per replica and
for the whole cluster: requests per second, errors per second, and the p50 and p99 latency of the
requests answered in it (from the latency histogram, interpolated within a bucket as Prometheus'
histogram_quantile does).

The counts are read through `counts(replica)`: this process's own, or under gunicorn every
worker's (nmc.shared_counts). Kept in memory, in the supervising process.
"""

from __future__ import annotations

import collections
import time
from typing import Callable

import gevent

from nmc.counters import LATENCY_BUCKETS, RelayCounters
from nmc.pool import Pool
from nmc.replica import Replica

SAMPLE_EVERY = 5.0  # seconds between readings
KEPT = 60           # readings kept: five minutes


class History:
    """Readings of the pool's counts, and the points between them (see the module's docstring)."""

    def __init__(self, pool: Pool, every: float = SAMPLE_EVERY, kept: int = KEPT):
        self.pool = pool
        self.every = every
        # (time, {replica: (requests, errors, latency counts)}), oldest first
        self.readings: collections.deque = collections.deque(maxlen=kept + 1)
        self._sampler: gevent.Greenlet | None = None

    def start(self, counts: Callable[[Replica], RelayCounters]) -> None:
        """Read every `every` seconds from now on (once: later calls do nothing)."""
        if self._sampler is None:
            self._sampler = gevent.spawn(self._sample_forever, counts)

    def _sample_forever(self, counts) -> None:
        while True:
            self.read(counts)
            gevent.sleep(self.every)

    def read(self, counts: Callable[[Replica], RelayCounters], now: float | None = None) -> None:
        taken = {}
        for replica in self.pool:
            relay = counts(replica)
            taken[replica.name] = (relay.requests, relay.errors, tuple(relay.latency_counts))
        self.readings.append((time.time() if now is None else now, taken))

    def points(self) -> list[dict]:
        """One point per interval between readings: its end's time, the cluster's figures and
        each replica's (a replica counted in both readings only)."""
        readings = list(self.readings)
        points = []
        for (start, before), (end, after) in zip(readings, readings[1:]):
            seconds = max(end - start, 1e-9)
            replicas = {}
            total = [0, 0, [0] * (len(LATENCY_BUCKETS) + 1)]
            for name, (requests, errors, latency) in after.items():
                if name not in before:
                    continue
                old_requests, old_errors, old_latency = before[name]
                answered = [max(0, new - old) for new, old in zip(latency, old_latency)]
                requests, errors = max(0, requests - old_requests), max(0, errors - old_errors)
                replicas[name] = _figures(requests, errors, answered, seconds)
                total[0] += requests
                total[1] += errors
                total[2] = [a + b for a, b in zip(total[2], answered)]
            points.append({"time": round(end, 3), "cluster": _figures(*total, seconds),
                           "replicas": replicas})
        return points


def _figures(requests: int, errors: int, answered: list[int], seconds: float) -> dict:
    return {"requests_per_second": round(requests / seconds, 2),
            "errors_per_second": round(errors / seconds, 2),
            "p50_ms": quantile_ms(0.5, answered), "p99_ms": quantile_ms(0.99, answered)}


def quantile_ms(q: float, counts: list[int]) -> float | None:
    """The `q` quantile of the latencies counted in LATENCY_BUCKETS' buckets (the last one: past
    the highest bound), in milliseconds; None when nothing was counted."""
    total = sum(counts)
    if not total:
        return None
    rank = q * total
    below = 0
    for index, count in enumerate(counts):
        if count and below + count >= rank:
            if index == len(LATENCY_BUCKETS):  # past the highest bound: that bound is all we know
                return LATENCY_BUCKETS[-1] * 1000
            lower = LATENCY_BUCKETS[index - 1] if index else 0.0
            upper = LATENCY_BUCKETS[index]
            return round((lower + (upper - lower) * (rank - below) / count) * 1000, 2)
        below += count
    return LATENCY_BUCKETS[-1] * 1000
