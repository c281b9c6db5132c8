"""The relay, end to end: what a replica receives from nmc, and what a client receives back.

Every check reads the request as the real replica saw it (the site's /echo and /whoami report
method, raw target and rawHeaders in order), so nothing here trusts nmc's own view of itself.
Where a client library would add or hide bytes (requests and http.client add headers, merge
repeats, decode bodies), the request is written byte for byte on a raw socket and the answer
parsed by RawClient below: status line, headers in order with their repeats, a body framed by
Content-Length, chunked encoding or the end of the connection, always under a deadline.

Several tests use the site's /headers route (`/headers?Name=value&Name=value2...` answers with
those headers, in that order, repeats as separate lines; `Content-Encoding=gzip` makes the body
a fixed gzip stream). Until the route exists they fail: the site answers 404.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import socket
import threading
import time

import pytest
import requests
import urllib3

from conftest import free_port_block

MiB = 1024 * 1024
ANSWER_TIMEOUT = 15.0                              # seconds for an ordinary answer to arrive whole
BIG_PATTERN = bytes(range(256)) * (MiB // 256)     # /big sends byte i = i & 0xff


# ------------------------------------------------------------------------------------------------
# a raw HTTP/1.1 client: exact bytes out, exact bytes in


class Answer:
    """One parsed answer: status line, headers in order (repeats kept), the decoded body."""

    def __init__(self, version: str, status: int, reason: str, headers: list[tuple[str, str]],
                 head: bytes):
        self.version = version
        self.status = status
        self.reason = reason
        self.headers = headers
        self.head = head                       # the raw bytes of the status line and headers
        self.body = b""
        self.times: list[tuple[float, int]] = []  # (monotonic time, body bytes received so far)

    def values(self, name: str) -> list[str]:
        """Every value of header `name` (any case), one per line, in order."""
        return [value for key, value in self.headers if key.lower() == name.lower()]

    def one(self, name: str) -> str:
        values = self.values(name)
        assert len(values) == 1, f"expected exactly one {name} line, got {values!r}\n{self!r}"
        return values[0]

    def tokens(self, name: str) -> list[str]:
        """The comma-separated elements of every line of `name`, lower-cased, in order."""
        return [t.strip().lower() for v in self.values(name) for t in v.split(",") if t.strip()]

    def json(self):
        return json.loads(self.body)

    def time_at(self, offset: int) -> float:
        """When the body's first `offset` bytes had all arrived."""
        for when, received in self.times:
            if received >= offset:
                return when
        raise AssertionError(f"body never reached {offset} bytes ({len(self.body)} received)")

    def __repr__(self):
        shown = self.body[:300]
        return f"<Answer {self.head.decode('latin-1')!r} body[:300]={shown!r}>"


class RawClient:
    """One TCP connection to 127.0.0.1:port; requests are sent exactly as given."""

    def __init__(self, port: int, connect_timeout: float = 5.0):
        self.port = port
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=connect_timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()

    def close(self):
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- sending

    def send(self, data: bytes, timeout: float = 60.0) -> None:
        self.sock.settimeout(timeout)
        self.sock.sendall(data)

    def request(self, method: str, target: str, headers=(("Host", "h"),), body: bytes = b"",
                version: str = "HTTP/1.1", timeout: float = ANSWER_TIMEOUT) -> Answer:
        """Send one request (nothing added: framing headers are the caller's) and read its answer."""
        self.send(build_request(method, target, headers, body, version))
        return self.read_answer(method, timeout)

    # --- receiving

    def _fill(self, deadline: float, what: str) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"timed out waiting for {what}; received so far: "
                                 f"{bytes(self.buf[:500])!r}")
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(1024 * 1024)
        except socket.timeout:
            raise AssertionError(f"timed out waiting for {what}; received so far: "
                                 f"{bytes(self.buf[:500])!r}") from None
        if not data:
            raise EOFError(f"connection closed while waiting for {what}; "
                           f"received so far: {bytes(self.buf[:500])!r}")
        self.buf += data

    def _line(self, deadline: float, what: str) -> bytes:
        while True:
            end = self.buf.find(b"\r\n")
            if end >= 0:
                line = bytes(self.buf[:end])
                del self.buf[:end + 2]
                return line
            if len(self.buf) > 64 * 1024:
                raise AssertionError(f"no line end in 64 KiB while reading {what}")
            self._fill(deadline, what)

    def _exactly(self, n: int, deadline: float, answer: Answer, base: int) -> bytes:
        """n bytes of body; `base` is how much body came before (for the arrival times)."""
        out = bytearray()
        while len(out) < n:
            if not self.buf:
                self._fill(deadline, f"{n - len(out)} more body bytes")
            take = min(n - len(out), len(self.buf))
            out += self.buf[:take]
            del self.buf[:take]
            answer.times.append((time.monotonic(), base + len(out)))
        return bytes(out)

    def read_head(self, timeout: float = ANSWER_TIMEOUT) -> Answer:
        """The status line and the headers of the next answer (interim or final)."""
        deadline = time.monotonic() + timeout
        status_line = self._line(deadline, "a status line")
        head = [status_line]
        parts = status_line.decode("latin-1").split(" ", 2)
        assert len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1].isdigit(), \
            f"not a status line: {status_line!r}"
        headers: list[tuple[str, str]] = []
        while True:
            line = self._line(deadline, "a header line")
            head.append(line)
            if not line:
                break
            assert line[:1] not in (b" ", b"\t"), f"obsolete line folding in an answer: {line!r}"
            name, colon, value = line.decode("latin-1").partition(":")
            assert colon and name and name == name.strip(), f"bad header line: {line!r}"
            headers.append((name, value.strip(" \t")))
        return Answer(parts[0], int(parts[1]), parts[2] if len(parts) > 2 else "", headers,
                      b"\r\n".join(head) + b"\r\n")

    def read_body(self, answer: Answer, method: str, timeout: float) -> Answer:
        deadline = time.monotonic() + timeout
        if method == "HEAD" or answer.status < 200 or answer.status in (204, 304):
            return answer  # never a body, whatever the headers say
        codings = answer.tokens("Transfer-Encoding")
        if codings:
            assert codings[-1] == "chunked", f"unframed transfer coding {codings}: {answer!r}"
            assert not answer.values("Content-Length"), \
                f"both Transfer-Encoding and Content-Length: {answer!r}"
            body = bytearray()
            while True:
                size_line = self._line(deadline, "a chunk size")
                size = int(size_line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self._line(deadline, "the trailer section"):
                        pass
                    break
                body += self._exactly(size, deadline, answer, len(body))
                assert self._line(deadline, "a chunk end") == b"", "chunk data longer than its size"
            answer.body = bytes(body)
        elif answer.values("Content-Length"):
            lengths = set(answer.values("Content-Length"))
            assert len(lengths) == 1, f"conflicting Content-Length values: {answer!r}"
            answer.body = self._exactly(int(lengths.pop()), deadline, answer, 0)
        else:  # delimited by the end of the connection
            body = bytearray()
            while True:
                try:
                    if not self.buf:
                        self._fill(deadline, "the end of a close-delimited body")
                except EOFError:
                    break
                body += self.buf
                self.buf.clear()
                answer.times.append((time.monotonic(), len(body)))
            answer.body = bytes(body)
        return answer

    def read_answer(self, method: str = "GET", timeout: float = ANSWER_TIMEOUT) -> Answer:
        """The next final answer, whole (interim 1xx answers before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            answer = self.read_head(max(0.01, deadline - time.monotonic()))
            if answer.status >= 200 or answer.status == 101:
                return self.read_body(answer, method, max(0.01, deadline - time.monotonic()))

    def pending(self, wait: float = 0.3) -> bytes:
        """Bytes the server sent beyond what was parsed, waiting up to `wait` for stragglers."""
        deadline = time.monotonic() + wait
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                break
            if not data:
                break
            self.buf += data
        return bytes(self.buf)

    def closed_by_peer(self, timeout: float = 5.0) -> bool:
        """True when the server closes the connection within `timeout` (and sends nothing more)."""
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            if not data:
                assert not self.buf, f"stray bytes before the close: {bytes(self.buf)!r}"
                return True
            self.buf += data


def build_request(method: str, target: str, headers=(("Host", "h"),), body: bytes = b"",
                  version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"] + [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def exchange(port: int, method: str, target: str, headers=(("Host", "h"),), body: bytes = b"",
             version: str = "HTTP/1.1", timeout: float = ANSWER_TIMEOUT) -> Answer:
    """One request on a connection of its own."""
    with RawClient(port) as client:
        return client.request(method, target, headers, body, version, timeout)


def seen_by_replica(answer: Answer) -> tuple[dict, list[tuple[str, str]]]:
    """The replica's /echo or /whoami report and its rawHeaders as (name, value) pairs in order."""
    assert answer.status == 200, f"expected the replica's 200: {answer!r}"
    assert answer.values("X-Replica"), f"the answer did not come from a replica: {answer!r}"
    report = answer.json()
    raw = report["rawHeaders"]
    return report, list(zip(raw[0::2], raw[1::2]))


def values_of(pairs, name: str) -> list[str]:
    return [value for key, value in pairs if key.lower() == name.lower()]


def elements(values: list[str]) -> list[str]:
    """Comma-separated list elements across lines: two lines or one joined line look alike."""
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def replica_port(answer: Answer) -> int:
    """The host port of the replica that answered (replicas are named <cluster>-<port>)."""
    return int(answer.one("X-Replica").rsplit("-", 1)[1])


def start_nmc(run_nmc, cluster_name, *options: str):
    """nmc_server.py with two replicas and `options`; (process, proxy port, replica ports)."""
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "--replicas", "2", *options)
    process.wait_serving()
    return process, base + 2, [base, base + 1]


# ------------------------------------------------------------------------------------------------
# 1. the request line


TARGETS = [
    "/echo/a%2Fb;c=d?x=1&x=2&y=a+b&z=%E2%82%AC",
    "/echo//double//slash",
    "/echo?q=%20&q=+",
    "/echo?x=1&x=2&y=a+b&z=%E2%82%AC",
]
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "PURGE"]


def test_method_path_and_query_reach_the_replica_byte_for_byte(cluster):
    process, url, ports = cluster
    problems = []
    for method in METHODS:
        for target in TARGETS:
            answer = exchange(port_of(url), method, target)
            # /echo reports method and url; other paths get the site's 404, which reports the url
            if answer.status not in (200, 404) or not answer.values("X-Replica"):
                problems.append(f"{method} {target}: not the replica's answer: {answer!r}")
                continue
            report = answer.json()
            if report.get("url") != target:
                problems.append(f"{method} {target}: the replica saw url {report.get('url')!r}")
            if "method" in report and report["method"] != method:
                problems.append(f"{method} {target}: the replica saw method {report['method']!r}")
            if target.startswith("/echo?") and answer.status != 200:
                problems.append(f"{method} {target}: status {answer.status}")
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------------
# 2. request headers: repeats, order, Host


def test_repeated_request_headers_keep_their_order_and_host_arrives_as_sent(cluster):
    process, url, ports = cluster
    for _ in range(2):  # both replicas
        answer = exchange(port_of(url), "GET", "/echo", [
            ("Host", "shop.example:8443"), ("X-Many", "1"), ("X-Other", "a"), ("X-Many", "2")])
        report, pairs = seen_by_replica(answer)
        # two lines, or one line joined with ", " (RFC 9110 5.3): both values, in order
        assert elements(values_of(pairs, "X-Many")) == ["1", "2"], pairs
        assert values_of(pairs, "X-Other") == ["a"], pairs
        assert values_of(pairs, "Host") == ["shop.example:8443"], pairs
        assert report["headers"]["host"] == "shop.example:8443"


# ------------------------------------------------------------------------------------------------
# 3. hop-by-hop request headers


def test_hop_by_hop_request_headers_do_not_reach_the_replica(cluster):
    process, url, ports = cluster
    for _ in range(2):
        answer = exchange(port_of(url), "GET", "/echo", [
            ("Host", "h"), ("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"),
            ("Keep-Alive", "timeout=5"), ("TE", "trailers"), ("Proxy-Connection", "keep-alive"),
            ("Upgrade", "h2c"), ("X-Kept", "yes")])
        report, pairs = seen_by_replica(answer)
        names = [name.lower() for name, _ in pairs]
        for gone in ("keep-alive", "x-secret", "te", "proxy-connection", "upgrade"):
            assert gone not in names, f"{gone} reached the replica: {pairs}"
        # only the relay's own connection management, never the client's tokens
        connection = [t.lower() for t in elements(values_of(pairs, "Connection"))]
        assert set(connection) <= {"keep-alive", "close"}, pairs
        assert values_of(pairs, "X-Kept") == ["yes"], pairs  # an end-to-end header does pass


# ------------------------------------------------------------------------------------------------
# 4. answer headers


def test_the_sites_own_answer_headers_arrive_exactly_once(cluster, cluster_name):
    process, url, ports = cluster
    for _ in range(2):
        answer = exchange(port_of(url), "GET", "/echo")
        seen_by_replica(answer)
        assert answer.one("X-Replica") in {f"{cluster_name}-{port}" for port in ports}
        assert answer.one("Content-Type") == "application/json; charset=utf-8"


def test_repeated_answer_headers_arrive_as_separate_lines_in_order(cluster):
    process, url, ports = cluster
    for _ in range(2):
        answer = exchange(port_of(url), "GET",
                          "/headers?Set-Cookie=a%3D1&Set-Cookie=b%3D2&Vary=Accept&Vary=Origin")
        assert answer.status == 200, answer
        # Set-Cookie cannot be joined (RFC 9110 5.3): two lines, in order
        assert answer.values("Set-Cookie") == ["a=1", "b=2"], answer
        assert elements(answer.values("Vary")) == ["Accept", "Origin"], answer


# ------------------------------------------------------------------------------------------------
# 5. hop-by-hop answer headers


def test_hop_by_hop_answer_headers_do_not_reach_the_client(cluster):
    process, url, ports = cluster
    for _ in range(2):
        with RawClient(port_of(url)) as client:
            answer = client.request("GET", "/headers?Connection=X-Foo&X-Foo=1&Keep-Alive=timeout%3D5")
            assert answer.status == 200, answer
            assert answer.values("X-Replica"), answer
            assert not answer.values("X-Foo"), answer
            assert not answer.values("Keep-Alive"), answer
            assert "x-foo" not in answer.tokens("Connection"), answer
            # and the client connection still works
            assert client.request("GET", "/healthz").status == 200


# ------------------------------------------------------------------------------------------------
# 6. X-Forwarded-*


def test_x_forwarded_headers_are_set(cluster):
    process, url, ports = cluster
    answer = exchange(port_of(url), "GET", "/echo", [("Host", "shop.example:8443")])
    report, pairs = seen_by_replica(answer)
    assert ", ".join(values_of(pairs, "X-Forwarded-For")) == "127.0.0.1", pairs
    assert values_of(pairs, "X-Forwarded-Proto") == ["http"], pairs
    assert values_of(pairs, "X-Forwarded-Host") == ["shop.example:8443"], pairs

    answer = exchange(port_of(url), "GET", "/echo", [
        ("Host", "shop.example:8443"), ("X-Forwarded-For", "203.0.113.7"),
        ("X-Forwarded-Host", "evil.example"), ("X-Forwarded-Proto", "https")])
    report, pairs = seen_by_replica(answer)
    assert ", ".join(values_of(pairs, "X-Forwarded-For")) == "203.0.113.7, 127.0.0.1", pairs
    assert values_of(pairs, "X-Forwarded-Proto") == ["http"], pairs          # replaced
    assert values_of(pairs, "X-Forwarded-Host") == ["shop.example:8443"], pairs  # replaced


# ------------------------------------------------------------------------------------------------
# 7. X-Request-ID, X-Served-By


def test_a_request_id_is_kept_or_generated_and_returned(cluster):
    process, url, ports = cluster
    answer = exchange(port_of(url), "GET", "/echo", [("Host", "h"), ("X-Request-ID", "abc-123")])
    report, pairs = seen_by_replica(answer)
    assert values_of(pairs, "X-Request-ID") == ["abc-123"], pairs
    assert answer.one("X-Request-ID") == "abc-123"

    generated = []
    for _ in range(2):
        answer = exchange(port_of(url), "GET", "/echo")
        report, pairs = seen_by_replica(answer)
        sent = values_of(pairs, "X-Request-ID")
        assert len(sent) == 1 and len(sent[0]) >= 16, pairs
        assert answer.one("X-Request-ID") == sent[0]
        generated.append(sent[0])
    assert generated[0] != generated[1], "the same request id was generated twice"


def test_the_answer_names_the_replica_that_served_it(cluster, cluster_name):
    process, url, ports = cluster
    served = set()
    for _ in range(4):
        answer = exchange(port_of(url), "GET", "/whoami")
        report, pairs = seen_by_replica(answer)
        assert answer.one("X-Served-By") == report["hostname"]
        served.add(report["hostname"])
    assert served == {f"{cluster_name}-{port}" for port in ports}


def test_no_served_by_leaves_the_replica_unnamed(cluster_name, run_nmc):
    process, port, replica_ports = start_nmc(run_nmc, cluster_name, "--no-served-by")
    for _ in range(4):
        answer = exchange(port, "GET", "/whoami")
        seen_by_replica(answer)
        assert not answer.values("X-Served-By"), answer


# ------------------------------------------------------------------------------------------------
# 8. nothing added


RELAY_ADDS = ["host", "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-request-id"]


def assert_only_relay_headers(pairs, also_allowed=()):
    names = sorted(name.lower() for name, _ in pairs)
    connection = [value for name, value in pairs if name.lower() == "connection"]
    assert len(connection) <= 1 and all(v.lower() == "keep-alive" for v in connection), pairs
    rest = [n for n in names if n != "connection" and n not in also_allowed]
    assert rest == sorted(RELAY_ADDS), f"the replica saw header names {names}: {pairs}"


def test_nothing_is_added_that_the_client_did_not_send(cluster):
    process, url, ports = cluster
    for _ in range(2):
        with RawClient(port_of(url)) as client:
            client.send(b"GET /echo HTTP/1.1\r\nHost: h\r\n\r\n")
            report, pairs = seen_by_replica(client.read_answer())
            assert_only_relay_headers(pairs)
            assert values_of(pairs, "Host") == ["h"]

            answer = client.request("DELETE", "/echo")
            report, pairs = seen_by_replica(answer)
            assert report["method"] == "DELETE" and report["bodyLength"] == 0
            assert_only_relay_headers(pairs)  # neither Transfer-Encoding nor Content-Length

            answer = client.request("POST", "/echo")
            report, pairs = seen_by_replica(answer)
            assert report["method"] == "POST" and report["bodyLength"] == 0
            assert not values_of(pairs, "Transfer-Encoding"), pairs
            assert values_of(pairs, "Content-Length") in ([], ["0"]), pairs
            assert_only_relay_headers(pairs, also_allowed=("content-length",))


# ------------------------------------------------------------------------------------------------
# 9. request bodies


def test_a_body_with_content_length_arrives_intact(cluster):
    process, url, ports = cluster
    body = os.urandom(MiB)
    answer = exchange(port_of(url), "POST", "/echo", [
        ("Host", "h"), ("Content-Type", "application/octet-stream"),
        ("Content-Length", str(len(body)))], body)
    report, pairs = seen_by_replica(answer)
    assert report["bodyLength"] == len(body)
    assert report["bodySha256"] == hashlib.sha256(body).hexdigest()
    assert values_of(pairs, "Content-Length") == [str(len(body))], pairs


def test_a_chunked_upload_arrives_intact(cluster):
    process, url, ports = cluster
    chunks = [os.urandom(1000), os.urandom(70_000), os.urandom(300_000)]
    whole = b"".join(chunks)
    with RawClient(port_of(url)) as client:
        client.send(build_request("POST", "/echo", [
            ("Host", "h"), ("Content-Type", "application/octet-stream"),
            ("Transfer-Encoding", "chunked")]))
        for chunk in chunks:
            client.send(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            time.sleep(0.1)
        client.send(b"0\r\n\r\n")
        report, pairs = seen_by_replica(client.read_answer())
    total = len(whole)
    assert report["bodyLength"] == total, f"{report['bodyLength']} of {total} bytes arrived"
    assert report["bodySha256"] == hashlib.sha256(whole).hexdigest()
    framing = (values_of(pairs, "Transfer-Encoding"), values_of(pairs, "Content-Length"))
    assert framing in ((["chunked"], []), ([], [str(total)])), pairs


def _blocks(count: int, digest):
    base = os.urandom(MiB)
    for i in range(count):
        block = i.to_bytes(8, "big") + base[8:]
        digest.update(block)
        yield block


def test_a_200_mib_chunked_upload_from_a_generator_arrives_intact(cluster):
    process, url, ports = cluster
    digest = hashlib.sha256()
    response = requests.post(url + "/echo", data=_blocks(200, digest), timeout=(5, 120),
                             headers={"Content-Type": "application/octet-stream"})
    assert response.status_code == 200, response.text[:500]
    report = response.json()
    assert report["bodyLength"] == 200 * MiB, f"{report['bodyLength']} of {200 * MiB} bytes arrived"
    assert report["bodySha256"] == digest.hexdigest()
    assert "body" not in report  # only the hash travels back


class RssWatch:
    """Samples a process's resident memory in the background: its value at start and its peak."""

    def __init__(self, pid: int):
        self.pid = pid
        self.start = self.peak = self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def sample(self) -> int:
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise AssertionError("no VmRSS")

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.sample())

    def growth(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak - self.start


FLAT = 48 * MiB  # a relay that held a 1 GiB body would grow by ~1 GiB


def test_a_1_gib_upload_with_content_length_arrives_intact_with_flat_memory(cluster):
    process, url, ports = cluster
    digest = hashlib.sha256()
    watch = RssWatch(process.proc.pid)
    with RawClient(port_of(url)) as client:
        client.send(build_request("POST", "/echo", [
            ("Host", "h"), ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(1024 * MiB))]))
        for block in _blocks(1024, digest):
            client.send(block, timeout=60)
        report, pairs = seen_by_replica(client.read_answer(timeout=120))
    grew = watch.growth()
    assert report["bodyLength"] == 1024 * MiB
    assert report["bodySha256"] == digest.hexdigest()
    assert values_of(pairs, "Content-Length") == [str(1024 * MiB)], pairs
    assert grew < FLAT, f"nmc's RSS grew by {grew / MiB:.0f} MiB relaying a 1 GiB upload"


def test_a_1_gib_download_streams_with_flat_memory(cluster):
    process, url, ports = cluster
    watch = RssWatch(process.proc.pid)
    received = 0
    with requests.get(url + "/big?mb=1024", stream=True, timeout=(5, 60)) as response:
        assert response.headers["Content-Length"] == str(1024 * MiB)
        for block in response.raw.stream(1024 * 1024, decode_content=False):
            received += len(block)
    grew = watch.growth()
    assert received == 1024 * MiB
    assert grew < FLAT, f"nmc's RSS grew by {grew / MiB:.0f} MiB relaying a 1 GiB download"


# ------------------------------------------------------------------------------------------------
# 10. downloads


def test_a_64_mib_download_arrives_whole(cluster):
    process, url, ports = cluster
    with RawClient(port_of(url)) as client:
        answer = client.request("GET", "/big?mb=64", timeout=120)
        assert answer.status == 200, answer
        assert answer.one("Content-Length") == str(64 * MiB)
        assert len(answer.body) == 64 * MiB
        assert answer.body == BIG_PATTERN * 64
        # not one byte more: the next answer on the connection parses
        assert client.request("GET", "/healthz").status == 200


def test_a_streamed_answer_is_relayed_as_it_comes(cluster):
    process, url, ports = cluster
    with RawClient(port_of(url)) as client:
        answer = client.request("GET", "/stream?n=5&ms=400", timeout=30)
    assert answer.status == 200, answer
    expected = b"".join(b"chunk %d\n" % i for i in range(5))
    assert answer.body == expected
    first = answer.time_at(len(b"chunk 0\n"))
    last = answer.time_at(len(expected))
    # the site writes one line every 400 ms: 1.6 s from the first to the last
    assert last - first >= 1.0, f"the lines arrived {last - first:.3f}s apart: buffered"


def test_bodiless_answers_leave_no_stray_bytes_on_the_connection(cluster):
    process, url, ports = cluster
    with RawClient(port_of(url)) as client:
        for method, target, status in (("HEAD", "/", 200), ("GET", "/status/204", 204),
                                       ("GET", "/status/304", 304), ("HEAD", "/", 200),
                                       ("GET", "/status/204", 204), ("GET", "/status/304", 304)):
            answer = client.request(method, target)
            assert answer.status == status, (method, target, answer)
            assert answer.values("X-Replica"), answer
            if status == 204:  # RFC 9112 6.1: no Transfer-Encoding in a 204
                assert not answer.values("Transfer-Encoding"), answer
            stray = client.pending(0.3)
            assert stray == b"", f"{method} {target}: bytes after a bodiless answer: {stray[:200]!r}"
        answer = client.request("GET", "/whoami")
        seen_by_replica(answer)  # parses cleanly right after


# ------------------------------------------------------------------------------------------------
# 11. compression


def test_accept_encoding_reaches_the_replica_as_sent(cluster):
    process, url, ports = cluster
    answer = exchange(port_of(url), "GET", "/echo", [("Host", "h"), ("Accept-Encoding", "gzip")])
    report, pairs = seen_by_replica(answer)
    assert values_of(pairs, "Accept-Encoding") == ["gzip"], pairs
    assert not answer.values("Content-Encoding")


def test_a_compressed_answer_passes_untouched(cluster):
    process, url, ports = cluster
    request = [("Host", "h"), ("Accept-Encoding", "gzip")]
    for _ in range(2):
        relayed = exchange(port_of(url), "GET", "/headers?Content-Encoding=gzip", request)
        assert relayed.status == 200, relayed
        assert relayed.one("Content-Encoding") == "gzip"
        assert relayed.body[:2] == b"\x1f\x8b", f"not a gzip stream: {relayed.body[:50]!r}"
        gzip.decompress(relayed.body)  # still compressed, and whole
        direct = exchange(replica_port(relayed), "GET", "/headers?Content-Encoding=gzip", request)
        assert direct.status == 200, direct
        assert relayed.body == direct.body  # byte for byte what the replica sent
        if relayed.values("Content-Length"):
            assert relayed.one("Content-Length") == str(len(direct.body))


# ------------------------------------------------------------------------------------------------
# 12. Expect: 100-continue


def test_expect_100_continue_gets_continue_before_the_body_is_sent(cluster):
    process, url, ports = cluster
    body = os.urandom(256 * 1024)
    with RawClient(port_of(url)) as client:
        client.send(build_request("POST", "/echo", [
            ("Host", "h"), ("Content-Type", "application/octet-stream"),
            ("Content-Length", str(len(body))), ("Expect", "100-continue")]))
        interim = client.read_head(timeout=5)
        assert (interim.version, interim.status) == ("HTTP/1.1", 100), interim
        client.send(body)
        report, pairs = seen_by_replica(client.read_answer())
    assert report["bodyLength"] == len(body)
    assert report["bodySha256"] == hashlib.sha256(body).hexdigest()


# ------------------------------------------------------------------------------------------------
# 13. no redirects followed, no cookies kept


def test_a_redirect_reaches_the_client_unfollowed(cluster):
    process, url, ports = cluster
    for _ in range(2):  # a real redirect, with a Location a following relay would fetch
        answer = exchange(port_of(url), "GET", "/headers?_status=302&Location=/echo")
        assert answer.status == 302, answer
        assert answer.values("Location") == ["/echo"], answer
        assert answer.values("X-Replica"), answer
        assert answer.body == b"headers as asked\n"


def test_no_cookie_is_kept_between_clients(cluster):
    process, url, ports = cluster
    for _ in range(2):  # both replicas hand out a cookie
        answer = exchange(port_of(url), "GET",
                          "/headers?Set-Cookie=session%3Dsecret%3B%20Path%3D%2F")
        assert answer.status == 200, answer
        assert answer.values("Set-Cookie") == ["session=secret; Path=/"], answer
    for _ in range(4):  # other clients, on other connections, send no cookie
        answer = exchange(port_of(url), "GET", "/echo")
        report, pairs = seen_by_replica(answer)
        assert not values_of(pairs, "Cookie"), pairs


# ------------------------------------------------------------------------------------------------
# 14. HTTP/1.0 and Connection: close


def test_an_http_1_0_request_is_answered_then_the_connection_closes(cluster):
    process, url, ports = cluster
    with RawClient(port_of(url)) as client:
        client.send(b"GET /whoami HTTP/1.0\r\n\r\n")
        answer = client.read_answer()
        assert answer.status == 200, answer
        assert answer.json()["hostname"]
        assert not answer.values("Transfer-Encoding"), answer  # HTTP/1.0 knows no chunks
        assert client.closed_by_peer(5), "the HTTP/1.0 connection stayed open"


def test_connection_close_is_answered_with_close_and_the_connection_closes(cluster):
    process, url, ports = cluster
    with RawClient(port_of(url)) as client:
        answer = client.request("GET", "/whoami", [("Host", "h"), ("Connection", "close")])
        assert answer.status == 200, answer
        assert answer.json()["hostname"]
        assert "close" in answer.tokens("Connection"), answer
        assert client.closed_by_peer(5), "the connection stayed open after Connection: close"


# ------------------------------------------------------------------------------------------------
# 15. backend connections are reused


def _hex_port(address: str) -> int:
    return int(address.rsplit(":", 1)[1], 16)


def backend_connections(replica_ports) -> dict[int, int]:
    """{client-side port: replica port} for every TCP connection (any state, TIME_WAIT included)
    to the replicas' published ports on this host. Both ends are read: the relay's (remote =
    replica port) and, with Docker's userland proxy, the accepting one (local = replica port), so
    a connection is counted whichever side closed it first."""
    ports = set(replica_ports)
    found = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(path) as table:
                lines = table.readlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote = _hex_port(fields[1]), _hex_port(fields[2])
            if remote in ports and local not in ports:
                found[local] = remote
            elif local in ports and remote not in ports and remote != 0:
                found[remote] = local
    return found


class ConnectionWatch:
    """Samples backend_connections() every 10 ms in a thread; `new` = those not there before."""

    def __init__(self, replica_ports):
        self.ports = replica_ports
        self.baseline = backend_connections(replica_ports)
        self.seen: dict[int, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.seen.update(backend_connections(self.ports))
            self._stop.wait(0.01)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)
        self.seen.update(backend_connections(self.ports))

    @property
    def new(self) -> dict[int, int]:
        return {eph: port for eph, port in self.seen.items() if eph not in self.baseline}

    def new_per_replica(self) -> dict[int, int]:
        return {port: sum(1 for p in self.new.values() if p == port) for port in self.ports}


def test_sequential_requests_reuse_backend_connections(cluster):
    process, url, ports = cluster
    with ConnectionWatch(ports) as watch, RawClient(port_of(url)) as client:
        for i in range(200):
            answer = client.request("GET", f"/whoami?i={i}")
            assert answer.status == 200, (i, answer)
    # one pooled connection per replica (a few more would do), never one per request
    assert len(watch.new) <= 6, f"{len(watch.new)} backend connections for 200 requests: {watch.new}"


def test_concurrent_clients_reuse_backend_connections(cluster):
    process, url, ports = cluster
    failures = []

    def client_run():
        try:
            with RawClient(port_of(url)) as client:
                for i in range(20):
                    answer = client.request("GET", f"/whoami?i={i}", timeout=30)
                    if answer.status != 200:
                        failures.append(answer)
        except Exception as e:  # noqa: BLE001 - reported below
            failures.append(e)

    with ConnectionWatch(ports) as watch:
        threads = [threading.Thread(target=client_run) for _ in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads), "clients still running after 60 s"
    assert not failures, failures[:3]
    # At most 32 requests are in flight at once, so no replica ever needs more than 32 connections
    # (+ a small margin). Each replica has a pool of its own and round-robin does not keep their
    # peaks at 16 each, so the total is 40-55 with a correct relay; without reuse it would be ~640.
    per_replica = watch.new_per_replica()
    assert all(count <= 32 + 4 for count in per_replica.values()), \
        f"backend connections per replica port for 640 requests: {per_replica}"


# ------------------------------------------------------------------------------------------------
# 16. failures are HTTP answers


def kill_every_replica(docker_client, cluster_name, ports) -> None:
    """docker kill them all at once (in parallel), so no replica is left to answer."""
    victims = [docker_client.containers.get(f"{cluster_name}-{port}") for port in ports]
    killers = [threading.Thread(target=victim.kill) for victim in victims]
    for killer in killers:
        killer.start()
    for killer in killers:
        killer.join(30)


def test_with_every_replica_gone_the_answer_is_503_with_retry_after_and_the_request_id(
        cluster_name, run_nmc, docker_client):
    # --queue-timeout 0: no wait for a replacement (about half a second away), a 503 at once
    process, proxy_port, ports = start_nmc(run_nmc, cluster_name, "--queue-timeout", "0")
    url = f"http://127.0.0.1:{proxy_port}"
    kill_every_replica(docker_client, cluster_name, ports)

    answer = exchange(port_of(url), "GET", "/whoami", [("Host", "h"), ("X-Request-ID", "gone-42")])
    assert answer.status == 503, answer
    assert answer.one("Retry-After").strip().isdigit(), answer
    assert len(answer.body) <= 512, answer
    assert b"gone-42" in answer.body, answer
    assert answer.one("X-Request-ID") == "gone-42"

    answer = exchange(port_of(url), "GET", "/whoami")
    assert answer.status == 503, answer
    assert answer.one("Retry-After").strip().isdigit(), answer
    request_id = answer.one("X-Request-ID")
    assert request_id.encode() in answer.body, answer
    assert b"Traceback" not in answer.body
    assert "Traceback" not in process.log


def test_a_replica_slower_than_the_backend_timeout_gets_a_504(cluster_name, run_nmc):
    process, port, replica_ports = start_nmc(run_nmc, cluster_name, "--backend-timeout", "1")
    sent = time.monotonic()
    answer = exchange(port, "GET", "/slow?ms=5000", timeout=10)
    took = time.monotonic() - sent
    assert answer.status == 504, answer
    assert 0.9 <= took <= 2.5, f"the 504 came after {took:.2f}s"
    assert b"Traceback" not in answer.body
    assert "Traceback" not in process.log


def test_after_a_replica_crashes_the_next_requests_still_succeed(cluster):
    process, url, ports = cluster
    answer = exchange(port_of(url), "GET", "/crash")
    assert answer.status == 200, answer
    assert answer.body == b"crashing\n"
    statuses = []
    for _ in range(20):
        with RawClient(port_of(url)) as client:
            statuses.append(client.request("GET", "/whoami").status)
    assert statuses == [200] * 20
    assert "Traceback" not in process.log


def test_a_replica_dying_mid_answer_cuts_the_client_connection_not_a_hang(cluster, docker_client,
                                                                         cluster_name):
    process, url, ports = cluster
    received = 0
    with requests.get(url + "/big?mb=4096", stream=True, timeout=(5, 10)) as response:
        served_by = response.headers["X-Served-By"]
        assert response.headers["Content-Length"] == str(4096 * MiB)
        started = time.monotonic()
        with pytest.raises(urllib3.exceptions.HTTPError):  # IncompleteRead: cut short
            for block in response.raw.stream(1024 * 1024, decode_content=False):
                received += len(block)
                if received >= 64 * MiB and started:
                    docker_client.containers.get(served_by).kill()
                    started = 0.0
                # the relay must not read much further than what the replica could still send
                assert received < 4096 * MiB
    assert 64 * MiB <= received < 4096 * MiB  # an answer cut short, and the client could tell
    assert "Traceback" not in process.log
    # the other replica serves at once; the dead one is replaced
    assert requests.get(url + "/healthz", timeout=5).status_code == 200


def test_a_request_waits_for_a_replacement_when_every_replica_is_gone(cluster, cluster_name,
                                                                     docker_client):
    process, url, ports = cluster
    kill_every_replica(docker_client, cluster_name, ports)
    # none ready: the request is held (--queue-timeout, 2 s) until a replacement is
    for method in ("GET", "POST"):
        answer = exchange(port_of(url), method, "/echo", body=b"queued" if method == "POST" else b"")
        assert answer.status == 200, answer
    assert "Traceback" not in process.log
