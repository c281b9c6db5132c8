"""`--watch` with `--build DIR`: a change under DIR is rebuilt and rolled out once the changes
settle, as PM2's --watch and compose's watch do, but the old replicas serve until new ones answer
(a rollout), and a build that fails or an image that never answers leaves them serving.

Changes are heard from the kernel's inotify, through inotify_simple: one small file of ctypes
calls over the kernel's own interface, no thread and no polling. Its descriptor is waited on by
gevent's hub like a socket, so watching costs one greenlet and blocks nothing. (watchdog and
watchfiles block in a thread of their own, which under gevent's monkey-patching would hold the
whole process.) `node_modules`, `.git` and what `.dockerignore` names are not watched: they are
not part of the image, or not of the app's sources.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, Iterator

import gevent
import gevent.event
import gevent.socket
from inotify_simple import INotify, flags

log = logging.getLogger(__name__)

SETTLE = 0.5     # seconds without a change before the changes count as done
SETTLE_MAX = 5.0  # ... but no longer than this after the first (an editor that never stops)
NEVER_WATCHED = frozenset(("node_modules", ".git"))
CHANGES = (flags.CREATE | flags.MODIFY | flags.CLOSE_WRITE | flags.DELETE | flags.MOVED_FROM
           | flags.MOVED_TO | flags.ATTRIB)
SHOWN_CHANGES = 3  # files named in the log line of a round of changes


class Ignored:
    """What `.dockerignore` (Docker's syntax: `*`, `?`, `**`, `!` exceptions, relative to the
    folder) and NEVER_WATCHED leave out. A pattern that matches a folder leaves out what is in it."""

    def __init__(self, folder: Path):
        self.rules: list[tuple[bool, re.Pattern]] = []  # (an exception, the pattern)
        try:
            lines = (folder / ".dockerignore").read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError):
            lines = []
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            exception = line.startswith("!")
            pattern = os.path.normpath(line.lstrip("!").strip()).strip("/")
            if pattern not in ("", "."):
                self.rules.append((exception, _pattern(pattern)))

    def __call__(self, relative: str) -> bool:
        parts = relative.split("/")
        if NEVER_WATCHED.intersection(parts):
            return True
        prefixes = ["/".join(parts[:end]) for end in range(1, len(parts) + 1)]
        ignored = False
        for exception, pattern in self.rules:
            if any(pattern.fullmatch(prefix) for prefix in prefixes):
                ignored = not exception
        return ignored


def _pattern(glob: str) -> re.Pattern:
    """A .dockerignore pattern as a regular expression over a relative path."""
    out, index = [], 0
    while index < len(glob):
        if glob.startswith("**/", index):
            out.append("(?:.*/)?")
            index += 3
        elif glob.startswith("**", index):
            out.append(".*")
            index += 2
        elif glob[index] == "*":
            out.append("[^/]*")
            index += 1
        elif glob[index] == "?":
            out.append("[^/]")
            index += 1
        else:
            out.append(re.escape(glob[index]))
            index += 1
    return re.compile("".join(out))


class FolderWatch:
    """The files changed under `folder`, in rounds: each round once no change came for SETTLE
    seconds. Folders made later are watched too."""

    def __init__(self, folder: str):
        self.root = Path(folder).resolve()
        self.ignored = Ignored(self.root)
        self.inotify = INotify(nonblocking=True)
        self.folders: dict[int, str] = {}  # watch descriptor -> its folder, relative ("" the root)
        self._watch_tree("")

    def _watch_tree(self, relative: str) -> None:
        path = self.root / relative if relative else self.root
        try:
            descriptor = self.inotify.add_watch(path, CHANGES)
        except OSError:
            return  # gone again, or not ours to read
        self.folders[descriptor] = relative
        try:
            children = sorted(os.scandir(path), key=lambda entry: entry.name)
        except OSError:
            return
        for child in children:
            inner = f"{relative}/{child.name}" if relative else child.name
            if child.is_dir(follow_symlinks=False) and not self.ignored(inner):
                self._watch_tree(inner)

    def rounds(self, stopped: gevent.event.Event) -> Iterator[list[str]]:
        """Each round of changes (the relative paths, sorted), until `stopped` is set."""
        while not stopped.is_set():
            changed = self._wait_for_changes(stopped, timeout=None)
            if not changed:
                continue
            first = gevent.get_hub().loop.now()
            while gevent.get_hub().loop.now() - first < SETTLE_MAX:
                more = self._wait_for_changes(stopped, timeout=SETTLE)
                if not more:
                    break
                changed |= more
            if not stopped.is_set():
                self.ignored = Ignored(self.root)  # .dockerignore may be among the changes
                yield sorted(changed)

    def _wait_for_changes(self, stopped: gevent.event.Event, timeout: float | None) -> set[str]:
        """The files changed that are not ignored, once some came (or after `timeout`: none)."""
        changed: set[str] = set()
        while not changed and not stopped.is_set():
            try:
                gevent.socket.wait_read(self.inotify.fileno(), timeout=timeout if timeout else 1.0)
            except TimeoutError:
                if timeout:
                    return changed
                continue
            for event in self.inotify.read(timeout=0):
                if event.mask & flags.Q_OVERFLOW:
                    changed.add("(too many changes to name)")
                    continue
                folder = self.folders.get(event.wd)
                if folder is None:
                    continue
                relative = f"{folder}/{event.name}" if folder and event.name else folder or event.name
                if event.mask & flags.IGNORED:
                    self.folders.pop(event.wd, None)  # its folder went away
                    continue
                if not relative or self.ignored(relative):
                    continue
                if event.mask & flags.ISDIR and event.mask & (flags.CREATE | flags.MOVED_TO):
                    self._watch_tree(relative)
                changed.add(relative)
        return changed

    def close(self) -> None:
        self.inotify.close()


def watch(folder: str, on_change: Callable[[list[str]], None],
          stopped: gevent.event.Event) -> None:
    """Call `on_change(paths)` for each round of changes under `folder` until `stopped`; changes
    made while it runs make the next round."""
    try:
        watcher = FolderWatch(folder)
    except OSError as e:  # no inotify instance left (fs.inotify.max_user_instances)
        log.error("--watch: cannot watch %s (%s): changes are not rolled out; SIGHUP still "
                  "does it", folder, e.strerror or e)
        return
    log.info("watching %s: a change is built and rolled out once the changes settle", folder)
    try:
        for changed in watcher.rounds(stopped):
            shown = ", ".join(changed[:SHOWN_CHANGES])
            more = len(changed) - SHOWN_CHANGES
            log.info("watch: %s changed%s: building and rolling out", shown,
                     f" (and {more} more)" if more > 0 else "")
            on_change(changed)
    finally:
        watcher.close()
