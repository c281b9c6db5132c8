"""nmc's own process as /proc shows it: RSS, open fds, greenlets, its TCP connections by state
(clients and replicas apart), uptime. Linux; standard library only. /status's `process` section."""

from __future__ import annotations

import gc
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

PROC = Path("/proc")
CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100

# the kernel's numbers for a TCP socket's state (include/net/tcp_states.h), named as ss names them
TCP_STATES = {1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2",
              6: "TIME_WAIT", 7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN",
              11: "CLOSING", 12: "NEW_SYN_RECV"}


@dataclass(frozen=True)
class TcpSocket:
    """One line of /proc/net/tcp or tcp6."""
    local_port: int
    remote_port: int
    state: str
    inode: int


def parse_tcp_table(text: str) -> list[TcpSocket]:
    """The lines of /proc/net/tcp (or tcp6) after its header. Addresses are hex `ADDR:PORT`;
    only the ports matter here, so IPv4 and IPv6 read alike."""
    sockets = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        try:
            state = int(fields[3], 16)
            sockets.append(TcpSocket(int(fields[1].rsplit(":", 1)[1], 16),
                                     int(fields[2].rsplit(":", 1)[1], 16),
                                     TCP_STATES.get(state, f"0x{state:02X}"), int(fields[9])))
        except (ValueError, IndexError):
            continue
    return sockets


def socket_inodes(fd_targets: Iterable[str]) -> set[int]:
    """The inodes of the sockets among a process's fds, from their links' targets (`socket:[N]`)."""
    inodes = set()
    for target in fd_targets:
        if target.startswith("socket:[") and target.endswith("]"):
            try:
                inodes.add(int(target[8:-1]))
            except ValueError:
                pass
    return inodes


def rss_bytes(status_text: str) -> int:
    """VmRSS of /proc/PID/status, in bytes (0 when absent, as for a kernel thread)."""
    for line in status_text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def started_after_boot(stat_text: str) -> float:
    """When the process started, in seconds after boot (field 22 of /proc/PID/stat, in ticks)."""
    return int(stat_text.rsplit(")", 1)[1].split()[19]) / CLK_TCK


def connections(sockets: Iterable[TcpSocket], own: set[int], skip_ports: Iterable[int],
                replica_ports: Iterable[int]) -> tuple[Counter, Counter]:
    """(clients, replicas): the process's own connections (inode in `own`) by state. A client's
    has a local port on which the process listens (but those in skip_ports: the admin port); a
    replica's has a replica's published port as its remote port."""
    own_sockets = [s for s in sockets if s.inode in own]
    listening = {s.local_port for s in own_sockets if s.state == "LISTEN"} - set(skip_ports)
    replicas = set(replica_ports)
    clients, to_replicas = Counter(), Counter()
    for s in own_sockets:
        if s.state == "LISTEN":
            continue
        if s.local_port in listening:
            clients[s.state] += 1
        elif s.remote_port in replicas:
            to_replicas[s.state] += 1
    return clients, to_replicas


def count_greenlets() -> int:
    """Greenlets the garbage collector knows of (gevent's Greenlets and raw ones: the hub, the
    monkey-patched threads), running or not yet collected; 0 without greenlet."""
    greenlet = sys.modules.get("greenlet")
    if greenlet is None:
        return 0
    kind = greenlet.greenlet
    return sum(1 for o in gc.get_objects() if isinstance(o, kind))


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _fd_targets(fd_dir: Path) -> list[str]:
    """What each open fd points to (one closed meanwhile is left out); [] without /proc."""
    targets = []
    try:
        entries = list(os.scandir(fd_dir))
    except OSError:
        return targets
    for entry in entries:
        try:
            targets.append(os.readlink(entry.path))
        except OSError:
            pass
    return targets


def snapshot(replica_ports: Iterable[int] = (), skip_ports: Iterable[int] = (),
             proc: Path = PROC / "self") -> dict:
    """This process's figures now. Where /proc is missing, the figures read 0."""
    targets = _fd_targets(proc / "fd")
    own = socket_inodes(targets)
    sockets = parse_tcp_table(_read(proc / "net" / "tcp")) + parse_tcp_table(_read(proc / "net" / "tcp6"))
    clients, replicas = connections(sockets, own, skip_ports, replica_ports)
    try:
        uptime = float(_read(PROC / "uptime").split()[0]) - started_after_boot(_read(proc / "stat"))
    except (ValueError, IndexError):
        uptime = 0.0
    return {
        "pid": os.getpid(),
        "rss_bytes": rss_bytes(_read(proc / "status")),
        "open_fds": len(targets),
        "greenlets": count_greenlets(),
        "client_connections": dict(sorted(clients.items())),
        "replica_connections": dict(sorted(replicas.items())),
        "uptime_seconds": round(max(0.0, uptime), 1),
    }
