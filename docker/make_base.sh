#!/bin/bash
# Make a local stand-in for debian:bookworm-slim from Debian packages, for machines that reach a
# Debian mirror but not Docker Hub: debootstrap (minbase) + `docker import`.
#   docker/make_base.sh [IMAGE] [MIRROR]     (root; default roboloop-base:bookworm)
# MIRROR defaults to the first Debian mirror in this machine's apt sources. Bookworm's python3
# is 3.11, the Python of the project's venv (the same cp311 wheels).
set -euo pipefail
IMAGE=${1:-roboloop-base:bookworm}
MIRROR=${2:-$( (grep -rhoE 'https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list \
    /etc/apt/sources.list.d/ 2>/dev/null || true) | head -n1 | tr -d ' ')}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS=$(mktemp -d /tmp/roboloop-rootfs.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "make_base: debootstrap bookworm from $MIRROR -> $IMAGE"
nice -n 10 debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" > "$ROOTFS.log" 2>&1 \
    || { tail -n 20 "$ROOTFS.log"; exit 1; }
rm -f "$ROOTFS.log"
# as in the official slim images: no apt caches in the image
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | docker import - "$IMAGE"
