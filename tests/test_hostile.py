"""Hostile clients, end to end: raw bytes on a raw socket to ./nmc_server.py, real replicas.

The promise under test: a request nmc cannot relay safely (malformed, ambiguous framing, too big,
CONNECT) is answered by nmc itself with a 4xx on an HTTP/1.1 status line, a short body and
`Connection: close`, and then the connection closes; it never reaches a replica. Clients that
stall (slowloris, idle keep-alive) are cut after --header-timeout / --idle-timeout, and past
--max-connections a new client gets a fast 503 instead of a hang. After each case a normal
`GET /healthz` through nmc still answers 200, and nmc's log holds no traceback.

"Never reached a replica" is read from nmc's log: the site logs nothing per request, but nmc logs
`Forwarding request to port: N` for every request it relays. After a hostile case the test sends
one normal request and waits for its Forwarding line; stderr is ordered, so any Forwarding line
of the hostile request would come before it.

The request-level cases share one nmc process (module fixture `shared`, restarted if a case
killed it); the cases that need options of their own (timeouts, the connection cap) start their
own with `run_nmc`. Every wait has a deadline.
"""

from __future__ import annotations

import json
import re
import select
import socket
import time
import uuid
from dataclasses import dataclass, field

import pytest
import requests

from conftest import NmcProcess, free_port_block, remove_cluster, wait_until

FORWARDING = "Forwarding request to port: "
ANSWER_TIMEOUT = 5       # seconds an answer to a hostile request may take
SHORT_BODY = 1024        # bytes: a rejection has a short body (not empty: it says why)


# ------------------------------------------------------------------------------------------------
# a raw HTTP/1.1 client


class NoAnswer(AssertionError):
    """The deadline passed, or the connection closed, before a whole answer arrived."""


@dataclass
class Answer:
    status_line: str
    version: str
    code: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""

    def header(self, name: str) -> str | None:
        values = [value for key, value in self.headers if key.lower() == name.lower()]
        return ", ".join(values) if values else None

    def says_close(self) -> bool:
        value = self.header("Connection") or ""
        return "close" in (token.strip().lower() for token in value.split(","))

    def __str__(self) -> str:
        return f"{self.status_line!r} {self.headers!r} body {self.body[:200]!r}"


class RawClient:
    """One TCP connection to nmc: bytes out, answers parsed by hand, every read bounded."""

    def __init__(self, port: int, timeout: float = 5):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buffer = b""
        self.eof = False
        self.reset = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> bool:
        """Read more into the buffer; False at EOF (or reset); NoAnswer past the deadline."""
        if self.eof:
            return False
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise NoAnswer(f"nothing more within the deadline; received so far: "
                           f"{self.buffer[:300]!r}")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(65536)
        except socket.timeout:
            raise NoAnswer(f"nothing more within the deadline; received so far: "
                           f"{self.buffer[:300]!r}") from None
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not chunk:
            self.eof = True
            return False
        self.buffer += chunk
        return True

    def read_answer(self, timeout: float = ANSWER_TIMEOUT) -> Answer:
        """The next whole answer (head + body by Content-Length, chunked, or up to EOF)."""
        deadline = time.monotonic() + timeout
        while b"\r\n\r\n" not in self.buffer:
            if not self._fill(deadline):
                raise NoAnswer(f"connection {'reset' if self.reset else 'closed'} without a whole "
                               f"answer; received: {self.buffer[:300]!r}")
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        match = re.fullmatch(r"(HTTP/\d\.\d) (\d{3})(?: .*)?", lines[0])
        assert match, f"not an HTTP status line: {lines[0]!r}"
        answer = Answer(lines[0], match.group(1), int(match.group(2)))
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            assert colon, f"answer header line without a colon: {line!r}"
            answer.headers.append((name.strip(), value.strip()))
        length = answer.header("Content-Length")
        if (answer.header("Transfer-Encoding") or "").lower() == "chunked":
            answer.body = self._read_chunked(deadline)
        elif length is not None:
            assert length.isdigit(), f"bad Content-Length in the answer: {length!r}"
            while len(self.buffer) < int(length):
                if not self._fill(deadline):
                    raise NoAnswer(f"closed after {len(self.buffer)} of {length} body bytes")
            answer.body, self.buffer = self.buffer[:int(length)], self.buffer[int(length):]
        else:  # no framing: the body runs to EOF
            while self._fill(deadline):
                pass
            answer.body, self.buffer = self.buffer, b""
        return answer

    def _read_chunked(self, deadline: float) -> bytes:
        body = b""
        while True:
            while b"\r\n" not in self.buffer:
                if not self._fill(deadline):
                    raise NoAnswer("closed inside a chunked answer")
            size_line, self.buffer = self.buffer.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(self.buffer) < size + 2:
                if not self._fill(deadline):
                    raise NoAnswer("closed inside a chunked answer")
            if size == 0:
                # no trailers expected: the last chunk is followed by an empty line
                self.buffer = self.buffer[2:]
                return body
            body += self.buffer[:size]
            self.buffer = self.buffer[size + 2:]

    def wait_eof(self, timeout: float) -> bool:
        """Read (into the buffer) until the server closes; False if still open after `timeout`."""
        deadline = time.monotonic() + timeout
        try:
            while self._fill(deadline):
                pass
        except NoAnswer:
            return False
        return True

    def closed_within(self, timeout: float) -> bool:
        """True when the server closes the connection within `timeout` and sent nothing more."""
        if not self.wait_eof(timeout):
            return False
        assert self.buffer == b"", f"bytes after the answer, then the close: {self.buffer[:300]!r}"
        return True


def request_answer(port: int, data: bytes, timeout: float = ANSWER_TIMEOUT) -> Answer:
    with RawClient(port) as client:
        client.send(data)
        return client.read_answer(timeout)


# ------------------------------------------------------------------------------------------------
# checks


def assert_rejected(client: RawClient, codes: set[int], timeout: float = ANSWER_TIMEOUT) -> Answer:
    """nmc's own rejection: HTTP/1.1 <code>, a short body, Connection: close, then EOF."""
    answer = client.read_answer(timeout)
    assert answer.code in codes, f"status {answer.code}, expected {sorted(codes)}: {answer}"
    assert answer.version == "HTTP/1.1", f"not an HTTP/1.1 status line: {answer}"
    assert answer.says_close(), f"no Connection: close in the rejection: {answer}"
    assert 0 < len(answer.body) <= SHORT_BODY, f"body of {len(answer.body)} bytes: {answer}"
    assert client.closed_within(timeout), f"still open {timeout}s after the rejection: {answer}"
    return answer


def forwarded(process: NmcProcess, start: int) -> list[str]:
    return [line for line in process.lines[start:] if FORWARDING in line]


def assert_serving(process: NmcProcess, url: str, start: int, relayed: int = 0) -> None:
    """A normal GET /healthz answers 200; since log line `start`, exactly `relayed` other
    requests were forwarded to a replica, and no traceback was logged."""
    assert process.proc.poll() is None, f"nmc exited ({process.proc.returncode}):\n{process.log}"
    response = requests.get(url + "/healthz", timeout=10)
    assert response.status_code == 200, f"GET /healthz after the case: {response.status_code}"
    # stderr is ordered: once /healthz's own line is in, every earlier Forwarding line is too
    wait_until(lambda: len(forwarded(process, start)) >= relayed + 1, 10,
               what="the Forwarding line of GET /healthz")
    lines = forwarded(process, start)
    assert len(lines) == relayed + 1, (
        f"{len(lines) - 1} request(s) forwarded to a replica, expected {relayed}: {lines}")
    new_log = "\n".join(process.lines[start:])
    assert "Traceback" not in new_log, f"a traceback in nmc's log:\n{new_log}"


def assert_healthy_at_end(process: NmcProcess) -> None:
    assert process.proc.poll() is None, f"nmc exited ({process.proc.returncode}):\n{process.log}"
    assert "Traceback" not in process.log, f"a traceback in nmc's log:\n{process.log}"


# ------------------------------------------------------------------------------------------------
# one nmc for the request-level cases


@dataclass
class Nmc:
    process: NmcProcess
    port: int
    url: str
    names: set[str]        # the replicas' container names = the hostnames /whoami reports


class Shared:
    """A two-replica nmc for the whole module, started again if a case killed it."""

    def __init__(self, docker_client):
        self.docker_client = docker_client
        self.started: list[tuple[str, NmcProcess]] = []
        self.current: Nmc | None = None

    def get(self) -> Nmc:
        if self.current is None or self.current.process.proc.poll() is not None:
            self.current = self._start()
        return self.current

    def _start(self) -> Nmc:
        name = "nmct-" + uuid.uuid4().hex[:10]
        base = free_port_block(3)
        process = NmcProcess(["--name", name, "--bind", "127.0.0.1", "--port", str(base + 2),
                              "--base-port", str(base), "--replicas", "2", "--check-interval", "1"])
        self.started.append((name, process))
        process.wait_serving()
        return Nmc(process, base + 2, f"http://127.0.0.1:{base + 2}",
                   {f"{name}-{base}", f"{name}-{base + 1}"})

    def close(self) -> None:
        for name, process in self.started:
            process.kill()
            remove_cluster(self.docker_client, name)


@pytest.fixture(scope="module")
def shared(docker_client):
    holder = Shared(docker_client)
    yield holder
    holder.close()


@pytest.fixture
def nmc(shared) -> Nmc:
    return shared.get()


def nmc_with(run_nmc, cluster_name: str, *extra: str) -> Nmc:
    """nmc with the `cluster` fixture's options plus `extra`, serving."""
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 2),
                      "--base-port", str(base), "--replicas", "2", "--check-interval", "1", *extra)
    process.wait_serving()
    return Nmc(process, base + 2, f"http://127.0.0.1:{base + 2}",
               {f"{cluster_name}-{base}", f"{cluster_name}-{base + 1}"})


def check_rejected(nmc: Nmc, data: bytes, codes: set[int]) -> None:
    """Send `data`, expect nmc's own rejection, then a normal request works, nothing relayed."""
    start = len(nmc.process.lines)
    with RawClient(nmc.port) as client:
        try:
            client.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # nmc may stop reading a request it has already refused; its answer is still due
        assert_rejected(client, codes)
    assert_serving(nmc.process, nmc.url, start, relayed=0)


# ------------------------------------------------------------------------------------------------
# 1. malformed request line: 400 (505 for an unsupported version), close, not relayed

MALFORMED_REQUEST_LINES = [
    ("garbage", b"GARBAGE\r\n\r\n", {400}),
    ("method-only", b"GET\r\n\r\n", {400}),
    ("http-9.9", b"GET / HTTP/9.9\r\n\r\n", {400, 505}),
    ("protocol-foo", b"GET / FOO/1.1\r\n\r\n", {400, 505}),
    ("nul-in-target", b"GET /a\x00b HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
    ("ctrl-a-in-target", b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
    ("escape-in-target", b"GET /a\x1b[2Jb HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
    ("del-in-target", b"GET /a\x7fb HTTP/1.1\r\nHost: x\r\n\r\n", {400}),
]


@pytest.mark.parametrize("data, codes", [case[1:] for case in MALFORMED_REQUEST_LINES],
                         ids=[case[0] for case in MALFORMED_REQUEST_LINES])
def test_malformed_request_line_is_rejected(nmc, data, codes):
    check_rejected(nmc, data, codes)


# ------------------------------------------------------------------------------------------------
# 2. request smuggling: ambiguous or unsupported framing is refused, never relayed

SMUGGLING = [
    ("content-length-and-chunked",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", {400}),
    ("chunked-and-content-length",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n"
     b"0\r\n\r\n", {400}),
    ("two-content-lengths",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
     {400}),
    ("transfer-encoding-gzip",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\nhello", {400, 501}),
    ("transfer-encoding-bogus",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: bogus\r\n\r\nhello", {400, 501}),
    ("content-length-abc",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\nhello", {400}),
    ("content-length-minus-1",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\nhello", {400}),
    ("content-length-1e3",
     b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1e3\r\n\r\nhello", {400}),
]


@pytest.mark.parametrize("data, codes", [case[1:] for case in SMUGGLING],
                         ids=[case[0] for case in SMUGGLING])
def test_ambiguous_framing_is_rejected(nmc, data, codes):
    check_rejected(nmc, data, codes)


# ------------------------------------------------------------------------------------------------
# 3. an invalid chunk size: 400, close, not relayed (chunk-size is 1*HEXDIG, nothing else)


@pytest.mark.parametrize("size", [b"zz", b"-5", b"0x5", b"+5"])
def test_invalid_chunk_size_is_rejected(nmc, size):
    check_rejected(nmc, b"POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                        + size + b"\r\nhello\r\n0\r\n\r\n", {400})


# ------------------------------------------------------------------------------------------------
# 4. broken header lines: 400, not relayed

BAD_HEADER_LINES = [
    ("no-colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n"),
    ("space-before-colon", b"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n"),
    ("tab-before-colon", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Test\t: y\r\n\r\n"),
    ("obs-fold-space", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Test: a\r\n b\r\n\r\n"),
    ("obs-fold-tab", b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Test: a\r\n\tb\r\n\r\n"),
]


@pytest.mark.parametrize("data", [case[1] for case in BAD_HEADER_LINES],
                         ids=[case[0] for case in BAD_HEADER_LINES])
def test_bad_header_line_is_rejected(nmc, data):
    check_rejected(nmc, data, {400})


# ------------------------------------------------------------------------------------------------
# 5. header section past 32 KiB, or more than 100 header lines: 431, not relayed


def headers_request(*lines: bytes) -> bytes:
    head = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
    return head + b"".join(line + b"\r\n" for line in lines) + b"\r\n"


TOO_MANY_HEADERS = [
    ("one-40-KiB-header", headers_request(b"X-Big: " + b"a" * (40 * 1024))),
    ("200-headers-of-200-bytes",
     headers_request(*(b"X-H%03d: " % i + b"b" * 192 for i in range(200)))),
    ("150-small-header-lines", headers_request(*(b"X-H%03d: v" % i for i in range(150)))),
]


@pytest.mark.parametrize("data", [case[1] for case in TOO_MANY_HEADERS],
                         ids=[case[0] for case in TOO_MANY_HEADERS])
def test_oversized_header_section_is_rejected(nmc, data):
    check_rejected(nmc, data, {431})


# ------------------------------------------------------------------------------------------------
# 6. request line past 8 KiB: 414, not relayed


def test_request_line_past_8_KiB_is_rejected(nmc):
    check_rejected(nmc, b"GET /" + b"a" * (9 * 1024) + b" HTTP/1.1\r\nHost: x\r\n\r\n", {414})


# ------------------------------------------------------------------------------------------------
# 7. CONNECT: nmc is not a forward proxy


def test_connect_is_refused(nmc):
    check_rejected(nmc, b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", {405})


# ------------------------------------------------------------------------------------------------
# 8. absolute-form target: relayed to one of our replicas, never elsewhere


def test_absolute_form_goes_to_our_replica(nmc):
    start = len(nmc.process.lines)
    answer = request_answer(nmc.port, b"GET http://elsewhere.example/whoami HTTP/1.1\r\n"
                                      b"Host: elsewhere.example\r\n\r\n")
    assert answer.code == 200, f"absolute-form GET /whoami: {answer}"
    whoami = json.loads(answer.body)
    assert whoami["hostname"] in nmc.names, (
        f"answered by {whoami['hostname']!r}, not one of our replicas {sorted(nmc.names)}")
    assert_serving(nmc.process, nmc.url, start, relayed=1)


# ------------------------------------------------------------------------------------------------
# controls: requests near the limits, and valid chunked bodies, are relayed as before
# (a proxy that refused everything would pass the rejections above)


def test_requests_within_the_limits_are_relayed(nmc):
    start = len(nmc.process.lines)
    many = request_answer(nmc.port, headers_request(*(b"X-H%02d: v" % i for i in range(90))))
    assert many.code == 200, f"91 header lines: {many}"
    long_path = request_answer(nmc.port, b"GET /healthz?pad=" + b"a" * (4 * 1024)
                               + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert long_path.code == 200, f"a 4 KiB request line: {long_path}"
    big_header = request_answer(nmc.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                          b"X-Padding: " + b"p" * (8 * 1024) + b"\r\n\r\n")
    assert big_header.code == 200, f"an 8 KiB header: {big_header}"
    assert_serving(nmc.process, nmc.url, start, relayed=3)


@pytest.mark.parametrize("chunks, body", [
    (b"5\r\nhello\r\n0\r\n\r\n", "hello"),
    (b"A\r\n0123456789\r\n3\r\nabc\r\n0\r\n\r\n", "0123456789abc"),
    (b"a\r\n0123456789\r\n0\r\n\r\n", "0123456789"),
], ids=["one-chunk", "upper-hex-two-chunks", "lower-hex"])
def test_valid_chunked_body_is_relayed(nmc, chunks, body):
    start = len(nmc.process.lines)
    answer = request_answer(nmc.port, b"POST /echo HTTP/1.1\r\nHost: x\r\n"
                                      b"Transfer-Encoding: chunked\r\n\r\n" + chunks)
    assert answer.code == 200, f"a valid chunked POST: {answer}"
    echoed = json.loads(answer.body)
    assert echoed["body"] == body, (
        f"the replica got the body {echoed['body']!r} ({echoed['bodyLength']} bytes), not {body!r}")
    assert_serving(nmc.process, nmc.url, start, relayed=1)


# ------------------------------------------------------------------------------------------------
# 12. after all of the above, the one nmc process is still running and logged no traceback
# (defined after every test that uses `shared`: pytest runs a module's tests in file order)


def test_shared_nmc_survived_every_hostile_case(shared):
    if shared.current is None:
        pytest.skip("no hostile case ran in this session")
    assert len(shared.started) == 1, (
        f"nmc had to be started {len(shared.started)} times: a hostile case killed it")
    assert_healthy_at_end(shared.current.process)


# ------------------------------------------------------------------------------------------------
# 9. slowloris: --header-timeout cuts clients that do not finish their request head in time


def check_cut(client: RawClient) -> None:
    """After nmc cut a client (EOF read): it sent nothing, or its 408 rejection and no more."""
    if client.buffer:
        answer = client.read_answer(1)
        assert answer.code == 408, f"cut with something other than a 408: {answer}"
        assert answer.version == "HTTP/1.1" and answer.says_close(), f"a bad 408: {answer}"
        assert len(answer.body) <= SHORT_BODY, f"a 408 with a {len(answer.body)}-byte body"
        assert client.buffer == b"", f"bytes after the 408: {client.buffer[:300]!r}"


def test_silent_client_is_cut_after_the_header_timeout(cluster_name, run_nmc):
    nmc = nmc_with(run_nmc, cluster_name, "--header-timeout", "2")
    start = len(nmc.process.lines)
    with RawClient(nmc.port) as client:
        opened = time.monotonic()
        assert client.wait_eof(8), "a client that sent nothing was still connected after 8s"
        took = time.monotonic() - opened
        assert 1 <= took <= 6, f"a client that sent nothing was cut after {took:.1f}s, not ~2s"
        check_cut(client)
    assert_serving(nmc.process, nmc.url, start, relayed=0)
    assert_healthy_at_end(nmc.process)


def test_trickling_client_is_cut_after_the_header_timeout(cluster_name, run_nmc):
    nmc = nmc_with(run_nmc, cluster_name, "--header-timeout", "2")
    start = len(nmc.process.lines)
    with RawClient(nmc.port) as client:
        opened = time.monotonic()
        client.send(b"GET /healthz HTTP/1.1\r\n")
        cut_at = None
        for byte in b"Host: x\r\nX-Slow: " + b"s" * 100:  # one byte per 0.5 s, for at most 10 s
            if time.monotonic() - opened > 10:
                break
            try:
                client.send(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                cut_at = time.monotonic()
                break
            readable, _, _ = select.select([client.sock], [], [], 0.5)
            if readable:  # nmc answers (408) or closes
                cut_at = time.monotonic()
                break
        assert cut_at is not None, "a client sending a header byte every 0.5s was never cut (10s)"
        took = cut_at - opened
        assert 1 <= took <= 6, f"a client sending a byte every 0.5s was cut after {took:.1f}s"
        assert client.wait_eof(2), "nmc answered the trickling client but did not close"
        check_cut(client)
    assert_serving(nmc.process, nmc.url, start, relayed=0)
    assert_healthy_at_end(nmc.process)


# ------------------------------------------------------------------------------------------------
# 10. idle keep-alive: --idle-timeout closes a connection that waits too long for its next request

HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"


def test_idle_keep_alive_connection_is_closed(cluster_name, run_nmc):
    nmc = nmc_with(run_nmc, cluster_name, "--idle-timeout", "2")
    start = len(nmc.process.lines)
    with RawClient(nmc.port) as client:
        client.send(HEALTHZ)
        answer = client.read_answer()
        assert answer.code == 200 and not answer.says_close(), f"the keep-alive request: {answer}"
        answered = time.monotonic()
        assert client.wait_eof(8), "an idle keep-alive connection was still open after 8s"
        took = time.monotonic() - answered
        assert 1 <= took <= 6, f"an idle keep-alive connection closed after {took:.1f}s, not ~2s"
        check_cut(client)
    assert_serving(nmc.process, nmc.url, start, relayed=1)
    assert_healthy_at_end(nmc.process)


def test_busy_keep_alive_connection_stays_open(cluster_name, run_nmc):
    nmc = nmc_with(run_nmc, cluster_name, "--idle-timeout", "2")
    start = len(nmc.process.lines)
    with RawClient(nmc.port) as client:
        opened = time.monotonic()
        count = 0
        while time.monotonic() - opened < 4.5:  # a request every 0.5 s for 4 s, on one connection
            client.send(HEALTHZ)
            answer = client.read_answer()
            count += 1
            assert answer.code == 200, f"request {count} on the kept-alive connection: {answer}"
            assert not answer.says_close(), f"a busy connection closed at request {count}: {answer}"
            time.sleep(0.5)
        assert count >= 8
        assert not client.wait_eof(0.2), f"the busy connection was closed after {count} requests"
    assert_serving(nmc.process, nmc.url, start, relayed=count)
    assert_healthy_at_end(nmc.process)


# ------------------------------------------------------------------------------------------------
# 11. --max-connections: past the cap a new client gets a fast 503, not a hang


def _healthz_status(url: str) -> int | None:
    try:
        return requests.get(url + "/healthz", timeout=2).status_code
    except requests.RequestException:
        return None


@pytest.mark.parametrize("held_by", ["silent", "keep-alive"])
def test_connection_past_the_cap_gets_a_fast_503(cluster_name, run_nmc, held_by):
    nmc = nmc_with(run_nmc, cluster_name, "--max-connections", "20")
    start = len(nmc.process.lines)
    held: list[RawClient] = []
    try:
        for _ in range(20):
            client = RawClient(nmc.port)
            held.append(client)
            if held_by == "keep-alive":
                client.send(HEALTHZ)
                answer = client.read_answer()
                assert answer.code == 200, f"keep-alive connection {len(held)} of 20: {answer}"
        if held_by == "keep-alive":  # their Forwarding lines are all in before the mark below
            wait_until(lambda: len(forwarded(nmc.process, start)) >= 20, 10,
                       what="the 20 keep-alive requests' Forwarding lines")
        else:
            time.sleep(0.5)  # nothing to wait on: give nmc time to accept all 20
        mark = len(nmc.process.lines)

        with RawClient(nmc.port) as extra:
            extra.send(HEALTHZ)
            try:
                assert_rejected(extra, {503}, timeout=2)
            except NoAnswer as e:
                raise AssertionError(f"connection 21 got no whole answer within 2s: {e}") from None

        relayed = 0
        if held_by == "keep-alive":  # the 20 are still served
            held[0].send(HEALTHZ)
            answer = held[0].read_answer()
            assert answer.code == 200, f"a held connection after the 503: {answer}"
            relayed += 1
    finally:
        for client in held:
            client.close()
    # the 20 closed: room again (the first 200 is relayed, and so is assert_serving's /healthz)
    wait_until(lambda: _healthz_status(nmc.url) == 200, 10,
               what="GET /healthz answering 200 after the 20 closed")
    assert_serving(nmc.process, nmc.url, mark, relayed=relayed + 1)
    assert_healthy_at_end(nmc.process)
