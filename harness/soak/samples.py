"""The soak's samples, every SAMPLE_EVERY seconds: nmc's own figures (its /status `process`
section), the cluster's containers and Docker's proxies of its ports (from /proc); and the
verdict on them: a least-squares slope after the warm-up, against a tolerance per figure."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import requests

from harness.chaos.common import engine, failure_kind
from harness.cleanup import cluster_containers
from harness.procfs import docker_proxies, fd_kinds, rss_kib

SAMPLE_EVERY = 10.0
MiB = 1024 * 1024


@dataclass
class Sample:
    t: float                                  # seconds after the load began
    process: dict | None = None               # /status's process section; None: no answer
    error: str = ""
    containers: int | None = None             # the cluster's, in any state
    running: int | None = None
    proxies: int = 0                          # docker-proxy processes of the cluster's ports
    proxy_rss_kib: int = 0
    fd_kinds: dict = field(default_factory=dict)  # nmc's fds by kind, from /proc/<its pid>/fd


@dataclass(frozen=True)
class Tolerance:
    """A figure 'keeps growing' when its fitted growth over the judged window (slope x window)
    is more than floor + relative x its mean there."""
    floor: float
    relative: float

    def limit(self, mean: float) -> float:
        return self.floor + self.relative * abs(mean)


# Why these: a leak of one fd, greenlet, connection, container or docker-proxy per kill (29 in a
# 10-minute run, one every 20 s) grows more than its floor; the relative parts absorb the figures
# that follow the load's concurrency (the same number of clients all along, ~20 connections) and
# the scale up and down in the middle of the run. RSS: 10 % of its mean over the window plus
# 4 MiB, i.e. for a ~50 MiB nmc over 9 minutes ~1 MiB/min, ~60 MiB an hour: any steady leak of
# that size shows; the heap settling (allocator arenas, the connection pools filling) does not.
TOLERANCES = {
    "rss": Tolerance(4, 0.10), "fds": Tolerance(16, 0.25), "greenlets": Tolerance(16, 0.25),
    "connections": Tolerance(16, 0.25), "containers": Tolerance(2, 0.0),
    "proxies": Tolerance(2, 0.0), "proxy_rss": Tolerance(8, 0.25),
}


@dataclass
class Figure:
    name: str
    unit: str
    tolerance: Tolerance
    values: list = field(default_factory=list)  # (t, value) for the samples that have it


def figures(samples: list[Sample]) -> list[Figure]:
    """Every figure the samples hold, in report order; connections per TCP state seen (a state
    absent from a sample counts 0 there)."""
    read = [s for s in samples if s.process is not None]
    out = [Figure("nmc RSS", "MiB", TOLERANCES["rss"], [(s.t, s.process["rss_bytes"] / MiB) for s in read]),
           Figure("nmc open fds", "", TOLERANCES["fds"], [(s.t, s.process["open_fds"]) for s in read]),
           Figure("nmc unix sockets (the Docker API's)", "", TOLERANCES["fds"],
                  [(s.t, s.fd_kinds.get("unix socket", 0)) for s in samples if s.fd_kinds]),
           Figure("nmc greenlets", "", TOLERANCES["greenlets"], [(s.t, s.process["greenlets"]) for s in read])]
    for group, key in (("client", "client_connections"), ("replica", "replica_connections")):
        states = sorted({state for s in read for state in s.process[key]},
                        key=lambda state: (state != "ESTABLISHED", state))
        for state in states or ["ESTABLISHED"]:
            out.append(Figure(f"{group} connections {state}", "", TOLERANCES["connections"],
                              [(s.t, s.process[key].get(state, 0)) for s in read]))
    counted = [s for s in samples if s.containers is not None]
    out += [Figure("containers (any state)", "", TOLERANCES["containers"], [(s.t, s.containers) for s in counted]),
            Figure("containers running", "", TOLERANCES["containers"], [(s.t, s.running) for s in counted]),
            Figure("docker-proxy processes", "", TOLERANCES["proxies"], [(s.t, s.proxies) for s in samples]),
            Figure("docker-proxy RSS", "MiB", TOLERANCES["proxy_rss"],
                   [(s.t, s.proxy_rss_kib / 1024) for s in samples])]
    return out


def slope(points: list[tuple[float, float]]) -> float | None:
    """The least-squares slope of value over time (per second); None with fewer than 3 points."""
    if len(points) < 3:
        return None
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points)
    if var == 0:
        return None
    return sum((t - mean_t) * (v - mean_v) for t, v in points) / var


@dataclass
class Judgement:
    figure: Figure
    slope_per_min: float | None
    growth: float | None      # slope x the window's length
    limit: float
    mean: float | None

    @property
    def growing(self) -> bool | None:
        return None if self.growth is None else self.growth > self.limit


def judge(figure: Figure, after: float) -> Judgement:
    """The figure's slope over the samples from t >= `after` (the warm-up left out)."""
    points = [(t, v) for t, v in figure.values if t >= after]
    per_second = slope(points)
    mean = sum(v for _, v in points) / len(points) if points else None
    limit = figure.tolerance.limit(mean or 0.0)
    if per_second is None:
        return Judgement(figure, None, None, limit, mean)
    window = points[-1][0] - points[0][0]
    return Judgement(figure, per_second * 60, per_second * window, limit, mean)


class Sampler(threading.Thread):
    """Takes a Sample at t = 0, SAMPLE_EVERY, 2 x SAMPLE_EVERY ... until `until` (monotonic) or
    stop(); the last one at `until`. The cluster's ports: those whose docker-proxy counts; `pid`:
    nmc's, whose fds it sorts by kind."""

    def __init__(self, admin_url: str, cluster: str, ports: set[int], began: float, until: float,
                 pid: int):
        super().__init__(name="soak-sampler", daemon=True)
        self.admin_url, self.cluster, self.ports, self.pid = admin_url, cluster, ports, pid
        self.began, self.until = began, until
        self.samples: list[Sample] = []
        self.halt = threading.Event()

    def run(self) -> None:
        client = engine()
        session = requests.Session()
        session.trust_env = False
        try:
            for number in range(int((self.until - self.began) / SAMPLE_EVERY) + 2):
                at = min(self.began + number * SAMPLE_EVERY, self.until)
                if self.halt.wait(max(0.0, at - time.monotonic())):
                    return
                self.samples.append(self.take(client, session))
                if at >= self.until:
                    return
        finally:
            session.close()
            client.close()

    def take(self, client, session: requests.Session) -> Sample:
        sample = Sample(round(time.monotonic() - self.began, 1))
        try:
            sample.process = session.get(self.admin_url + "/status", timeout=5).json()["process"]
        except (requests.RequestException, ValueError, KeyError) as e:
            sample.error = f"/status: {failure_kind(e)}"
        try:
            containers = cluster_containers(client, self.cluster)
            sample.containers = len(containers)
            sample.running = sum(c.get("State") == "running" for c in containers)
        except Exception as e:  # the engine away for a moment: a sample without containers
            sample.error += f" containers: {type(e).__name__}"
        sample.fd_kinds = fd_kinds(self.pid)
        proxies = [pid for pid, _ in docker_proxies(self.ports)]
        sample.proxies, sample.proxy_rss_kib = len(proxies), rss_kib(proxies)
        return sample

    def stop(self) -> None:
        self.halt.set()
        self.join(10)
