"""End to end: WebSocket connections through nmc_server.py (nmc/tunnel.py), real containers.

The site's /ws route is a WebSocket echo server; a raw-socket client (RFC 6455, masked frames)
written here talks to it through nmc, so every byte crosses the tunnel both ways.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest

from conftest import free_port_block, get, wait_until
from harness.wsproto import (BINARY, CLOSE, PING, PONG, TEXT, FrameReader, accept_for, frame,
                             handshake_request, read_head)

MiB = 1024 * 1024
FORWARDED = re.compile(r"Forwarding request to port: (\d+)$")


# ------------------------------------------------------------------------------------------------
# a minimal WebSocket client


class WsClient(FrameReader):
    """One WebSocket connection through nmc; `extra` is sent in the same send() as the request."""

    def __init__(self, port: int, extra: bytes = b"", timeout: float = 30, tls=None):
        """`tls`: an ssl.SSLContext for wss://."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tls is not None:
            self.sock = tls.wrap_socket(self.sock, server_hostname="localhost")
        request, key = handshake_request(port)
        self.sock.sendall(request + extra)
        self.status, self.headers, self.head, self.buf = read_head(self.sock)
        assert self.status == 101, (self.status, self.headers)
        assert self.headers["sec-websocket-accept"] == accept_for(key)
        assert self.headers["upgrade"].lower() == "websocket"
        assert "upgrade" in self.headers["connection"].lower()
        self.replica = self.headers["x-replica"]

    def send(self, opcode: int, payload: bytes = b"", fin: bool = True) -> None:
        self.sock.sendall(frame(opcode, payload, fin))

    recv = FrameReader.recv_frame

    def ends_within(self, seconds: float, data_allowed: bool = False) -> bool:
        """True when the connection ends (EOF or reset) within `seconds`; anything arriving
        before the end makes it False, unless `data_allowed`."""
        deadline = time.monotonic() + seconds
        while data_allowed or not self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except OSError:
                return True
            if not data:
                return True
            self.buf += data
        return False

    def close(self) -> None:
        self.sock.close()


# ------------------------------------------------------------------------------------------------
# helpers


def proxy_port(url: str) -> int:
    return urlsplit(url).port


def forwarded_ports(process, start: int) -> list[int]:
    return [int(m.group(1)) for line in process.lines[start:] if (m := FORWARDED.search(line))]


def wait_forwarded(process, start: int, count: int, timeout: float = 10) -> list[int]:
    return wait_until(lambda: len(forwarded_ports(process, start)) >= count and
                      forwarded_ports(process, start), timeout=timeout, interval=0.05,
                      what=f"{count} 'Forwarding request to port' lines")


def assert_clean_log(process) -> None:
    assert "Traceback" not in process.log, process.log
    assert "error while handling" not in process.log, process.log


def assert_still_serving(process, url: str) -> None:
    assert get(url + "/healthz").status_code == 200
    assert get(url + "/whoami").status_code == 200
    assert_clean_log(process)


@pytest.fixture
def ws_cluster(cluster):
    process, url, ports = cluster
    yield process, url, ports, proxy_port(url)


# ------------------------------------------------------------------------------------------------
# tests


def test_handshake_through_nmc(ws_cluster, cluster_name):
    process, url, ports, port = ws_cluster
    start = len(process.lines)
    ws = WsClient(port)
    try:
        # the replica's own 101 head, relayed whole; nothing that frames a body
        assert ws.head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        assert "content-length" not in ws.headers and "transfer-encoding" not in ws.headers
        assert ws.headers["connection"].lower() == "upgrade"  # once: no "close" added to it
        assert ws.replica in {f"{cluster_name}-{p}" for p in ports}
        assert ws.headers["x-request-id"]
        assert ws.buf == b""
        logged = wait_forwarded(process, start, 1)
        assert f"{cluster_name}-{logged[0]}" == ws.replica  # the port logged served the socket
        ws.send(PING, b"are you there")
        assert ws.recv() == (True, PONG, b"are you there")
        ws.send(TEXT, "hello ✓".encode())
        assert ws.recv() == (True, TEXT, "hello ✓".encode())
    finally:
        ws.close()
    assert_still_serving(process, url)


def test_a_thousand_messages_each_way_in_order(ws_cluster):
    process, url, ports, port = ws_cluster
    ws = WsClient(port)
    try:
        # in lock step: each echo arrives before the next message leaves (a Nagle / delayed-ACK
        # stall on either hop would cost ~40 ms each: 40 s for the thousand)
        started = time.monotonic()
        for i in range(1000):
            opcode = TEXT if i % 2 == 0 else BINARY
            payload = f"message {i} ✓".encode() if opcode == TEXT else struct.pack("!I", i) * 8
            ws.send(opcode, payload)
            assert ws.recv() == (True, opcode, payload)
        lockstep = time.monotonic() - started
        assert lockstep < 15, f"1000 round trips took {lockstep:.1f}s"
        # pipelined: all thousand sent in one go, then the thousand echoes, in order
        messages = [(TEXT if i % 2 == 0 else BINARY, f"pipelined {i}".encode() * (1 + i % 7))
                    for i in range(1000)]
        ws.sock.sendall(b"".join(frame(opcode, payload) for opcode, payload in messages))
        for opcode, payload in messages:
            assert ws.recv() == (True, opcode, payload)
    finally:
        ws.close()
    assert_still_serving(process, url)


def test_a_16_mib_message_is_echoed_intact(ws_cluster):
    process, url, ports, port = ws_cluster
    ws = WsClient(port)
    try:
        blob = os.urandom(16 * MiB)
        ws.send(BINARY, blob)
        fin, opcode, data = ws.recv()
        assert (fin, opcode, len(data)) == (True, BINARY, len(blob))
        assert hashlib.sha256(data).digest() == hashlib.sha256(blob).digest()
        ws.send(TEXT, b"after the big one")  # the tunnel is still in step
        assert ws.recv() == (True, TEXT, b"after the big one")
    finally:
        ws.close()
    assert_still_serving(process, url)


def test_frames_sent_with_the_handshake_reach_the_replica(ws_cluster):
    process, url, ports, port = ws_cluster
    # small frames, then one bigger than any read buffer: part of it is read with the request
    # head (into the server's buffer), the rest arrives afterwards on the socket
    big = os.urandom(200 * 1024)
    early = [(TEXT, b"first, in the handshake's own send()"), (PING, b"p"), (BINARY, big)]
    ws = WsClient(port, extra=b"".join(frame(opcode, payload) for opcode, payload in early))
    try:
        assert ws.recv() == (True, TEXT, b"first, in the handshake's own send()")
        assert ws.recv() == (True, PONG, b"p")
        assert ws.recv() == (True, BINARY, big)
        ws.send(TEXT, b"and later ones too")
        assert ws.recv() == (True, TEXT, b"and later ones too")
    finally:
        ws.close()
    assert_still_serving(process, url)


def test_close_from_the_client_end(ws_cluster):
    process, url, ports, port = ws_cluster
    ws = WsClient(port)
    try:
        ws.send(TEXT, b"before closing")
        assert ws.recv() == (True, TEXT, b"before closing")
        ws.send(CLOSE, struct.pack("!H", 1000) + b"bye")
        fin, opcode, data = ws.recv()
        assert (fin, opcode) == (True, CLOSE)
        assert struct.unpack("!H", data[:2])[0] == 1000
        assert ws.ends_within(5), "the TCP connection did not end after the close handshake"
    finally:
        ws.close()
    assert_still_serving(process, url)


def test_close_from_the_replica_end(ws_cluster, docker_client, cluster_name):
    process, url, ports, port = ws_cluster
    ws = WsClient(port)
    other = WsClient(port)  # round robin: the other replica
    try:
        assert other.replica != ws.replica
        ws.send(TEXT, b"still there?")
        assert ws.recv() == (True, TEXT, b"still there?")
        start = len(process.lines)
        killed_at = time.monotonic()
        docker_client.containers.get(ws.replica).kill()
        assert ws.ends_within(5), "the client's connection outlived its replica by 5 s"
        ended_after = time.monotonic() - killed_at
        assert ended_after < 5
        # the tunnel to the surviving replica is untouched
        other.send(TEXT, b"unaffected")
        assert other.recv() == (True, TEXT, b"unaffected")
    finally:
        ws.close()
        other.close()
    # nmc keeps serving: plain requests, and new WebSockets (the dead replica is skipped)
    assert_still_serving(process, url)

    def new_socket_works():
        try:
            fresh = WsClient(port, timeout=10)
        except (AssertionError, OSError):
            return False
        try:
            fresh.send(TEXT, b"new")
            return fresh.recv() == (True, TEXT, b"new")
        finally:
            fresh.close()

    wait_until(new_socket_works, timeout=20, interval=0.2, what="a new WebSocket through nmc")
    # the dead replica is replaced (and its container removed before the test's own cleanup)
    process.wait_for_line(rf"replica {ws.replica} .*starting -> ready", start=start, timeout=30)
    for _ in range(4):
        assert new_socket_works()
    assert_clean_log(process)


def test_two_hundred_connections_at_once(ws_cluster, cluster_name):
    process, url, ports, port = ws_cluster
    clients: list[WsClient] = []
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            clients = list(pool.map(lambda _: WsClient(port), range(200)))
        assert len(clients) == 200
        # all 200 are open at once: each sends, then each receives its own echo
        for i, ws in enumerate(clients):
            ws.send(TEXT, f"client {i}".encode())
        for i, ws in enumerate(clients):
            assert ws.recv() == (True, TEXT, f"client {i}".encode())
        served = [ws.replica for ws in clients]
        assert sorted(set(served)) == [f"{cluster_name}-{p}" for p in ports]
        assert served.count(served[0]) == 100  # round robin: half each
        for ws in clients:
            ws.send(CLOSE, struct.pack("!H", 1000))
        for ws in clients:
            assert ws.recv()[1] == CLOSE
            assert ws.ends_within(5)
    finally:
        for ws in clients:
            ws.close()
    assert_still_serving(process, url)


@pytest.mark.parametrize("path,upgrade,status,text", [
    ("/healthz", "websocket", 404, "no WebSocket endpoint here"),
    ("/ws", "h2c", 400, "only WebSocket upgrades are supported"),
])
def test_a_refused_upgrade_is_relayed_as_an_answer(ws_cluster, path, upgrade, status, text):
    process, url, ports, port = ws_cluster
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        request, _ = handshake_request(port, path, upgrade=upgrade)
        started = time.monotonic()
        sock.sendall(request)
        got, headers, head, rest = read_head(sock)
        assert got == status, head
        assert "upgrade" not in headers and "sec-websocket-accept" not in headers
        assert headers["connection"].lower() == "close"
        body = rest
        while True:  # read to the end: nmc closes the connection after the answer
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
        assert time.monotonic() - started < 5
        assert len(body) == int(headers["content-length"])
        assert text in body.decode()
    assert_still_serving(process, url)


def test_tunnels_alternate_replicas_and_http_still_works(ws_cluster, cluster_name):
    process, url, ports, port = ws_cluster
    start = len(process.lines)
    clients = [WsClient(port) for _ in range(6)]
    try:
        served = [ws.replica for ws in clients]
        assert set(served) == {f"{cluster_name}-{p}" for p in ports}
        assert served[0::2] == [served[0]] * 3 and served[1::2] == [served[1]] * 3
        logged = wait_forwarded(process, start, 6)
        assert [f"{cluster_name}-{p}" for p in logged] == served
        # plain HTTP continues the same rotation, with the sockets still open
        answers = [get(url + "/whoami") for _ in range(2)]
        assert [a.status_code for a in answers] == [200, 200]
        assert [a.json()["hostname"] for a in answers] == served[:2]
        for i, ws in enumerate(clients):
            ws.send(BINARY, bytes([i]) * 10)
            assert ws.recv() == (True, BINARY, bytes([i]) * 10)
    finally:
        for ws in clients:
            ws.close()
    assert_still_serving(process, url)


def test_sigterm_with_open_tunnels_ends_them_and_exits_cleanly(cluster_name, run_nmc, docker_client):
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "--replicas", "2")  # graceful timeout 10 s
    process.wait_serving()
    clients = [WsClient(base + 2) for _ in range(4)]
    try:
        for ws in clients:
            ws.send(TEXT, b"open")
            assert ws.recv() == (True, TEXT, b"open")
        process.signal()
        # a tunnel never "finishes" on its own: the drain closes it at once, not after 10 s
        for ws in clients:  # (a goodbye close frame before the end is fine too)
            assert ws.ends_within(4, data_allowed=True), "a WebSocket held the stop up"
    finally:
        for ws in clients:
            ws.close()
    assert process.wait_exit(30) == 0
    assert_clean_log(process)
    assert not docker_client.containers.list(all=True, filters={"label": f"nmc.cluster={cluster_name}"})


def test_a_replica_that_does_not_answer_the_upgrade_gets_504(cluster_name, run_nmc, docker_client):
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "--replicas", "2", "--backend-timeout", "1")
    process.wait_serving()
    replicas = [docker_client.containers.get(f"{cluster_name}-{p}") for p in (base, base + 1)]
    # connections are accepted (by Docker), nothing answers. SIGSTOP rather than `docker pause`:
    # nmc replaces a paused replica at once (the engine says so), a stopped process only when a
    # check (every 5 s, 2 s timeout) sees it hang.
    for container in replicas:
        container.kill(signal="SIGSTOP")
    try:
        with socket.create_connection(("127.0.0.1", base + 2), timeout=10) as sock:
            request, _ = handshake_request(base + 2)
            started = time.monotonic()
            sock.sendall(request)
            status, headers, head, rest = read_head(sock)
            waited = time.monotonic() - started
            assert status == 504, head
            assert headers["connection"].lower() == "close"
            assert "did not answer within 1s" in rest.decode() + sock.recv(65536).decode()
            assert 0.9 <= waited < 5
    finally:
        for container in replicas:
            container.kill(signal="SIGCONT")
    ws = WsClient(base + 2)  # once they answer again, so do upgrades
    try:
        ws.send(TEXT, b"awake")
        assert ws.recv() == (True, TEXT, b"awake")
    finally:
        ws.close()
    assert_still_serving(process, f"http://127.0.0.1:{base + 2}")
