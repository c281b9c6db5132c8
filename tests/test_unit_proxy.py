"""The relay's pure pieces: request target and header filtering, on plain WSGI environs."""

import io

import urllib3

from nmc.proxy import _request_headers_and_body, _request_target
from nmc.server import _header_pairs


def environ(**extra):
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "wsgi.input": io.BytesIO()}
    base.update(extra)
    return base


def test_the_raw_target_is_relayed_byte_for_byte():
    raw = "/a%2Fb;c=d/%E2%82%AC?x=1&x=2&y=a+b"
    assert _request_target(environ(RAW_URI=raw, PATH_INFO="/a/b;c=d/€")) == raw


def test_an_absolute_form_target_keeps_only_path_and_query():
    assert _request_target(environ(RAW_URI="http://elsewhere.example/p?q=1")) == "/p?q=1"


def test_without_a_raw_uri_the_path_is_quoted_again():
    assert _request_target(environ(PATH_INFO="/a b", QUERY_STRING="q=1")) == "/a%20b?q=1"


def test_hop_by_hop_headers_and_those_named_in_connection_are_dropped():
    headers, body = _request_headers_and_body(environ(**{"nmc.headers": [
        ("Host", "example"), ("Connection", "keep-alive, X-Private"), ("Keep-Alive", "300"),
        ("X-Private", "secret"), ("TE", "trailers"), ("Upgrade", "h2c"), ("Accept", "*/*"),
        ("Set-Thing", "a"), ("set-thing", "b")]}))
    assert headers == {"Host": "example", "Accept": "*/*", "Set-Thing": "a, b",
                       "User-Agent": urllib3.util.SKIP_HEADER,
                       "Accept-Encoding": urllib3.util.SKIP_HEADER}
    assert body is None


def test_a_get_without_a_body_gets_no_body_and_no_framing_header():
    headers, body = _request_headers_and_body(environ(**{"nmc.headers": [("Host", "h")]}))
    assert body is None
    assert "Content-Length" not in headers and "Transfer-Encoding" not in headers


def test_a_body_with_content_length_is_streamed_from_the_input():
    stream = io.BytesIO(b"hello")
    headers, body = _request_headers_and_body(environ(
        REQUEST_METHOD="POST", CONTENT_LENGTH="5", **{"wsgi.input": stream, "nmc.headers": [
            ("Host", "h"), ("Content-Length", "5")]}))
    assert body is stream and headers["Content-Length"] == "5"


def test_a_chunked_body_is_relayed_as_chunks():
    headers, body = _request_headers_and_body(environ(
        REQUEST_METHOD="POST", HTTP_TRANSFER_ENCODING="chunked", **{
            "wsgi.input": io.BytesIO(b"abc"), "nmc.headers": [("Transfer-Encoding", "chunked")]}))
    assert "Transfer-Encoding" not in headers  # urllib3 frames the chunks itself
    assert b"".join(body) == b"abc"


def test_header_lines_are_parsed_with_their_order_and_repeats():
    lines = ["Host: a\r\n", "X-Many: 1\r\n", "x-many: 2\r\n", "X-Folded: one\r\n", "  two\r\n"]
    assert list(_header_pairs(lines)) == [("Host", "a"), ("X-Many", "1"), ("x-many", "2"),
                                          ("X-Folded", "one two")]
