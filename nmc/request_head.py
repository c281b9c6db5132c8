"""Reading a client's request head strictly: the request line, the headers, their framing,
with the grammar and the limits of nmc.http1.

Whatever could make nmc and a replica disagree about where a request ends (request smuggling),
or could hold a connection or memory hostage, is refused here with a 4xx/5xx before anything is
relayed. The rules follow RFC 9112 and what nginx, HAProxy and Go's net/http refuse.
"""

from __future__ import annotations

from http import HTTPStatus

from nmc.http1 import (
    BAD_VALUE_CHAR,
    CONTENT_LENGTH,
    MAX_FIELDS,
    MAX_HEADER_BYTES,
    MAX_REQUEST_LINE,
    REQUEST_TARGET,
    REQUEST_VERSION,
    TOKEN,
)


class Rejected(ValueError):
    """The request is refused: answer `status` with `reason`, then close the connection. Its
    answer is whole bytes: the server sends it itself, before (or instead of) any WSGI call."""

    def __init__(self, status: int, reason: str, extra_headers: tuple = ()):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.extra_headers = extra_headers
        self.formatted_message = f"{status} {reason}"  # what pywsgi logs for client errors

    def response(self) -> bytes:
        phrase = HTTPStatus(self.status).phrase
        body = f"{self.status} {phrase}: {self.reason}\n".encode()
        head = [f"HTTP/1.1 {self.status} {phrase}",
                "Content-Type: text/plain; charset=utf-8",
                f"Content-Length: {len(body)}",
                "Connection: close",
                *(f"{name}: {value}" for name, value in self.extra_headers)]
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def parse_request_line(line: str) -> tuple[str, str, str]:
    """'GET /x HTTP/1.1' -> (method, target, version); Rejected unless it is exactly that."""
    if len(line) >= MAX_REQUEST_LINE:
        raise Rejected(414, f"request line over {MAX_REQUEST_LINE} bytes")
    if not line.endswith("\n"):
        raise Rejected(400, "request line not terminated")
    parts = line.rstrip("\r\n").split(" ")
    if len(parts) != 3 or not all(parts):
        raise Rejected(400, "malformed request line")
    method, target, version = parts
    if not TOKEN.fullmatch(method):
        raise Rejected(400, "malformed method")
    match = REQUEST_VERSION.fullmatch(version)
    if not match:
        raise Rejected(400, "malformed HTTP version")
    if match.group(1) != "1":
        raise Rejected(505, f"{version} is not supported: use HTTP/1.1 or HTTP/1.0")
    if method == "CONNECT":
        raise Rejected(405, "CONNECT is not relayed: nmc is not a forward proxy",
                       (("Allow", "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"),))
    if not REQUEST_TARGET.fullmatch(target):
        raise Rejected(400, "malformed request target")
    return method, target, version


class Headers:
    """A request's headers as received (order, repeats, spelling), with the lookups pywsgi uses."""

    status = ""  # pywsgi checks it: empty means parsed fine

    def __init__(self, pairs: list[tuple[str, str]]):
        self.pairs = pairs
        self._by_name: dict[str, list[str]] = {}
        for name, value in pairs:
            self._by_name.setdefault(name.lower(), []).append(value)

    @property
    def headers(self) -> list[str]:
        """Raw lines, as pywsgi's get_environ iterates them."""
        return [f"{name}: {value}\r\n" for name, value in self.pairs]

    def get(self, name: str, default=None):
        values = self._by_name.get(name.lower())
        return ", ".join(values) if values else default

    getheader = get

    def get_all(self, name: str) -> list[str]:
        return self._by_name.get(name.lower(), [])

    @property
    def typeheader(self):
        return self.get("content-type")

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._by_name

    def __delitem__(self, name: str) -> None:
        lower = name.lower()
        self._by_name.pop(lower, None)
        self.pairs = [(n, v) for n, v in self.pairs if n.lower() != lower]


def read_headers(readline) -> Headers:
    """Read header lines up to the empty line with `readline(limit)`; Rejected on any breach."""
    pairs: list[tuple[str, str]] = []
    total = 0
    while True:
        line = readline(MAX_HEADER_BYTES + 1 - total)
        if not line:
            raise Rejected(400, "connection ended inside the request head")
        total += len(line)
        if total > MAX_HEADER_BYTES:
            raise Rejected(431, f"request head over {MAX_HEADER_BYTES // 1024} KiB")
        if line in (b"\r\n", b"\n"):
            return Headers(pairs)
        if not line.endswith(b"\n"):
            raise Rejected(400, "header line not terminated")
        text = line.decode("latin-1").rstrip("\r\n")
        if text[:1] in (" ", "\t"):
            raise Rejected(400, "folded header line (obs-fold)")
        name, colon, value = text.partition(":")
        if not colon:
            raise Rejected(400, "header line without a colon")
        if not TOKEN.fullmatch(name):  # also refuses 'Host : x' (white space before the colon)
            raise Rejected(400, f"malformed header name {name[:40]!r}")
        value = value.strip(" \t")
        if BAD_VALUE_CHAR.search(value):
            raise Rejected(400, f"control character in header {name}")
        pairs.append((name, value))
        if len(pairs) > MAX_FIELDS:
            raise Rejected(431, f"more than {MAX_FIELDS} header lines")


def body_framing(headers: Headers, method: str) -> int | None:
    """The request's Content-Length (None when chunked or bodiless), refusing ambiguous framing."""
    transfer_encoding = headers.get_all("transfer-encoding")
    lengths = headers.get_all("content-length")
    if transfer_encoding:
        if lengths:
            raise Rejected(400, "both Transfer-Encoding and Content-Length (request smuggling?)")
        codings = [c.strip().lower() for value in transfer_encoding for c in value.split(",")]
        if codings != ["chunked"]:
            raise Rejected(501, f"Transfer-Encoding {', '.join(transfer_encoding)!r} is not "
                                "supported: only chunked")
        return None
    if not lengths:
        return None
    values = {v.strip() for value in lengths for v in value.split(",")}
    if len(values) != 1:
        raise Rejected(400, "conflicting Content-Length values (request smuggling?)")
    value = values.pop()
    if not CONTENT_LENGTH.fullmatch(value):
        raise Rejected(400, f"invalid Content-Length {value[:20]!r}")
    length = int(value)
    if length and method == "HEAD":
        raise Rejected(400, "a HEAD request with a body")
    return length
