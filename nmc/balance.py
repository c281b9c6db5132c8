"""Selection policies: which ready replica takes the next request.

A policy is one small function, as in Caddy's selectionpolicies: given the replicas in slot
order, the cursor (where the last choice left off) and the replicas to skip, it returns the
index of its choice among the ready ones, or None when none is ready.
"""

from __future__ import annotations

from typing import Callable, Collection, Sequence

from nmc.replica import Replica, State

Policy = Callable[[Sequence[Replica], int, Collection[Replica]], "int | None"]


def round_robin(replicas: Sequence[Replica], cursor: int, skip: Collection[Replica]) -> int | None:
    """Each ready replica in turn, from the cursor on."""
    count = len(replicas)
    for step in range(count):
        index = (cursor + step) % count
        replica = replicas[index]
        if replica.state is State.READY and replica not in skip:
            return index
    return None


def least_conn(replicas: Sequence[Replica], cursor: int, skip: Collection[Replica]) -> int | None:
    """The ready replica with the fewest requests in flight; equal loads in turn (from the cursor)."""
    count = len(replicas)
    best, best_index = None, None
    for step in range(count):
        index = (cursor + step) % count
        replica = replicas[index]
        if replica.state is State.READY and replica not in skip and \
                (best is None or replica.relay.in_flight < best.relay.in_flight):
            best, best_index = replica, index
    return best_index


POLICIES: dict[str, Policy] = {"roundrobin": round_robin, "least-conn": least_conn}


def sticky(replicas: Sequence[Replica], name: str, skip: Collection[Replica]) -> Replica | None:
    """The replica a client's affinity cookie names, while it is ready; else None (the policy
    chooses, and the client moves)."""
    for replica in replicas:
        if replica.name == name and replica.state is State.READY and replica not in skip:
            return replica
    return None
