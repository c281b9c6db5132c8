"""End to end: /status's process section (nmc/process_stats.py) read from a running nmc, its
figures checked against what the test does to it and against /proc."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import requests

from conftest import ROOT, free_port_block, wait_until


def keep_alive_get(port: int) -> socket.socket:
    """A client connection that has had one answer and stays open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    get_whoami(sock, port)
    return sock


def get_whoami(sock: socket.socket, port: int) -> None:
    """GET /whoami on a kept-alive connection; its answer read whole and checked."""
    sock.sendall(f"GET /whoami HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    assert b"\r\nconnection: close" not in data.lower(), data[:300]


def start_nmc(run_nmc, cluster_name: str):
    """nmc with 2 replicas and its admin port: (process, port, admin port, /status URL)."""
    base = free_port_block(4)
    port, admin_port = base + 2, base + 3
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(port),
                      "--base-port", str(base), "-n", "2", "--admin-port", str(admin_port), "-q")
    process.wait_serving()
    return process, port, admin_port, f"http://127.0.0.1:{admin_port}/status"


def test_status_process_section_shows_nmcs_own_figures(run_nmc, cluster_name):
    process, port, admin_port, status_url = start_nmc(run_nmc, cluster_name)

    def figures() -> dict:
        return requests.get(status_url, timeout=10).json()["process"]

    held = [keep_alive_get(port) for _ in range(5)]
    try:
        now = figures()
        assert now["pid"] == process.proc.pid
        assert now["rss_bytes"] > 10 * 2**20  # a Python process with gevent and requests
        assert now["open_fds"] >= 5 + 2       # the held connections, the listeners at least
        assert now["greenlets"] >= 3          # the hub, the supervisor's, the admin request's
        assert now["uptime_seconds"] > 0
        assert now["client_connections"].get("ESTABLISHED", 0) >= 5
        # the relay keeps its connections to the replicas open for the next request
        assert now["replica_connections"].get("ESTABLISHED", 0) >= 1
        with open(f"/proc/{process.proc.pid}/status") as status:
            rss_kib = next(int(line.split()[1]) for line in status if line.startswith("VmRSS"))
        assert 0.5 < now["rss_bytes"] / (rss_kib * 1024) < 2
        assert abs(now["open_fds"] - len(os.listdir(f"/proc/{process.proc.pid}/fd"))) <= 10
    finally:
        for sock in held:
            sock.close()
    # closed by the clients: nmc's side of them goes (a closed socket leaves no fd behind)
    wait_until(lambda: figures()["client_connections"].get("ESTABLISHED", 0) == 0, 20,
               what="the closed client connections to leave the process section")
    table = subprocess.run([sys.executable, str(ROOT / "nmc_server.py"), "status", "--admin-port",
                            str(admin_port), "--name", cluster_name],
                           capture_output=True, text=True, timeout=30)
    assert table.returncode == 0, table.stderr
    assert f"process {process.proc.pid}: RSS " in table.stdout and " greenlets, clients " in table.stdout


def test_idle_keep_alive_connections_wait_without_a_greenlet_and_answer_again(run_nmc,
                                                                             cluster_name):
    # a kept-alive connection idle for half a second gives up its greenlet (http_server's
    # PARK_AFTER); bytes that arrive give it one again
    _, port, _, status_url = start_nmc(run_nmc, cluster_name)

    def greenlets() -> int:
        return requests.get(status_url, timeout=10).json()["process"]["greenlets"]

    before = greenlets()
    held = [keep_alive_get(port) for _ in range(40)]
    try:
        # one greenlet each would be 40 more
        wait_until(lambda: greenlets() < before + 10, 20,
                   what=f"40 idle connections to hold fewer than 10 greenlets ({before} before)")
        for _ in range(2):  # each answers again, on its own connection, and is parked again
            for sock in held:
                get_whoami(sock, port)
            wait_until(lambda: greenlets() < before + 10, 20, what="the connections to be parked again")
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: requests.get(status_url, timeout=10).json()["process"]["client_connections"]
               .get("ESTABLISHED", 0) == 0, 20, what="the closed connections to be closed by nmc too")
