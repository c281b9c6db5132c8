"""Tests of the demo site (nodejs/server.js) in a real container of the `nodejs.org` image.

Build the image first: `bash nodejs/build-image.sh` (or `make nodejs`).

Every container started here carries the label nmc.cluster=nmct-site-<hex> and is removed (force)
when its test or this module is done, pass or fail. Containers are reached only through ports
published on 127.0.0.1 (Docker picks a free one).
"""

import base64
import contextlib
import hashlib
import http.client
import json
import os
import secrets
import socket
import struct
import threading
import time

import docker
import pytest
import requests

from harness.wsproto import FrameReader, frame

IMAGE = os.environ.get("NMC_SITE_IMAGE", "nodejs.org")
REPLICA = "site-test"
MiB = 1024 * 1024
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
BIG_PATTERN = bytes(range(256)) * (MiB // 256)  # /big sends byte i = i & 0xff
STARTUP_DEADLINE = 30.0


# ------------------------------------------------------------------------------------------------
# containers


class Replica:
    def __init__(self, container, port, ready_after):
        self.container = container
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        self.ready_after = ready_after  # seconds from `docker run` to /healthz answering

    def url(self, path):
        return self.base + path

    def logs(self):
        return self.container.logs().decode("utf-8", "replace")


@pytest.fixture(scope="module")
def docker_client():
    try:
        client = docker.from_env()
        client.ping()
    except Exception as e:  # noqa: BLE001 - any failure here means "no engine"
        pytest.fail(f"no Docker engine answers: {e}")
    try:
        client.images.get(IMAGE)
    except docker.errors.ImageNotFound:
        pytest.fail(f"image {IMAGE!r} is missing: build it with `bash nodejs/build-image.sh`")
    yield client
    client.close()


@contextlib.contextmanager
def replica(client, name=REPLICA):
    """Run one labelled container of IMAGE, wait until /healthz answers, remove it afterwards."""
    cluster = "nmct-site-" + secrets.token_hex(6)
    t0 = time.monotonic()
    container = client.containers.run(
        IMAGE,
        detach=True,
        labels={"nmc.cluster": cluster},
        ports={"8080/tcp": ("127.0.0.1", None)},  # None: Docker picks a free port
        environment={"NMC_REPLICA": name},
    )
    try:
        container.reload()
        port = int(container.ports["8080/tcp"][0]["HostPort"])
        deadline = t0 + STARTUP_DEADLINE
        last_error = None
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
                if r.status_code == 200:
                    break
                last_error = f"HTTP {r.status_code}"
            except requests.RequestException as e:
                last_error = e
            container.reload()
            if container.status not in ("created", "running"):
                pytest.fail(f"container exited during start-up ({container.status}):\n"
                            + container.logs().decode("utf-8", "replace"))
            if time.monotonic() > deadline:
                pytest.fail(f"/healthz did not answer within {STARTUP_DEADLINE}s ({last_error}):\n"
                            + container.logs().decode("utf-8", "replace"))
            time.sleep(0.02)  # poll interval
        yield Replica(container, port, time.monotonic() - t0)
    finally:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass


@pytest.fixture(scope="module")
def site(docker_client):
    with replica(docker_client) as r:
        yield r


# ------------------------------------------------------------------------------------------------
# raw HTTP helpers


def connect(port, timeout=15.0):
    return socket.create_connection(("127.0.0.1", port), timeout=timeout)


def recv_until_eof(sock):
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def raw_exchange(port, request: bytes):
    """Send raw bytes, read until the server closes; return (status, headers dict, body bytes)."""
    with connect(port) as s:
        s.sendall(request)
        data = recv_until_eof(s)
    return parse_response(data)


def parse_response(data: bytes):
    head, sep, body = data.partition(b"\r\n\r\n")
    assert sep, f"no end of headers in {data[:200]!r}"
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def read_head(sock, buf=b""):
    """Read up to the end of a response's headers; return (status, headers, leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before the end of headers: {buf!r}"
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    status, headers, _ = parse_response(head + b"\r\n\r\n")
    return status, headers, rest


def read_chunks_timed(sock, buf):
    """Decode a chunked body; return ([(arrival time, chunk data)], leftover). Ends with the 0 chunk."""
    out = []
    while True:
        while b"\r\n" not in buf:
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside a chunked body"
            buf += chunk
        line, _, buf = buf.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        while len(buf) < size + 2:
            chunk = sock.recv(65536)
            assert chunk, "connection closed inside a chunk"
            buf += chunk
        data, buf = buf[:size], buf[size + 2:]
        out.append((time.monotonic(), data))
        if size == 0:
            return out, buf


def sha256(b):
    return hashlib.sha256(b).hexdigest()


# ------------------------------------------------------------------------------------------------
# a minimal WebSocket client (RFC 6455), written for these tests


class WsClient(FrameReader):
    def __init__(self, port, path="/ws"):
        self.sock = connect(port, timeout=30)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        self.status, self.headers, self.buf = read_head(self.sock)
        assert self.status == 101, (self.status, self.headers)
        expected = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        assert self.headers["sec-websocket-accept"] == expected
        assert self.headers["upgrade"].lower() == "websocket"

    def send_frame(self, opcode, payload=b"", fin=True, masked=True):
        self.sock.sendall(frame(opcode, payload, fin, masked))

    def at_eof(self):
        """True when the server closes the connection (nothing more arrives)."""
        if self.buf:
            return False
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


# ------------------------------------------------------------------------------------------------
# the basics


def test_start_log_and_startup_time(site):
    assert f"listening on :8080 as {REPLICA} (pid 1)" in site.logs()
    print(f"\n/healthz answered {site.ready_after:.3f}s after docker run")
    assert site.ready_after < STARTUP_DEADLINE


def test_home_page(site):
    r = requests.get(site.url("/"), timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.headers["X-Replica"] == REPLICA
    page = r.text
    assert page.lower().startswith("<!doctype html>")
    assert REPLICA in page
    hostname = requests.get(site.url("/whoami"), timeout=10).json()["hostname"]
    assert hostname in page
    assert "v20." in page  # Node version
    assert "Uptime" in page and "PID" in page
    assert "<style>" in page
    # self-contained: no external resources
    for needle in ("http://", "https://", "src=", "<link", "@import", "url("):
        assert needle not in page, needle


def test_healthz(site):
    r = requests.get(site.url("/healthz"), timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert r.json() == {"status": "ok", "replica": REPLICA}
    assert r.headers["X-Replica"] == REPLICA


def test_keep_alive_timeout_advertised(site):
    r = requests.get(site.url("/healthz"), timeout=10)
    assert r.headers.get("Keep-Alive") == "timeout=75"


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/"),
        ("GET", "/healthz"),
        ("GET", "/whoami"),
        ("POST", "/echo"),
        ("GET", "/stream?n=2&ms=0"),
        ("GET", "/slow?ms=0"),
        ("GET", "/big?mb=0.01"),
        ("GET", "/status/503"),
        ("GET", "/status/204"),
        ("GET", "/status/700"),
        ("GET", "/ws"),
        ("GET", "/no/such/page"),
        ("HEAD", "/"),
    ],
)
def test_every_response_names_the_replica(site, method, path):
    r = requests.request(method, site.url(path), data=b"x" if method == "POST" else None, timeout=10)
    assert r.headers["X-Replica"] == REPLICA


def test_not_found(site):
    r = requests.get(site.url("/nope/nothing?x=1"), timeout=10)
    assert r.status_code == 404
    assert r.json() == {"error": "not found", "url": "/nope/nothing?x=1"}


# ------------------------------------------------------------------------------------------------
# /whoami


def test_whoami_fields(site):
    r = requests.get(site.url("/whoami"), headers={"X-Test": "yes"}, timeout=10)
    assert r.status_code == 200
    j = r.json()
    assert set(j) >= {"hostname", "replica", "pid", "method", "url", "httpVersion", "headers",
                      "rawHeaders", "remoteAddress"}
    assert j["replica"] == REPLICA
    assert j["pid"] == 1
    assert j["method"] == "GET"
    assert j["url"] == "/whoami"
    assert j["httpVersion"] == "1.1"
    assert j["headers"]["x-test"] == "yes"
    assert j["remoteAddress"]
    r = requests.delete(site.url("/whoami"), timeout=10)
    assert r.json()["method"] == "DELETE"


def test_whoami_raw_url_and_repeated_headers(site):
    target = "/whoami?a=%2F..%2f&b=x%20y&c&d=%E2%9C%93"
    status, headers, body = raw_exchange(
        site.port,
        (f"GET {target} HTTP/1.1\r\nHost: example.test\r\nX-Dup: first\r\nX-Other: z\r\n"
         "x-dup: second\r\nConnection: close\r\n\r\n").encode(),
    )
    assert status == 200
    j = json.loads(body)
    assert j["url"] == target  # exactly as sent, not decoded or normalised
    raw = j["rawHeaders"]
    pairs = list(zip(raw[0::2], raw[1::2]))
    assert pairs == [("Host", "example.test"), ("X-Dup", "first"), ("X-Other", "z"),
                     ("x-dup", "second"), ("Connection", "close")]
    assert j["headers"]["x-dup"] == "first, second"
    assert j["httpVersion"] == "1.1"


def test_whoami_http_1_0(site):
    status, headers, body = raw_exchange(site.port, b"GET /whoami HTTP/1.0\r\n\r\n")
    assert status == 200
    assert json.loads(body)["httpVersion"] == "1.0"


# ------------------------------------------------------------------------------------------------
# /echo


def test_echo_small_post(site):
    body = "héllo wörld ✓\n".encode() * 3
    r = requests.post(site.url("/echo?x=1"), data=body, headers={"Content-Type": "text/plain"}, timeout=10)
    assert r.status_code == 200
    j = r.json()
    assert j["method"] == "POST"
    assert j["url"] == "/echo?x=1"
    assert j["httpVersion"] == "1.1"
    assert j["headers"]["content-length"] == str(len(body))
    assert j["bodyLength"] == len(body)
    assert j["bodySha256"] == sha256(body)
    assert j["body"] == body.decode()
    assert "Content-Type" in j["rawHeaders"]


@pytest.mark.parametrize("method", ["GET", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_echo_any_method(site, method):
    r = requests.request(method, site.url("/echo"), data=b"abc" if method != "GET" else None, timeout=10)
    assert r.status_code == 200
    j = r.json()
    assert j["method"] == method
    if method == "GET":
        assert j["bodyLength"] == 0 and j["body"] == "" and j["bodySha256"] == sha256(b"")
    else:
        assert j["body"] == "abc"


def test_echo_body_kept_up_to_one_mib(site):
    exact = os.urandom(MiB // 2).hex().encode()  # 1 MiB of ASCII
    assert len(exact) == MiB
    j = requests.post(site.url("/echo"), data=exact, timeout=30).json()
    assert j["bodyLength"] == MiB and j["body"] == exact.decode() and j["bodySha256"] == sha256(exact)
    over = exact + b"!"
    j = requests.post(site.url("/echo"), data=over, timeout=30).json()
    assert j["bodyLength"] == MiB + 1 and j["bodySha256"] == sha256(over)
    assert "body" not in j


def test_echo_chunked_upload_small(site):
    parts = [b"part one, ", "part twö, ".encode(), b"part three"]
    r = requests.post(site.url("/echo"), data=(p for p in parts), timeout=10)
    j = r.json()
    assert j["headers"].get("transfer-encoding") == "chunked"
    assert "content-length" not in j["headers"]
    whole = b"".join(parts)
    assert j["bodyLength"] == len(whole)
    assert j["bodySha256"] == sha256(whole)
    assert j["body"] == whole.decode()


def test_echo_chunked_upload_large(site):
    h = hashlib.sha256()
    total = 0

    def gen():
        nonlocal total
        for _ in range(48):  # 12 MiB
            block = os.urandom(256 * 1024)
            h.update(block)
            total += len(block)
            yield block

    r = requests.post(site.url("/echo"), data=gen(), timeout=60)
    j = r.json()
    assert j["headers"].get("transfer-encoding") == "chunked"
    assert j["bodyLength"] == total == 12 * MiB
    assert j["bodySha256"] == h.hexdigest()
    assert "body" not in j


# ------------------------------------------------------------------------------------------------
# /stream, /slow, /big


def test_stream_is_chunked_and_incremental(site):
    with connect(site.port) as s:
        t_sent = time.monotonic()
        s.sendall(b"GET /stream?n=5&ms=300 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        status, headers, rest = read_head(s)
        assert status == 200
        assert headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in headers
        chunks, _ = read_chunks_timed(s, rest)
    data = [d for _, d in chunks]
    assert data == [f"chunk {i}\n".encode() for i in range(5)] + [b""]
    first, last = chunks[0][0], chunks[4][0]
    # Written 300 ms apart: the last arrives ~1.2 s after the first. A server (or anything in
    # between) that buffered the response would deliver them together.
    assert last - first > 0.6, f"chunks arrived together ({last - first:.3f}s apart)"
    assert first - t_sent < 1.0, f"first chunk took {first - t_sent:.3f}s"


def test_stream_defaults_and_bad_params(site):
    r = requests.get(site.url("/stream"), timeout=10)
    assert r.status_code == 200
    assert r.text == "".join(f"chunk {i}\n" for i in range(10))
    assert "Content-Length" not in r.headers
    r = requests.get(site.url("/stream?n=3&ms=0"), timeout=10)
    assert r.text == "chunk 0\nchunk 1\nchunk 2\n"
    for bad in ("n=abc", "n=-1", "ms=-5", "ms=x"):
        assert requests.get(site.url("/stream?" + bad), timeout=10).status_code == 400, bad


def test_slow(site):
    t0 = time.monotonic()
    r = requests.get(site.url("/slow?ms=400"), timeout=10)
    elapsed = time.monotonic() - t0
    assert r.status_code == 200
    assert r.text == "slept 400 ms\n"
    assert elapsed >= 0.35
    assert requests.get(site.url("/slow?ms=nope"), timeout=10).status_code == 400


def test_big_exact_length_and_content(site):
    r = requests.get(site.url("/big?mb=3"), timeout=30)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/octet-stream"
    assert r.headers["Content-Length"] == str(3 * MiB)
    assert len(r.content) == 3 * MiB
    assert r.content == BIG_PATTERN * 3


def test_big_fractional_and_bad(site):
    r = requests.get(site.url("/big?mb=0.001"), timeout=10)
    assert r.headers["Content-Length"] == "1048" and r.content == BIG_PATTERN[:1048]
    r = requests.get(site.url("/big?mb=1.5"), timeout=10)
    assert len(r.content) == 3 * MiB // 2 and r.content == (BIG_PATTERN * 2)[: 3 * MiB // 2]
    assert requests.get(site.url("/big?mb=-1"), timeout=10).status_code == 400


def test_big_streams_large_bodies(site):
    # 256 MiB, read and discarded as it arrives
    r = requests.get(site.url("/big?mb=256"), stream=True, timeout=60)
    n = 0
    for chunk in r.iter_content(MiB):
        n += len(chunk)
    assert n == 256 * MiB


# ------------------------------------------------------------------------------------------------
# /status, HEAD


@pytest.mark.parametrize("code", [200, 201, 202, 206, 301, 302, 400, 401, 403, 404, 418, 429, 500, 502, 503, 599])
def test_status_codes(site, code):
    r = requests.get(site.url(f"/status/{code}"), allow_redirects=False, timeout=10)
    assert r.status_code == code
    assert r.text.startswith(f"{code} ") and r.text.endswith("\n")


@pytest.mark.parametrize("code", ["100", "101", "199", "600", "99", "1000", "abc", "", "20x"])
def test_status_invalid(site, code):
    r = requests.get(site.url(f"/status/{code}"), timeout=10)
    assert r.status_code == 400


@pytest.mark.parametrize("code", [204, 304])
def test_status_without_body(site, code):
    status, headers, body = raw_exchange(
        site.port, f"GET /status/{code} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert status == code
    assert body == b""
    assert "transfer-encoding" not in headers
    # and on a kept-alive connection the next response follows directly
    conn = http.client.HTTPConnection("127.0.0.1", site.port, timeout=10)
    try:
        conn.request("GET", f"/status/{code}")
        r = conn.getresponse()
        assert r.status == code and r.read() == b""
        conn.request("GET", "/healthz")
        r = conn.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
    finally:
        conn.close()


@pytest.mark.parametrize("path", ["/", "/whoami", "/healthz", "/big?mb=3", "/stream?n=3&ms=10", "/status/500"])
def test_head_has_no_body(site, path):
    status, headers, body = raw_exchange(
        site.port, f"HEAD {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert status in (200, 500)
    assert body == b""
    assert headers["x-replica"] == REPLICA
    if path.startswith("/big"):
        assert headers["content-length"] == str(3 * MiB)


# ------------------------------------------------------------------------------------------------
# robustness: bad requests and client aborts do not kill the replica


def test_bad_requests_and_aborts_do_not_crash(site):
    status, headers, _ = raw_exchange(site.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert status == 400 and headers["x-replica"] == REPLICA
    status, _, _ = raw_exchange(site.port, b"GET / HTTP/1.1\r\nHost: t\r\nBad Header Line\r\n\r\n")
    assert status == 400
    status, _, _ = raw_exchange(site.port, b"GET / HTTP/1.1\r\nHost: t\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert status == 431
    # upload aborted half-way
    with connect(site.port) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n\r\n" + b"x" * MiB)
    # chunked upload with a broken chunk size
    with connect(site.port) as s:
        s.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nZZ\r\n")
        s.recv(100)
    # downloads abandoned in the middle
    for path in ("/big?mb=512", "/stream?n=1000&ms=5", "/slow?ms=5000"):
        with connect(site.port) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
            if not path.startswith("/slow"):
                s.recv(1000)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST
    # a WebSocket client that vanishes mid-frame
    ws = WsClient(site.port)
    ws.sock.sendall(b"\x82\xff" + struct.pack("!Q", 5 * MiB) + b"abcd" + b"x" * 1000)
    ws.close()
    site.container.reload()
    assert site.container.status == "running"
    r = requests.get(site.url("/healthz"), timeout=10)
    assert r.status_code == 200


# ------------------------------------------------------------------------------------------------
# WebSocket


def test_websocket_echo(site):
    ws = WsClient(site.port)
    try:
        assert ws.headers["x-replica"] == REPLICA
        # text, 7-bit length
        ws.send_frame(0x1, "hello ✓".encode())
        assert ws.recv_frame() == (True, 0x1, "hello ✓".encode())
        # text, 16-bit length
        msg = ("0123456789" * 500).encode()
        ws.send_frame(0x1, msg)
        assert ws.recv_frame() == (True, 0x1, msg)
        # 1 MiB binary, 64-bit length
        blob = os.urandom(MiB)
        ws.send_frame(0x2, blob)
        fin, op, data = ws.recv_frame()
        assert (fin, op) == (True, 0x2) and data == blob
        # ping -> pong with the same payload
        ws.send_frame(0x9, b"are you there")
        assert ws.recv_frame() == (True, 0xA, b"are you there")
        # fragmented text, with a ping between the fragments; echoed as one frame
        ws.send_frame(0x1, b"frag-1 ", fin=False)
        ws.send_frame(0x9, b"p")
        ws.send_frame(0x0, b"frag-2 ", fin=False)
        ws.send_frame(0x0, b"frag-3", fin=True)
        assert ws.recv_frame() == (True, 0xA, b"p")
        assert ws.recv_frame() == (True, 0x1, b"frag-1 frag-2 frag-3")
        # empty binary message
        ws.send_frame(0x2, b"")
        assert ws.recv_frame() == (True, 0x2, b"")
        # close handshake: the server echoes the code and closes the connection
        ws.send_frame(0x8, struct.pack("!H", 1000) + b"bye")
        fin, op, data = ws.recv_frame()
        assert (fin, op) == (True, 0x8)
        assert struct.unpack("!H", data[:2])[0] == 1000
        assert ws.at_eof()
    finally:
        ws.close()


def test_websocket_16_mib_fragmented(site):
    ws = WsClient(site.port)
    try:
        blob = os.urandom(16 * MiB)
        quarter = len(blob) // 4
        for i in range(4):
            ws.send_frame(0x2 if i == 0 else 0x0, blob[i * quarter:(i + 1) * quarter], fin=(i == 3))
        fin, op, data = ws.recv_frame()
        assert (fin, op, len(data)) == (True, 0x2, len(blob))
        assert data == blob
        ws.send_frame(0x8, struct.pack("!H", 1000))
        assert ws.recv_frame()[1] == 0x8
    finally:
        ws.close()


@pytest.mark.parametrize(
    "frames,code",
    [
        ([(0x1, b"unmasked", True, False)], 1002),  # client frames must be masked
        ([(0x0, b"orphan", True, True)], 1002),  # continuation without a message
        ([(0x3, b"", True, True)], 1002),  # reserved opcode
        ([(0x9, b"x", False, True)], 1002),  # fragmented control frame
        ([(0x1, b"\xff\xfe", True, True)], 1007),  # invalid UTF-8 text
        ([(0x1, b"a", False, True), (0x2, b"b", True, True)], 1002),  # new message mid-fragments
    ],
)
def test_websocket_protocol_errors_close_the_connection(site, frames, code):
    ws = WsClient(site.port)
    try:
        for opcode, payload, fin, masked in frames:
            ws.send_frame(opcode, payload, fin=fin, masked=masked)
        fin, op, data = ws.recv_frame()
        assert op == 0x8
        assert struct.unpack("!H", data[:2])[0] == code
        assert ws.at_eof()
    finally:
        ws.close()
    assert requests.get(site.url("/healthz"), timeout=10).status_code == 200


@pytest.mark.parametrize(
    "extra,path",
    [
        ("Upgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n", "/ws"),
        ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n", "/ws"),  # no key
        ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: short\r\n"
         "Sec-WebSocket-Version: 13\r\n", "/ws"),
        ("Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
         "Sec-WebSocket-Version: 8\r\n", "/ws"),
    ],
)
def test_websocket_bad_handshake_gets_400(site, extra, path):
    status, headers, body = raw_exchange(site.port, f"GET {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode())
    assert status == 400
    assert headers["x-replica"] == REPLICA


def test_websocket_upgrade_elsewhere_is_refused(site):
    status, _, _ = raw_exchange(
        site.port,
        b"GET /not-ws HTTP/1.1\r\nHost: t\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    assert status == 404


# ------------------------------------------------------------------------------------------------
# lifecycle: /crash, docker stop (each in its own container)


def test_crash_exits_with_code_1(docker_client):
    with replica(docker_client, name="site-crash") as r:
        resp = requests.get(r.url("/crash"), timeout=10)
        assert resp.status_code == 200
        assert resp.text == "crashing\n"
        assert resp.headers["X-Replica"] == "site-crash"
        result = r.container.wait(timeout=30)
        assert result["StatusCode"] == 1
        assert "exiting with code 1" in r.logs()


def test_docker_stop_idle_is_fast(docker_client):
    with replica(docker_client, name="site-stop") as r:
        # an idle pooled keep-alive connection, as the proxy holds them
        session = requests.Session()
        assert session.get(r.url("/healthz"), timeout=10).status_code == 200
        t0 = time.monotonic()
        r.container.stop(timeout=10)
        elapsed = time.monotonic() - t0
        session.close()
        assert r.container.wait(timeout=10)["StatusCode"] == 0
        logs = r.logs()
        assert "exiting on SIGTERM" in logs and "all connections closed" in logs
        # the failure mode is Docker's 10 s kill wait
        assert elapsed < 3, f"docker stop took {elapsed:.2f}s"


def _stop_in_background(container):
    box = {}

    def run():
        t0 = time.monotonic()
        try:
            container.stop(timeout=10)
        finally:
            box["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, box


def test_docker_stop_lets_in_flight_requests_finish(docker_client):
    with replica(docker_client, name="site-drain") as r:
        ws = WsClient(r.port)
        s = connect(r.port)
        try:
            s.sendall(b"GET /stream?n=4&ms=250 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, rest = read_head(s)
            assert status == 200
            # the first chunk is here, so the request is in flight: now stop the container
            t, box = _stop_in_background(r.container)
            chunks, rest = read_chunks_timed(s, rest)
            assert [d for _, d in chunks] == [f"chunk {i}\n".encode() for i in range(4)] + [b""]
            assert recv_until_eof(s) == rest == b""  # then the idle connection is closed
            # the WebSocket is told the server is going away
            fin, op, data = ws.recv_frame()
            assert op == 0x8 and struct.unpack("!H", data[:2])[0] == 1001
            t.join(15)
            assert box["elapsed"] < 5, box
        finally:
            s.close()
            ws.close()
        assert r.container.wait(timeout=10)["StatusCode"] == 0
        assert "all connections closed" in r.logs()


def test_docker_stop_cuts_long_requests_after_2s(docker_client):
    with replica(docker_client, name="site-cut") as r:
        s = connect(r.port)
        try:
            s.sendall(b"GET /stream?n=100&ms=1000 HTTP/1.1\r\nHost: t\r\n\r\n")
            status, headers, rest = read_head(s)
            assert status == 200
            t, box = _stop_in_background(r.container)
            with pytest.raises(AssertionError, match="closed inside"):
                read_chunks_timed(s, rest)  # cut off: never sees the final chunk
            t.join(15)
            assert box["elapsed"] < 5, box
        finally:
            s.close()
        assert r.container.wait(timeout=10)["StatusCode"] == 0
        assert "cut off after 2 s" in r.logs()
