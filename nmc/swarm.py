"""Replicas as the tasks of one Docker Swarm service: nmc's second Backend.

Swarm schedules, restarts and removes the tasks; nmc follows it and does not orchestrate. The
service is named after the cluster and publishes the container port in host mode with no
published port, so that every task gets a port of its own on its node, found in its
PortStatus, and nmc relays to it (Swarm's routing mesh is not used: it would bypass nmc's
balancing and checks). Swarm has no task events (moby#37403), so the service's tasks are polled.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator
from typing import NamedTuple

import docker.errors
import docker.types
import gevent
import requests

from nmc.backend import Address, EngineError, Event, Happening, Instance
from nmc.config import Config
from nmc.containers import (LABEL_CLUSTER, LABEL_SETTINGS, STOPPING_SIGNALS, Engine, engine_call,
                            attachment_settings, explain, first_line, hardening_settings,
                            limit_settings, settings_hash)

log = logging.getLogger(__name__)

LABEL_IMAGE = "nmc.image"  # on each task's container spec: the image id it runs
POLL = 0.1                 # seconds between looks at the service's tasks
TASK_WAIT_POLL = 0.1       # seconds between looks for a slot's task while it is placed
SLOT_NAME = "{{.Service.Name}}.{{.Task.Slot}}"  # Swarm's template: a task's hostname, as slot_name
UPDATE_MONITOR_NS = 2_000_000_000  # Swarm watches each updated task this long for a failure
ROLLOUT_WAIT = 600  # seconds a rollout may take at most
TAIL_WAIT = 5       # seconds the last lines of a task may take to come (its node may be down)
STOPPED_STATES = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}


def swarm_state(engine: Engine) -> dict:
    """The engine's word on its swarm: LocalNodeState, ControlAvailable (a manager), NodeID."""
    return engine.client.info().get("Swarm") or {}


class NotAManager(EngineError):
    """--swarm on an engine that is not a swarm manager."""


class RolledBack(EngineError):
    """Swarm rolled a rollout back (a new task failed), or it did not finish in time."""


class SwarmBackend:
    """nmc's Backend on a Docker Swarm: a replica is a slot of the service <name>, served by
    its running task; the task's address is its node's address and its published port."""

    noun = "task"
    engine_name = "Docker engine"
    first_slot = 1
    orchestrates = True  # Swarm replaces failed tasks and removes retired ones: nmc follows

    def __init__(self, engine: Engine, config: Config):
        self.engine = engine
        self.api = engine.client.api
        self.config = config
        self.service = SwarmService(self.api, config)
        self.name = config.name
        self._addresses: dict[str, Address] = {}  # task id -> where it answered (see _address)
        self._nodes: dict[str, tuple[str, str]] = {}  # node id -> (its address, its hostname)
        self._tasks_seen: dict[str, dict] = {}    # task id -> Swarm's last word on it
        self._given_up: set[str] = set()          # tasks nmc removed: never a slot's next one
        self._require_manager()
        self.logs = ServiceLogs(self.api, self.name)

    @engine_call("ask whether it is a swarm manager")
    def _require_manager(self) -> None:
        swarm = swarm_state(self.engine)
        if not swarm.get("ControlAvailable"):
            raise NotAManager(
                "--swarm: this Docker engine is not a swarm manager (its swarm state is "
                f"{swarm.get('LocalNodeState') or 'unknown'}): run `docker swarm init` here, or "
                "point DOCKER_HOST at a manager")

    def slot_name(self, slot: int) -> str:
        return f"{self.name}.{slot}"

    def image_id(self, image: str) -> str:
        return self.engine.image_id(image)

    def check_startable(self, slots: list[int]) -> None:
        pass  # Swarm places tasks and picks their ports

    def prepare(self, count: int, image_id: str) -> None:
        self.engine.check_networks(self.config.network, scope="swarm")
        self.service.prepare(count, image_id)
        self._say_if_other_nodes_need(self.config.image)

    def roll_out(self, image: str, image_id: str, surge: int, progress) -> str:
        self._say_if_other_nodes_need(image)
        return self.service.roll_out(image, image_id, surge, progress)

    @engine_call("list the swarm's nodes")
    def _say_if_other_nodes_need(self, image: str) -> None:
        """An image from no registry (a --build, a `docker build`) may be on this node only: say
        that the swarm's other nodes need it, or Swarm fails their tasks ('No such image')."""
        if self.engine.client.images.get(image).attrs.get("RepoDigests"):
            return  # from a registry: every node can pull it
        here = swarm_state(self.engine).get("NodeID")
        others = [node for node in self.api.nodes() if node["ID"] != here
                  and node["Status"]["State"] == "ready" and node["Spec"].get("Availability") == "active"]
        if others:
            log.warning("image %s comes from no registry (it has no registry digest): the swarm's "
                        "%d other nodes must have it too (`docker save %s | docker load` on each), "
                        "or Swarm cannot start its tasks there", image, len(others), image)

    def teardown(self) -> None:
        self.service.remove()

    # -- tasks -------------------------------------------------------------------------------

    @engine_call("list the service's tasks")
    def _tasks(self, running_only: bool = True) -> list[dict]:
        filters = {"service": self.name}
        if running_only:
            filters["desired-state"] = "running"
        try:
            return self.api.tasks(filters=filters)
        except docker.errors.NotFound:
            return []

    def list_instances(self, image_id: str) -> list[Instance]:
        """The running tasks (those still being placed are Swarm's business: start waits)."""
        return [self._instance(task, image_id) for task in self._tasks()
                if task.get("Slot") and task["Status"]["State"] == "running"]

    def start(self, slot: int, image_id: str) -> Instance:
        """Swarm starts the tasks: wait until the slot has a running task with a port (nmc's
        own check then decides when it joins the rotation)."""
        deadline = time.monotonic() + self.config.start_timeout
        while True:
            tasks = self._tasks()
            # one given up on may still be "running" for a moment: Swarm has not heard yet
            self._given_up &= {task["ID"] for task in tasks}
            for task in tasks:
                if task.get("Slot") == slot and task["Status"]["State"] == "running" \
                        and task["ID"] not in self._given_up and self._address(task) is not None:
                    return self._instance(task, image_id)
            if time.monotonic() >= deadline:
                raise EngineError(f"Swarm placed no running task in slot {slot} of service "
                                  f"{self.name} within {self.config.start_timeout:g}s"
                                  + self._last_failure(slot))
            time.sleep(TASK_WAIT_POLL)

    def _last_failure(self, slot: int) -> str:
        """What Swarm said of the slot's newest task that failed ('No such image: ...')."""
        failed = [task for task in self._tasks(running_only=False) if task.get("Slot") == slot
                  and task["Status"]["State"] in STOPPED_STATES and task["Status"].get("Err")]
        if not failed:
            return ""
        task = max(failed, key=lambda task: task["Status"].get("Timestamp", ""))
        return f" (its last task {task['Status']['State']}: {task['Status']['Err']})"

    @engine_call("inspect a task")
    def inspect(self, instance_id: str) -> Instance | None:
        try:
            return self._instance(self.api.inspect_task(instance_id))
        except docker.errors.NotFound:
            return None

    def remove(self, instance_id: str, grace: float) -> None:
        """Swarm removes tasks itself (a scale-down, an update, the service removed); a task
        that nmc gives up on while it still runs (hung, paused) has its container stopped, when
        it is on this engine, and Swarm replaces it. Swarm keeps the container, and with it the
        task's logs (a task on another node fails its container health check: Swarm replaces it)."""
        found = self.inspect(instance_id)
        container = self._container_of(instance_id)
        info = self.engine.inspect(container) if container else None
        if found is not None and not found.stopped_from_outside \
                and info is not None and info.status in ("running", "paused"):
            self.engine.stop(container, stop_timeout=grace)  # (one Swarm stops has its grace)
        self._given_up.add(instance_id)
        self._addresses.pop(instance_id, None)
        self._tasks_seen.pop(instance_id, None)

    def events(self, since: float | None = None) -> "TaskEvents":
        return TaskEvents(self, since)

    def tail_logs(self, instance_id: str, lines: int) -> list[str]:
        """Through the manager, so from any node; nothing if they do not come in TAIL_WAIT."""
        found: list[str] = []
        with gevent.Timeout(TAIL_WAIT, False):
            found = [line.text for line in self.logs.lines(tail=lines) if line.task_id == instance_id]
        return found

    def close(self) -> None:
        self.engine.close()

    # -- from Swarm's words to nmc's ---------------------------------------------------------

    def _container_of(self, task_id: str) -> str | None:
        task = self._tasks_seen.get(task_id) or {}
        return task.get("Status", {}).get("ContainerStatus", {}).get("ContainerID")

    def _node(self, node_id: str) -> tuple[str, str] | None:
        """A node's (address, hostname), asked once."""
        if node_id not in self._nodes:
            try:
                node = self.api.inspect_node(node_id)
            except docker.errors.APIError:
                return None
            self._nodes[node_id] = (node["Status"]["Addr"], node["Description"]["Hostname"])
        return self._nodes[node_id]

    def _address(self, task: dict) -> Address | None:
        """Where the task answers. Remembered by task id: its port vanishes from PortStatus
        about 0.2 s after Swarm decides to stop it, while it still serves."""
        ports = [p for p in (task["Status"].get("PortStatus") or {}).get("Ports") or ()
                 if p.get("TargetPort") == self.config.container_port and p.get("PublishedPort")]
        node = self._node(task["NodeID"]) if task.get("NodeID") else None
        host = node[0] if node else None
        if ports and host:
            # Engine 20.10 may give IPv4 and IPv6 two ports (moby#42442): the first is IPv4's
            self._addresses.setdefault(task["ID"], Address(host, ports[0]["PublishedPort"]))
        return self._addresses.get(task["ID"])

    def _instance(self, task: dict, image_id: str | None = None) -> Instance:
        self._tasks_seen[task["ID"]] = task
        status = task["Status"]
        state, desired = status["State"], task.get("DesiredState", "running")
        spec_image = task["Spec"]["ContainerSpec"].get("Labels", {}).get(LABEL_IMAGE, "")
        problem = None
        if desired != "running":
            problem = f"task is being stopped by Swarm (desired state {desired})"
        elif state != "running":
            problem = f"task is {state}" + (f": {status['Err']}" if status.get("Err") else "")
        code = status.get("ContainerStatus", {}).get("ExitCode") if state in STOPPED_STATES else None
        node = self._node(task["NodeID"]) if task.get("NodeID") else None
        return Instance(id=task["ID"], name=self.slot_name(task.get("Slot") or 0),
                        image_id=spec_image, address=self._address(task), problem=problem,
                        exit_code=code,
                        adoptable=problem is None and (image_id is None or spec_image == image_id),
                        stopped_from_outside=desired != "running",
                        node=node[1] if node else None,
                        engine_state=state if desired == state else f"{state}, desired {desired}")


class SwarmService:
    """The cluster's one service: created with nmc's spec, adopted, changed by sending back its
    stored spec, rolled out by Swarm, removed."""

    def __init__(self, api, config: Config):
        self.api = api
        self.config = config
        self.name = config.name

    def settings_hash(self, image_id: str) -> str:
        """As a container's, and the health check's settings too (they are in the service's spec)."""
        config = self.config
        return settings_hash(image_id, config.container_port, config.replica_env,
                             config.health_path, config.start_timeout,
                             *hardening_settings(config.cap_add, config.read_only),
                             *limit_settings(config.memory, config.cpus),
                             *attachment_settings(config.network, config.volume))

    @engine_call("create or update the swarm service")
    def prepare(self, count: int, image_id: str) -> None:
        """The service runs `count` tasks of `image_id`: created, adopted as it is when its
        settings match, else replaced; only its replica count changes otherwise."""
        current = self.inspect()
        if current is not None and current["Spec"].get("Labels", {}).get(LABEL_SETTINGS) \
                != self.settings_hash(image_id):
            log.info("removing leftover swarm service %s: it does not match this cluster's "
                     "settings", self.name)
            self.api.remove_service(current["ID"])
            self._wait_gone()
            current = None
        if current is None:
            self._create(count, image_id)
            log.info("created swarm service %s (%d replicas)", self.name, count)
        elif current["Spec"]["Mode"].get("Replicated", {}).get("Replicas") != count:
            self._update(lambda spec: spec["Mode"]["Replicated"].update(Replicas=count))
        else:
            log.info("adopting swarm service %s", self.name)

    def _create(self, count: int, image_id: str) -> None:
        config = self.config
        template = docker.types.TaskTemplate(
            docker.types.ContainerSpec(
                config.image, hostname=SLOT_NAME,
                labels={LABEL_IMAGE: image_id, LABEL_CLUSTER: config.name},
                env=[f"NMC_REPLICA={SLOT_NAME}"]
                + [f"{k}={v}" for k, v in config.replica_env.items()],
                # hardened as on one host, but for no-new-privileges: a service spec has no
                # place for it before Engine 23 (API 1.44)
                cap_drop=["ALL"], cap_add=list(config.cap_add) or None,
                read_only=config.read_only or None,
                mounts=[*([docker.types.Mount("/tmp", None, type="tmpfs")] if config.read_only
                          else []), *map(_mount, config.volume)] or None),
            restart_policy=docker.types.RestartPolicy(condition="any", delay=0),
            resources=docker.types.Resources(cpu_limit=round(config.cpus * 1e9) or None,
                                             mem_limit=config.memory or None),
            networks=[*config.network] or None)
        template["ContainerSpec"]["Healthcheck"] = self._healthcheck()
        self.api.create_service(
            template, name=self.name,
            labels={LABEL_CLUSTER: config.name, LABEL_SETTINGS: self.settings_hash(image_id)},
            mode=docker.types.ServiceMode("replicated", replicas=count),
            update_config=docker.types.UpdateConfig(parallelism=config.max_surge, order="start-first",
                                                    failure_action="rollback",
                                                    monitor=UPDATE_MONITOR_NS),
            rollback_config=docker.types.RollbackConfig(parallelism=config.max_surge,
                                                        order="start-first"),
            endpoint_spec={"Ports": [{"Protocol": "tcp", "TargetPort": config.container_port,
                                      "PublishMode": "host"}]})

    def _healthcheck(self) -> dict:
        """The container's own check of --health-path, with the image's node: Swarm counts a
        task as running only once it passes, so a rollout of an image that never answers is
        rolled back by Swarm before it gets a request."""
        probe = ("require('http').get({host: '127.0.0.1', port: process.env.PORT, path: "
                 f"{json.dumps(self.config.health_path)}, timeout: 2000}}, r => process.exit("
                 "r.statusCode >= 200 && r.statusCode < 300 ? 0 : 1)).on('error', () => "
                 "process.exit(1))")
        second = 1_000_000_000
        return {"Test": ["CMD", "node", "-e", probe], "Interval": second // 2,
                "Timeout": 2 * second, "Retries": 3, "StartPeriod": int(self.config.start_timeout * second)}

    @engine_call("roll out a new image to the swarm service")
    def roll_out(self, image: str, image_id: str, surge: int, progress) -> str:
        """Swarm's own rolling update, start-first, `surge` tasks at a time, rolled back by
        Swarm when a new task fails; `progress(text)` hears each new word of its UpdateStatus.
        The outcome, in one line; RollbackDone when Swarm rolled back."""
        def change(spec: dict) -> None:
            container = spec["TaskTemplate"]["ContainerSpec"]
            container["Image"] = image
            container.setdefault("Labels", {})[LABEL_IMAGE] = image_id
            spec.setdefault("Labels", {})[LABEL_SETTINGS] = self.settings_hash(image_id)
            spec.setdefault("UpdateConfig", {})["Parallelism"] = surge

        self._update(change)
        deadline = time.monotonic() + ROLLOUT_WAIT
        said = None
        while time.monotonic() < deadline:
            status = (self.inspect() or {}).get("UpdateStatus") or {}
            word = (status.get("State"), status.get("Message"))
            if word != said and word[0]:
                said = word
                progress(f"{word[0]}: {word[1] or ''}".rstrip(": "))
            if word[0] == "completed":
                return word[1] or "update completed"
            if word[0] in ("rollback_completed", "rollback_paused", "paused"):
                raise RolledBack(f"Swarm rolled the service back ({word[0]}): {word[1]}")
            time.sleep(TASK_WAIT_POLL)
        raise RolledBack(f"the rollout did not finish within {ROLLOUT_WAIT:g}s")

    def _update(self, change) -> None:
        """Send back the service's *stored* spec with `change` applied: Service.update() would
        fill in defaults and replace every running task. A stale version is retried once."""
        for attempt in (1, 2):
            current = self.inspect()
            spec = current["Spec"]
            change(spec)
            try:
                self.api.update_service(
                    current["ID"], current["Version"]["Index"], task_template=spec["TaskTemplate"],
                    name=spec["Name"], labels=spec.get("Labels"), mode=spec["Mode"],
                    update_config=spec.get("UpdateConfig"), rollback_config=spec.get("RollbackConfig"),
                    networks=spec.get("TaskTemplate", {}).get("Networks"),
                    endpoint_spec=spec.get("EndpointSpec"), fetch_current_spec=False)
                return
            except docker.errors.APIError as e:
                if attempt == 2 or "out of sequence" not in explain(e):
                    raise

    def inspect(self) -> dict | None:
        try:
            return self.api.inspect_service(self.name)
        except docker.errors.NotFound:
            return None

    def _wait_gone(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while self.inspect() is not None and time.monotonic() < deadline:
            time.sleep(TASK_WAIT_POLL)

    @engine_call("remove the swarm service")
    def remove(self) -> None:
        """Remove the service: Swarm stops its tasks (SIGTERM: they finish what they have)."""
        try:
            self.api.remove_service(self.name)
        except docker.errors.NotFound:
            pass


class LogLine(NamedTuple):
    stamp: str    # RFC 3339, UTC: sorts as text
    replica: str  # the slot's name, <service>.<slot>
    task_id: str
    text: str


class ServiceLogs:
    """The lines of a service's tasks on every node, through the manager (as `docker service
    logs`): Swarm asks each task's node for them."""

    TASK_ID = re.compile(r"(?:^|,)com\.docker\.swarm\.task\.id=([0-9a-z]+)")

    def __init__(self, api, name: str):
        self.api = api
        self.name = name
        self._slots: dict[str, int] = {}  # task id -> its slot

    @classmethod
    def of_cluster(cls, engine: Engine, cluster: str) -> "ServiceLogs | None":
        """The logs of cluster's swarm service, if the engine is a manager and has it."""
        api = engine.client.api
        try:
            if not swarm_state(engine).get("ControlAvailable"):
                return None
            service = api.inspect_service(cluster)
        except docker.errors.DockerException:
            return None
        if service["Spec"].get("Labels", {}).get(LABEL_CLUSTER) != cluster:
            return None
        return cls(api, cluster)

    @engine_call("list the service's tasks")
    def names(self) -> list[str]:
        """The names of the service's slots that have tasks, old ones included."""
        tasks = self.api.tasks(filters={"service": self.name})
        self._slots.update((task["ID"], task.get("Slot") or 0) for task in tasks)
        return sorted({self._replica(task["ID"]) for task in tasks})

    def lines(self, follow: bool = False, since: float | None = None,
              tail: int | str = "all") -> Iterator[LogLine]:
        """Every task's lines (`tail`: the last so many of each), from `since` (epoch seconds)
        on; with `follow`, then new ones as they come, of tasks started later too."""
        try:
            chunks = self.api.service_logs(self.name, details=True, timestamps=True, stdout=True,
                                           stderr=True, follow=follow, tail=tail, is_tty=False,
                                           **({"since": since} if since else {}))
            for chunk in chunks:
                for raw in chunk.decode("utf-8", "replace").splitlines():
                    line = self._parse(raw)
                    if line is not None:
                        yield line
        except docker.errors.NotFound:
            return
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineError(f"cannot read the logs of service {self.name}: {first_line(e)}") from e

    def _parse(self, raw: str) -> LogLine | None:
        """`<stamp> <details> <text>`, the details naming the task."""
        stamp, _, rest = raw.partition(" ")
        details, _, text = rest.partition(" ")
        found = self.TASK_ID.search(details)
        if not found:
            return None
        return LogLine(stamp, self._replica(found.group(1)), found.group(1), text)

    def _replica(self, task_id: str) -> str:
        if task_id not in self._slots:
            try:
                self._slots[task_id] = self.api.inspect_task(task_id).get("Slot") or 0
            except docker.errors.DockerException:
                self._slots[task_id] = 0
        return f"{self.name}.{self._slots[task_id]}"


class TaskEvents:
    """The service's tasks, polled every POLL seconds, as nmc's Events: a task Swarm decides to
    stop (its desired state leaves running: being stopped, or retired on a scale-down), one
    that ended (exited), one that vanished (gone), a new one running (started).

    The fast path: the containers of the tasks on the engine nmc talks to have events (Swarm
    has none of its own): a pause, a stop or an exit there is heard at once, and polls at once
    (a paused task stays "running" for Swarm: only this, or the checks, can tell)."""

    def __init__(self, backend: SwarmBackend, since: float | None = None):
        self.backend = backend
        self._closed = False
        self._seen: dict[str, dict] = {t["ID"]: t for t in backend._tasks(running_only=False)}
        self._local: queue.Queue = queue.Queue()
        try:
            self._containers = backend.engine.events(backend.config.name, since)
        except EngineError:
            self._containers = None  # the poll alone, then
        else:
            threading.Thread(target=self._hear_containers, daemon=True).start()

    def _hear_containers(self) -> None:
        try:
            for event in self._containers:
                self._local.put(event)
        except EngineError:
            pass  # the engine went away: the poll says so

    def __iter__(self):
        while not self._closed:
            try:
                heard = [self._local.get(timeout=POLL)]
            except queue.Empty:
                heard = []
            while not self._local.empty():
                heard.append(self._local.get_nowait())
            yield from filter(None, map(self._translate, heard))
            tasks = {t["ID"]: t for t in self.backend._tasks(running_only=False)}
            for event in self._changes(self._seen, tasks):
                yield event
            self._seen = tasks

    def _translate(self, event) -> Event | None:
        """A container event of one of the service's tasks, in nmc's words (None: not ours, or
        nothing nmc acts on)."""
        task_id = next((t for t, task in self._seen.items() if event.container_id and
                        task["Status"].get("ContainerStatus", {}).get("ContainerID") == event.container_id),
                       None)
        if task_id is None:
            return None
        name = self.backend.slot_name(self._seen[task_id].get("Slot") or 0)
        if event.action == "pause":
            return Event(Happening.PAUSED, task_id, name, "task's container was paused")
        if event.action == "kill" and event.signal in STOPPING_SIGNALS:
            return Event(Happening.BEING_STOPPED, task_id, name,
                         f"task's container is being stopped (signal {event.signal})")
        if event.action == "die":
            return Event(Happening.EXITED, task_id, name,
                         f"task's container exited with code {event.exit_code}", event.exit_code)
        if event.action == "oom":
            return Event(Happening.OUT_OF_MEMORY, task_id, name, "task's container ran out of memory")
        return None

    def _changes(self, before: dict, now: dict):
        for task_id, task in now.items():
            old = before.get(task_id)
            name = self.backend.slot_name(task.get("Slot") or 0)
            state, desired = task["Status"]["State"], task.get("DesiredState")
            if desired != "running" and (old is None or old.get("DesiredState") == "running"):
                happening = Happening.RETIRED if desired == "remove" else Happening.BEING_STOPPED
                yield Event(happening, task_id, name, f"Swarm is stopping the task (desired state "
                                                      f"{desired})")
            if state in STOPPED_STATES and (old is None or old["Status"]["State"] not in STOPPED_STATES):
                code = task["Status"].get("ContainerStatus", {}).get("ExitCode")
                err = task["Status"].get("Err")
                yield Event(Happening.EXITED, task_id, name,
                            f"task {state}" + (f" with code {code}" if code is not None else "")
                            + (f": {err}" if err else ""), code)
            elif state == "running" and (old is None or old["Status"]["State"] != "running"):
                yield Event(Happening.STARTED, task_id, name, "task started")
        for task_id, task in before.items():
            if task_id not in now:
                yield Event(Happening.GONE, task_id, self.backend.slot_name(task.get("Slot") or 0),
                            "task was removed")

    def close(self) -> None:
        self._closed = True
        if self._containers is not None:
            self._containers.close()


def _mount(volume: str) -> docker.types.Mount:
    """--volume's SOURCE:TARGET:MODE as a service's mount: a host folder (on whichever node the
    task runs) or a named volume (each node's own)."""
    source, target, mode = volume.split(":")
    return docker.types.Mount(target, source, type="bind" if source.startswith("/") else "volume",
                              read_only=mode == "ro")
