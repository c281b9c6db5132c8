"""Taking a client's connection over from the WSGI server, for a tunnel (WebSocket): one named
interface that the relay calls under both hosts, as Go's http.Hijacker is.

- `close_after(environ)`: the server closes the client's connection after this answer. Any
  answer to an upgrade request: after a 101 the connection is no longer HTTP, and a refused
  upgrade leaves the client's side in a state nobody should guess at.
- `hijack(environ)`: the connection itself (a Hijacked): its socket, a reader that first gives
  what the server had already read past the request head, and how to close it.

nmc's pywsgi handler (nmc.http_server.ProxyHandler) puts itself in environ[HIJACKER]. gunicorn
offers its socket in environ["gunicorn.socket"] and closes a connection after an upgrade by
itself; what it read past the request head stays in its own buffer (gunicorn has no public way
to hand it over), so a client should not send before the 101 there.
"""

from __future__ import annotations

import socket
from typing import Callable, NamedTuple, Protocol

HIJACKER = "nmc.hijacker"


class Hijacked(NamedTuple):
    socket: socket.socket
    read: Callable[[int], bytes]  # up to n bytes the client sent; b"" at its end
    close: Callable[[], None]


class Hijacker(Protocol):
    def close_after(self) -> None: ...

    def hijack(self) -> Hijacked: ...


def can_hijack(environ: dict) -> bool:
    return HIJACKER in environ or "gunicorn.socket" in environ


def close_after(environ: dict) -> None:
    hijacker = environ.get(HIJACKER)
    if hijacker is not None:
        hijacker.close_after()


def hijack(environ: dict) -> Hijacked:
    hijacker = environ.get(HIJACKER)
    if hijacker is not None:
        return hijacker.hijack()
    sock = environ["gunicorn.socket"]
    return Hijacked(sock, sock.recv, lambda: close_socket(sock))


def close_socket(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
