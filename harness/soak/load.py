"""The soak's loads beside the chaos run's keep-alive GET/POST/PUT (harness.chaos.load.Load):
GETs on a fresh connection each, streamed answers and WebSocket echo sessions, each from client
threads of harness.load.Clients, every answer checked and counted in a Tally."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from harness.chaos.common import EXAMPLES, failure_kind
from harness.chaos.load import Load, merged
from harness.load import Clients
from harness.wsproto import CLOSE, TEXT, FrameReader, accept_for, frame, handshake_request, read_head

STREAM_LINES = 20       # /stream?n=20&ms=50: an answer that takes about a second to come
STREAM_EVERY_MS = 50
WS_MESSAGES = 10        # echoed messages per WebSocket session, WS_GAP seconds apart
WS_GAP = 0.1


@dataclass
class Event:
    """A request that failed, or a stream or session cut after it began (monotonic times)."""
    start: float
    end: float
    kind: str
    detail: str


@dataclass
class Tally:
    """One kind of request: how many were sent, answered right, failed (by kind), cut mid-way.
    `idempotent`: a failure of it fails the soak (a relay can always retry it)."""
    name: str
    idempotent: bool
    sent: int = 0
    ok: int = 0
    failed: Counter = field(default_factory=Counter)
    cut: Counter = field(default_factory=Counter)
    events: list = field(default_factory=list)        # every failure and cut (Event)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, start: float, failure: str = "", cut: str = "", detail: str = "") -> None:
        with self.lock:
            self.sent += 1
            if failure:
                self.failed[failure] += 1
            elif cut:
                self.cut[cut] += 1
            else:
                self.ok += 1
                return
            self.events.append(Event(start, time.monotonic(), failure or cut, detail[:240]))

    def examples(self) -> list[Event]:
        firsts: dict = {}
        for event in self.events:
            firsts.setdefault(event.kind, []).append(event)
        return [e for events in firsts.values() for e in events[:EXAMPLES]]


def chaos_tallies(load: Load) -> list[Tally]:
    """The chaos load's counts per method, as Tallies (its failures have run-relative times)."""
    totals = merged(load)
    tallies = []
    for method, label, idempotent in (("GET", "GET /whoami, keep-alive", True),
                                      ("PUT", "PUT /echo 4 KiB, keep-alive", True),
                                      ("POST", "POST /echo 4 KiB upload, keep-alive", False)):
        tally = Tally(label, idempotent, sent=totals.sent[method], ok=totals.ok[method])
        for (m, kind), count in totals.failed.items():
            if m == method:
                tally.failed[kind] += count
        details = {(f.end, f.kind): f.detail for (m, _), examples in totals.examples.items()
                   if m == method for f in examples}
        tally.events = [Event(load.began + end, load.began + end, kind, details.get((end, kind), ""))
                        for end, m, kind in totals.failures if m == method]
        tallies.append(tally)
    return tallies


class SoakClients(Clients):
    """Daemon client threads (no proxy from the environment) against nmc's public URL, each
    waiting `pace` seconds after each request; one Tally for them all."""

    label = ""
    idempotent = True

    def __init__(self, url: str, port: int, clients: int, timeout: float, pace: float):
        super().__init__(clients, daemon=True, trust_env=False)
        self.url, self.port, self.timeout, self.pace = url, port, timeout, pace
        self.tally = Tally(self.label, self.idempotent)


class FreshGets(SoakClients):
    """GET /whoami with Connection: close: a new client connection (and accept) each time."""

    label = "GET /whoami, a fresh connection each"

    def one(self, session: requests.Session, index: int, number: int) -> None:
        started = time.monotonic()
        try:
            answer = session.get(self.url + "/whoami", headers={"Connection": "close"},
                                 timeout=(self.timeout, self.timeout))
        except requests.RequestException as e:
            self.tally.record(started, failure=failure_kind(e), detail=str(e))
            return
        if answer.status_code != 200:
            self.tally.record(started, failure=f"HTTP {answer.status_code}", detail=answer.text[:160])
        elif '"url":"/whoami"' not in answer.text.replace(" ", ""):
            self.tally.record(started, failure="wrong answer", detail=answer.text[:160])
        else:
            self.tally.record(started)


class Streams(SoakClients):
    """GET /stream (chunked, a line every STREAM_EVERY_MS ms) on keep-alive sessions, read as it
    comes. A failure before the answer's head is a GET's failure; a stream broken off once it
    began (its replica killed or stopped under it) is a cut: no relay can hide that."""

    label = f"GET /stream?n={STREAM_LINES}&ms={STREAM_EVERY_MS} (streamed), keep-alive"

    def one(self, session: requests.Session, index: int, number: int) -> None:
        started = time.monotonic()
        try:
            answer = session.get(f"{self.url}/stream?n={STREAM_LINES}&ms={STREAM_EVERY_MS}",
                                 stream=True, timeout=(self.timeout, self.timeout))
        except requests.RequestException as e:
            self.tally.record(started, failure=failure_kind(e), detail=str(e))
            return
        with answer:
            if answer.status_code != 200:
                self.tally.record(started, failure=f"HTTP {answer.status_code}", detail=answer.text[:160])
                return
            try:
                lines = [line.decode("utf-8", "replace") for line in answer.iter_lines() if line]
            except requests.RequestException as e:
                self.tally.record(started, cut=f"cut: {failure_kind(e)}",
                                  detail=f"served by {answer.headers.get('X-Served-By')}: {e}")
                return
        if lines != [f"chunk {i}" for i in range(STREAM_LINES)]:
            self.tally.record(started, failure="wrong answer", detail=f"{len(lines)} lines: {lines[-2:]}")
        else:
            self.tally.record(started)


class WebSockets(SoakClients):
    """WebSocket sessions on /ws through nmc, over raw sockets: the handshake, WS_MESSAGES
    text messages echoed WS_GAP s apart, the closing handshake. A handshake that fails is a
    failure; a session broken off after its 101 (its replica killed under it) is a cut."""

    label = f"WebSocket /ws sessions ({WS_MESSAGES} echoes each)"

    def one(self, session: requests.Session, index: int, number: int) -> None:
        started = time.monotonic()
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        except OSError as e:
            self.tally.record(started, failure=f"connect: {type(e).__name__}", detail=str(e))
            return
        with sock:
            reader = FrameReader()
            reader.sock = sock
            try:
                request, key = handshake_request(self.port)
                sock.sendall(request)
                status, headers, _, reader.buf = read_head(sock)
            except (OSError, ValueError, IndexError) as e:
                self.tally.record(started, failure=f"handshake: {type(e).__name__}", detail=str(e))
                return
            if status != 101 or headers.get("sec-websocket-accept") != accept_for(key):
                self.tally.record(started, failure=f"handshake: HTTP {status}", detail=str(headers)[:160])
                return
            self._session(reader, started, headers.get("x-served-by", "?"))

    def _session(self, reader: FrameReader, started: float, replica: str) -> None:
        sock = reader.sock
        try:
            for i in range(WS_MESSAGES):
                if i and self.halted.wait(WS_GAP):
                    break
                payload = f"soak {i} {os.urandom(6).hex()}".encode()
                sock.sendall(frame(TEXT, payload))
                fin, opcode, echoed = reader.recv_frame()
                if opcode == CLOSE:  # the replica going away (SIGTERM: 1001) closes its sessions
                    self.tally.record(started, cut=f"closed by the replica ({_close_code(echoed)})",
                                      detail=f"served by {replica}: {echoed[2:80]!r}")
                    return
                if (opcode, echoed) != (TEXT, payload):
                    self.tally.record(started, failure="wrong answer",
                                      detail=f"sent {payload!r}, got opcode {opcode} {echoed[:60]!r}")
                    return
            sock.sendall(frame(CLOSE, (1000).to_bytes(2, "big")))
            fin, opcode, _ = reader.recv_frame()
            if opcode != CLOSE:
                self.tally.record(started, failure="wrong answer", detail=f"opcode {opcode} for the close")
                return
        except (OSError, AssertionError) as e:
            self.tally.record(started, cut=f"cut: {type(e).__name__}", detail=f"served by {replica}: {e}")
            return
        self.tally.record(started)


def _close_code(payload: bytes) -> str:
    return str(int.from_bytes(payload[:2], "big")) if len(payload) >= 2 else "no code"
