"""Replicas as plain containers on one Docker engine: the only module that imports `docker`.

`Engine` is a thin wrapper over the Docker SDK: run a replica, find a cluster's containers by
label, inspect, remove, read logs and events. Every engine failure becomes an NmcError with a
one-line message. `ContainerBackend` is nmc's `Backend` on top of it: it alone knows Docker's
labels, statuses and signal names, and tells the supervisor what happened in nmc's own words.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import socket
from dataclasses import dataclass, field

import docker
import docker.errors
import requests.exceptions

from nmc.backend import (
    Address,
    EngineError,
    EngineUnreachable,
    Event,
    Happening,
    ImageMissing,
    Instance,
    NetworkMissing,
    PortBusy,
)
from nmc.config import REPLICA_HOST, Config
from nmc.errors import NmcError

log = logging.getLogger(__name__)

LABEL_CLUSTER = "nmc.cluster"
LABEL_PORT = "nmc.port"
# A hash of what makes a replica what it is (image id, container port, environment): a leftover
# container is adopted only when its hash matches the one a fresh start would give.
LABEL_SETTINGS = "nmc.settings"

API_TIMEOUT = 30  # seconds for one call to the engine


class BuildFailed(NmcError):
    """`--build`: the image could not be built; the message has the build's own error, and
    `output` the build's last lines before it."""

    def __init__(self, message: str, output: list[str] | None = None):
        super().__init__(message)
        self.output = output or []


# The builder's colour codes (`\x1b[91m`, `\x1b[0m`): a log file is no terminal.
TERMINAL_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
BUILD_OUTPUT_KEPT = 50  # lines of a build's output kept to explain its failure


class NameTaken(EngineError):
    pass


@dataclass(frozen=True)
class ReplicaSpec:
    """What to run for one replica."""

    cluster: str
    name: str
    image: str
    host_port: int
    container_port: int
    host_ip: str = "127.0.0.1"
    env: dict[str, str] = field(default_factory=dict)
    cap_add: tuple[str, ...] = ()  # every other capability is dropped
    read_only: bool = False
    memory: int = 0    # bytes; 0: no limit
    cpus: float = 0.0  # 0: no limit
    networks: tuple[str, ...] = ()  # none: Docker's default bridge
    volumes: tuple[str, ...] = ()   # SOURCE:TARGET:MODE

    def settings_hash(self, image_id: str) -> str:
        return settings_hash(image_id, self.container_port, self.env,
                             *hardening_settings(self.cap_add, self.read_only),
                             *limit_settings(self.memory, self.cpus),
                             *attachment_settings(self.networks, self.volumes))


def hardening_settings(cap_add: tuple[str, ...], read_only: bool) -> list:
    """The hardening a replica runs with, as the settings hash sees it (containers and services
    made before nmc hardened them have other hashes: they are replaced, not adopted)."""
    return ["hardened-1", sorted(cap_add), read_only]


def limit_settings(memory: int, cpus: float) -> list:
    """--memory and --cpus, as the settings hash sees them (nothing when neither is set: the
    replicas of an nmc without them are adopted as they were)."""
    return ["limits-1", memory, cpus] if memory or cpus else []


def attachment_settings(networks: tuple[str, ...], volumes: tuple[str, ...]) -> list:
    """--network and --volume, as the settings hash sees them (nothing when neither is given)."""
    return ["attached-1", list(networks), list(volumes)] if networks or volumes else []


def settings_hash(image_id: str, container_port: int, env: dict[str, str], *more) -> str:
    """What makes a replica what it is (its image id, container port, environment, and `more`
    that a backend adds), hashed: a leftover is adopted only when its hash is a fresh start's."""
    text = json.dumps([image_id, container_port, sorted(env.items()), *more])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class ContainerInfo:
    """A container as the engine last described it."""

    id: str
    name: str
    status: str  # created, running, paused, restarting, removing, exited, dead
    exit_code: int | None
    image_id: str
    labels: dict[str, str]
    oom_killed: bool = False  # the kernel killed a process of it for want of memory

    @property
    def short_id(self) -> str:
        return self.id[:12]

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def port(self) -> int | None:
        try:
            return int(self.labels.get(LABEL_PORT, ""))
        except ValueError:
            return None

    @classmethod
    def from_attrs(cls, attrs: dict) -> "ContainerInfo":
        state = attrs.get("State") or {}
        return cls(
            id=attrs["Id"],
            name=attrs.get("Name", "").lstrip("/"),
            status=state.get("Status", "unknown"),
            exit_code=state.get("ExitCode"),
            image_id=attrs.get("Image", ""),
            labels=(attrs.get("Config") or {}).get("Labels") or {},
            oom_killed=bool(state.get("OOMKilled")),
        )


@dataclass(frozen=True)
class ContainerEvent:
    """One of the engine's container events: die, oom, kill, stop, pause, destroy, start, ..."""

    action: str
    container_id: str
    name: str
    exit_code: int | None
    signal: str | None = None  # for a kill: the signal sent, as the engine names it ("15", "SIGTERM")


def docker_host() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


def engine_call(what: str):
    """Turn the SDK's exceptions into one-line EngineErrors that say what nmc was doing (for
    both backends: containers and swarm)."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except NmcError:
                raise
            except docker.errors.APIError as e:
                raise EngineError(f"Docker engine refused to {what}: {explain(e)}") from e
            except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
                raise EngineUnreachable(f"lost the Docker engine at {docker_host()} while trying "
                                        f"to {what} ({_root_reason(e)})") from e

        return wrapper

    return decorate


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _root_reason(e: BaseException) -> str:
    """The innermost OSError's words ('No such file or directory', 'Connection refused'), which
    say more than the layers of requests and urllib3 wrapped around it."""
    seen = set()
    stack = [e]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, OSError) and current.strerror:
            return current.strerror.lower()
        stack.extend(arg for arg in getattr(current, "args", ()) if isinstance(arg, BaseException))
        stack.extend(x for x in (current.__cause__, current.__context__, getattr(current, "reason", None))
                     if isinstance(x, BaseException))
    return first_line(e)


def explain(e: docker.errors.APIError) -> str:
    return first_line(getattr(e, "explanation", None) or e)


class Engine:
    """A connection to one Docker engine."""

    def __init__(self, client: docker.DockerClient):
        self.client = client

    @classmethod
    def connect(cls, timeout: float = API_TIMEOUT) -> "Engine":
        try:
            # the SDK asks the engine for its API version here: that call is the ping
            client = docker.from_env(timeout=timeout)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineUnreachable(
                f"cannot reach the Docker engine at {docker_host()} ({first_line(e)}): "
                "start Docker (Docker Desktop, `sudo systemctl start docker`, "
                "or `scripts/ensure-docker.sh` as root) and try again") from e
        return cls(client)

    def close(self) -> None:
        self.client.close()

    @engine_call("look up the image")
    def image_id(self, image: str) -> str:
        try:
            return self.client.images.get(image).id
        except docker.errors.ImageNotFound:
            hint = "build it with `make nodejs`" if image == "nodejs.org" else \
                "build or pull it first (`docker build -t ...` or `docker pull ...`)"
            raise ImageMissing(f"image {image!r} is not on this Docker engine: {hint}") from None

    def build(self, context: str, tag: str, dockerfile: str | None = None,
              progress=lambda line: None, build_args: dict[str, str] | None = None) -> str:
        """Build `context` (a folder) into the image `tag`, passing each line of the build's
        output to `progress` (without colour codes); the image id. `dockerfile` may lie outside
        the folder; `build_args` are its ARGs."""
        kept: list[str] = []
        try:
            output = self.client.api.build(path=context, tag=tag, dockerfile=dockerfile, rm=True,
                                           forcerm=True, decode=True, buildargs=build_args or None)
            image_id = None
            for chunk in output:
                if "error" in chunk:
                    raise BuildFailed(f"building {context} failed: "
                                      f"{' '.join(TERMINAL_CODES.sub('', str(chunk['error'])).split())}",
                                      kept)
                for line in TERMINAL_CODES.sub("", str(chunk.get("stream", ""))).splitlines():
                    if line.strip():
                        progress(line.rstrip())
                        kept = [*kept[-BUILD_OUTPUT_KEPT + 1:], line.strip()]
                image_id = (chunk.get("aux") or {}).get("ID", image_id)
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise BuildFailed(f"building {context} failed: {first_line(e)}") from e
        except OSError as e:  # reading the folder
            raise BuildFailed(f"building {context} failed: {e.strerror}: {e.filename}") from e
        return image_id or self.image_id(tag)

    @engine_call("look up the replicas' networks")
    def check_networks(self, names: tuple[str, ...], scope: str = "") -> None:
        """Every network in `names` exists (and is of `scope`, "swarm" for a service), else one
        line that says how to make it."""
        for name in names:
            try:
                found = self.client.api.inspect_network(name)
            except docker.errors.NotFound:
                overlay = " -d overlay --attachable" if scope == "swarm" else ""
                raise NetworkMissing(f"network {name!r} does not exist on this Docker engine: "
                                     f"create it (`docker network create{overlay} {name}`) and "
                                     "start the services the replicas should reach on it") from None
            if scope and found.get("Scope") != scope:
                raise NetworkMissing(f"network {name!r} is a {found.get('Scope')} network: a "
                                     f"swarm service needs an overlay network "
                                     f"(`docker network create -d overlay --attachable {name}`)")

    @engine_call("list the cluster's containers")
    def list_cluster(self, cluster: str) -> list[ContainerInfo]:
        containers = self.client.api.containers(all=True, filters={"label": f"{LABEL_CLUSTER}={cluster}"})
        infos = []
        for summary in containers:
            info = self.inspect(summary["Id"])
            if info is not None:
                infos.append(info)
        return infos

    @engine_call("inspect a container")
    def inspect(self, container: str) -> ContainerInfo | None:
        """By id or name; None when there is no such container."""
        try:
            return ContainerInfo.from_attrs(self.client.api.inspect_container(container))
        except docker.errors.NotFound:
            return None

    @engine_call("start a replica")
    def run(self, spec: ReplicaSpec, image_id: str) -> ContainerInfo:
        """Create and start a replica's container; on failure nothing is left behind."""
        try:
            container_id = self._create(spec, image_id)
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: a container has the name (looked at only then)
                raise
            holder = self.inspect(spec.name)
            if holder is not None:
                if holder.labels.get(LABEL_CLUSTER) != spec.cluster:
                    raise NameTaken(f"a container named {spec.name} ({holder.short_id}) already "
                                    "exists and nmc did not start it: remove it or pick another "
                                    "--name") from None
                self.remove(holder.id, stop_timeout=0)
            container_id = self._create(spec, image_id)
        try:
            for network in spec.networks[1:]:  # a container is created on one network only
                self.client.api.connect_container_to_network(container_id, network)
            self.client.api.start(container_id)
        except docker.errors.APIError as e:
            self._remove_quietly(container_id)
            text = explain(e)
            if "address already in use" in text or "port is already allocated" in text:
                raise PortBusy(f"host port {spec.host_port} is already in use: stop what holds it "
                               "or choose another --base-port") from e
            raise
        except BaseException:
            self._remove_quietly(container_id)
            raise
        # gone already (removed from outside): said so by the next look at it, as for any other
        return self.inspect(container_id) or ContainerInfo(
            id=container_id, name=spec.name, status="created", exit_code=None, image_id=image_id,
            labels=self.labels(spec, image_id))

    @staticmethod
    def labels(spec: ReplicaSpec, image_id: str) -> dict[str, str]:
        return {LABEL_CLUSTER: spec.cluster, LABEL_PORT: str(spec.host_port),
                LABEL_SETTINGS: spec.settings_hash(image_id)}

    def _create(self, spec: ReplicaSpec, image_id: str) -> str:
        """The replica's container created (not started), through the engine's API itself: the
        SDK's containers.create() would look the new container up once more."""
        api = self.client.api
        network = spec.networks[0] if spec.networks else None
        port = f"{spec.container_port}/tcp"
        host_config = api.create_host_config(
            port_bindings={port: (spec.host_ip, spec.host_port)},
            # hardened: no capability but those given back, no gaining any through setuid files
            cap_drop=["ALL"], cap_add=list(spec.cap_add) or None,
            security_opt=["no-new-privileges"],
            read_only=spec.read_only, tmpfs={"/tmp": ""} if spec.read_only else None,
            # --memory: no swap beyond it (Docker's default would add as much swap again)
            mem_limit=spec.memory or None, memswap_limit=spec.memory or None,
            nano_cpus=round(spec.cpus * 1e9) or None,
            network_mode=network,  # a container is created on one network only
            binds=[*spec.volumes] or None,
        )
        created = api.create_container(
            image_id,
            name=spec.name,
            hostname=spec.name,
            labels=self.labels(spec, image_id),
            environment={"NMC_REPLICA": spec.name, **spec.env},
            ports=[tuple(port.split("/"))],
            volumes=[volume.split(":")[1] for volume in spec.volumes] or None,
            host_config=host_config,
            networking_config={network: None} if network else None,
        )
        return created["Id"]

    @engine_call("remove a container")
    def remove(self, container: str, stop_timeout: float = 5) -> None:
        """Stop (SIGTERM, then SIGKILL after stop_timeout) and remove; gone already is fine."""
        try:
            if stop_timeout > 0:
                self.client.api.stop(container, timeout=int(stop_timeout))
            self.client.api.remove_container(container, force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "already in progress" not in explain(e):
                raise

    @engine_call("stop a container")
    def stop(self, container: str, stop_timeout: float = 5) -> None:
        """SIGTERM, then SIGKILL after stop_timeout; the container stays (gone already is fine)."""
        try:
            self.client.api.stop(container, timeout=int(stop_timeout))
        except docker.errors.NotFound:
            pass

    def _remove_quietly(self, container: str) -> None:
        try:
            self.client.api.remove_container(container, force=True)
        except docker.errors.DockerException as e:
            log.warning("could not remove container %s: %s", container[:12], first_line(e))

    @engine_call("follow the engine's events")
    def events(self, cluster: str, since: float | None = None) -> "EventStream":
        """The cluster's container events from `since` (epoch seconds; None: from now) on;
        EngineError when the stream cannot open."""
        # (as seconds.nanoseconds: the engine reads the digits after the point as a fraction)
        stream = self.client.events(decode=True, since=None if since is None else f"{since:.9f}",
                                    filters={"type": "container",
                                             "label": f"{LABEL_CLUSTER}={cluster}"})
        return EventStream(stream)

    @engine_call("read a container's logs")
    def tail_logs(self, container: str, lines: int = 10) -> list[str]:
        try:
            raw = self.client.api.logs(container, tail=lines)
        except docker.errors.NotFound:
            return []
        return raw.decode("utf-8", "replace").splitlines()


    @engine_call("read a container's logs")
    def logs_until(self, container: str, until: float) -> list[tuple[str, str]]:
        """Every line the container logged before `until` (epoch seconds), as (RFC 3339
        timestamp, text)."""
        try:
            raw = self.client.api.logs(container, timestamps=True, until=until)
        except docker.errors.NotFound:
            return []
        return [tuple(line.split(" ", 1)) if " " in line else (line, "")
                for line in raw.decode("utf-8", "replace").splitlines()]

    def follow_logs(self, container: str, since: float | None = None):
        """The container's lines from `since` (epoch seconds; None: from its start) on, as they
        come, until it stops; nothing when it is gone already."""
        try:
            chunks = self.client.api.logs(container, stream=True, follow=True,
                                          **({"since": since} if since else {}))
        except docker.errors.NotFound:
            return
        except (docker.errors.DockerException, requests.exceptions.RequestException) as e:
            raise EngineError(f"cannot read the logs of {container[:12]}: {first_line(e)}") from e
        pending = b""
        try:
            for chunk in chunks:
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    yield line.decode("utf-8", "replace")
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError):
            pass  # the container or the engine went away: its lines end here
        if pending:
            yield pending.decode("utf-8", "replace")


class EventStream:
    """Iterates ContainerEvents until the engine goes away (then EngineUnreachable); close() ends it."""

    def __init__(self, stream):
        self._stream = stream

    def __iter__(self):
        try:
            for event in self._stream:
                attributes = (event.get("Actor") or {}).get("Attributes") or {}
                code = attributes.get("exitCode")
                yield ContainerEvent(action=event.get("Action") or event.get("status") or "",
                                     container_id=event.get("id") or "",
                                     name=attributes.get("name", ""),
                                     exit_code=int(code) if code and code.isdigit() else None,
                                     signal=attributes.get("signal"))
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
            raise EngineUnreachable(f"the Docker engine's event stream broke ({_root_reason(e)})") from e
        raise EngineUnreachable("the Docker engine closed its event stream")

    def close(self) -> None:
        try:
            self._stream.close()
        except Exception:  # closing a stream whose connection is already gone
            pass


# Signals that stop a container (docker stop sends TERM, then KILL); others (HUP, USR1) do not.
STOPPING_SIGNALS = frozenset(("2", "3", "9", "15", "SIGINT", "SIGQUIT", "SIGKILL", "SIGTERM",
                              "INT", "QUIT", "KILL", "TERM"))


class ContainerBackend:
    """nmc's Backend on one Docker engine: a replica is a container named <cluster>-<host port>,
    publishing its port on 127.0.0.1; its slot is that host port."""

    noun = "container"
    engine_name = "Docker engine"
    orchestrates = False  # nmc starts and replaces every container itself

    def __init__(self, engine: Engine, config: Config):
        self.engine = engine
        self.config = config
        self.first_slot = config.base_port
        # containers the engine said were being stopped or paused by someone: not crashes
        self._stopped_from_outside: set[str] = set()

    def slot_name(self, slot: int) -> str:
        return self.config.replica_name(slot)

    def _spec(self, slot: int, image_id: str) -> ReplicaSpec:
        return ReplicaSpec(cluster=self.config.name, name=self.slot_name(slot), image=image_id,
                           host_port=slot, container_port=self.config.container_port,
                           host_ip=REPLICA_HOST, env=self.config.replica_env,
                           cap_add=self.config.cap_add, read_only=self.config.read_only,
                           memory=self.config.memory, cpus=self.config.cpus,
                           networks=self.config.network, volumes=self.config.volume)

    def image_id(self, image: str) -> str:
        return self.engine.image_id(image)

    def check_startable(self, slots: list[int]) -> None:
        for port in slots:
            _check_port_free(port)

    def prepare(self, count: int, image_id: str) -> None:
        """Each container is started on its own: only what they all need is looked at."""
        self.engine.check_networks(self.config.network)

    def teardown(self) -> None:
        pass

    def list_instances(self, image_id: str) -> list[Instance]:
        instances = []
        for info in self.engine.list_cluster(self.config.name):
            port = info.port
            adoptable = (port is not None and info.running and info.name == self.slot_name(port)
                         and info.labels.get(LABEL_SETTINGS) == self._spec(port, image_id).settings_hash(image_id))
            instances.append(self._instance(info, adoptable))
        return instances

    def start(self, slot: int, image_id: str) -> Instance:
        return self._instance(self.engine.run(self._spec(slot, image_id), image_id))

    def inspect(self, instance_id: str) -> Instance | None:
        info = self.engine.inspect(instance_id)
        return self._instance(info) if info is not None else None

    def remove(self, instance_id: str, grace: float) -> None:
        self.engine.remove(instance_id, stop_timeout=grace)
        self._stopped_from_outside.discard(instance_id)

    def events(self, since: float | None = None) -> "ContainerEvents":
        return ContainerEvents(self.engine.events(self.config.name, since),
                               self._stopped_from_outside)

    def tail_logs(self, instance_id: str, lines: int) -> list[str]:
        return self.engine.tail_logs(instance_id, lines)

    def close(self) -> None:
        self.engine.close()

    def _instance(self, info: ContainerInfo, adoptable: bool = False) -> Instance:
        if info.status == "exited":
            problem = f"container exited with code {info.exit_code}"
        elif not info.running:
            problem = f"container is {info.status}"
        elif info.id in self._stopped_from_outside:  # it may answer while it finishes
            problem = "container is being stopped"
        else:
            problem = None
        return Instance(id=info.id, name=info.name, image_id=info.image_id,
                        address=Address(REPLICA_HOST, info.port) if info.port else None,
                        problem=problem, exit_code=info.exit_code if info.status in ("exited", "dead") else None,
                        adoptable=adoptable,
                        stopped_from_outside=(info.status == "paused"
                                              or info.id in self._stopped_from_outside),
                        engine_state=info.status,
                        out_of_memory=info.oom_killed and info.status in ("exited", "dead"))


class ContainerEvents:
    """The engine's container events as nmc's Events (the others are skipped); it remembers the
    containers someone is stopping, so that their exit is not taken for a crash."""

    def __init__(self, stream: "EventStream", stopped_from_outside: set[str]):
        self._stream = stream
        self._stopped_from_outside = stopped_from_outside

    def __iter__(self):
        for event in self._stream:
            translated = self._translate(event)
            if translated is not None:
                yield translated

    def _translate(self, event: ContainerEvent) -> Event | None:
        def said(happening: Happening, reason: str, code: int | None = None) -> Event:
            return Event(happening, event.container_id, event.name, reason, code)

        if event.action == "kill" and event.signal in STOPPING_SIGNALS:
            self._stopped_from_outside.add(event.container_id)
            return said(Happening.BEING_STOPPED, f"container is being stopped (signal {event.signal})")
        if event.action == "pause":
            self._stopped_from_outside.add(event.container_id)
            return said(Happening.PAUSED, "container was paused")
        if event.action == "die":
            return said(Happening.EXITED, f"container exited with code {event.exit_code}",
                        event.exit_code)
        if event.action == "oom":
            return said(Happening.OUT_OF_MEMORY, "container ran out of memory")
        if event.action == "destroy":
            self._stopped_from_outside.discard(event.container_id)
            return said(Happening.GONE, "container was removed")
        if event.action == "start":
            return said(Happening.STARTED, "container started")
        return None

    def close(self) -> None:
        self._stream.close()


def _check_port_free(port: int) -> None:
    """Fail before touching Docker when a replica's host port is taken (Docker's own error is cryptic)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((REPLICA_HOST, port))
    except OSError:
        raise PortBusy(f"host port {port} is already in use: stop what holds it or choose "
                       "another --base-port") from None
    finally:
        probe.close()
