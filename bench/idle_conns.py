"""Idle keep-alive capacity of a proxy: N client connections that did one request, then sit idle.

After ../shared/reference/baselines/idle_conns.py, as a function for bench.py: opens N
connections to 127.0.0.1:PORT in batches, sends one keep-alive GET on each and reads the answer,
waits 1 s and reads the RSS of the proxy's processes; then times fresh requests (new connection)
and one request on an idle connection while they are all open, holds them HOLD seconds, checks
that ~200 of them still answer, closes them all and reads the RSS once more. Loopback only;
bounded by LIMIT seconds in all.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Callable

from harness.procfs import rss_kib

OPEN_TIMEOUT = 10.0     # seconds for one connection to open and get its first answer
REQUEST_TIMEOUT = 5.0   # seconds for any later request


def _request(path: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n").encode()


async def _one_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                       req: bytes) -> int:
    """Send REQ, read the whole answer (Content-Length or chunked); the status code."""
    writer.write(req)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length, chunked = 0, False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        await reader.readexactly(length)
    return status


async def _open_one(port: int, req: bytes):
    async def go():
        r, w = await asyncio.open_connection("127.0.0.1", port)
        try:
            status = await _one_request(r, w, req)
        except BaseException:
            w.close()
            raise
        if not 200 <= status < 300:
            w.close()
            raise RuntimeError(f"status {status}")
        return r, w
    return await asyncio.wait_for(go(), OPEN_TIMEOUT)


async def _fresh(port: int, req: bytes) -> float:
    t0 = time.perf_counter()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _one_request(r, w, req)
    finally:
        w.close()
    return (time.perf_counter() - t0) * 1000


async def _run(port: int, pids: Callable[[], list[int]], n: int, batch: int, hold: float,
               path: str) -> dict:
    req = _request(path)
    out: dict = {"n": n, "hold": hold}
    out["rss_before"] = rss_kib(pids())
    conns, failed, why = [], 0, ""
    t0 = time.perf_counter()
    try:
        for i in range(0, n, batch):
            res = await asyncio.gather(*(_open_one(port, req) for _ in range(min(batch, n - i))),
                                       return_exceptions=True)
            for x in res:
                if isinstance(x, BaseException):
                    failed += 1
                    why = why or f"{type(x).__name__}: {x}"[:120]
                else:
                    conns.append(x)
        out["t_open"] = time.perf_counter() - t0
        out["opened"], out["failed"], out["why"] = len(conns), failed, why
        await asyncio.sleep(1)
        out["rss_open"] = rss_kib(pids())
        lat = []
        for _ in range(20):
            try:
                lat.append(await asyncio.wait_for(_fresh(port, req), REQUEST_TIMEOUT))
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                pass
        out["fresh_ms"] = statistics.median(lat) if lat else float("nan")
        out["fresh_max_ms"] = max(lat) if lat else float("nan")
        out["fresh_ok"] = len(lat)
        if conns:
            t1 = time.perf_counter()
            try:
                await asyncio.wait_for(_one_request(*conns[len(conns) // 2], req), REQUEST_TIMEOUT)
                out["reuse_ms"] = (time.perf_counter() - t1) * 1000
            except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, ValueError):
                out["reuse_ms"] = float("nan")
        await asyncio.sleep(hold)
        sample = conns[:: max(1, len(conns) // 200)]
        res = await asyncio.gather(*(asyncio.wait_for(_one_request(r, w, req), REQUEST_TIMEOUT)
                                     for r, w in sample), return_exceptions=True)
        out["sampled"] = len(sample)
        out["alive"] = sum(1 for x in res if not isinstance(x, BaseException))
        out["rss_hold"] = rss_kib(pids())
    finally:
        for _, w in conns:
            w.close()
    await asyncio.sleep(1)
    out["rss_closed"] = rss_kib(pids())
    out["kib_per_conn"] = ((out["rss_open"] - out["rss_before"]) / len(conns)
                           if conns else float("nan"))
    return out


def idle_test(port: int, pids: Callable[[], list[int]], n: int = 5000, batch: int = 250,
              hold: float = 3.0, limit: float = 120.0, path: str = "/healthz") -> dict:
    """The numbers of one idle test (RSS in KiB); {"error": ...} when it could not finish."""
    try:
        return asyncio.run(asyncio.wait_for(_run(port, pids, n, batch, hold, path), limit))
    except asyncio.TimeoutError:
        return {"error": f"did not finish within {limit:g} s"}
    except OSError as e:
        return {"error": f"{type(e).__name__}: {e}"}
