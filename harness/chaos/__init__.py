"""A bounded chaos run against an nmc cluster of its own: `make chaos CHAOS_ARGS="..."`.

It starts its own nmc-server (cluster `nmc-chaos-<random>` on free loopback ports, its admin
port included, so that runs never meet on the default 3100), puts a steady load on it (GET
/whoami, POST /echo and PUT /echo with a 4 KiB body, from --clients threads with a keep-alive
session each) and meanwhile, on a schedule fixed by --seed:

  * every --kill-every seconds `docker kill`s a replica (SIGKILL),
  * once `docker pause`s one (and unpauses it 3 s later if it still exists),
  * once makes one crash through the site: GET /crash straight to the replica's own port.

For every kill, pause and crash it measures the time to replace: from the action until a new
container of the same name is running and answers /healthz on its port (polled every 20 ms).
At the end it stops nmc with SIGTERM, checks that no container of its cluster is left (and
removes any), prints one report and writes it to bench/results/chaos-<UTC time>.md.

Only the cluster's own containers are touched (found by the label nmc.cluster=<its name>); the
Docker engine is never restarted. Everything is bounded in time: the run takes about
--duration + 15 s, and Ctrl-C (or SIGTERM) at any point still removes the cluster.

--no-chaos runs the load alone (a baseline for latency and throughput).

--changes runs, instead of the chaos, a fixed sequence of live changes through nmc's admin API
(POST /scale, POST /rollout on a free admin port of its own) under the same load (32 clients by
default), each call waited for, with SETTLE seconds of load after it:

  0. steady load, no change (STEADY seconds),
  1. scale 2 -> 6,   2. scale 6 -> 1,   3. scale 1 -> 2,
  4. rollout to a second image: FROM nodejs.org plus one LABEL nmc.chaos=<cluster>, built through
     the Docker SDK (no registry), tagged <cluster>:changes and removed at the end,
  5. rollout back to nodejs.org with max_surge 2.

A phase lasts from its call until the next call; a request counts as sent in the phase it was
sent in, a failure in the phase it failed in, so the phases add up to the totals. For each phase
the report gives its times, the call's answer, requests and failures by method, and the replicas
(container and image ids) before and after, checked against what the change should leave. A run
takes about 25 s (at most CHANGES_LIMIT seconds of load); Ctrl-C cleans up as above, the image
included.

--swarm runs either mode against `nmc-server --swarm` (the engine must be a swarm manager, else
it says so in one line and exits 2, the engine left as it is): the replicas are the tasks of the
Swarm service named after the cluster, replica `<cluster>.<slot>`, each a container named
`<cluster>.<slot>.<task id>` (labelled nmc.cluster as well) on an ephemeral published port. The
chaos kills, pauses and crashes task containers; Swarm replaces a dead task itself, so the time
to replace runs from the action until a NEW container of the same slot is running and answers
/healthz on its own published port. --changes goes through the admin API as above (nmc drives
Swarm: the scale is the service's replica count, a rollout Swarm's start-first update; the
second image is on the same engine, so the one-node swarm runs it without a registry). At the
end the service must be gone (nmc removes it on SIGTERM) and its task containers too, within
SWARM_GONE_LIMIT seconds: what is left is a leak, and removed (the service first).

Exit code: 0 when GET and PUT (idempotent) had no failure, no answer was wrong, nothing leaked
and (--changes) every change answered and left the expected replicas; 1 otherwise; 2 bad
options; 130 interrupted. POST failures are reported and explained but do not fail the run: a
POST cut off mid-way cannot be retried safely by a relay.
"""
