"""HTTP rules that both relays (the proxy and the WebSocket tunnel) follow: which headers are
hop-by-hop, and how nmc words an answer of its own (502, 503, 504...)."""

from __future__ import annotations

from http import HTTPStatus

# Hop-by-hop headers (RFC 9110 7.6.1, plus the old Keep-Alive and Proxy-Connection): they
# describe one connection, so they are never relayed in either direction.
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
))


def connection_named(pairs) -> set[str]:
    """The (lower-case) header names listed in Connection headers: hop-by-hop as well."""
    names: set[str] = set()
    for name, value in pairs:
        if name.lower() == "connection":
            names.update(token.strip().lower() for token in value.split(",") if token.strip())
    return names


def error_answer(start_response, status: int, message: str, request_id: str | None,
                 extra_headers=()) -> list[bytes]:
    """A short plain-text answer of nmc's own that says what happened, with the request id."""
    reason = HTTPStatus(status).phrase
    suffix = f" (request id {request_id})" if request_id else ""
    body = f"{status} {reason}: {message}{suffix}\n".encode()
    headers = [("Content-Type", "text/plain; charset=utf-8"), ("Content-Length", str(len(body)))]
    if request_id:
        headers.append(("X-Request-ID", request_id))
    start_response(f"{status} {reason}", headers + [h for h in extra_headers
                                                     if h[0].lower() != "x-request-id"])
    return [body]
