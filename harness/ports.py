"""Free loopback ports, and one GET to see whether a port answers."""

from __future__ import annotations

import http.client
import random
import socket
import ssl


def port_is_free(port: int) -> bool:
    """Nothing listens on `port`, on 127.0.0.1 nor on all interfaces (nmc's default)."""
    for address in ("127.0.0.1", "0.0.0.0"):
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((address, port))
            except OSError:
                return False
    return True


def free_port_block(count: int, avoid: set[int] = frozenset(), low: int = 20000,
                    high: int = 45000, tries: int = 500) -> int:
    """The first of `count` consecutive free ports in [low, high), none of them in `avoid`,
    picked at random so that parallel runs rarely meet."""
    pick = random.SystemRandom()
    for _ in range(tries):
        base = pick.randrange(low, high - count)
        ports = range(base, base + count)
        if not avoid.intersection(ports) and all(port_is_free(p) for p in ports):
            return base
    raise RuntimeError(f"no {count} consecutive free ports found")


def http_ok(port: int, path: str = "/healthz", timeout: float = 2.0,
            context: ssl.SSLContext | None = None) -> bool:
    """One GET on a new connection to 127.0.0.1:PORT answered 2xx; over TLS with CONTEXT."""
    try:
        c = (http.client.HTTPConnection("127.0.0.1", port, timeout=timeout) if context is None
             else http.client.HTTPSConnection("127.0.0.1", port, timeout=timeout, context=context))
        c.request("GET", path)
        r = c.getresponse()
        r.read()
        c.close()
        return 200 <= r.status < 300
    except (OSError, http.client.HTTPException):
        return False
