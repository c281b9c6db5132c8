"""The seam between nmc and an engine that runs replicas: the interface the supervisor drives,
and nmc's own words for what an engine reports.

An engine runs *instances* (a container on one host; a task on Swarm). A replica of nmc is a
stable *slot* (its name) served by one instance at a time; each replacement is a new instance,
with an address that may differ from the last one. Everything engine-specific (labels, signal
names, statuses, published ports) stays behind `Backend`; `nmc.containers` implements it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Iterator, Protocol

from nmc.errors import NmcError


class EngineError(NmcError):
    """The engine refused or failed a call."""


class EngineUnreachable(EngineError):
    """The engine does not answer (not running, restarting, wrong address)."""

    exit_code = 3


class ImageMissing(EngineError):
    pass


class PortBusy(EngineError):
    pass


class NetworkMissing(EngineError):
    """A --network that the engine does not have (or not of the kind needed)."""


@dataclass(frozen=True)
class Address:
    """Where an instance answers HTTP."""

    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class Instance:
    """One instance as the engine last described it."""

    id: str
    name: str                  # the slot it serves (the replica's name)
    image_id: str
    address: Address | None    # None while the engine has not placed it
    problem: str | None = None  # why it cannot answer ("container exited with code 3"), or None
    exit_code: int | None = None  # when it exited
    adoptable: bool = False    # runs, in its slot, with the settings a fresh start would have
    stopped_from_outside: bool = False  # someone stopped, killed or paused it: not a crash
    node: str | None = None    # the machine it runs on, where there are several (a swarm node)
    engine_state: str = ""     # the engine's own words for its state ("running", "running,
                               # desired shutdown")
    out_of_memory: bool = False  # it exited because the kernel killed it for want of memory

    @property
    def short_id(self) -> str:
        return self.id[:12]


class Happening(enum.Enum):
    """What an engine event says happened to an instance, in nmc's words."""

    EXITED = "exited"                # its process ended (exit_code says how)
    BEING_STOPPED = "being stopped"  # someone asked it to stop (docker stop or kill)
    PAUSED = "paused"                # frozen: alive, answering nothing
    GONE = "gone"                    # removed
    OUT_OF_MEMORY = "out of memory"  # killed, or about to be, for memory
    STARTED = "started"
    RETIRED = "retired"              # the engine removes it for good (its scale-down)


@dataclass(frozen=True)
class Event:
    happening: Happening
    instance_id: str
    name: str
    reason: str                # the engine's words for it, for a log line
    exit_code: int | None = None


class EventStream(Protocol):
    """Events from now on; EngineUnreachable when the engine goes away; close() ends it."""

    def __iter__(self) -> Iterator[Event]: ...

    def close(self) -> None: ...


class Backend(Protocol):
    """What the supervisor needs of an engine, for one cluster.

    Slots are numbers: the backend names them and says where their numbering begins (on one
    host the slot is the replica's host port, as the original named its containers)."""

    noun: str           # what an instance is called in log lines: "container", "task"
    engine_name: str    # and the engine: "Docker engine"
    first_slot: int     # new replicas take the lowest free slots from here on
    orchestrates: bool  # the engine replaces failed instances and scales by itself (Swarm):
                        # nmc waits for its instances instead of starting them, and follows it

    def slot_name(self, slot: int) -> str:
        """The replica's stable name for a slot."""

    def image_id(self, image: str) -> str:
        """The id of `image` on the engine; ImageMissing when it is not there."""

    def check_startable(self, slots: list[int]) -> None:
        """Raise a one-line NmcError before anything starts when these slots cannot (a taken port)."""

    def prepare(self, count: int, image_id: str) -> None:
        """Make the engine ready to run `count` replicas of `image_id` (on Swarm: create or adopt
        the service, or change its replica count; on one host: nothing)."""

    def teardown(self) -> None:
        """Remove what prepare made (the engine then stops its instances)."""

    def roll_out(self, image: str, image_id: str, surge: int, progress) -> str:
        """Only where the engine orchestrates: its own rolling update to `image`, `surge` at a
        time; `progress(text)` hears how it goes; the outcome, or an EngineError when the
        engine rolled it back."""

    def list_instances(self, image_id: str) -> list[Instance]:
        """Every instance the engine has for this cluster, each saying whether it can be adopted
        as it is by a cluster running `image_id`."""

    def start(self, slot: int, image_id: str) -> Instance:
        """Run a new instance for `slot` and return it, with where it answers; on failure
        nothing is left behind."""

    def inspect(self, instance_id: str) -> Instance | None:
        """The instance as the engine sees it now; None when it is gone."""

    def remove(self, instance_id: str, grace: float) -> None:
        """Stop it (a polite signal, then a kill after `grace` seconds) and remove it; gone
        already is fine."""

    def events(self, since: float | None = None) -> EventStream:
        """This cluster's events from `since` (epoch seconds; None: from now) on."""

    def tail_logs(self, instance_id: str, lines: int) -> list[str]:
        """Its last `lines` lines of output."""

    def close(self) -> None: ...
