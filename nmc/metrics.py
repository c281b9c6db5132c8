"""GET /metrics on the admin port: Prometheus' text format, via prometheus-client.

The relay only adds to plain numbers on each replica (counters.RelayCounters): nothing of
prometheus-client runs per request. This collector turns those numbers into metric families
when Prometheus scrapes, so replicas added or removed by a scale appear and disappear with it.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CollectorRegistry,
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)

from nmc.pool import Pool
from nmc.replica import State

__all__ = ["CONTENT_TYPE_LATEST", "exposition"]


class ClusterCollector:
    def __init__(self, pool: Pool, counts):
        self.pool = pool
        self.counts = counts  # replica -> its RelayCounters (nmc.admin.AdminApp.counts)

    def collect(self):
        replicas = list(self.pool)
        requests = CounterMetricFamily("nmc_requests", "Requests relayed, by replica and "
                                       "status class of the answer", labels=["replica", "code"])
        latency = HistogramMetricFamily("nmc_request_duration_seconds", "Time from choosing the "
                                        "replica to the last byte of its answer",
                                        labels=["replica"])
        in_flight = GaugeMetricFamily("nmc_requests_in_flight", "Requests relayed and not "
                                      "finished", labels=["replica"])
        restarts = CounterMetricFamily("nmc_replica_restarts", "Replacements of the replica's "
                                       "container", labels=["replica"])
        checks = CounterMetricFamily("nmc_health_checks", "Health checks, by result",
                                     labels=["replica", "result"])
        connect_errors = CounterMetricFamily("nmc_upstream_connect_errors", "Connections to the "
                                             "replica refused or broken", labels=["replica"])
        bytes_in = CounterMetricFamily("nmc_request_body_bytes", "Request body bytes sent to the "
                                       "replica", labels=["replica"])
        bytes_out = CounterMetricFamily("nmc_response_body_bytes", "Answer body bytes received "
                                        "from the replica", labels=["replica"])
        for replica in replicas:
            stats, name = self.counts(replica), replica.name
            for code, count in stats.by_class.items():
                requests.add_metric([name, code], count)
            buckets = [(bound if bound == "+Inf" else repr(bound), count)
                       for bound, count in stats.cumulative_latency()]
            latency.add_metric([name], buckets, stats.latency_sum)
            in_flight.add_metric([name], stats.in_flight)
            restarts.add_metric([name], replica.restarts)
            for result, count in replica.health.total.items():
                checks.add_metric([name, result], count)
            connect_errors.add_metric([name], stats.connect_errors)
            bytes_in.add_metric([name], stats.bytes_in)
            bytes_out.add_metric([name], stats.bytes_out)
        info = GaugeMetricFamily("nmc_replica_info", "Where each replica runs and in which state "
                                 "(1 per replica)", labels=["replica", "slot", "node", "address",
                                                            "state", "engine_state"])
        for replica in replicas:
            instance, address = replica.instance, replica.address
            info.add_metric([replica.name, str(replica.slot), (instance and instance.node) or "",
                             f"{address.host}:{address.port}" if address else "",
                             replica.state.value, instance.engine_state if instance else ""], 1)
        states = GaugeMetricFamily("nmc_replicas", "Replicas by state", labels=["state"])
        for state in State:
            states.add_metric([state.value], sum(r.state is state for r in replicas))
        yield from (requests, latency, in_flight, states, info, restarts, checks, connect_errors,
                    bytes_in, bytes_out)


def exposition(pool: Pool, counts) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ClusterCollector(pool, counts))
    return generate_latest(registry)
