"""Upgraded connections (WebSocket): a raw two-way byte tunnel between client and replica.

relay_upgrade() is called by the proxy for a request that asks to switch protocols. It opens
its own TCP connection to the replica, sends the request head, and relays the replica's answer:
a `101 Switching Protocols` opens the tunnel, which pumps bytes both ways until either side
closes; any other answer is relayed as an ordinary answer and the client connection is closed.
"""

from __future__ import annotations


class TunnelRefused(Exception):
    """The replica could not be connected to: nothing was sent, the proxy may try another."""


def relay_upgrade(environ: dict, start_response, replica, target: str, headers: dict,
                  connect_timeout: float, answer_timeout: float):
    """Relay an upgrade request to `replica`; the WSGI return value for the proxy to return.

    `headers` are the end-to-end request headers (hop-by-hop ones already removed); the tunnel
    adds `Connection: Upgrade` and the client's `Upgrade` header back. Raises TunnelRefused when
    the replica refuses the connection.
    """
    raise NotImplementedError
