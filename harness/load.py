"""A load of client threads sending requests through nmc, bounded in time and in count: the base
(`Clients`) and the tests' GET /whoami load (`GetLoad`); the chaos run's mixed load builds on the
same base (harness/chaos/load.py)."""

from __future__ import annotations

import threading
import time

import requests

MAX_RATE = 20000  # requests per second per client: an upper bound on every load loop


class Clients:
    """`clients` threads, each with a requests session of its own, calling
    self.one(session, index, number) until halt(), until `duration` seconds passed, or
    duration x MAX_RATE requests each. trust_env False: no proxy from the environment. `pace`:
    seconds each client waits after each request (0: none; a soak's steady load)."""

    pace = 0.0

    def __init__(self, clients: int, daemon: bool = True, trust_env: bool = True):
        self.clients, self.trust_env = clients, trust_env
        self.halted = threading.Event()
        self.threads = [threading.Thread(target=self._client, args=(i,), name=f"client-{i}",
                                         daemon=daemon) for i in range(clients)]
        self.began = 0.0
        self.end = 0.0
        self.stopped: float | None = None

    def one(self, session: requests.Session, index: int, number: int) -> None:
        raise NotImplementedError

    def start(self, duration: float) -> None:
        self.began = time.monotonic()
        self.end = self.began + duration
        for thread in self.threads:
            thread.start()

    def halt(self) -> None:
        """No new request from now on (those in flight finish)."""
        if self.stopped is None:
            self.stopped = time.monotonic()
        self.halted.set()

    def finished(self) -> float:
        """When the load ended (or now, while it runs)."""
        return min(time.monotonic(), self.end, self.stopped or self.end)

    def join(self, deadline: float) -> list[bool]:
        """halt(), then wait for the clients until `deadline` (monotonic); which are still running."""
        self.halt()
        for thread in self.threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [thread.is_alive() for thread in self.threads]

    def _client(self, index: int) -> None:
        session = requests.Session()
        session.trust_env = self.trust_env
        limit = int((self.end - self.began) * MAX_RATE) + 1  # bounded in count, not only in time
        try:
            for number in range(limit):
                if self.halted.is_set() or time.monotonic() >= self.end:
                    break
                self.one(session, index, number)
                if self.pace:
                    self.halted.wait(self.pace)
        finally:
            session.close()


class GetLoad(Clients):
    """`clients` threads sending GET /whoami from now until stopped (at most `limit` seconds),
    each with a keep-alive session, or with a fresh connection per request (`fresh_connections`:
    under gunicorn, every worker then gets some). The statuses, or exception names, in order,
    and when each failed request was sent."""

    def __init__(self, url: str, clients: int = 4, limit: float = 120,
                 fresh_connections: bool = False):
        super().__init__(clients, daemon=False)
        self.url = url
        self.statuses: list = []
        self.failed_at: list[float] = []  # when each failed request was sent (monotonic)
        self._headers = {"Connection": "close"} if fresh_connections else {}
        self.start(limit)

    def one(self, session: requests.Session, index: int, number: int) -> None:
        sent = time.monotonic()
        try:
            status = session.get(self.url + "/whoami", headers=self._headers, timeout=10).status_code
        except requests.RequestException as e:
            status = type(e).__name__
        self.statuses.append(status)
        if status != 200:
            self.failed_at.append(sent)

    def stop(self) -> None:
        self.join(time.monotonic() + 30)

    def failures(self) -> list:
        return [s for s in self.statuses if s != 200]
