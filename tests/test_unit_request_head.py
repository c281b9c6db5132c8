"""The strict request head: request line, headers, framing. Pure logic on plain bytes."""

import io

import pytest

from nmc.request_head import (MAX_HEADER_BYTES, Rejected, body_framing, parse_request_line,
                              read_headers)


def headers(raw: bytes):
    return read_headers(io.BytesIO(raw).readline)


def status_of(fn, *args) -> int:
    with pytest.raises(Rejected) as rejected:
        fn(*args)
    return rejected.value.status


def test_a_good_request_line():
    assert parse_request_line("GET /a%2Fb?x=1 HTTP/1.1\r\n") == ("GET", "/a%2Fb?x=1", "HTTP/1.1")
    assert parse_request_line("PURGE http://h/p HTTP/1.0\n") == ("PURGE", "http://h/p", "HTTP/1.0")


@pytest.mark.parametrize("line, status", [
    ("GARBAGE\r\n", 400), ("GET\r\n", 400), ("GET /\r\n", 400), ("GET  / HTTP/1.1\r\n", 400),
    ("GET / HTTP/1.1", 400), ("GET / FOO/1.1\r\n", 400), ("G(T / HTTP/1.1\r\n", 400),
    ("GET /a\x00b HTTP/1.1\r\n", 400), ("GET * HTTP/1.1\r\n", 400), ("GET x HTTP/1.1\r\n", 400),
    ("GET / HTTP/2.0\r\n", 505), ("GET / HTTP/9.9\r\n", 505),
    ("CONNECT example.com:443 HTTP/1.1\r\n", 405), ("GET /" + "a" * 9000 + " HTTP/1.1\r\n", 414),
])
def test_bad_request_lines(line, status):
    assert status_of(parse_request_line, line) == status


def test_headers_keep_order_repeats_and_spelling():
    parsed = headers(b"Host: a\r\nX-Many: 1\r\nx-many: 2\r\nContent-Type:  text/plain \r\n\r\nBODY")
    assert parsed.pairs == [("Host", "a"), ("X-Many", "1"), ("x-many", "2"), ("Content-Type", "text/plain")]
    assert parsed.get("X-MANY") == "1, 2" and parsed.typeheader == "text/plain"
    assert parsed.get("missing", "d") == "d" and "host" in parsed


@pytest.mark.parametrize("raw, status", [
    (b"Host: x\r\nNoColonHere\r\n\r\n", 400),
    (b"Host : x\r\n\r\n", 400),
    (b"Host\t: x\r\n\r\n", 400),
    (b"X-A: 1\r\n continued\r\n\r\n", 400),
    (b"X-A: a\x00b\r\n\r\n", 400),
    (b"Host: x\r\n", 400),  # the connection ended inside the head
    (b"X-Big: " + b"a" * MAX_HEADER_BYTES + b"\r\n\r\n", 431),
    (b"".join(b"X-%d: v\r\n" % i for i in range(101)) + b"\r\n", 431),
])
def test_bad_headers(raw, status):
    assert status_of(headers, raw) == status


@pytest.mark.parametrize("raw, method, expected", [
    (b"\r\n", "GET", None),
    (b"Content-Length: 5\r\n\r\n", "POST", 5),
    (b"Content-Length: 5\r\nContent-Length: 5\r\n\r\n", "POST", 5),
    (b"Transfer-Encoding: Chunked\r\n\r\n", "POST", None),
])
def test_framing(raw, method, expected):
    assert body_framing(headers(raw), method) == expected


@pytest.mark.parametrize("raw, method, status", [
    (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", "POST", 400),
    (b"Content-Length: 5\r\nContent-Length: 6\r\n\r\n", "POST", 400),
    (b"Content-Length: 5, 6\r\n\r\n", "POST", 400),
    (b"Content-Length: abc\r\n\r\n", "POST", 400),
    (b"Content-Length: -1\r\n\r\n", "POST", 400),
    (b"Content-Length: 1e3\r\n\r\n", "POST", 400),
    ("Content-Length: ²\r\n\r\n".encode("latin-1"), "POST", 400),
    (b"Transfer-Encoding: gzip\r\n\r\n", "POST", 501),
    (b"Transfer-Encoding: gzip, chunked\r\n\r\n", "POST", 501),
    (b"Content-Length: 3\r\n\r\n", "HEAD", 400),
])
def test_ambiguous_framing_is_refused(raw, method, status):
    assert status_of(body_framing, headers(raw), method) == status


def test_a_rejection_is_a_whole_answer_that_closes():
    answer = Rejected(431, "too big").response()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Connection: close" in head and body == b"431 Request Header Fields Too Large: too big\n"
    assert f"Content-Length: {len(body)}".encode() in head
