"""The cluster's replicas in slot order, and the choice of one for each request."""

from __future__ import annotations

from nmc.balance import POLICIES, sticky
from nmc.replica import Replica, State

__all__ = ["Pool", "Replica", "State"]


class Pool:
    """The replicas in slot order, and the cursor where the last choice left off."""

    def __init__(self, replicas: list[Replica] | None = None):
        self.replicas = list(replicas or ())
        self._cursor = 0
        # When the engine went away (time.monotonic()), None while it answers. Its restart takes
        # the replicas' port proxies with it for a few seconds (the replicas live on with
        # live-restore): requests then wait longer for a replica (nmc.proxy).
        self.engine_lost_at: float | None = None

    def __iter__(self):
        return iter(list(self.replicas))  # a snapshot: scaling may change the list meanwhile

    def __len__(self) -> int:
        return len(self.replicas)

    def add(self, replica: Replica) -> None:
        """A new replica, in slot order (it joins the rotation once READY)."""
        self.replicas.append(replica)
        self.replicas.sort(key=lambda r: r.slot)

    def remove(self, replica: Replica) -> None:
        if replica in self.replicas:
            self.replicas.remove(replica)

    def free_slots(self, first: int, count: int) -> list[int]:
        """The `count` lowest slots from `first` on that no replica of the pool holds."""
        used = {r.slot for r in self.replicas}
        slots, slot = [], first
        while len(slots) < count:
            if slot not in used:
                slots.append(slot)
            slot += 1
        return slots

    def choose(self, skip=(), balance: str = "roundrobin", preferred: str | None = None
               ) -> Replica | None:
        """The replica for the next request, among the ready ones not in `skip`: `preferred`
        (a replica's name, from a sticky cookie) while it is ready, else by the policy
        (nmc.balance). None when no replica is ready."""
        if preferred is not None:
            replica = sticky(self.replicas, preferred, skip)
            if replica is not None:
                return replica
        index = POLICIES[balance](self.replicas, self._cursor, skip)
        if index is None:
            return None
        self._cursor = index + 1
        return self.replicas[index]

    def next_ready(self, skip=()) -> Replica | None:
        """The next ready replica in turn, skipping `skip`; None if none is."""
        return self.choose(skip)
