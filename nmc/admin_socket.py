"""The admin interface on a Unix socket, `<run dir>/<name>.sock`, mode 0600, as docker and PM2
have theirs: `nmc-server status | scale | rollout` find their cluster by --name, and the file's
permission is the credential (a request on it needs no token).

A socket file that nobody answers on (a killed nmc) is stale and replaced; one that answers means
another nmc-server of that name runs here, and the start stops with one line, before it touches
any container. Only the standard library here, and no gevent: the CLI's client uses it too.
"""

from __future__ import annotations

import errno
import http.client
import os
import socket
import stat
from pathlib import Path

from nmc.errors import NmcError
from nmc.run_dir import run_dir

PROBE_TIMEOUT = 2  # seconds to learn whether a socket file answers (a refusal is immediate)
LISTEN_BACKLOG = 64
MAX_PATH = 107     # bytes of an AF_UNIX path on Linux (sun_path is 108, with its NUL)


class NameInUse(NmcError):
    """Another nmc-server with this --name serves here (its socket answers)."""


def socket_path(name: str) -> Path:
    return run_dir() / f"{name}.sock"


def connect(path: Path, timeout: float) -> socket.socket:
    """A connected AF_UNIX socket; OSError as the connect raised it (FileNotFoundError,
    ConnectionRefusedError, PermissionError, ...)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
    except BaseException:
        sock.close()
        raise
    return sock


class AdminSocket:
    """The listening socket of one cluster's admin interface, and its file: bound, then removed
    at stop (only while the file is still the one bound here)."""

    def __init__(self, name: str):
        self.name = name
        self.path = socket_path(name)
        self.sock: socket.socket | None = None
        self._identity: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we made

    def bind(self) -> socket.socket:
        """Bind and listen; NameInUse when another nmc-server of this name answers on it."""
        if len(os.fsencode(self.path)) > MAX_PATH:
            raise NmcError(f"the admin socket {self.path} would be a path longer than a Unix "
                           f"socket's ({MAX_PATH} bytes): choose a shorter NMC_RUN_DIR or --name")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as e:
            raise NmcError(f"cannot make the run directory {self.path.parent}: "
                           f"{e.strerror or e} (set NMC_RUN_DIR to a folder of yours)") from None
        self._clear_stale()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        mask = os.umask(0o177)  # the file is made 0600, never readable by others for a moment
        try:
            sock.bind(str(self.path))
        except OSError as e:
            sock.close()
            if e.errno == errno.EADDRINUSE:  # made a moment ago by another start of this name
                raise self._in_use() from None
            raise NmcError(f"cannot make the admin socket {self.path}: {e.strerror or e}") from None
        finally:
            os.umask(mask)
        info = os.stat(self.path)
        self._identity = (info.st_dev, info.st_ino)
        os.chmod(self.path, 0o600)
        sock.listen(LISTEN_BACKLOG)
        self.sock = sock
        return sock

    def _clear_stale(self) -> None:
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode):
            raise NmcError(f"{self.path} is in the way of the admin socket of cluster {self.name}: "
                           "it is not a socket; remove it, or choose another --name")
        try:
            connect(self.path, PROBE_TIMEOUT).close()
        except (ConnectionRefusedError, FileNotFoundError):
            self.path.unlink(missing_ok=True)  # stale: its nmc-server is gone
            return
        except OSError as e:
            raise NmcError(f"the admin socket {self.path} is there and cannot be probed "
                           f"({e.strerror or e}); remove it if no nmc-server named {self.name} "
                           "runs") from None
        raise self._in_use()

    def _in_use(self) -> NameInUse:
        return NameInUse(f"another nmc-server named {self.name} runs here (its admin socket "
                         f"{self.path} answers): stop it first, or choose another --name")

    def remove(self) -> None:
        """Stop listening and remove the file, unless another nmc made a new one meanwhile."""
        if self.sock is None:
            return
        self.sock.close()
        self.sock = None
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return
        if (info.st_dev, info.st_ino) == self._identity:
            self.path.unlink(missing_ok=True)


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client over a Unix socket: `connect_timeout` for the connect, `timeout` after it."""

    def __init__(self, path: Path, timeout: float, connect_timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path
        self.connect_timeout = connect_timeout

    def connect(self) -> None:
        self.sock = connect(self.socket_path, self.connect_timeout)
        self.sock.settimeout(self.timeout)
