"""The chaos: its schedule (kills, a pause and its unpause, a crash) fixed by the seed, the
actions on the cluster's containers, and the measurement of each replacement."""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass

import docker
import docker.errors
import requests

from harness.chaos.common import (PAUSE_FOR, POLL, REPLACE_LIMIT, engine, failure_kind, log,
                                  published_port, task_slot)
from harness.chaos.load import Load
from harness.cleanup import cluster_containers, container_name
from nmc.containers import LABEL_CLUSTER, LABEL_PORT


@dataclass
class Action:
    at: float           # seconds after the load began
    what: str           # kill, pause, unpause, crash
    port: int           # the replica preferred by the schedule
    number: int = 0
    # filled in when it runs
    ran_at: float | None = None
    name: str = ""
    container: str = ""
    outcome: str = ""
    call_took: float | None = None
    measure: "Replacement | None" = None


class Replacement(threading.Thread):
    """Measures the time from an action until a new container with the same name is running
    and answers /healthz on its port. Polls every POLL seconds, for REPLACE_LIMIT at most.
    --swarm (`slot` given): a new task container of the same slot of the service `cluster`,
    and its own published port (Swarm names it after the new task and picks a new port)."""

    def __init__(self, name: str, port: int, old_id: str, since: float, stop: threading.Event,
                 slot: int | None = None, cluster: str = ""):
        super().__init__(name=f"measure-{name}", daemon=True)
        self.replica, self.port, self.old_id, self.since, self.halt = name, port, old_id, since, stop
        self.slot, self.cluster = slot, cluster
        self.superseded = ""  # swarm: a later action hit the same container before it was replaced
        self.running_after: float | None = None
        self.healthy_after: float | None = None
        self.new_id = ""
        self.error = ""

    def run(self) -> None:
        client = session = None
        try:
            client = engine()
            session = requests.Session()
            session.trust_env = False
            deadline = self.since + REPLACE_LIMIT
            for _ in range(int(REPLACE_LIMIT / POLL) + 1):
                if time.monotonic() >= deadline or self.halt.is_set() or self.superseded:
                    break
                if self._poll(client, session):
                    return
                time.sleep(POLL)
            waited = time.monotonic() - self.since
            if self.superseded:
                self.running_after = None
                self.error = f"not replaced before {self.superseded} hit the same container"
                return
            self.error = (f"not replaced when the run ended ({waited:.1f}s after)" if self.halt.is_set()
                          else f"not replaced within {min(REPLACE_LIMIT, waited):.1f}s")
        except Exception as e:  # a measurement must never take the run down
            self.error = f"measurement failed: {type(e).__name__}: {e}"
        finally:
            if session is not None:
                session.close()
            if client is not None:
                client.close()

    def _poll(self, client: docker.DockerClient, session: requests.Session) -> bool:
        if self.slot is not None:
            return self._poll_task(client, session)
        try:
            state = client.api.inspect_container(self.replica)
        except docker.errors.NotFound:
            return False
        running = (state.get("State") or {}).get("Status") == "running"
        if state["Id"] == self.old_id or not running:
            return False
        if self.running_after is None or state["Id"] != self.new_id:
            self.new_id = state["Id"]
            self.running_after = time.monotonic() - self.since
        return self._healthy(session)

    def _poll_task(self, client: docker.DockerClient, session: requests.Session) -> bool:
        new = [c for c in client.api.containers(filters={"label": f"{LABEL_CLUSTER}={self.cluster}",
                                                         "status": "running"})
               if c["Id"] != self.old_id and task_slot(c, self.cluster) == self.slot]
        if not new:
            return False
        if self.running_after is None or all(c["Id"] != self.new_id for c in new):
            self.new_id = new[0]["Id"]
            self.running_after = time.monotonic() - self.since
            self.port = 0
        if not self.port:
            self.port = published_port(client, next(c for c in new if c["Id"] == self.new_id)) or 0
            if not self.port:
                return False
        return self._healthy(session)

    def _healthy(self, session: requests.Session) -> bool:
        try:
            answer = session.get(f"http://127.0.0.1:{self.port}/healthz", timeout=0.5)
        except requests.exceptions.RequestException:
            return False
        if answer.status_code != 200:
            return False
        self.healthy_after = time.monotonic() - self.since
        return True


def task_slot_of_name(replica: str, cluster: str) -> int | None:
    """--swarm: the slot of a replica named <cluster>.<slot>."""
    slot = replica[len(cluster) + 1:] if replica.startswith(cluster + ".") else ""
    return int(slot) if slot.isdigit() else None


def make_schedule(seed: int, duration: float, every: float, ports: list[int]) -> list[Action]:
    """Kills every `every` seconds, one pause (then its unpause) and one crash, half-way between
    two kills; which replica each one prefers comes from the seed."""
    rng = random.Random(seed)
    actions = []
    at = every
    while at < duration - 0.5:
        actions.append(Action(at, "kill", rng.choice(ports)))
        at += every
    pause_at = every * max(1, round(0.3 * duration / every)) + every / 2
    crash_at = every * max(1, round(0.6 * duration / every)) + every / 2
    pause_port, crash_port = rng.choice(ports), rng.choice(ports)
    if pause_at < duration - 0.5:
        actions.append(Action(pause_at, "pause", pause_port))
        actions.append(Action(pause_at + PAUSE_FOR, "unpause", pause_port))
    if crash_at < duration - 0.5:
        actions.append(Action(crash_at, "crash", crash_port))
    actions.sort(key=lambda a: a.at)
    counts: Counter = Counter()
    for action in actions:
        counts[action.what] += 1
        action.number = counts[action.what]
    return actions


class Chaos:
    """ports: the replicas' ports (one host), or with swarm the service's slots; an action's
    `port` is one of them."""

    def __init__(self, client: docker.DockerClient, cluster: str, ports: list[int], load: Load,
                 swarm: bool = False):
        self.client, self.cluster, self.ports, self.load = client, cluster, ports, load
        self.swarm = swarm
        self.halt = threading.Event()          # stops the measurements
        self.paused: Action | None = None
        self.measures: list[Replacement] = []

    def running(self) -> dict[int, dict]:
        """port (swarm: slot) -> summary of the running container serving it."""
        by_port = {}
        for summary in cluster_containers(self.client, self.cluster):
            if summary.get("State") != "running":
                continue
            if self.swarm:
                slot = task_slot(summary, self.cluster)
                if slot is not None:
                    by_port[slot] = summary
                continue
            try:
                by_port[int(summary.get("Labels", {}).get(LABEL_PORT, ""))] = summary
            except ValueError:
                pass
        return by_port

    def victim_port(self, action: Action, victim: dict) -> int:
        """Names the action's replica and container; the victim's port (swarm: published)."""
        action.container = victim["Id"][:12]
        if not self.swarm:
            action.name = container_name(victim)
            return int(victim["Labels"][LABEL_PORT])  # the replica's published port, as nmc labels it
        action.name = f"{self.cluster}.{task_slot(victim, self.cluster)}"
        for measure in self.measures:  # its replacement, if any now, is this action's
            if measure.old_id == victim["Id"] and measure.is_alive():
                measure.superseded = f"{action.what} #{action.number} ({time.monotonic() - self.load.began:.1f} s)"
        return published_port(self.client, victim) or 0

    def target(self, action: Action) -> dict | None:
        """The running container of the preferred replica, else of the next one in port order."""
        running = self.running()
        start = self.ports.index(action.port)
        for step in range(len(self.ports)):
            port = self.ports[(start + step) % len(self.ports)]
            if port in running:
                if step:
                    action.outcome = (f"(preferred {'slot' if self.swarm else 'port'} {action.port} "
                                      "had no running container) ")
                return running[port]
        return None

    def run(self, action: Action) -> None:
        action.ran_at = time.monotonic() - self.load.began
        try:
            getattr(self, "_" + action.what)(action)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            action.outcome += f"failed: {type(e).__name__}: {str(e)[:160]}"
        log(f"t={action.ran_at:5.1f}s {action.what} #{action.number} {action.name or '-'}: {action.outcome}")

    def _measure(self, action: Action, port: int, old_id: str, since: float) -> None:
        slot = task_slot_of_name(action.name, self.cluster) if self.swarm else None
        action.measure = Replacement(action.name, port, old_id, since, self.halt, slot, self.cluster)
        self.measures.append(action.measure)
        action.measure.start()

    def _hit(self, action: Action, call) -> None:
        """call(victim, port) on the action's target, timed: what it did, into the outcome;
        then the replacement is measured."""
        victim = self.target(action)
        if victim is None:
            action.outcome += "skipped: no replica is running"
            return
        port = self.victim_port(action, victim)
        began = time.monotonic()
        done = call(victim, port)
        action.call_took = time.monotonic() - began
        action.outcome += done
        self._measure(action, port, victim["Id"], began)

    def _kill(self, action: Action) -> None:
        def kill(victim: dict, port: int) -> str:
            self.client.api.kill(victim["Id"])  # SIGKILL
            return "killed (SIGKILL)"
        self._hit(action, kill)

    def _pause(self, action: Action) -> None:
        def pause(victim: dict, port: int) -> str:
            self.client.api.pause(victim["Id"])
            self.paused = action
            return "paused"
        self._hit(action, pause)

    def _unpause(self, action: Action) -> None:
        paused = self.paused
        if paused is None or not paused.container:
            action.outcome = "nothing to unpause (the pause was skipped)"
            return
        action.name, action.container = paused.name, paused.container
        try:
            state = self.client.api.inspect_container(paused.container)
        except docker.errors.NotFound:
            action.outcome = "not needed: nmc had already removed the paused container"
            return
        status = (state.get("State") or {}).get("Status")
        if status == "paused":
            self.client.api.unpause(paused.container)
            action.outcome = "unpaused: it was still there and paused after 3 s"
        else:
            action.outcome = f"not needed: the paused container is now {status}"

    def _crash(self, action: Action) -> None:
        def crash(victim: dict, port: int) -> str:
            try:
                answer = requests.get(f"http://127.0.0.1:{port}/crash", timeout=5)
                return f"GET 127.0.0.1:{port}/crash answered {answer.status_code} {answer.text.strip()!r}"
            except requests.exceptions.RequestException as e:
                return f"GET 127.0.0.1:{port}/crash failed: {failure_kind(e)}"
        self._hit(action, crash)

    def join(self, deadline: float) -> None:
        for measure in self.measures:
            measure.join(max(0.0, deadline - time.monotonic()))
        self.halt.set()
        for measure in self.measures:
            measure.join(0.5)
            if measure.is_alive() and not measure.error:
                measure.error = "measurement still running at the end of the run"


