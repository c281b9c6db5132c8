"""The dashboard's history (nmc/history.py) and the cluster's events (nmc/events.py), on plain
values: readings of counts become points; log lines become events."""

from __future__ import annotations

import logging

from nmc.counters import LATENCY_BUCKETS, RelayCounters
from nmc.events import EventLog
from nmc.history import History, quantile_ms
from nmc.pool import Pool
from nmc.replica import Replica


def counts_of(table: dict):
    return lambda replica: table[replica.name]


def test_readings_become_rates_and_quantiles_per_replica_and_for_the_cluster():
    one, two = Replica("nmc-3001", 3001), Replica("nmc-3002", 3002)
    history = History(Pool([one, two]))
    table = {"nmc-3001": RelayCounters(), "nmc-3002": RelayCounters()}
    history.read(counts_of(table), now=100.0)
    for _ in range(40):
        table["nmc-3001"].requests += 1
        table["nmc-3001"].record(200, 0.003)  # in the first bucket (up to 5 ms)
    for _ in range(10):
        table["nmc-3002"].requests += 1
        table["nmc-3002"].record(502, 0.2)    # in (0.1, 0.25]
        table["nmc-3002"].errors += 1
    history.read(counts_of(table), now=105.0)
    (point,) = history.points()
    assert point["time"] == 105.0
    assert point["replicas"]["nmc-3001"]["requests_per_second"] == 8.0
    assert point["replicas"]["nmc-3002"] == {"requests_per_second": 2.0, "errors_per_second": 2.0,
                                             "p50_ms": 175.0, "p99_ms": 248.5}
    cluster = point["cluster"]
    assert (cluster["requests_per_second"], cluster["errors_per_second"]) == (10.0, 2.0)
    assert cluster["p50_ms"] == 3.12  # the 25th of 50 answers: within the first bucket
    assert cluster["p99_ms"] == 242.5


def test_a_replica_new_since_the_last_reading_waits_for_its_second_and_an_idle_one_has_no_latency():
    old = Replica("nmc-3001", 3001)
    pool = Pool([old])
    history = History(pool)
    table = {"nmc-3001": RelayCounters(), "nmc-3002": RelayCounters()}
    history.read(counts_of(table), now=0.0)
    pool.add(Replica("nmc-3002", 3002))
    history.read(counts_of(table), now=5.0)
    history.read(counts_of(table), now=10.0)
    first, second = history.points()
    assert list(first["replicas"]) == ["nmc-3001"] and list(second["replicas"]) == ["nmc-3001", "nmc-3002"]
    assert second["cluster"] == {"requests_per_second": 0.0, "errors_per_second": 0.0,
                                 "p50_ms": None, "p99_ms": None}


def test_only_the_last_five_minutes_are_kept():
    history = History(Pool([Replica("nmc-3001", 3001)]), kept=60)
    table = {"nmc-3001": RelayCounters()}
    for second in range(0, 1000, 5):
        history.read(counts_of(table), now=float(second))
    points = history.points()
    assert len(points) == 60 and points[0]["time"] == 700.0 and points[-1]["time"] == 995.0


def test_quantiles_past_the_last_bound_say_that_bound():
    counts = [0] * (len(LATENCY_BUCKETS) + 1)
    counts[-1] = 3
    assert quantile_ms(0.5, counts) == LATENCY_BUCKETS[-1] * 1000
    assert quantile_ms(0.5, [0] * (len(LATENCY_BUCKETS) + 1)) is None


def test_the_clusters_log_lines_become_numbered_events_and_the_per_request_ones_do_not():
    events = EventLog(limit=3)
    logger = logging.getLogger("nmc.test-events")  # a logger of its own: nothing else hears it
    logger.propagate = False
    events.follow(logger)
    try:
        for name, message in [("nmc.replica", "replica web-3001 (port 3001, container abc): ready -> down (status 500)"),
                              ("nmc.proxy", "Forwarding request to port: 3001"),
                              ("nmc.healing", "replica web-3001 exited with code 137 after 3.0s in the rotation"),
                              ("nmc.changes", "rolling out web-app (abc) to 2 replicas, 1 at a time"),
                              ("nmc.healing", "the Docker engine is back: checking every replica")]:
            logger.handle(logger.makeRecord(name, logging.WARNING, __file__, 1, message, (), None))
    finally:
        logger.removeHandler(events)
    assert events.last == 4  # the per-request line is no event
    assert [e["seq"] for e in events.latest()] == [2, 3, 4]  # the limit: the oldest went
    second, third, fourth = events.latest()
    assert (second["kind"], second["replica"], second["level"]) == ("healing", "web-3001", "warning")
    assert (third["kind"], third["replica"]) == ("change", None)
    assert fourth["message"] == "the Docker engine is back: checking every replica"
    assert [e["seq"] for e in events.after(3)] == [4]
