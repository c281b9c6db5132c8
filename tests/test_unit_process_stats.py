"""nmc.process_stats: the reading of /proc (/status's process section), with plain values."""

from __future__ import annotations

import os
from collections import Counter

from nmc.admin import format_process
from nmc.process_stats import (TcpSocket, connections, parse_tcp_table, rss_bytes, snapshot,
                               socket_inodes, started_after_boot)

TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:0BB8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0 100 0 0 10 0
   1: 0100007F:0BB8 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1002 1 0 20 4 30 10 -1
   2: 0100007F:C350 0100007F:0BB9 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0 20 4 30 10 -1
   3: 0100007F:C351 0100007F:0BB9 08 00000000:00000000 00:00000000 00000000     0        0 1004 1 0 20 4 30 10 -1
   4: 0100007F:0C1C 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1005 1 0 100 0 0 10 0
   5: 0100007F:0C1C 0100007F:D500 01 00000000:00000000 00:00000000 00000000     0        0 1006 1 0 20 4 30 10 -1
   6: 0100007F:0BB8 0100007F:D432 01 00000000:00000000 00:00000000 00000000     0        0 9999 1 0 20 4 30 10 -1
   7: 0100007F:0BB8 0100007F:D433 06 00000000:00000000 03:00000F2E 00000000     0        0 0 3 0
"""
TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0BB8 00000000000000000000000001000000:D440 04 00000000:00000000 00:00000000 00000000     0        0 1007 1 0 20 4 30 10 -1
"""


def test_parse_tcp_table_reads_ports_states_and_inodes():
    sockets = parse_tcp_table(TCP)
    assert sockets[0] == TcpSocket(3000, 0, "LISTEN", 1001)
    assert sockets[1] == TcpSocket(3000, 54321, "ESTABLISHED", 1002)
    assert sockets[3].state == "CLOSE_WAIT" and sockets[7].state == "TIME_WAIT"
    assert parse_tcp_table(TCP6) == [TcpSocket(3000, 54336, "FIN_WAIT1", 1007)]
    assert parse_tcp_table("header\n  0: garbage\n") == []


def test_socket_inodes_come_from_the_fd_links():
    targets = ["/dev/null", "socket:[1002]", "pipe:[77]", "socket:[1003]", "anon_inode:[eventpoll]",
               "socket:[x]"]
    assert socket_inodes(targets) == {1002, 1003}


def test_connections_split_clients_and_replicas_and_count_only_our_own():
    """Port 3000 is nmc's (public), 3100 its admin port, 3001 a replica's: the socket of inode
    9999 is someone else's, the TIME_WAIT one has no owner any more."""
    sockets = parse_tcp_table(TCP) + parse_tcp_table(TCP6)
    own = {1001, 1002, 1003, 1004, 1005, 1006, 1007}
    clients, replicas = connections(sockets, own, skip_ports=[3100], replica_ports=[3001])
    assert clients == Counter({"ESTABLISHED": 1, "FIN_WAIT1": 1})
    assert replicas == Counter({"ESTABLISHED": 1, "CLOSE_WAIT": 1})
    # without the admin port skipped, its connection counts as a client's
    clients, _ = connections(sockets, own, skip_ports=[], replica_ports=[3001])
    assert clients["ESTABLISHED"] == 2


def test_rss_and_start_time():
    assert rss_bytes("Name:\tpython\nVmPeak:\t  9000 kB\nVmRSS:\t   48128 kB\n") == 48128 * 1024
    assert rss_bytes("Name:\tkthreadd\n") == 0
    stat = "4242 (nmc server) S " + " ".join(["0"] * 18) + " 12345 0 0"
    assert started_after_boot(stat) * os.sysconf("SC_CLK_TCK") == 12345


def test_snapshot_of_a_process_directory(tmp_path):
    (tmp_path / "fd").mkdir()
    (tmp_path / "net").mkdir()
    for fd, target in enumerate(["/dev/null", "socket:[1001]", "socket:[1002]", "socket:[1003]"]):
        os.symlink(target, tmp_path / "fd" / str(fd))
    (tmp_path / "net" / "tcp").write_text(TCP)
    (tmp_path / "status").write_text("VmRSS:\t1024 kB\n")
    (tmp_path / "stat").write_text("1 (x) S " + " ".join(["0"] * 18) + " 0 0 0")
    figures = snapshot(replica_ports=[3001], skip_ports=[3100], proc=tmp_path)
    assert figures["rss_bytes"] == 1024 * 1024 and figures["open_fds"] == 4
    assert figures["client_connections"] == {"ESTABLISHED": 1}
    assert figures["replica_connections"] == {"ESTABLISHED": 1}
    assert figures["uptime_seconds"] > 0  # booted at 0 ticks: as old as the machine
    assert set(figures) == {"pid", "rss_bytes", "open_fds", "greenlets", "client_connections",
                            "replica_connections", "uptime_seconds"}


def test_snapshot_without_proc_reads_zeros(tmp_path):
    figures = snapshot(proc=tmp_path / "gone")
    assert figures["rss_bytes"] == 0 and figures["open_fds"] == 0
    assert figures["client_connections"] == {} and figures["replica_connections"] == {}


def test_the_status_table_shows_the_process_in_one_line():
    line = format_process({"pid": 7, "rss_bytes": 50 * 2**20, "open_fds": 31, "greenlets": 12,
                           "client_connections": {"ESTABLISHED": 3, "TIME_WAIT": 1},
                           "replica_connections": {}, "uptime_seconds": 135.2})
    assert line == ("process 7: RSS 50.0 MiB, 31 fds, 12 greenlets, clients 3 ESTABLISHED "
                    "+ 1 TIME_WAIT, replicas none, up 2m15s")
