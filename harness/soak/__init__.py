"""`make soak`: nmc under mixed load and faults for a bounded time, sampled, judged on growth.

It starts its own nmc-server (cluster `nmc-soak-<random>`, 3 replicas, free loopback ports, its
admin port included, a run directory of its own) and for SOAK_MINUTES (10 by default; --quick:
1) puts on it, all at once, from client threads bounded in time and count:

  * keep-alive GET /whoami, PUT /echo and POST /echo (a 4 KiB upload): harness.chaos.load,
  * GET /whoami on a fresh connection each (Connection: close),
  * streamed answers: GET /stream (20 lines, 50 ms apart),
  * WebSocket sessions on /ws: 10 messages echoed, then the closing handshake;

and meanwhile, one at a time on a fixed schedule: a replica `docker kill`ed every 20 s, a
`docker pause` (unpaused 3 s later if nmc has not replaced it), a scale 3 -> 5 and back, a
rollout to a second image (FROM the site's, built here, removed at the end) and, in a full run,
back (quick: each once, in the first minute).

Every 10 s it samples nmc's RSS, open fds, greenlets, client and replica connections by TCP state
(nmc's /status `process` section), the cluster's containers and the docker-proxy processes of
its ports (count and RSS, from /proc). After the warm-up (the first minute; quick: 20 s) it fits a
least-squares line to each figure and judges its growth over the window against a tolerance
(harness.soak.samples.TOLERANCES says which and why).

It passes when no figure keeps growing, no idempotent request failed (GET, PUT, the stream's
head, on keep-alive or fresh connections; POSTs without an Idempotency-Key may fail when their
replica dies, and streams and WebSocket sessions may be cut by a fault under them: counted,
reported, and each must fall in a fault's span), and nothing leaked at the end: nmc exited 0 on
SIGTERM, no container of the cluster left, no docker-proxy of its ports left, its run directory
empty. The report goes to bench/results/soak-<UTC time>.md; exit code 0 on a pass, 1 on a
failure, 130 when interrupted (the cluster is removed in every case).
"""
