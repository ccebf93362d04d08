#!/usr/bin/env bash
# Builds the Kafka image of the tests' testcontainers path (dev/kafka-image/Dockerfile) from the Kafka
# jars dev/kafka.sh fetches (cached under ~/.cache/apaas-erp-sync), and prints its name. Rebuilt only
# when the jars, the Dockerfile or the entry point change (the engine's layer cache).
#
#   dev/kafka-image.sh                  with podman, on the local Debian base (dev/base-image.sh)
#   ENGINE=docker dev/kafka-image.sh    with docker, on debian:bookworm-slim
# BASE_IMAGE overrides the base; KAFKA_VERSION as for dev/kafka.sh.
set -euo pipefail
DEV="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
ENGINE="${ENGINE:-podman}"
case "$ENGINE" in
  podman) CLI=(podman --runtime runc); BASE="${BASE_IMAGE:-$(bash "$DEV/base-image.sh")}" ;;
  docker) CLI=(docker); BASE="${BASE_IMAGE:-debian:bookworm-slim}" ;;
  *) echo "ENGINE must be podman or docker" >&2; exit 2 ;;
esac

libs="$(bash "$DEV/kafka.sh" fetch)"          # .../kafka-<version>/libs
version="$(basename "$(dirname "$libs")")"; version="${version#kafka-}"
IMAGE="localhost/apaas-erp-sync-kafka:$version"

ctx="$(mktemp -d "${TMPDIR:-/tmp}/erp-sync-kafka-image.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
cp "$DEV/kafka-image/Dockerfile" "$DEV/kafka-image/kafka-entrypoint.sh" "$ctx/"
mkdir "$ctx/libs"
cp -l "$libs"/*.jar "$ctx/libs/" 2>/dev/null || cp "$libs"/*.jar "$ctx/libs/"   # hard links when possible

args=(--build-arg "BASE_IMAGE=$BASE" -t "$IMAGE")
old="$("${CLI[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
log="$ctx.log"
if ! "${CLI[@]}" build "${args[@]}" "$ctx" >"$log" 2>&1; then
  tail -n 40 "$log" >&2
  rm -f "$log"
  echo "[kafka-image] $ENGINE build failed" >&2
  exit 1
fi
rm -f "$log"
new="$("${CLI[@]}" image inspect --format '{{.Id}}' "$IMAGE")"
if [[ -n "$old" && "$old" != "$new" ]]; then
  "${CLI[@]}" rmi "$old" >/dev/null 2>&1 || true   # the previous build, now untagged
fi
echo "$IMAGE"
