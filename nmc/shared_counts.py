"""Under gunicorn: the relay's counts of every worker, so that the supervising worker's /status
and /metrics count the requests that all of them relayed.

Each worker writes its own counts, per replica, to `<run dir>/<cluster>.counts/<pid>.json`
(written whole, then renamed into place) about once a second when they changed, and once more as
it exits. The supervising worker adds the others' files to its own live counts when asked. The
files of workers that have ended are folded into `retired.json` and removed, so the totals never
go back when gunicorn replaces its workers (a reload, a crash)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from nmc.counters import RelayCounters, summed
from nmc.pool import Pool
from nmc.replica import Replica
from nmc.run_dir import alive, write_whole

PUBLISH_EVERY = 1.0  # seconds between a worker's writes of its counts (when they changed)
READ_EVERY = 0.5     # seconds the supervising worker reuses what it read of the others'
RETIRED = "retired.json"


class SharedCounts:
    def __init__(self, folder: Path, pool: Pool):
        self.folder = folder
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.pool = pool
        self.path = folder / f"{os.getpid()}.json"
        self._published: dict | None = None
        self._published_at = 0.0
        self._others: list[dict] = []
        self._read_at = -READ_EVERY

    # -- every worker ------------------------------------------------------------------------

    def publish(self, final: bool = False) -> None:
        """Write this worker's counts, when they changed (and PUBLISH_EVERY has passed, unless
        `final`: the worker is exiting, with nothing in flight any more)."""
        if not final and time.monotonic() - self._published_at < PUBLISH_EVERY:
            return
        counts = {replica.name: replica.relay.as_dict() for replica in self.pool}
        if final:
            for numbers in counts.values():
                numbers["in_flight"] = 0
        self._published_at = time.monotonic()
        if counts != self._published:
            write_whole(self.path, json.dumps(counts).encode())
            self._published = counts

    # -- the supervising worker --------------------------------------------------------------

    def of(self, replica: Replica) -> RelayCounters:
        """`replica`'s counts in every worker: this one's live, the others' as last written."""
        if time.monotonic() - self._read_at >= READ_EVERY:
            self._others = self._read_others()
            self._read_at = time.monotonic()
        return summed(replica.relay, *(counts[replica.name] for counts in self._others
                                       if replica.name in counts))

    def _read_others(self) -> list[dict]:
        """The other workers' counts, and the ended ones' folded into RETIRED first."""
        retired = _read(self.folder / RETIRED) or {}
        ended = []
        others = []
        for path in self.folder.glob("*.json"):
            if path == self.path or path.name == RETIRED:
                continue
            counts = _read(path)
            if counts is None:
                continue
            if path.stem.isdigit() and alive(int(path.stem)):
                others.append(counts)
            else:
                ended.append((path, counts))
        if ended:
            for _path, counts in ended:
                for name, numbers in counts.items():
                    retired[name] = summed(retired.get(name, {}), numbers).as_dict()
            write_whole(self.folder / RETIRED, json.dumps(retired).encode())
            for path, _counts in ended:
                path.unlink(missing_ok=True)
        return others + [retired]

    def remove_all(self) -> None:
        """The cluster is gone: so are its counts."""
        for path in self.folder.glob("*"):
            path.unlink(missing_ok=True)
        try:
            self.folder.rmdir()
        except OSError:
            pass  # a worker wrote one more meanwhile


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None
