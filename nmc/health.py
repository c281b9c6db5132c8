"""Liveness checks: does a replica answer its health URL, within a timeout, with a 2xx? And the
thresholds that turn a run of results into a decision (as Caddy's health checks count them)."""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass, field

import requests

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    reason: str  # "status 200", "timed out after 2s", "connection refused", ...

    def __bool__(self) -> bool:
        return self.ok


class Verdict(enum.StrEnum):
    """What a run of check results asks for."""

    OUT = "out"          # take it out of the rotation
    IN = "in"            # bring it back
    REPLACE = "replace"  # out for too long, still failing: replace it


@dataclass(eq=False)
class CheckCounts:
    """One replica's check results: the runs that thresholds judge, and totals for /metrics."""

    passes: int = 0  # in a row
    fails: int = 0   # in a row
    total: dict = field(default_factory=lambda: {"pass": 0, "fail": 0})

    def add(self, ok: bool) -> None:
        self.total["pass" if ok else "fail"] += 1
        if ok:
            self.passes, self.fails = self.passes + 1, 0
        else:
            self.passes, self.fails = 0, self.fails + 1


@dataclass(frozen=True)
class Thresholds:
    unhealthy_after: int = 2     # failed checks in a row take a replica out of the rotation
    healthy_after: int = 1       # passed checks in a row bring it back
    replace_after: float = 15.0  # seconds out of the rotation (still failing) before it is replaced

    def judge(self, in_rotation: bool, fails: int, passes: int, out_for: float) -> Verdict | None:
        """A Verdict, or None (no change), from the consecutive fails and passes."""
        if in_rotation:
            return Verdict.OUT if fails >= self.unhealthy_after else None
        if passes >= self.healthy_after:
            return Verdict.IN
        if fails and out_for >= self.replace_after:
            return Verdict.REPLACE
        return None


class HealthChecker:
    """Checks replicas over HTTP with its own Session (its connections never mix with traffic)."""

    def __init__(self, path: str, timeout: float):
        self.path = path
        self.timeout = timeout
        self.session = requests.Session()
        self.session.trust_env = False  # no proxy variables: replicas are on loopback
        self.session.headers.clear()
        self.session.headers["User-Agent"] = "nmc-health-check"

    def check(self, base_url: str) -> CheckResult:
        try:
            response = self.session.get(base_url + self.path, timeout=self.timeout,
                                        allow_redirects=False)
            response.close()
        except requests.exceptions.Timeout:
            return CheckResult(False, f"no answer within {self.timeout:g}s")
        except requests.exceptions.ConnectionError as e:
            return CheckResult(False, _connection_reason(e))
        except requests.exceptions.RequestException as e:
            return CheckResult(False, f"bad answer: {type(e).__name__}")
        if 200 <= response.status_code < 300:
            return CheckResult(True, f"status {response.status_code}")
        return CheckResult(False, f"status {response.status_code}")

    def close(self) -> None:
        self.session.close()


def _connection_reason(e: Exception) -> str:
    text = str(e).lower()
    if "refused" in text:
        return "connection refused"
    if "reset" in text:
        return "connection reset"
    if "aborted" in text or "remotedisconnected" in text or "closed" in text:
        return "connection closed without an answer"
    return "connection failed"
