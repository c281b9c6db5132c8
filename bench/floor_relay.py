#!/usr/bin/env python3
"""The floor under nmc's design: what a relay built as nmc is (gevent, gevent.pywsgi hosting a
WSGI callable) spends per request before it does anything of its own.

gevent.pywsgi with nmc's fixes for small answers (TCP_NODELAY, the head and the body in one
send(), no sendall's extra system call), and a WSGI callable that makes the least exchange with a
replica: the request line and a Host header written on a kept-alive socket of the client
connection's own (round-robin between the replicas), the answer read by its Content-Length, its
headers handed on. Nothing else: no checks of either head, no pool, no counting, no request id, no
log, no retry but one on a socket the replica closed, GET without a body only. Not a proxy:
bench/bench.py measures it as `pywsgi-floor`, to tell what pywsgi and one exchange cost from what
nmc adds.

usage: floor_relay.py PORT BACKEND_PORT [BACKEND_PORT ...]    (listens on 127.0.0.1:PORT)
"""
from gevent import monkey

monkey.patch_all()

import itertools  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402

from gevent.pywsgi import WSGIHandler, WSGIServer  # noqa: E402

from nmc.transport import send_all  # noqa: E402  (one send() when it fits, as nmc sends)

READ = 65536


class OneWriteHandler(WSGIHandler):
    """pywsgi's handler, the answer's head and a small body in one send() (as nmc's), and the
    connection's sockets to the replicas in the environ."""

    def get_environ(self):
        environ = super().get_environ()
        environ["floor.upstream"] = self.__dict__.setdefault("upstream", {})  # port -> socket
        return environ

    def _write_with_headers(self, data):
        self.headers_sent = True
        self.finalize_headers()
        towrite = bytearray(b"HTTP/1.1 " + self.status + b"\r\n")
        for name, value in self.response_headers:
            towrite += name + b": " + value + b"\r\n"
        towrite += b"\r\n"
        if data and not self.response_use_chunked:
            towrite += data
            send_all(self.socket, towrite)
        else:
            send_all(self.socket, towrite)
            self._write(data)
        self.response_length += len(towrite)


def make_app(ports: list[int]):
    turn = itertools.cycle(ports)

    def exchange(socks: dict, port: int, head: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        for fresh in (False, True):  # the replica may have closed a kept-alive socket
            sock = socks.get(port)
            if sock is None or fresh:
                sock = socks[port] = socket.create_connection(("127.0.0.1", port))
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            send_all(sock, head)
            data = sock.recv(READ)
            if data:
                break
        while b"\r\n\r\n" not in data:
            data += sock.recv(READ)
        answer_head, _, body = data.partition(b"\r\n\r\n")
        lines = answer_head.decode("latin-1").split("\r\n")
        headers = [tuple(line.split(": ", 1)) for line in lines[1:]]
        length = int(next(value for name, value in headers if name.lower() == "content-length"))
        while len(body) < length:
            body += sock.recv(READ)
        kept = [(n, v) for n, v in headers if n.lower() not in ("connection", "keep-alive")]
        return lines[0][9:], kept, body

    def app(environ, start_response):
        query = environ["QUERY_STRING"]
        target = environ["PATH_INFO"] + ("?" + query if query else "")
        head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode("latin-1")
        status, headers, body = exchange(environ["floor.upstream"], next(turn), head)
        start_response(status, headers)
        return [body]

    return app


if __name__ == "__main__":
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it
    listener.bind(("127.0.0.1", int(sys.argv[1])))
    listener.listen(1024)
    WSGIServer(listener, make_app([int(p) for p in sys.argv[2:]]), log=None,
               handler_class=OneWriteHandler).serve_forever()
