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
    sock.sendall(f"GET /whoami HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data or not data.rstrip().endswith(b"}"):
        chunk = sock.recv(65536)
        assert chunk, data
        data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:100]
    return sock


def test_status_process_section_shows_nmcs_own_figures(run_nmc, cluster_name):
    base = free_port_block(4)
    port, admin_port = base + 2, base + 3
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(port),
                      "--base-port", str(base), "-n", "2", "--admin-port", str(admin_port), "-q")
    process.wait_serving()
    status_url = f"http://127.0.0.1:{admin_port}/status"

    def figures() -> dict:
        return requests.get(status_url, timeout=10).json()["process"]

    held = [keep_alive_get(port) for _ in range(5)]
    try:
        now = figures()
        assert now["pid"] == process.proc.pid
        assert now["rss_bytes"] > 10 * 2**20  # a Python process with gevent and requests
        assert now["open_fds"] >= 5 + 2       # the held connections, the listeners at least
        assert now["greenlets"] >= 5          # the hub, one per held connection, the supervisor's
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
