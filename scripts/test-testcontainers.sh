#!/usr/bin/env bash
# The integration tests with the session's Kafka from testcontainers, through podman's
# Docker-compatible API (no Docker engine needed):
#
#   scripts/test-testcontainers.sh                 tests/integration
#   scripts/test-testcontainers.sh -k spec_example pytest arguments replace the default selection
#
# It builds the Kafka image from the cached jars (dev/kafka-image.sh, on the local Debian base),
# starts `podman system service` on a private socket, runs pytest with DOCKER_HOST pointing at it
# and ERP_SYNC_TEST_KAFKA=container (the broker fixture then starts Kafka with testcontainers; see
# dev/containers.py; Ryuk, the reaper, is off: no registry), then stops the service (by its pid)
# and removes any container the session left (by its session label). Needs root (podman, as
# scripts/image-check.sh); installs podman, runc and debootstrap from Debian when missing.
#
# With a Docker engine instead: ENGINE=docker dev/kafka-image.sh, then
#   ERP_SYNC_TEST_KAFKA=container scripts/test.sh tests/integration
# (or ERP_SYNC_TEST_KAFKA_IMAGE=apache/kafka:4.1.1 to use the official image instead).
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
say() { printf '[testcontainers] %s\n' "$*" >&2; }

if [[ "$(id -u)" != "0" ]]; then
  echo "testcontainers run skipped: it needs root (rootful podman, debootstrap)"
  exit 0
fi
for tool in podman runc debootstrap; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    say "installing Debian packages podman runc debootstrap"
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
    break
  fi
done

bash scripts/bootstrap.sh
VENV="${ERP_SYNC_VENV:-$ROOT/.venv}"
IMAGE="$(bash dev/kafka-image.sh)"
say "Kafka image $IMAGE"

run_dir="$(mktemp -d "${TMPDIR:-/tmp}/erp-sync-testcontainers.XXXXXX")"
sock="$run_dir/podman.sock"
session="tc-$$-$RANDOM"
podman --runtime runc system service --time=0 "unix://$sock" >"$run_dir/service.log" 2>&1 &
service_pid=$!
cleanup() {
  local ids
  ids="$(podman ps -aq --filter "label=apaas-erp-sync.test.session=$session" 2>/dev/null || true)"
  if [[ -n "$ids" ]]; then
    say "removing containers the session left: $ids"
    # shellcheck disable=SC2086
    podman rm -f -t 0 $ids >/dev/null 2>&1 || true
  fi
  kill "$service_pid" 2>/dev/null || true
  wait "$service_pid" 2>/dev/null || true
  rm -rf "$run_dir"
}
trap cleanup EXIT

export DOCKER_HOST="unix://$sock" ERP_SYNC_TEST_KAFKA=container ERP_SYNC_TEST_SESSION="$session"
export TESTCONTAINERS_RYUK_DISABLED=true
unset KAFKA_BOOTSTRAP_SERVERS
for _ in $(seq 1 100); do
  "$VENV/bin/python" -c 'import sys; from dev.containers import engine_answers; sys.exit(not engine_answers())' \
    && break
  sleep 0.1
done
"$VENV/bin/python" -c 'import sys; from dev.containers import engine_answers; sys.exit(not engine_answers())' \
  || { cat "$run_dir/service.log" >&2; say "podman system service does not answer on $sock"; exit 1; }
say "podman system service (pid $service_pid) answers on $DOCKER_HOST"

args=("$@")
((${#args[@]})) || args=(tests/integration)
rc=0
"$VENV/bin/python" -m pytest -p no:cacheprovider "${args[@]}" || rc=$?
exit "$rc"
