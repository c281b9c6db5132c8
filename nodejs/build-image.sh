#!/usr/bin/env bash
# Build the demo site's image (what `make nodejs` runs).
#
# Environment:
#   IMAGE       image to build                  (default: nodejs.org)
#   NODE_IMAGE  Node.js base image to build on  (default: node:20-slim)
#   OFFLINE     1: do not try the registry; build on a local base image made from this machine's
#               Node.js by make-base-image.sh   (default: 0)
#   NMC_NODE_BASE  name of that local base image (default: nmc-node-base:20)
#
# NODE_IMAGE is used when it is present locally or `docker pull` gets it; otherwise (or with
# OFFLINE=1) the local base image is made (or reused) and used. Prints the image id on stdout.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
IMAGE=${IMAGE:-nodejs.org}
NODE_IMAGE=${NODE_IMAGE:-node:20-slim}
OFFLINE=${OFFLINE:-0}
local_base=${NMC_NODE_BASE:-nmc-node-base:20}
me=build-image

say() { echo "$me: $*" >&2; }
die() { say "error: $*"; exit 1; }

command -v docker >/dev/null 2>&1 || die "docker is not installed"
timeout 20 docker info >/dev/null 2>&1 || die "no Docker engine answers (start Docker, or run scripts/ensure-docker.sh)"

base=
if [ "$OFFLINE" != 1 ]; then
  if docker image inspect "$NODE_IMAGE" >/dev/null 2>&1; then
    base=$NODE_IMAGE
  elif timeout 120 docker pull -q "$NODE_IMAGE" >/dev/null 2>&1; then
    say "pulled $NODE_IMAGE"
    base=$NODE_IMAGE
  else
    say "cannot pull $NODE_IMAGE (no registry reachable?): building on a local Node.js base image ($local_base)"
  fi
else
  say "OFFLINE=1: building on a local Node.js base image ($local_base)"
fi
if [ -z "$base" ]; then
  "$here/make-base-image.sh" "$local_base" || die "could not make the local base image $local_base"
  base=$local_base
fi

started=$(date +%s)
transcript=$(mktemp)
trap 'rm -f "$transcript"' EXIT
# The transcript is shown when the build fails, or always with VERBOSE=1. (The CLI may warn that
# the legacy builder is deprecated when buildx is missing: harmless.)
build() { docker build --force-rm --build-arg NODE_IMAGE="$base" -t "$IMAGE" "$here"; }  # --force-rm: a failed step leaves no container
status=0
if [ "${VERBOSE:-0}" = 1 ]; then
  build 2>&1 | tee "$transcript" >&2 || status=$?
else
  build >"$transcript" 2>&1 || status=$?
fi
if [ "$status" != 0 ]; then
  [ "${VERBOSE:-0}" = 1 ] || cat "$transcript" >&2
  die "docker build of $IMAGE on $base failed (see above)"
fi
id=$(docker image inspect -f '{{.Id}}' "$IMAGE")
say "built $IMAGE on $base: ${id#sha256:} ($(( $(date +%s) - started ))s)"
echo "$id"
