#!/usr/bin/env bash
# Make a Node.js base image without a container registry: pack this machine's `node` binary, the
# shared libraries it needs (as `ldd` lists them, at the same paths) and the dynamic loader into a
# minimal root file system, and `docker import` it.
#
# Usage: nodejs/make-base-image.sh [IMAGE_NAME]        (default: nmc-node-base:20)
#
# The image is labelled nmc.node-sha256=<sha256 of the node binary>; when an image of that name
# already carries the same label, nothing is done. Linux only (the binary runs in the container).
set -euo pipefail

image=${1:-nmc-node-base:20}
me=make-base-image

say() { echo "$me: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(uname -s)" = Linux ] || die "needs Linux: the host's node binary is copied into the image"
command -v docker >/dev/null 2>&1 || die "docker is not installed"
node_cmd=$(command -v node) || die "no 'node' on PATH (install Node.js 20, or use a registry: OFFLINE=0)"
node_bin=$(readlink -f "$node_cmd")
[ "$(dd if="$node_bin" bs=1 skip=1 count=3 2>/dev/null)" = ELF ] || die "$node_bin is not an ELF binary"
command -v ldd >/dev/null 2>&1 || die "ldd is missing (it lists the libraries node needs)"

node_version=$("$node_bin" --version) || die "$node_bin --version failed"
node_sha=$(sha256sum "$node_bin" | cut -d' ' -f1)

# What goes in besides node: /bin/sh (so that `npm start` and RUN lines work) and npm when this
# machine has it (apps without a Dockerfile run with `npm start`, see `nmc-server --build`).
# Bump BASE_LAYOUT when that changes, so that older base images are made again.
BASE_LAYOUT=2
npm_dir=
npm_cmd=$(command -v npm 2>/dev/null) && npm_dir=$(dirname "$(dirname "$(readlink -f "$npm_cmd")")")
[ -n "$npm_dir" ] && [ -f "$npm_dir/package.json" ] || npm_dir=
stamp="$node_sha/$BASE_LAYOUT"

if have=$(docker image inspect -f '{{ index .Config.Labels "nmc.base-stamp" }}' "$image" 2>/dev/null) \
    && [ "$have" = "$stamp" ]; then
  say "$image is up to date (Node.js $node_version from $node_bin, sha256 ${node_sha:0:12}); nothing to do"
  exit 0
fi

tag=${image##*:}
major=${node_version#v}; major=${major%%.*}
if [[ $image == *:* && $tag =~ ^[0-9]+$ && $tag != "$major" ]]; then
  say "warning: $node_bin is Node.js $node_version, but the image is tagged :$tag"
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/nmc-node-base.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/tmp" "$root/home/node"
chmod 1777 "$root/tmp"

say "packing Node.js $node_version from $node_bin (sha256 ${node_sha:0:12}) into $image"
cp "$node_bin" "$root/usr/local/bin/node"
chmod 755 "$root/usr/local/bin/node"

# Libraries and the loader, at the paths ldd shows (symlinks resolved: the file lands at that path).
ldd_out=$(ldd "$node_bin" 2>&1) || {
  case $ldd_out in
    *"not a dynamic executable"*|*"statically linked"*) ldd_out= ;;
    *) die "ldd $node_bin failed: $ldd_out" ;;
  esac
}
if grep -q 'not found' <<<"$ldd_out"; then
  die "ldd cannot find some libraries of $node_bin: $(grep 'not found' <<<"$ldd_out" | tr -s ' \t\n' ' ')"
fi
sh_bin=$(readlink -f "$(command -v dash || command -v sh)")
ldd_out="$ldd_out
$(ldd "$sh_bin" 2>/dev/null || true)"
libs=$(awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' <<<"$ldd_out" | sort -u)
count=0
for lib in $libs; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
  count=$((count + 1))
done
say "copied $count libraries: $(tr '\n' ' ' <<<"$libs")"

mkdir -p "$root/bin"
cp "$sh_bin" "$root/bin/sh"
if [ -n "$npm_dir" ]; then
  mkdir -p "$root/usr/local/lib/node_modules"
  cp -r "$npm_dir" "$root/usr/local/lib/node_modules/npm"
  printf '#!/bin/sh\nexec node /usr/local/lib/node_modules/npm/bin/npm-cli.js "$@"\n' >"$root/usr/local/bin/npm"
  chmod 755 "$root/usr/local/bin/npm"
  say "added /bin/sh and npm $(node "$npm_dir/bin/npm-cli.js" --version 2>/dev/null || echo '?')"
else
  say "added /bin/sh (no npm on this machine: apps without a Dockerfile cannot run \`npm start\`)"
fi

cat >"$root/etc/passwd" <<'PASSWD'
root:x:0:0:root:/root:/usr/sbin/nologin
node:x:1000:1000:node:/home/node:/usr/sbin/nologin
PASSWD
cat >"$root/etc/group" <<'GROUP'
root:x:0:
node:x:1000:
GROUP
cat >"$root/etc/nsswitch.conf" <<'NSS'
passwd: files
group: files
hosts: files dns
NSS

id=$(tar -C "$root" --numeric-owner --owner=0 --group=0 -c . | docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change "LABEL nmc.node-sha256=$node_sha" \
  --change "LABEL nmc.base-stamp=$stamp" \
  --change "LABEL nmc.node-version=$node_version" \
  --change 'CMD ["node"]' \
  - "$image") || die "docker import failed"
say "created $image ($id)"
