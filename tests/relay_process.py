"""nmc's relay alone (nmc.http_server's ProxyServer and handler, nmc.proxy, nmc.transport, nmc.tunnel)
in front of replicas at 127.0.0.1:PORT, which a test plays itself: no Docker, no supervisor.

Run as its own process, gevent patched first as nmc_server.py does: `python relay_process.py
PORT[,PORT...] [BACKEND_TIMEOUT]`; it prints the port it listens on (on 127.0.0.1), then serves
until stdin closes. `RelayProcess` does that for a test.
"""

from __future__ import annotations

if __name__ == "__main__":
    from gevent import monkey

    monkey.patch_all()

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class RelayProcess:
    """The relay as a child process in front of the replicas at 127.0.0.1:`replica_ports`
    (round-robin, in that order)."""

    def __init__(self, *replica_ports: int, backend_timeout: float = 2.0):
        self.process = subprocess.Popen(
            [sys.executable, __file__, ",".join(map(str, replica_ports)), str(backend_timeout)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
            text=True)
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.process.kill()
            raise RuntimeError(f"the relay did not start: {line!r} {self.process.stderr.read()}")
        self.port = int(line)

    def stop(self) -> str:
        """Stop it (it ends when its stdin closes); what it logged."""
        self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        return self.process.stderr.read()


def _serve(replica_ports: list[int], backend_timeout: float) -> None:
    import logging

    import gevent

    from nmc.backend import Address
    from nmc.pool import Pool, Replica, State
    from nmc.proxy import Proxy
    from nmc.http_server import ProxyServer, bind_listener

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(name)s %(levelname)s %(message)s")
    replicas = [Replica(f"replica-{port}", port, state=State.READY,
                        address=Address("127.0.0.1", port)) for port in replica_ports]
    proxy = Proxy(Pool(replicas), backend_timeout=backend_timeout, queue_timeout=0,
                  log_requests=False)
    listener = bind_listener("127.0.0.1", 0)
    listener.listen(64)
    server = ProxyServer(listener, proxy, log=None)
    server.start()
    print(listener.getsockname()[1], flush=True)
    gevent.get_hub().threadpool.apply(sys.stdin.read)  # until the test closes our stdin
    server.stop(timeout=1)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))  # this tree's nmc, whatever the virtualenv has installed
    _serve([int(port) for port in sys.argv[1].split(",")], float(sys.argv[2]))
