"""Child processes of the harness: nmc_server.py with its output collected by threads, the
parent-death signal that stops a child when its parent dies, short commands, the source state."""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time

from harness import ROOT

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """A preexec_fn (in the child, between fork and exec): SIGTERM to the child when its parent
    dies, so that a killed harness leaves no nmc (or relay) running. Linux only; a no-op elsewhere."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except Exception:
        pass


def own_session() -> dict:
    """Popen options for a child in a session of its own (a Ctrl-C on the terminal reaches it only
    through us) that dies with its parent."""
    return {"start_new_session": True,
            "preexec_fn": die_with_parent if sys.platform.startswith("linux") else None}


def cmd_out(args: list[str], timeout: float = 15) -> str:
    """stdout + stderr of a short command, or why it could not run."""
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"


def source_state() -> str:
    """The commit, and nmc's files changed since it (others may be editing them)."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, timeout=5).stdout.strip()
        changed = subprocess.run(["git", "status", "--porcelain", "--", "nmc", "nmc_server.py"],
                                 cwd=ROOT, capture_output=True, text=True, timeout=5).stdout.split("\n")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    files = [line[3:] for line in changed if line.strip()]
    return f"commit {head or '?'}" + (f", with uncommitted changes to {', '.join(files)}" if files else "")


class NmcProcess:
    """./nmc_server.py (or `command`, e.g. gunicorn) running in its own process; its stderr and
    stdout are collected by threads (into `lines` and `stdout`; with merge_output both into
    `lines`). detached: in a session of its own, stopped when we die (see own_session)."""

    def __init__(self, args: list[str], env: dict | None = None, command: list[str] | None = None,
                 merge_output: bool = False, detached: bool = False):
        self.args = args
        self.lines: list[str] = []   # stderr: the log
        self.stdout: list[str] = []
        self.stop_took: float | None = None  # seconds stop() took
        self.killed = False                  # stop() had to SIGKILL it
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            [*(command or [sys.executable, str(ROOT / "nmc_server.py")]), *args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, encoding="utf-8", errors="replace", cwd=ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            **(own_session() if detached else {}))
        streams = [(self.proc.stdout, self.lines)] if merge_output else \
            [(self.proc.stderr, self.lines), (self.proc.stdout, self.stdout)]
        self._readers = [threading.Thread(target=self._collect, args=pair, daemon=True)
                         for pair in streams]
        for reader in self._readers:
            reader.start()

    def _collect(self, stream, sink):
        for line in stream:
            with self._changed:
                sink.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    @property
    def exit_code(self) -> int | None:
        return self.proc.poll()

    def tail(self, count: int = 15) -> str:
        return "\n".join(self.lines[-count:])

    def log_summary(self, limit: int = 60) -> str:
        """The log without the per-request lines (counted instead), its last `limit` lines."""
        kept = [line for line in self.lines if "Forwarding request to port" not in line]
        relayed = len(self.lines) - len(kept)
        return "\n".join(kept[-limit:] + [f"(and {relayed} 'Forwarding request' lines)"] * bool(relayed))

    def find_line(self, pattern: str, timeout: float = 30, start: int = 0) -> re.Match | None:
        """The first log line (from index `start`) matching `pattern`, waited for `timeout`
        seconds at most; None when none came (or the process exited without one)."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self.lines[start:]:
                    match = regex.search(line)
                    if match:
                        return match
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reading()):
                    return None
                self._changed.wait(min(remaining, 0.2))

    def wait_for_line(self, pattern: str, timeout: float = 30, start: int = 0) -> re.Match:
        """The first log line (from index `start`) matching `pattern`; fails after `timeout`."""
        match = self.find_line(pattern, timeout, start)
        if match is None:
            raise AssertionError(f"no log line matching {pattern!r} within {timeout}s; "
                                 f"exit code {self.proc.poll()}; log:\n{self.log_summary()}")
        return match

    def _reading(self) -> bool:
        return any(reader.is_alive() for reader in self._readers)

    def wait_serving(self, timeout: float = 60) -> None:
        self.wait_for_line(r"serving on https?://", timeout)

    def signal(self, signum=signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait_exit(self, timeout: float = 30) -> int:
        code = self.proc.wait(timeout)
        self._drain(5)
        return code

    def _drain(self, limit: float) -> None:
        """Let the readers read what is left in the pipes (`limit` seconds at most)."""
        deadline = time.monotonic() + limit
        while self._reading() and time.monotonic() < deadline:
            time.sleep(0.02)

    def stop(self, limit: float = 20) -> None:
        """SIGTERM (nmc removes its replicas itself), SIGKILL if it does not exit within `limit`
        seconds; how long it took in stop_took."""
        if self.proc.poll() is None:
            began = time.monotonic()
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(limit)
            except subprocess.TimeoutExpired:
                self.killed = True
                self.kill()
            self.stop_took = time.monotonic() - began
        self._drain(2)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
