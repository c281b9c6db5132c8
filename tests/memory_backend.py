"""An engine in memory for the supervisor's unit tests: a `Backend` (nmc.backend) whose instances
live in a dict, and a health checker whose answers the test decides.

The test plays the outside world: it makes instances crash, be killed, pause or vanish, and
makes the engine go away and come back; the backend tells the supervisor through its events,
as a real engine would.
"""

from __future__ import annotations

import dataclasses
import itertools

import gevent.queue

from nmc.backend import (
    Address,
    EngineError,
    EngineUnreachable,
    Event,
    Happening,
    ImageMissing,
    Instance,
    PortBusy,
)
from nmc.health import CheckResult

HOST = "127.0.0.1"
SITE_IMAGE, SITE_ID = "nodejs.org", "sha256:site"
_END = object()  # put in a stream's queue by close(): iteration ends there


class MemoryEvents:
    """Events as a gevent queue delivers them; an exception in the queue is raised; close() ends it."""

    def __init__(self, backend: MemoryBackend):
        self.backend = backend
        self.queue: gevent.queue.Queue = gevent.queue.Queue()
        self.closed = False

    def __iter__(self):
        while True:
            item = self.queue.get()
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    def put(self, item) -> None:
        if not self.closed:
            self.queue.put(item)

    def close(self) -> None:
        if not self.closed:
            self.queue.put(_END)
            self.closed = True
            if self in self.backend.streams:
                self.backend.streams.remove(self)


class MemoryBackend:
    """A Backend whose instances are Instance values in a dict, by id; the slot is the port.

    `started` and `removed` record what the supervisor asked for; the other public methods are
    the outside world's hand."""

    noun = "container"
    engine_name = "Docker engine"
    orchestrates = False

    def __init__(self, first_slot: int = 3001, cluster: str = "nmc"):
        self.first_slot = first_slot
        self.cluster = cluster
        self.images = {SITE_IMAGE: SITE_ID}      # image name -> id
        self.instances: dict[str, Instance] = {}
        self.logs: dict[str, list[str]] = {}     # instance id -> its output
        self.started: list[Instance] = []        # every instance start() ran, in order
        self.removed: list[str] = []             # the id of every instance remove() took away
        self.busy_slots: set[int] = set()        # check_startable refuses these
        self.next_start_error: EngineError | None = None  # raised once by the next start()
        self.streams: list[MemoryEvents] = []    # the open event streams
        self.reachable = True
        self.events_asked = 0                    # calls to events(), answered or not
        self.closed = False
        self._ids = itertools.count(1)
        self._settings_differ: set[str] = set()  # leftovers a fresh start would not make

    # -- the Backend protocol --------------------------------------------------------------

    def slot_name(self, slot: int) -> str:
        return f"{self.cluster}-{slot}"

    def image_id(self, image: str) -> str:
        self._answer()
        if image not in self.images:
            raise ImageMissing(f"image {image!r} is not on this engine")
        return self.images[image]

    def check_startable(self, slots: list[int]) -> None:
        for slot in slots:
            if slot in self.busy_slots:
                raise PortBusy(f"host port {slot} is already in use")

    def prepare(self, count: int, image_id: str) -> None:
        self._answer()

    def teardown(self) -> None:
        self._answer()

    def list_instances(self, image_id: str) -> list[Instance]:
        self._answer()
        return [dataclasses.replace(i, adoptable=i.problem is None and i.image_id == image_id
                                    and i.id not in self._settings_differ)
                for i in self.instances.values()]

    def start(self, slot: int, image_id: str) -> Instance:
        self._answer()
        error, self.next_start_error = self.next_start_error, None
        if error is not None:
            raise error
        instance = self._new(slot, image_id)
        self.started.append(instance)
        self._emit(Happening.STARTED, instance, "container started")
        return instance

    def inspect(self, instance_id: str) -> Instance | None:
        self._answer()
        return self.instances.get(instance_id)

    def remove(self, instance_id: str, grace: float) -> None:
        self._answer()
        instance = self.instances.pop(instance_id, None)
        if instance is None:
            return
        self.removed.append(instance_id)
        if instance.problem is None:  # a real engine stops it first, and says so
            self._emit(Happening.BEING_STOPPED, instance, "container is being stopped (signal 15)")
            self._emit(Happening.EXITED, instance, "container exited with code 143", 143)
        self._emit(Happening.GONE, instance, "container was removed")

    def events(self, since: float | None = None) -> MemoryEvents:
        # (`since` has nothing to replay here: a test puts its events on the streams open then)
        self.events_asked += 1
        self._answer()
        stream = MemoryEvents(self)
        self.streams.append(stream)
        return stream

    def tail_logs(self, instance_id: str, lines: int) -> list[str]:
        self._answer()
        return self.logs.get(instance_id, [])[-lines:]

    def close(self) -> None:
        self.closed = True

    # -- the outside world -----------------------------------------------------------------

    def in_slot(self, slot: int) -> Instance | None:
        """The instance the engine has for `slot` (the last one started), or None."""
        found = [i for i in self.instances.values() if i.address.port == slot]
        return found[-1] if found else None

    def leave(self, slot: int, image_id: str = SITE_ID, *, running: bool = True,
              same_settings: bool = True) -> Instance:
        """An instance a previous run left behind in `slot`."""
        instance = self._new(slot, image_id)
        if not running:
            instance = self._set(instance.id, problem="container exited with code 0", exit_code=0)
        if not same_settings:
            self._settings_differ.add(instance.id)
        return instance

    def crash(self, instance_id: str, code: int = 1) -> None:
        """Its process exits by itself with `code`."""
        instance = self._set(instance_id, problem=f"container exited with code {code}", exit_code=code)
        self._emit(Happening.EXITED, instance, f"container exited with code {code}", code)

    def kill(self, instance_id: str) -> None:
        """Someone stops it from outside (docker kill): being stopped, then exited with 137."""
        instance = self._set(instance_id, stopped_from_outside=True)
        self._emit(Happening.BEING_STOPPED, instance, "container is being stopped (signal 9)")
        instance = self._set(instance_id, problem="container exited with code 137", exit_code=137)
        self._emit(Happening.EXITED, instance, "container exited with code 137", 137)

    def pause(self, instance_id: str) -> None:
        instance = self._set(instance_id, problem="container is paused", stopped_from_outside=True)
        self._emit(Happening.PAUSED, instance, "container was paused")

    def vanish(self, instance_id: str) -> None:
        """Removed behind nmc's back (docker rm -f)."""
        instance = self.instances.pop(instance_id)
        self._emit(Happening.GONE, instance, "container was removed")

    def go_away(self) -> None:
        """The engine stops answering: every call raises EngineUnreachable, open streams break."""
        self.reachable = False
        for stream in list(self.streams):
            stream.put(EngineUnreachable("the engine's event stream broke (connection reset)"))
            self.streams.remove(stream)

    def come_back(self) -> None:
        self.reachable = True

    @property
    def listening(self) -> bool:
        """Whether someone follows the events."""
        return bool(self.streams)

    # -- inside ------------------------------------------------------------------------------

    def _answer(self) -> None:
        if not self.reachable:
            raise EngineUnreachable("cannot reach the engine (connection refused)")

    def _new(self, slot: int, image_id: str) -> Instance:
        instance = Instance(id=f"m{next(self._ids):011d}", name=self.slot_name(slot),
                            image_id=image_id, address=Address(HOST, slot))
        self.instances[instance.id] = instance
        return instance

    def _set(self, instance_id: str, **changes) -> Instance:
        self.instances[instance_id] = dataclasses.replace(self.instances[instance_id], **changes)
        return self.instances[instance_id]

    def _emit(self, happening: Happening, instance: Instance, reason: str,
              exit_code: int | None = None) -> None:
        for stream in self.streams:
            stream.put(Event(happening, instance.id, instance.name, reason, exit_code))


class MemoryChecker:
    """Health checks answered from memory: as the test set them per URL, else ok when a running
    instance of `backend` is at that address (and its image is not in `failing_images`)."""

    def __init__(self, backend: MemoryBackend | None = None):
        self.backend = backend
        self.answers: dict[str, CheckResult] = {}  # base URL -> its answer, whatever runs there
        self.failing_images: set[str] = set()      # image ids whose instances never answer
        self.closed = False

    def answer(self, url: str, ok: bool, reason: str = "") -> None:
        self.answers[url] = CheckResult(ok, reason or ("status 200" if ok else "status 500"))

    def check(self, url: str) -> CheckResult:
        if url in self.answers:
            return self.answers[url]
        if self.backend is None:
            return CheckResult(True, "status 200")
        running = [i for i in self.backend.instances.values()
                   if i.address.url == url and i.problem is None]
        if not running:
            return CheckResult(False, "connection refused")
        if running[-1].image_id in self.failing_images:
            return CheckResult(False, "status 503")
        return CheckResult(True, "status 200")

    def close(self) -> None:
        self.closed = True
