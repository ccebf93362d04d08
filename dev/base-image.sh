#!/usr/bin/env bash
# The local base image for podman builds where no image registry is reachable: Debian bookworm
# (minbase) with python3, python3-venv and ca-certificates, made by debootstrap from Debian's
# packages and imported into podman. Its root filesystem is cached as a tarball under
# ~/.cache/apaas-erp-sync/images (made once, about a minute; a later run imports it in seconds).
# Prints the image name. Needs root (debootstrap) the first time, and podman.
#
#   dev/base-image.sh            ensure the image exists; print its name
#   dev/base-image.sh --rebuild  make the tarball again (e.g. for Debian's security updates)
set -euo pipefail
CACHE_DIR="${ERP_SYNC_CACHE_DIR:-$HOME/.cache/apaas-erp-sync}"
SUITE="bookworm"
INCLUDE="python3,python3-venv,ca-certificates"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
NAME="localhost/apaas-erp-sync-base:$SUITE"
TARBALL="$CACHE_DIR/images/debian-$SUITE-minbase-python3-v1.tar"
PODMAN=(podman --runtime runc)   # crun, podman's default runtime, fails on hybrid cgroups hosts

log() { printf '[base-image] %s\n' "$*" >&2; }

mkdir -p "$(dirname "$TARBALL")"
exec {lock_fd}>"$TARBALL.lock"
flock "$lock_fd"

if [[ "${1:-}" == "--rebuild" ]]; then
  rm -f "$TARBALL"
  "${PODMAN[@]}" rmi -f "$NAME" >/dev/null 2>&1 || true
fi

if [[ ! -s "$TARBALL" ]]; then
  command -v debootstrap >/dev/null 2>&1 || { log "debootstrap is missing (apt-get install debootstrap)"; exit 1; }
  rootfs="$(mktemp -d "${TMPDIR:-/tmp}/erp-sync-rootfs.XXXXXX")"
  trap 'rm -rf "$rootfs"' EXIT
  log "debootstrap --variant=minbase --include=$INCLUDE $SUITE (about a minute)"
  if ! debootstrap --variant=minbase --include="$INCLUDE" "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1; then
    tail -n 30 "$rootfs.log" >&2
    exit 1
  fi
  rm -f "$rootfs.log"
  # what an image does not need: downloaded packages and package lists (apt-get update restores them)
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*
  tar -C "$rootfs" -cf "$TARBALL.tmp" .
  mv "$TARBALL.tmp" "$TARBALL"
  "${PODMAN[@]}" rmi -f "$NAME" >/dev/null 2>&1 || true
  log "cached $TARBALL ($(du -h "$TARBALL" | cut -f1))"
fi

if ! "${PODMAN[@]}" image exists "$NAME"; then
  # the environment python:3.11-slim sets too (an imported tarball has none: PATH would be empty in a build)
  "${PODMAN[@]}" import -q \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    "$TARBALL" "$NAME" >/dev/null
  log "imported $NAME"
fi
echo "$NAME"
