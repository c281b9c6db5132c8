"""What bench.py reads of processes and ports: CPU ticks and RSS from /proc, free loopback
ports, and one GET to see whether a port answers."""

from __future__ import annotations

import http.client
import os
import random
import socket
import subprocess
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
    f = stat_fields(pid)
    return int(f[11]) + int(f[12]) if f else 0


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


def machine_ticks() -> tuple[int, int]:
    v = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return sum(v) - v[3] - v[4], sum(v)  # busy, total (both CPUs)


def docker_proxy_pids(port: int) -> list[int]:
    """Docker's userland proxy processes publishing host port PORT."""
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
            if i + 1 < len(argv) and argv[i + 1] == str(port).encode():
                out.append(int(d))
    return out


def port_is_free(port: int) -> bool:
    for address in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((address, port))
            except OSError:
                return False
    return True


def free_ports(count: int) -> int:
    """The first of COUNT consecutive free ports in 20000-29999 (random, so parallel runs rarely meet)."""
    pick = random.SystemRandom()
    for _ in range(500):
        base = pick.randrange(20000, 30000 - count)
        if all(port_is_free(p) for p in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def http_ok(port: int, path: str = "/healthz", timeout: float = 2.0) -> bool:
    """One GET on a new connection to 127.0.0.1:PORT answered 2xx."""
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        c.close()
        return 200 <= r.status < 300
    except (OSError, http.client.HTTPException):
        return False


def cmd_out(args: list[str], timeout: float = 15) -> str:
    """stdout + stderr of a short command, or why it could not run."""
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
        return (r.stdout + r.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return f"? ({e})"
