"""One cluster, several worker processes (gunicorn -w N): who supervises, and how all route alike.

Every worker relays requests over its own copy of the replica pool; exactly one of them, the
*leader*, runs the Supervisor that starts, checks, replaces and removes the containers.

- Leadership is a lease: an exclusive `flock` on `<run dir>/<cluster name>.lock`. Whoever holds
  it leads; the kernel releases it when the leader's process ends, however it ends (`kill -9`
  too), and a follower, trying every STATE_POLL seconds, takes over and adopts the running
  replicas (the Supervisor's start: zero container restarts).
- The leader publishes the replicas' states to `<run dir>/<cluster name>.json` (written whole,
  then renamed into place) whenever they change; followers read it when its mtime changes, so
  every worker learns of a replacement within about STATE_POLL seconds.
- Every worker writes its relay counts to `<run dir>/<cluster name>.counts/` (nmc.shared_counts),
  and the leader serves the admin interface (status, metrics, dashboard, scale, rollout) with
  the sum of all of them, on its admin port and on the cluster's Unix socket
  (nmc.admin_socket), and `--logs`; a new leader binds both again.
- A follower that sees a replica refuse or break a connection takes it out of its own rotation at
  once and probes it itself; it comes back after --healthy-after passing probes (the leader's
  thresholds) or on the leader's next word.
- gunicorn tells nmc of its life through the hooks in nmc.gunicorn_conf (`-c
  python:nmc.gunicorn_conf`, required). When the leader's worker ends, it hands the replicas
  over to the next leader (a reload, --max-requests, a crash), unless the master is shutting
  down: then it waits for the other workers to finish their requests (each holds a shared flock
  on `<cluster name>.workers` while it lives) and removes the replicas (unless --keep).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import gevent
from gevent.pywsgi import WSGIServer

from nmc import admin_auth
from nmc.admin_socket import AdminSocket, NameInUse
from nmc.backend import Address, Instance
from nmc.cluster import Cluster, make_backend
from nmc.config import Config
from nmc.containers import Engine
from nmc.errors import NmcError, capture
from nmc.health import CheckCounts, HealthChecker, Verdict
from nmc.pool import Pool
from nmc.replica import Replica, State
from nmc.logs import follow_live
from nmc.run_dir import alive, run_dir, shutting_down, write_whole
from nmc.http_server import ErrorLog, PortInUse, bind_listener
from nmc.shared_counts import SharedCounts
from nmc.supervisor import Supervisor, thresholds_of

log = logging.getLogger(__name__)

STATE_POLL = 0.2     # seconds between a follower's tries at the lease and looks at the state
                     # file, and between the leader's looks for changes to publish
PROBE_INTERVAL = 0.5  # seconds between a follower's own probes of a replica it saw fail
SIBLINGS_WAIT_POLL = 0.1
WORKER_BOOT_ERROR = 3  # gunicorn's arbiter halts the whole server on a worker exiting with it
QUIET_EXIT_WAIT = 5
ADMIN_BIND_WAIT = 5  # seconds a new leader waits for the admin port and socket to be free
HOOKS_WAIT = 2       # seconds a worker waits to hear from post_worker_init


def _bind_when_free(bind, busy: type[NmcError]):
    """bind(); a leader that takes over waits a moment (ADMIN_BIND_WAIT) for the last one to let
    go of what `busy` says is still held."""
    deadline = time.monotonic() + ADMIN_BIND_WAIT
    while True:
        try:
            return bind()
        except busy:
            if time.monotonic() >= deadline:
                raise
            gevent.sleep(STATE_POLL)


def fail_boot(message: str) -> None:
    """End this worker because the cluster cannot run: gunicorn halts on a worker exiting with
    WORKER_BOOT_ERROR. The first worker of this master to fail says why and exits so; the
    others (failing the same way a moment later) end quietly, because gunicorn, once halting,
    prints a traceback for a second worker exiting with that code."""
    folder = run_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    master = os.getppid()
    for stale in folder.glob("boot-failed-*"):  # markers of masters that are gone
        if not alive(int(stale.name.rsplit("-", 1)[1])):
            stale.unlink(missing_ok=True)
    try:
        os.close(os.open(folder / f"boot-failed-{master}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        signal.signal(signal.SIGTERM, lambda signum, frame: os._exit(0))
        time.sleep(QUIET_EXIT_WAIT)  # the master's halt sends SIGTERM meanwhile
        os._exit(0)
    print(f"nmc-server: error: {message}", file=sys.stderr, flush=True)
    os._exit(WORKER_BOOT_ERROR)


def boot_failed() -> bool:
    """A worker of this master already failed to boot: the server is halting."""
    return (run_dir() / f"boot-failed-{os.getppid()}").exists()


class Lease:
    """An exclusive, non-blocking flock on a file: held by one process at a time.

    The file is never removed: a process could still be opening the old one while another
    creates a new one, and both would then "hold" the lease."""

    def __init__(self, path: Path):
        self.path = path
        self.held = False
        self._fd: int | None = None  # opened once, tried again and again

    def try_acquire(self) -> bool:
        if not self.held:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            self.held = True
        return True

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor drops the lock
            self._fd, self.held = None, False


RECORD_FIELDS = frozenset(("name", "slot", "state", "instance", "image_id", "address"))


class StateFile:
    """The replicas as the leader sees them, shared through one JSON file."""

    def __init__(self, path: Path):
        self.path = path
        self._seen: tuple[int, int] | None = None  # (mtime_ns, size) last read

    @staticmethod
    def snapshot(pool: Pool) -> dict:
        """The replicas, and since when the engine is away (time.monotonic(), the same clock in
        every process of the machine)."""
        return {"replicas": [{"name": r.name, "slot": r.slot, "state": r.state.value,
                              "instance": r.instance_id,
                              "image_id": r.instance.image_id if r.instance else None,
                              "address": [r.address.host, r.address.port] if r.address else None}
                             for r in pool],
                "engine_lost_at": pool.engine_lost_at}

    def publish(self, snapshot: dict) -> None:
        write_whole(self.path, json.dumps({"leader": os.getpid(), **snapshot}).encode())

    def read_if_changed(self) -> dict | None:
        """The snapshot, when the file changed since the last read; else None."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return None
        mark = (stat.st_mtime_ns, stat.st_size)
        if mark == self._seen:
            return None
        try:
            snapshot = json.loads(self.path.read_bytes())
            replicas = snapshot["replicas"]
        except (OSError, ValueError, KeyError):
            return None  # replaced while we read: the next poll gets the new one
        self._seen = mark
        if "engine_lost_at" not in snapshot or not all(RECORD_FIELDS <= record.keys()
                                                       for record in replicas):
            return None  # written by an older nmc's leader (a reload onto new code): wait for ours
        return snapshot


def apply_snapshot(pool: Pool, snapshot: dict) -> None:
    """Make the worker's pool what the leader published: its replicas, their instances and
    addresses, and their states (mirrored: the leader logged them already); and whether the
    engine is away."""
    pool.engine_lost_at = snapshot["engine_lost_at"]
    by_name = {replica.name: replica for replica in pool}
    for record in snapshot["replicas"]:
        replica = by_name.pop(record["name"], None)
        if replica is None:
            replica = Replica(record["name"], record["slot"])
            pool.add(replica)
        if replica.instance_id != record["instance"]:
            address = Address(*record["address"]) if record["address"] else None
            replica.serve_with(Instance(record["instance"], record["name"], record["image_id"] or "",
                                        address) if record["instance"] else None)
        replica.change_state(State(record["state"]), mirrored=True)
    for gone in by_name.values():
        pool.remove(gone)


class Presence:
    """Every worker of the cluster holds a shared flock on one file while it lives (the kernel
    drops it when the process ends, however it ends): the leader, once it has dropped its own,
    can tell when the others are all gone."""

    def __init__(self, path: Path):
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        fcntl.flock(self._fd, fcntl.LOCK_SH)

    def leave(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def others_gone(self) -> bool:
        """(After leave.) No other worker holds the file."""
        probe = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        try:
            fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(probe)  # and its lock with it


_current: "Worker | None" = None   # this process's Worker (gunicorn's hooks call it)
_gunicorn_worker = None             # this process's gunicorn worker, from post_worker_init


def hooked(gunicorn_worker) -> None:
    """nmc.gunicorn_conf.post_worker_init: gunicorn runs nmc's hooks in this worker."""
    global _gunicorn_worker
    _gunicorn_worker = gunicorn_worker


def on_worker_exit() -> None:
    """nmc.gunicorn_conf.worker_exit."""
    if _current is not None:
        _current.at_exit()


class Worker:
    """This worker's part in the cluster: leader or follower, and its pool kept current."""

    def __init__(self, config: Config, cluster: Cluster):
        self.config = config
        self.cluster = cluster
        self.pool = cluster.pool
        self.thresholds = thresholds_of(config)
        folder = run_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.lease = Lease(folder / f"{config.name}.lock")
        self.state_file = StateFile(folder / f"{config.name}.json")
        self.counts = SharedCounts(folder / f"{config.name}.counts", self.pool)
        self.admin: WSGIServer | None = None
        self.admin_socket = AdminSocket(config.name)  # bound by the leader only
        self.admin_unix: WSGIServer | None = None
        self._replica_logs: gevent.Greenlet | None = None  # --logs
        self.supervisor: Supervisor | None = None
        self.checker = HealthChecker(config.health_path, config.check_timeout)
        self.presence = Presence(folder / f"{config.name}.workers")
        self.master = os.getppid()
        self._probing: set[Replica] = set()  # replicas this follower probes itself
        self._loop: gevent.Greenlet | None = None

    # -- running -----------------------------------------------------------------------------

    def start(self) -> None:
        """Run the leader/follower loop in the background; gunicorn's worker_exit hook ends it
        (at_exit)."""
        global _current
        _current = self
        self.cluster.follow(self)
        self._loop = gevent.spawn(self._run)

    def stopping(self) -> bool:
        """gunicorn told this worker to stop (it finishes its requests meanwhile)."""
        return _gunicorn_worker is not None and not _gunicorn_worker.alive

    def _run(self) -> None:
        self._require_hooks()
        # a worker told to stop keeps following the leader while it drains, but never leads;
        # nor does any once a leader failed to start the cluster (gunicorn is halting)
        while self.stopping() or boot_failed() or not self.lease.try_acquire():
            self._follow_once()
            gevent.sleep(STATE_POLL)
        # The last leader's last word, which it may have published after this worker's last look
        # (a scale just before it died): its replicas are the ones to adopt, none a leftover.
        self._follow_once()
        self._lead()

    @staticmethod
    def _require_hooks() -> None:
        """post_worker_init comes right after the app is made: without it, gunicorn runs without
        nmc's hooks, and nothing would hand the replicas over or remove them."""
        deadline = time.monotonic() + HOOKS_WAIT
        while _gunicorn_worker is None:
            if time.monotonic() >= deadline:
                fail_boot("nmc.wsgi needs its gunicorn hooks: gunicorn -c python:nmc.gunicorn_conf "
                          "... nmc.wsgi:app")
            gevent.sleep(0.05)

    def _follow_once(self) -> None:
        """Mirror the leader's latest word; between tries at the lease."""
        snapshot = self.state_file.read_if_changed()
        if snapshot is not None:
            apply_snapshot(self.pool, snapshot)
        self.counts.publish()

    def _lead(self) -> None:
        log.info("worker %d supervises cluster %s", os.getpid(), self.config.name)
        # Adopt from the engine, not from the file: the instances are found again by label.
        for replica in self.pool:
            replica.serve_with(None)
        try:
            self._bind_admin_socket()
            admin_listener = self._bind_admin()
            engine = Engine.connect()
            self.supervisor = self.cluster.supervise(make_backend(engine, self.config))
            error = capture(self.supervisor.start)
        except NmcError as e:
            error = e
        if error is not None:
            self._give_up(error)
            return
        self.supervisor.watch()
        self._serve_admin(admin_listener)
        if self.config.logs:
            self._replica_logs = gevent.spawn(follow_live, engine, self.config.name, time.time())
        published = None
        while True:  # until the process ends: at_exit stops the supervisor
            snapshot = StateFile.snapshot(self.pool)
            if snapshot != published:
                self.state_file.publish(snapshot)
                published = snapshot
            self.counts.publish()
            gevent.sleep(STATE_POLL)

    def _bind_admin(self) -> socket.socket | None:
        """The admin port, bound before the replicas start, as ./nmc_server.py does."""
        if not self.config.admin_port:
            return None
        return _bind_when_free(lambda: bind_listener(self.config.admin_bind, self.config.admin_port,
                                                     "--admin-port (0 turns it off)"), PortInUse)

    def _bind_admin_socket(self) -> None:
        """The cluster's Unix socket (nmc.admin_socket); a killed leader's is stale: replaced."""
        _bind_when_free(self.admin_socket.bind, NameInUse)

    def _serve_admin(self, listener: socket.socket | None) -> None:
        self.admin_unix = WSGIServer(self.admin_socket.sock,
                                     self.cluster.socket_app(counts=self.counts.of), log=None,
                                     error_log=ErrorLog())
        self.admin_unix.start()
        log.info("admin socket %s (nmc-server status | scale | rollout --name %s)",
                 self.admin_socket.path, self.config.name)
        if listener is None:
            return
        self.admin = WSGIServer(listener, self.cluster.admin_app(counts=self.counts.of), log=None,
                                error_log=ErrorLog())
        self.admin.start()
        log.info("admin interface on http://%s:%d (status, scale, rollout)",
                 self.config.admin_bind, self.config.admin_port)

    def _close_admin(self) -> None:
        """Stop serving the admin interface, and remove the socket's file: the next leader binds
        both again."""
        for server in (self.admin, self.admin_unix):
            if server is not None:
                server.close()
        self.admin_socket.remove()

    def _give_up(self, error: NmcError) -> None:
        """The cluster cannot start: remove what was started, say why once, and make gunicorn
        stop."""
        self._close_admin()
        if self.supervisor is not None:
            self.supervisor.stop(remove=True, stop_timeout=1)
        fail_boot(str(error).replace("\n", " "))

    def report_failure(self, replica: Replica, reason: str) -> None:
        """While following: a request found `replica` refusing or broken. Out of this worker's
        rotation, and probed until it passes as many probes in a row as the leader would want
        (--healthy-after), or the leader says more. (Once leading, the supervisor hears it.)"""
        if replica.state is State.READY:
            replica.change_state(State.DOWN, f"{reason}; out of this worker's rotation")
        if replica not in self._probing:
            self._probing.add(replica)
            gevent.spawn(self._probe_until_back, replica)

    def _probe_until_back(self, replica: Replica) -> None:
        counts = CheckCounts()
        try:
            while replica.state is State.DOWN and not self.stopping():
                result = self.checker.check(replica.url)
                counts.add(result.ok)
                verdict = self.thresholds.judge(False, counts.fails, counts.passes, 0.0)
                if verdict is Verdict.IN and replica.state is State.DOWN:
                    replica.change_state(State.READY, f"{result.reason}; {counts.passes} passed "
                                                      "probes in a row")
                    return
                gevent.sleep(PROBE_INTERVAL)
        finally:
            self._probing.discard(replica)

    # -- exit --------------------------------------------------------------------------------

    def at_exit(self) -> None:
        """The worker process is ending. A leader hands the replicas over to the next leader, or,
        when the whole server is shutting down, removes them once its siblings are done."""
        self.counts.publish(final=True)
        if self.supervisor is None:
            return
        self._loop.kill(block=False)
        if self._replica_logs is not None:
            self._replica_logs.kill(block=False)
        self._close_admin()  # the next leader binds them again
        if not shutting_down(self.master):
            self.supervisor.stop(remove=False, reason="handed over to the next worker")
            self.lease.release()
            return
        self._wait_for_siblings()
        keep = self.config.keep
        self.supervisor.stop(remove=not keep, stop_timeout=5)
        self.state_file.path.unlink(missing_ok=True)  # the lock file stays: see Lease
        self.counts.remove_all()
        if not keep:
            admin_auth.forget_token(self.config.name, self.config.admin_token_file)
        self.lease.release()
        log.info("stopped%s", " (replicas left running: --keep)" if keep else "")

    def _wait_for_siblings(self) -> None:
        """Until the other workers have ended (they finish their requests on the replicas),
        bounded by --graceful-timeout."""
        self.presence.leave()
        deadline = time.monotonic() + self.config.graceful_timeout
        while time.monotonic() < deadline and not self.presence.others_gone():
            time.sleep(SIBLINGS_WAIT_POLL)
