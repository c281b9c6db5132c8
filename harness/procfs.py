"""What the harness reads of processes in /proc: CPU ticks, RSS, process trees, the whole
machine's CPU time and Docker's userland proxies (Linux only)."""

from __future__ import annotations

import os
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after `pid (comm)`: [0] = state, [1] = ppid, [11]/[12] = utime/stime."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None


def alive(pid: int) -> bool:
    f = stat_fields(pid)
    return f is not None and f[0] != "Z"


def ticks(pid: int) -> int:
    """CPU ticks (user + system) of a process; 0 when it is gone."""
    f = stat_fields(pid)
    return int(f[11]) + int(f[12]) if f else 0


def cpu_seconds(pid: int) -> float | None:
    """CPU seconds (user + system) of a process; None when it is gone (or no /proc)."""
    f = stat_fields(pid)
    try:
        return (int(f[11]) + int(f[12])) / CLK_TCK if f else None
    except (ValueError, IndexError):
        return None


def tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx's worker, gunicorn's workers, ...)."""
    parent = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            f = stat_fields(int(d))
            if f:
                parent[int(d)] = int(f[1])
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def rss_kib(pids: list[int]) -> int:
    """Sum of VmRSS (KiB) over pids; 0 for those gone."""
    total = 0
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total


def rss_mib(pids: list[int]) -> float:
    return rss_kib(pids) / 1024


def fd_kinds(pid: int) -> dict[str, int]:
    """A process's open fds by what they are: tcp and unix sockets (other sockets: socket), pipe,
    anon_inode (epoll, eventfd ...), file; {} when it is gone."""
    kinds: dict[str, int] = {}
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return kinds
    targets = []
    for fd in fds:
        try:
            targets.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            pass
    net = {}
    for table in ("tcp", "tcp6", "unix"):
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        column = 6 if table == "unix" else 9
        kind = "unix" if table == "unix" else "tcp"
        for line in lines:
            fields = line.split()
            if len(fields) > column and fields[column].isdigit():
                net[fields[column]] = kind
    for target in targets:
        kind = target.split(":", 1)[0]
        if kind == "socket":
            kind = net.get(target[8:-1], "socket") + (" socket" if target[8:-1] in net else "")
        elif kind not in ("pipe", "anon_inode"):
            kind = "file"
        kinds[kind] = kinds.get(kind, 0) + 1
    return dict(sorted(kinds.items()))


def machine_ticks() -> tuple[int, int]:
    """(busy, total) CPU ticks of the whole machine so far (all CPUs; iowait counts as idle)."""
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)


def machine_seconds() -> tuple[float, float] | None:
    """machine_ticks() in seconds; None where there is no /proc/stat."""
    try:
        busy, total = machine_ticks()
    except (OSError, ValueError, IndexError):
        return None
    return busy / CLK_TCK, total / CLK_TCK


def docker_proxy_pids(port: int) -> list[int]:
    """Docker's userland proxy processes publishing host port PORT."""
    return [pid for pid, _ in docker_proxies({port})]


def docker_proxies(ports: set[int] | None = None) -> list[tuple[int, int]]:
    """(pid, host port) of Docker's userland proxy processes, those publishing one of `ports`
    (every one when None), in one pass over /proc."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            argv = Path(f"/proc/{d}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"docker-proxy") and b"-host-port" in argv:
            i = argv.index(b"-host-port")
            try:
                port = int(argv[i + 1])
            except (IndexError, ValueError):
                continue
            if ports is None or port in ports:
                out.append((int(d), port))
    return out
