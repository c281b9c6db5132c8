"""Upgraded connections (WebSocket): a raw two-way byte tunnel between client and replica.

An upgrade request goes to the replica like any other (nmc.transport sends it and reads the
answer's head with its one parser). A `101 Switching Protocols` answer hands its connection over
(`Answer.detach`: the socket, and the bytes already read past the head), and `relay_switch` sends
the 101 to the client and pumps bytes both ways until either side closes, as Go's ReverseProxy
does in handleUpgradeResponse and its switchProtocolCopier. It parses nothing.

The client's connection is taken over from the WSGI server through nmc.hijack, under pywsgi and
gunicorn alike; whatever the answer to an upgrade request, the server closes the client's
connection after it (the proxy's `hijack.close_after`), so it never reads another request from it.
"""

from __future__ import annotations

import logging
import socket
import time

import gevent

from nmc.hijack import Hijacked, hijack
from nmc.http_rules import HOP_BY_HOP, connection_named
from nmc.transport import send_all

log = logging.getLogger(__name__)

LINGER = 2.0  # seconds the other direction gets once one direction has ended
# bytes asked for per read. A read allocates what it asks for and then shrinks it: with small
# WebSocket messages 64 KiB cost ~10% less CPU per message than http1.BLOCK's 256 (an A/B of
# bench/ws_echo.py), and loopback rarely gives more in one read.
READ = 64 * 1024


def relay_switch(environ: dict, start_response, replica_name: str, answer, extra_headers) -> list:
    """Relay a replica's 101 answer (a transport.Answer) to the client, then tunnel bytes both
    ways until either side closes; the WSGI result (nothing more to send)."""
    upstream, pending = answer.detach()
    try:
        upstream.settimeout(None)  # a tunnel may be quiet for long: its protocol pings if it cares
        named = connection_named(answer.headers)
        relayed = [(n, v) for n, v in answer.headers
                   if n.lower() in ("connection", "upgrade")
                   or (n.lower() not in HOP_BY_HOP and n.lower() not in named)]
        write = start_response(f"101 {answer.reason or 'Switching Protocols'}",
                               relayed + list(extra_headers))
        _tunnel(write, replica_name, hijack(environ), upstream, pending)
    finally:
        _close(upstream)
    return []


# -- the tunnel ---------------------------------------------------------------------------------


def _tunnel(write, replica_name: str, client_connection: Hijacked, upstream,
            pending: bytes) -> None:
    started = time.monotonic()
    client = client_connection.socket
    try:
        client.settimeout(None)
        # The 101 head, alone, now (pywsgi sends headers with the first write, even an empty
        # one; the Content-Length it adds to a 101 when handed a list is avoided this way).
        write(b"")
    except OSError as e:
        log.debug("tunnel to %s: the client left before the 101 was sent: %s", replica_name, e)
        client_connection.close()
        return
    # From here on the connection is no longer HTTP: the server (told by hijack) neither writes
    # an answer nor reads a request on it again.
    counts = [0, 0]
    up = gevent.spawn(_pump, client_connection.read, upstream, counts, 0)
    down = gevent.spawn(_pump, upstream.recv, client, counts, 1, pending)
    try:
        first = gevent.wait([up, down], count=1)[0]
        other = down if first is up else up
        other.join(LINGER)
        if not other.dead:
            for sock in (client, upstream):  # wakes the reader still waiting
                _shutdown(sock, socket.SHUT_RDWR)
            other.join(1)
    finally:
        # (also reached when the server cuts this request short: GreenletExit) The pumps must
        # be gone before their readers are closed: closing a BufferedReader another greenlet is
        # blocked in raises "reentrant call".
        running = [pump for pump in (up, down) if not pump.dead]
        if running:
            for sock in (client, upstream):
                _shutdown(sock, socket.SHUT_RDWR)
            gevent.killall(running, timeout=1)
        client_connection.close()
        log.debug("tunnel to %s closed after %.1fs (%d bytes up, %d down)%s", replica_name,
                  time.monotonic() - started, counts[0], counts[1],
                  "".join(f"; {p.value}" for p in (up, down) if isinstance(p.value, str)))


def _pump(read, sink: socket.socket, counts: list[int], index: int, first: bytes = b""):
    """Copy `first`, then what `read` gives until EOF or an error, then half-close `sink` (it
    will get nothing more). Returns the error as text, if any (for the one debug line)."""
    try:
        data = first
        while True:
            if data:
                send_all(sink, data)
                counts[index] += len(data)
            data = read(READ)
            if not data:
                return None
    except (OSError, ValueError) as e:  # ValueError: a reader closed under us
        return f"{'up' if index == 0 else 'down'}: {e}"
    finally:
        _shutdown(sink, socket.SHUT_WR)


# -- small helpers ------------------------------------------------------------------------------


def _shutdown(sock, how) -> None:
    try:
        sock.shutdown(how)
    except OSError:
        pass


def _close(upstream) -> None:
    try:
        upstream.close()
    except OSError:
        pass
