"""The folder where gunicorn's master and workers meet (the lease, the state file, the counts,
the note that the master shuts down), and what they do with it: write a file whole, ask whether
a worker lives, say and ask whether the server is shutting down.

Only the standard library here: gunicorn's master imports it (nmc.gunicorn_conf)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def run_dir() -> Path:
    """NMC_RUN_DIR, else a per-user folder."""
    configured = os.environ.get("NMC_RUN_DIR")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    return Path(base) / f"nmc-{os.getuid()}"


def write_whole(path: Path, data: bytes) -> None:
    """Written to a temporary file, then renamed into place: readers see the old file or the
    new one, never half."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix="." + path.name + ".")
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's
    return True


def _shutdown_note(master: int) -> Path:
    return run_dir() / f"shutdown-{master}"


def note_shutdown(master: int) -> None:
    """gunicorn's master `master` stops its workers for good (nmc.gunicorn_conf)."""
    folder = run_dir()
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    _shutdown_note(master).touch()


def shutting_down(master: int) -> bool:
    """Whether the master stops its workers for good (else a worker ends for a reload, for
    --max-requests, or after a crash: the next one takes over)."""
    return _shutdown_note(master).exists()


def forget_shutdown(master: int) -> None:
    _shutdown_note(master).unlink(missing_ok=True)
