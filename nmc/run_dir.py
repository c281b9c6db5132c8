"""The folder where gunicorn's workers of one cluster meet (the lease, the state file, the
counts), and the two things they do with it: write a file whole, and ask whether a worker lives."""

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
