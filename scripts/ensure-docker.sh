#!/usr/bin/env bash
# Make sure a Docker engine answers. Used by `make run`, `make test` and `make nodejs`.
#
# - `docker info` answers: nothing to do.
# - Debian/Ubuntu as root (a fresh CI or dev machine): install Debian's docker.io when dockerd is
#   missing, start dockerd in the background with its log in $NMC_DOCKERD_LOG, wait until it answers.
# - anywhere else (a laptop with Docker Desktop, a non-root user): say how to start Docker, exit 1.
set -u

log=${NMC_DOCKERD_LOG:-/var/log/nmc-dockerd.log}
wait_seconds=${NMC_DOCKERD_WAIT:-60}

engine_answers() { timeout 10 docker info >/dev/null 2>&1; }

if command -v docker >/dev/null 2>&1 && engine_answers; then
  exit 0
fi

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1 || [ "$(uname -s)" != Linux ]; then
  echo "ensure-docker: no Docker engine answers at ${DOCKER_HOST:-unix:///var/run/docker.sock}." >&2
  echo "ensure-docker: start Docker (Docker Desktop, or 'sudo systemctl start docker') and try again." >&2
  exit 1
fi

if ! command -v dockerd >/dev/null 2>&1; then
  echo "ensure-docker: installing Debian's docker.io (dockerd is missing) ..." >&2
  export DEBIAN_FRONTEND=noninteractive
  if ! { apt-get update -qq && apt-get install -y -qq docker.io; } >/tmp/nmc-apt-docker.log 2>&1; then
    echo "ensure-docker: 'apt-get install docker.io' failed; see /tmp/nmc-apt-docker.log" >&2
    exit 1
  fi
fi

if ! pgrep -x dockerd >/dev/null 2>&1; then
  echo "ensure-docker: starting dockerd in the background (log: $log) ..." >&2
  mkdir -p "$(dirname "$log")"
  # setsid: dockerd must outlive the make (or CI step) that started it.
  setsid dockerd >>"$log" 2>&1 </dev/null &
fi

for _ in $(seq "$wait_seconds"); do
  if engine_answers; then
    echo "ensure-docker: Docker engine is up." >&2
    exit 0
  fi
  sleep 1
done
echo "ensure-docker: dockerd did not answer within ${wait_seconds}s; last lines of $log:" >&2
tail -n 15 "$log" >&2
exit 1
