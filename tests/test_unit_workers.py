"""The pieces that let gunicorn's workers share one cluster: the lease, the state file."""


from nmc.backend import Address, Instance
from nmc.pool import Pool, Replica, State
from nmc.workers import Lease, Presence, StateFile, apply_snapshot


def pool_of(*ports: int) -> Pool:
    return Pool([Replica(f"nmc-{port}", port, address=Address("127.0.0.1", port)) for port in ports])


def test_the_lease_is_held_by_one_holder_at_a_time(tmp_path):
    first, second = Lease(tmp_path / "c.lock"), Lease(tmp_path / "c.lock")
    assert first.try_acquire()
    assert not second.try_acquire()
    assert first.try_acquire()  # holding it already
    first.release()
    assert second.try_acquire()
    second.release()


def test_followers_mirror_what_the_leader_published(tmp_path):
    leader, follower = pool_of(3001, 3002), pool_of(3001, 3002)
    leader.replicas[0].change_state(State.READY)
    leader.replicas[0].serve_with(Instance("abc", "nmc-3001", "sha256:1", Address("127.0.0.1", 3001)))
    leader.replicas[1].change_state(State.DOWN)
    leader.engine_lost_at = 1234.5
    written, reader = StateFile(tmp_path / "c.json"), StateFile(tmp_path / "c.json")
    written.publish(StateFile.snapshot(leader))
    apply_snapshot(follower, reader.read_if_changed())
    assert [(r.state, r.instance_id) for r in follower] == [(State.READY, "abc"), (State.DOWN, None)]
    assert follower.next_ready() is follower.replicas[0]
    assert follower.engine_lost_at == 1234.5  # its requests wait longer for a replica too
    assert reader.read_if_changed() is None  # unchanged since the last read


def test_a_state_file_not_yet_written_reads_as_nothing(tmp_path):
    assert StateFile(tmp_path / "none.json").read_if_changed() is None


def test_presence_tells_when_every_other_worker_is_gone(tmp_path):
    path = tmp_path / "c.workers"
    leader, other = Presence(path), Presence(path)  # two open files: as two processes' locks
    leader.leave()
    assert not leader.others_gone()
    other.leave()
    assert leader.others_gone()


def test_a_state_file_of_an_older_format_is_not_applied(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"leader": 1, "replicas": [{"name": "nmc-3001", "port": 3001, '
                    '"state": "ready", "container_id": "abc"}]}')
    assert StateFile(path).read_if_changed() is None
