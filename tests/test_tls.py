"""TLS on the public and the admin port (--certfile, --keyfile), end to end, with a CA and
certificates that the test makes with openssl: curl --cacert and Python's ssl as clients, TLS
1.2 at least, ALPN http/1.1, X-Forwarded-Proto: https, wss://, the certificate read again on
SIGHUP, and one line for a certificate that cannot serve."""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import socket
import ssl
import subprocess
import sys

import pytest

from conftest import NmcProcess, free_port_block, wait_until
from test_websocket import TEXT, WsClient


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(folder, name: str) -> None:
    """A key and a certificate for localhost and 127.0.0.1, signed by the test's CA."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
            f"{name}.csr", "-subj", "/CN=localhost", cwd=folder)
    (folder / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", "ext.cnf",
            cwd=folder)


@pytest.fixture
def pki(tmp_path):
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.pem", "-days", "2", "-subj", "/CN=nmc test CA", cwd=tmp_path)
    issue(tmp_path, "site")
    return tmp_path


def client_context(pki) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    context.set_alpn_protocols(["http/1.1"])
    return context


def https_get(port: int, path: str, context) -> tuple[int, bytes, http.client.HTTPSConnection]:
    connection = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    connection.request("GET", path)
    answer = connection.getresponse()
    return answer.status, answer.read(), connection


@pytest.fixture
def tls_cluster(run_nmc, cluster_name, pki):
    base = free_port_block(3)
    process = run_nmc("--name", cluster_name, "--bind", "127.0.0.1", "--port", str(base + 1),
                      "--base-port", str(base), "--admin-port", str(base + 2), "-n", "1", "-q",
                      "--certfile", str(pki / "site.pem"), "--keyfile", str(pki / "site.key"))
    process.wait_serving()
    return process, base + 1, base + 2


def test_https_with_curl_and_python_and_the_replica_hears_https(tls_cluster, pki):
    process, port, admin_port = tls_cluster
    assert f"serving on https://127.0.0.1:{port}" in process.log
    curl = subprocess.run(["curl", "-sS", "--cacert", str(pki / "ca.pem"),
                           f"https://localhost:{port}/echo"], capture_output=True, text=True,
                          timeout=30)
    assert curl.returncode == 0, curl.stderr
    raw = json.loads(curl.stdout)["rawHeaders"]
    assert dict(zip(raw[::2], raw[1::2]))["X-Forwarded-Proto"] == "https"
    status, _body, connection = https_get(port, "/healthz", client_context(pki))
    assert status == 200
    assert connection.sock.selected_alpn_protocol() == "http/1.1"
    assert connection.sock.version() in ("TLSv1.2", "TLSv1.3")
    status, body, _ = https_get(admin_port, "/status", client_context(pki))  # the admin port too
    assert status == 200 and json.loads(body)["totals"]["ready"] == 1


def test_tls_older_than_1_2_and_plain_http_are_refused(tls_cluster, pki):
    process, port, admin_port = tls_cluster
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(pki / "ca.pem"))
    with pytest.warns(DeprecationWarning):  # (as it should be)
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    old.set_ciphers("DEFAULT:@SECLEVEL=0")  # the client is willing: the server must say no
    with pytest.raises(ssl.SSLError):
        https_get(port, "/healthz", old)
    plain = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        plain.request("GET", "/healthz")
        plain.getresponse().read()
    for checked in (port, admin_port):
        for _ in range(3):  # a port checker: connect, close before any handshake
            socket.create_connection(("127.0.0.1", checked), timeout=5).close()
        half = socket.create_connection(("127.0.0.1", checked), timeout=5)  # a ClientHello cut short
        half.sendall(b"\x16\x03\x01\x00\xc8\x01\x00")
        half.close()
    assert https_get(port, "/healthz", client_context(pki))[0] == 200  # serving on
    assert "Traceback" not in process.log, process.log  # and nothing said of those


def test_wss_echoes(tls_cluster, pki):
    _process, port, _admin = tls_cluster
    ws = WsClient(port, tls=client_context(pki))
    ws.send(TEXT, b"over TLS")
    assert ws.recv() == (True, TEXT, b"over TLS")  # (fin, opcode, payload)


def test_sighup_reads_the_certificate_again_and_open_connections_stay(tls_cluster, pki):
    process, port, _admin = tls_cluster
    status, _body, kept = https_get(port, "/healthz", client_context(pki))
    first_serial = kept.sock.getpeercert()["serialNumber"]
    issue(pki, "renewed")
    shutil.copy(pki / "renewed.pem", pki / "site.pem")
    shutil.copy(pki / "renewed.key", pki / "site.key")
    start = len(process.lines)
    process.signal(signal.SIGHUP)
    process.wait_for_line(r"SIGHUP: read the certificate again", start=start)
    _status, _body, fresh = https_get(port, "/healthz", client_context(pki))
    assert fresh.sock.getpeercert()["serialNumber"] != first_serial
    kept.request("GET", "/healthz")  # the connection opened before: still served
    assert kept.getresponse().status == 200
    wait_until(lambda: "SIGHUP: nothing to roll out" in process.log or "SIGHUP: rolled" in process.log,
               30, what="the SIGHUP's rollout done")


@pytest.mark.parametrize("files, message", [
    (("site.pem", "other.key"), "the key does not match the certificate"),
    (("site.pem", "missing.key"), "no such file"),
    (("ca.srl", "site.key"), "not a PEM certificate and key"),
])
def test_a_certificate_that_cannot_serve_is_one_line(run_nmc, cluster_name, pki, docker_client,
                                                      files, message):
    openssl("genrsa", "-out", "other.key", "2048", cwd=pki)
    certfile, keyfile = (str(pki / name) for name in files)
    process = run_nmc("--name", cluster_name, "--certfile", certfile, "--keyfile", keyfile)
    assert process.wait_exit(30) == 2
    errors = [line for line in process.lines if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("nmc-server: error: --certfile") \
        and message in errors[0], errors
    assert docker_client.containers.list(all=True, filters={"label": f"nmc.cluster={cluster_name}"}) == []


def test_under_gunicorn_its_own_certfile_serves_and_the_replica_hears_https(cluster_name, pki,
                                                                          tmp_path):
    base = free_port_block(3)
    gunicorn = NmcProcess(["-c", "python:nmc.gunicorn_conf", "-w", "2", "-b", f"127.0.0.1:{base + 2}",
                           "--certfile", str(pki / "site.pem"), "--keyfile", str(pki / "site.key"),
                           "nmc.wsgi:app"],
                          env={"NMC_NAME": cluster_name, "NMC_BASE_PORT": str(base),
                               "NMC_ADMIN_PORT": "0", "NMC_QUIET": "1", "NMC_RUN_DIR": str(tmp_path)},
                          command=[sys.executable, "-m", "gunicorn"])
    try:
        def echoed():
            try:
                status, body, _ = https_get(base + 2, "/echo", client_context(pki))
            except OSError:
                return None
            return json.loads(body)["rawHeaders"] if status == 200 else None
        raw = wait_until(echoed, 60, what="gunicorn serving HTTPS")
        assert dict(zip(raw[::2], raw[1::2]))["X-Forwarded-Proto"] == "https"
    finally:
        gunicorn.stop()
