"""RFC 6455 for raw-socket WebSocket clients (tests/test_site.py, tests/test_websocket.py, the
soak's sessions): the opening handshake, framing, reading a server's frames."""

from __future__ import annotations

import base64
import hashlib
import os
import socket
import struct

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
TEXT, BINARY, CLOSE, PING, PONG = 0x1, 0x2, 0x8, 0x9, 0xA


def handshake_request(port: int, path: str = "/ws", key: str | None = None,
                      upgrade: str = "websocket") -> tuple[bytes, str]:
    key = key or base64.b64encode(os.urandom(16)).decode()
    request = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: {upgrade}\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               f"Sec-WebSocket-Version: 13\r\n\r\n").encode()
    return request, key


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()


def read_head(sock: socket.socket, buf: bytes = b""):
    """(status, headers with lower-case names, the raw head, leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed before the end of the answer head: {buf[:200]!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        headers[name] = headers[name] + ", " + value.strip() if name in headers else value.strip()
    return int(lines[0].split(" ")[1]), headers, head, rest


def mask_bytes(payload: bytes, key: bytes) -> bytes:
    n = len(payload)
    if n == 0:
        return b""
    m = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(m, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes = b"", fin: bool = True, masked: bool = True) -> bytes:
    """One frame; a client's are masked (an unmasked one is a protocol error, for tests)."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    mbit = 0x80 if masked else 0
    if n < 126:
        header = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        header = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        header = struct.pack("!BBQ", b0, mbit | 127, n)
    if not masked:
        return header + payload
    key = os.urandom(4)
    return header + key + mask_bytes(payload, key)


class FrameReader:
    """Reads server frames from `self.sock`, keeping what arrived early in `self.buf`."""

    sock = None
    buf = b""

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(max(65536, n - len(self.buf)))
            if not chunk:
                raise ConnectionError("EOF inside a frame")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def recv_frame(self):
        """(fin, opcode, payload) of the next frame."""
        b0, b1 = self._exact(2)
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._exact(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._exact(8))
        return bool(b0 & 0x80), b0 & 0x0F, self._exact(n)
