"""What the chaos run's modules share: its limits and settings, its log line, the percentile
and millisecond formats, how a failed request is named, and what a swarm task container says."""

from __future__ import annotations

import resource
import sys

import docker
import docker.errors

import harness.cleanup
from harness import ROOT
from harness.cleanup import container_name

RESULTS = ROOT / "bench" / "results"

METHODS = ("GET", "POST", "PUT")
MIX = (("GET", 2), ("POST", 1), ("PUT", 1))   # GET /whoami half of the time, POST and PUT a quarter
BODY_SIZE = 4096
EXAMPLES = 3                 # examples kept per (method, kind) of failure
SLOWEST = 5                  # slowest requests shown
POLL = 0.020                 # seconds between polls while measuring a replacement
REPLACE_LIMIT = 20.0         # seconds a replacement is waited for, at most
PAUSE_FOR = 3.0              # seconds before the paused replica is unpaused (if it still exists)
START_LIMIT = 60.0           # seconds nmc has to say "serving on"
STOP_LIMIT = 20.0            # seconds nmc has to exit after SIGTERM (then SIGKILL)
ENGINE_TIMEOUT = 10          # seconds for one Docker API call
ENGINE_WAIT = 15.0           # seconds the final clean-up waits for an engine that is away
SITE_IMAGE = "nodejs.org"    # the image nmc runs by default (`make nodejs` builds it)
LABEL_CHAOS = "nmc.chaos"    # on the image --changes builds: finds it again, even untagged
CHANGES_PORTS = 8            # replica ports kept free for --changes: 6 replicas at most, and room
STEADY = 3.0                 # seconds of load before the first change (--changes)
SETTLE = 2.0                 # seconds of load after each change, before the next one
CHANGES_LIMIT = 240.0        # seconds the load of --changes may last at most, changes included
ADMIN_CONNECT = 3.0          # seconds to connect to the admin port
LABEL_SWARM_SERVICE = "com.docker.swarm.service.name"  # on a task's container (--swarm)
LABEL_SWARM_TASK = "com.docker.swarm.task.name"        # <service>.<slot>.<task id>
SWARM_GONE_LIMIT = 20.0      # seconds the task containers have to go once the service is removed
                             # (Swarm stops them: SIGTERM, 10 s of grace at most, then SIGKILL)
SWARM_GONE_POLL = 0.2        # seconds between looks while waiting for them
SWARM_CONVERGE_LIMIT = 20.0  # --changes --swarm: seconds after a change's answer for Swarm to stop


class Interrupted(Exception):
    """A signal (Ctrl-C, SIGTERM, SIGHUP) asked the run to stop."""


def log(message: str) -> None:
    print(f"chaos: {message}", file=sys.stderr, flush=True)


def publish(text: str, kind: str, began_wall, say) -> None:
    """A run's report: printed, and written to bench/results/<kind>-<UTC time>.md (said by `say`)."""
    print(text, flush=True)
    try:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{kind}-{began_wall:%Y%m%dT%H%M%SZ}.md"
        path.write_text(text)
        say(f"report written to {path.relative_to(ROOT)}")
    except OSError as e:
        say(f"could not write the report: {e}")


def percentile(ordered: list[float], q: float) -> float | None:
    """Nearest-rank percentile of an already sorted list."""
    if not ordered:
        return None
    rank = max(1, min(len(ordered), int(round(q / 100 * len(ordered) + 0.5))))
    return ordered[rank - 1]


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1000:.0f} ms" if value >= 0.01 else f"{value * 1000:.1f} ms"


def root_cause(error: BaseException) -> BaseException:
    """The innermost exception wrapped in requests' and urllib3's layers."""
    seen: set[int] = set()
    current = error
    while id(current) not in seen:
        seen.add(id(current))
        inner = next((a for a in getattr(current, "args", ()) if isinstance(a, BaseException)), None)
        inner = inner or getattr(current, "reason", None) or current.__cause__ or current.__context__
        if not isinstance(inner, BaseException):
            break
        current = inner
    return current


def failure_kind(error: BaseException) -> str:
    outer, inner = type(error).__name__, type(root_cause(error)).__name__
    return outer if inner == outer else f"{outer}({inner})"


def swarm_problem(client: docker.DockerClient) -> str | None:
    """Why --swarm cannot run on this engine (it is no swarm manager), or None."""
    swarm = client.info().get("Swarm") or {}
    if swarm.get("LocalNodeState") == "active" and swarm.get("ControlAvailable"):
        return None
    return (f"--swarm: this Docker engine is not a swarm manager (swarm state "
            f"{swarm.get('LocalNodeState') or 'unknown'}): run `docker swarm init --advertise-addr "
            "127.0.0.1` (a one-node swarm), or point DOCKER_HOST at a manager")


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def short_id(image_id: str) -> str:
    return image_id.split(":", 1)[-1][:12]


def engine() -> docker.DockerClient:
    return harness.cleanup.engine(ENGINE_TIMEOUT)


def task_slot(summary: dict, cluster: str) -> int | None:
    """--swarm: the slot of a task container of the service `cluster` (from its task name
    <service>.<slot>.<task id>, else from its container name, which is the same), or None."""
    labels = summary.get("Labels") or {}
    if labels.get(LABEL_SWARM_SERVICE) != cluster:
        return None
    task = labels.get(LABEL_SWARM_TASK) or container_name(summary)
    service, _, rest = task.partition(".")
    slot = rest.partition(".")[0]
    return int(slot) if service == cluster and slot.isdigit() else None


def published_port(client: docker.DockerClient, summary: dict) -> int | None:
    """--swarm: the host port a task container publishes (ephemeral, host mode): from the engine's
    listing, else from the container itself (`docker port`); IPv4's first."""
    ports = [p for p in summary.get("Ports") or () if p.get("PublicPort") and p.get("Type", "tcp") == "tcp"]
    if not ports:
        bindings = (client.api.inspect_container(summary["Id"]).get("NetworkSettings") or {}).get("Ports") or {}
        ports = [{"IP": b.get("HostIp", ""), "PublicPort": int(b["HostPort"])}
                 for key, found in bindings.items() if key.endswith("/tcp") and found
                 for b in found if b.get("HostPort")]
    ports.sort(key=lambda p: ":" in p.get("IP", ""))  # IPv4 first
    return int(ports[0]["PublicPort"]) if ports else None


