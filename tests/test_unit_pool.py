"""Round-robin selection and replica states: pure logic, plain values."""

import logging

from nmc.backend import Address, Instance
from nmc.pool import Pool, Replica, State


def make_replica(port: int, state: State = State.STARTING, instance_id: str = "c0ffee") -> Replica:
    return Replica(f"nmc-{port}", port, state=state,
                   instance=Instance(instance_id, f"nmc-{port}", "sha256:1",
                                     Address("127.0.0.1", port)),
                   address=Address("127.0.0.1", port))


def make_pool(*states: State) -> Pool:
    return Pool([make_replica(3001 + i, state) for i, state in enumerate(states)])


def ports(pool: Pool, count: int) -> list:
    chosen = [pool.next_ready() for _ in range(count)]
    return [r.port if r else None for r in chosen]


def test_round_robin_visits_every_ready_replica_in_turn():
    pool = make_pool(State.READY, State.READY, State.READY)
    assert ports(pool, 7) == [3001, 3002, 3003, 3001, 3002, 3003, 3001]


def test_replicas_out_of_the_rotation_are_skipped():
    pool = make_pool(State.READY, State.DOWN, State.READY, State.STARTING)
    assert ports(pool, 4) == [3001, 3003, 3001, 3003]


def test_a_replica_back_in_the_rotation_takes_its_turn_again():
    pool = make_pool(State.READY, State.DOWN, State.READY)
    assert ports(pool, 2) == [3001, 3003]
    pool.replicas[1].state = State.READY
    assert ports(pool, 3) == [3001, 3002, 3003]


def test_no_ready_replica_gives_none():
    assert make_pool(State.DOWN, State.STARTING).next_ready() is None
    assert Pool([]).next_ready() is None


def test_skip_excludes_replicas_already_tried():
    pool = make_pool(State.READY, State.READY)
    first = pool.next_ready()
    second = pool.next_ready(skip=(first,))
    assert second is not first and second.port == 3002
    assert pool.next_ready(skip=(first, second)) is None


def test_change_state_logs_each_transition_once(caplog):
    replica = make_replica(3001, instance_id="abcdef0123456789")
    with caplog.at_level(logging.INFO, logger="nmc.replica"):
        assert replica.change_state(State.READY, "answered /healthz")
        assert not replica.change_state(State.READY, "answered /healthz")
        assert replica.change_state(State.DOWN, "status 500")
    assert [r.getMessage() for r in caplog.records] == [
        "replica nmc-3001 (port 3001, container abcdef012345): starting -> ready (answered /healthz)",
        "replica nmc-3001 (port 3001, container abcdef012345): ready -> down (status 500)",
    ]
    assert caplog.records[1].levelno == logging.WARNING
    assert replica.url == "http://127.0.0.1:3001"


def test_least_conn_picks_the_replica_with_fewest_requests_in_flight():
    pool = make_pool(State.READY, State.READY, State.READY)
    a, b, c = pool.replicas
    a.relay.in_flight, b.relay.in_flight, c.relay.in_flight = 3, 1, 2
    assert pool.choose(balance="least-conn") is b
    b.relay.in_flight = 5
    assert pool.choose(balance="least-conn") is c
    a.relay.in_flight = b.relay.in_flight = c.relay.in_flight = 0  # equal: in turn
    assert [pool.choose(balance="least-conn").port for _ in range(4)] == [3001, 3002, 3003, 3001]


def test_least_conn_skips_replicas_out_of_the_rotation():
    pool = make_pool(State.DOWN, State.READY, State.DRAINING)
    pool.replicas[1].relay.in_flight = 10
    assert pool.choose(balance="least-conn") is pool.replicas[1]
    assert pool.choose(balance="least-conn", skip=(pool.replicas[1],)) is None


def test_a_sticky_client_keeps_its_replica_while_it_is_ready():
    pool = make_pool(State.READY, State.READY)
    assert [pool.choose(preferred="nmc-3002").port for _ in range(3)] == [3002, 3002, 3002]
    pool.replicas[1].state = State.DOWN  # it leaves the rotation: the client moves
    assert pool.choose(preferred="nmc-3002").port == 3001
    assert pool.choose(preferred="nmc-9999").port in (3001, 3002)  # an unknown name: as usual
    assert pool.choose(preferred="nmc-3001", skip=(pool.replicas[0],)) is None
