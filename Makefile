# nmc: `make run` runs the cluster, `make test` passes the tests. Both set up what they need:
# a Docker engine (scripts/ensure-docker.sh), the site image (nodejs/build-image.sh), a virtualenv.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
IMAGE ?= nodejs.org
ARGS ?=
PYTEST_ARGS ?=

.PHONY: all run test unit nodejs docker venv clean

all: venv nodejs

## run the cluster in the foreground: make run ARGS="-n 4 -p 8000"
run: venv nodejs
	$(PY) nmc_server.py $(ARGS)

## the whole test suite against the real Docker engine
test: venv nodejs
	$(PY) -m pytest $(PYTEST_ARGS)

## only the tests that need neither Docker nor the network
unit: venv
	$(PY) -m pytest -m "not docker" $(PYTEST_ARGS)

## a bounded chaos run against a cluster of its own (kills, a pause, a crash under load; a report
## in bench/results/): make chaos CHAOS_ARGS="--duration 60 --clients 64 --seed 7"
## CHAOS_ARGS="--changes": scale 2 -> 6 -> 1 -> 2 and a rollout and back through the admin API
## under load instead, failures per phase (~25 s)
CHAOS_ARGS ?=
.PHONY: chaos
chaos: venv nodejs
	$(PY) scripts/chaos.py $(CHAOS_ARGS)

## a bounded soak against a cluster of its own: keep-alive and fresh-connection GETs, PUT and POST
## uploads, streamed answers and WebSocket sessions at once, while a replica is killed every 20 s,
## one is paused, the cluster scaled up and down and rolled out; nmc's RSS, fds, greenlets and
## connections, the containers and docker-proxies sampled every 10 s and judged on growth; a report
## in bench/results/ (10 min; SOAK_MINUTES=3 for 3; QUICK=1 for 1 min, each fault once)
SOAK_MINUTES ?=
.PHONY: soak
soak: venv nodejs
	SOAK_MINUTES=$(SOAK_MINUTES) $(PY) scripts/soak.py $(if $(QUICK),--quick)

## a swarm of three nodes on this machine, for real (as root): three dockerds, each in a network
## namespace of its own on the bridge nmclab0 (10.213.0.0/24), make one swarm; a service of 6 tasks
## spreads over them and answers; node 3's dockerd is killed and its tasks answer again on the
## others; a report in bench/results/; then everything is removed, also on a failure or Ctrl-C
## (~45 s). To keep the lab up: scripts/swarm_lab.py up (then status, demo, down)
.PHONY: swarm-lab
## Then, on a lab made again, nmc --swarm -n 6 relays to its tasks under load while node 3 dies.
swarm-lab: venv nodejs
	@trap 'true' INT TERM; status=0; \
	$(PYTHON) scripts/swarm_lab.py up && $(PYTHON) scripts/swarm_lab.py status && \
	$(PYTHON) scripts/swarm_lab.py demo || status=$$?; \
	$(PYTHON) scripts/swarm_lab.py down || status=$$?; \
	if [ $$status = 0 ]; then \
	  $(PYTHON) scripts/swarm_lab.py up && $(PYTHON) scripts/swarm_lab_nmc.py || status=$$?; \
	  $(PYTHON) scripts/swarm_lab.py down || status=$$?; \
	fi; \
	exit $$status

## build the site image (nodejs.org); OFFLINE=1 skips the registry
nodejs: docker
	@IMAGE=$(IMAGE) nodejs/build-image.sh >/dev/null

## make sure a Docker engine answers (installs and starts one on a fresh Debian machine as root)
docker:
	@scripts/ensure-docker.sh

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	@touch $@

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

## the benchmark: nmc (and nmc under gunicorn -w 2) against direct, nginx, a naive gevent+requests
## relay, PM2 and node http-proxy, and nmc and nginx over HTTPS: small GETs, 10 MiB GET and POST,
## RSS (also with 5,000 idle connections), start-up time of 1 and 8 replicas, a WebSocket echo
## (messages/s over 64 sockets: direct, nginx, nmc, http-proxy); one bounded run (~11-12 min;
## QUICK=1 ~2.5 min), one table with the targets in bench/results/:
## make bench [QUICK=1] [BENCH_ARGS="--reps 5 --no-ws"]
BENCH_ARGS ?=
.PHONY: bench
bench: venv nodejs
	$(PY) bench/bench.py $(if $(QUICK),--quick) $(BENCH_ARGS)
