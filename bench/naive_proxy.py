#!/usr/bin/env python3
"""The "before" line: what a first gevent + requests relay typically looks like.

gevent monkey-patched, gevent.pywsgi.WSGIServer with its defaults (access log on stderr, no
TCP_NODELAY), one default requests.Session() (trust_env=True, pool_maxsize=10, its default
headers merged in), the client's body passed as data=environ['wsgi.input'], the answer streamed
with stream=True and iter_content(8192), round-robin over the replicas. Kept naive on purpose:
bench/bench.py measures nmc against it. (Same shape as the team's py_naive.py baseline, but
iter_content() instead of raw.stream().)

usage: naive_proxy.py PORT BACKEND_PORT [BACKEND_PORT ...]    (listens on 127.0.0.1:PORT)
"""
from gevent import monkey

monkey.patch_all()

import itertools  # noqa: E402
import sys  # noqa: E402

import requests  # noqa: E402
from gevent.pywsgi import WSGIServer  # noqa: E402

HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
       "te", "trailers", "transfer-encoding", "upgrade"}
session = requests.Session()


def make_app(backends):
    rr = itertools.cycle(backends)

    def app(environ, start_response):
        url = next(rr) + environ.get("PATH_INFO", "/")
        if environ.get("QUERY_STRING"):
            url += "?" + environ["QUERY_STRING"]
        headers = {}
        for k, v in environ.items():
            if k.startswith("HTTP_") and k[5:].replace("_", "-").lower() not in HOP:
                headers[k[5:].replace("_", "-").title()] = v
        if environ.get("CONTENT_TYPE"):
            headers["Content-Type"] = environ["CONTENT_TYPE"]
        if environ.get("CONTENT_LENGTH"):
            headers["Content-Length"] = environ["CONTENT_LENGTH"]
        resp = session.request(environ["REQUEST_METHOD"], url, headers=headers,
                               data=environ["wsgi.input"], stream=True, allow_redirects=False)
        start_response("%d %s" % (resp.status_code, resp.reason),
                       [(k, v) for k, v in resp.headers.items() if k.lower() not in HOP])

        def body():
            try:
                for chunk in resp.iter_content(8192):
                    yield chunk
            finally:
                resp.close()
        return body()
    return app


if __name__ == "__main__":
    port = int(sys.argv[1])
    backends = ["http://127.0.0.1:%d" % int(p) for p in sys.argv[2:]] or ["http://127.0.0.1:3001"]
    WSGIServer(("127.0.0.1", port), make_app(backends)).serve_forever()
