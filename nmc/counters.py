"""What the relay counts for each replica: one record, written only by the proxy, read by
/status and /metrics. Plain additions per request; nothing is formatted until someone asks."""

from __future__ import annotations

import bisect
import dataclasses
from dataclasses import dataclass, field

# Upper bounds (seconds) of the request latency histogram's buckets (Prometheus' defaults).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


@dataclass(eq=False)
class RelayCounters:
    """One replica's relayed requests: how many, how they ended, how long they took, how big."""

    in_flight: int = 0       # relayed and not finished
    requests: int = 0        # relayed to it
    errors: int = 0          # of those, failed to connect or broke (502/504)
    connect_errors: int = 0  # connections refused or broken
    bytes_in: int = 0        # request bodies sent to the replica
    bytes_out: int = 0       # answer bodies received from it
    by_class: dict = field(default_factory=lambda: {"1xx": 0, "2xx": 0, "3xx": 0, "4xx": 0,
                                                    "5xx": 0})
    latency_counts: list = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def record(self, status: int, seconds: float) -> None:
        """One answer relayed: its status class and its time to the last byte."""
        code = f"{status // 100}xx"
        self.by_class[code] = self.by_class.get(code, 0) + 1
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds

    def cumulative_latency(self) -> list[tuple[float | str, int]]:
        """The latency counts as a cumulative histogram, Prometheus-style: [(upper bound in
        seconds, requests that took at most that), ..., ("+Inf", all requests)]."""
        total, buckets = 0, []
        for bound, count in zip((*LATENCY_BUCKETS, "+Inf"), list(self.latency_counts)):
            total += count
            buckets.append((bound, total))
        return buckets

    def as_dict(self) -> dict:
        """Plain JSON-able numbers (another worker process's counts travel this way)."""
        return dataclasses.asdict(self)

    def add(self, other: "RelayCounters | dict") -> None:
        """Add `other`'s counts (a RelayCounters, or one's as_dict) to these."""
        numbers = other.as_dict() if isinstance(other, RelayCounters) else other
        for name, mine in self.as_dict().items():
            theirs = numbers.get(name)
            if isinstance(mine, dict):
                for code, count in (theirs or {}).items():
                    self.by_class[code] = self.by_class.get(code, 0) + count
            elif isinstance(mine, list):
                for bucket, count in enumerate((theirs or ())[:len(mine)]):
                    self.latency_counts[bucket] += count
            else:
                setattr(self, name, mine + (theirs or 0))


def summed(*counts: "RelayCounters | dict") -> RelayCounters:
    """One record of all these counts together."""
    total = RelayCounters()
    for each in counts:
        total.add(each)
    return total
