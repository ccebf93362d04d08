#!/usr/bin/env bash
# A real Confluent-compatible schema registry on 127.0.0.1: Apicurio Registry (Confluent API at
# http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7), built once from its jars on Maven Central (dev/registry/,
# a small Maven project; no Docker), in-memory storage (a restart forgets every schema).
#
#   dev/registry.sh fetch|start|stop|status|url
#
#   REGISTRY_PORT              port (default 8081)
#   REGISTRY_RUN_DIR           pid file and log (default $ERP_SYNC_CACHE_DIR/registry-$REGISTRY_PORT)
#   REGISTRY_START_TIMEOUT_SECONDS  (default 90)    REGISTRY_HEAP_OPTS (default -Xmx256m)
#   ERP_SYNC_CACHE_DIR         the build (default ~/.cache/apaas-erp-sync); JAVA_HOME: Java 17+
#
# fetch builds into the cache (first time: about 130 MB of jars from Maven Central, then ~15 s);
# start builds if needed, starts the registry and waits until its Confluent API answers;
# stop ends the process start started (by its pid), and only that one.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
SRC="$SCRIPT_DIR/registry"
CACHE_DIR="${ERP_SYNC_CACHE_DIR:-$HOME/.cache/apaas-erp-sync}"
REGISTRY_PORT="${REGISTRY_PORT:-8081}"
REGISTRY_RUN_DIR="${REGISTRY_RUN_DIR:-$CACHE_DIR/registry-$REGISTRY_PORT}"
REGISTRY_START_TIMEOUT_SECONDS="${REGISTRY_START_TIMEOUT_SECONDS:-90}"
REGISTRY_HEAP_OPTS="${REGISTRY_HEAP_OPTS:--Xmx256m}"
PID_FILE="$REGISTRY_RUN_DIR/registry.pid"
OUT_FILE="$REGISTRY_RUN_DIR/registry.log"
URL="http://127.0.0.1:$REGISTRY_PORT/apis/ccompat/v7"

log() { printf '[registry.sh:%s] %s\n' "$REGISTRY_PORT" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[[ "$REGISTRY_PORT" =~ ^[0-9]+$ ]] || die "REGISTRY_PORT must be a number: $REGISTRY_PORT"
[[ "$REGISTRY_START_TIMEOUT_SECONDS" =~ ^[0-9]+$ ]] || die "REGISTRY_START_TIMEOUT_SECONDS must be a number"

# shellcheck source=dev/java.sh
source "$SCRIPT_DIR/java.sh"  # find_java

# the build is keyed by the content of dev/registry/: an edit there builds again
source_hash() { (cd "$SRC" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-12; }
BUILD_DIR="$CACHE_DIR/apicurio-registry-$(source_hash)"
RUN_JAR="$BUILD_DIR/app/target/quarkus-app/quarkus-run.jar"

fetch() {
  [[ -f "$BUILD_DIR/.complete" ]] && return 0
  mkdir -p "$CACHE_DIR"
  exec {lock}>"$CACHE_DIR/registry-build.lock"
  command -v flock >/dev/null 2>&1 && flock "$lock"
  if [[ ! -f "$BUILD_DIR/.complete" ]]; then
    command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to build the registry)"
    log "building Apicurio Registry from Maven Central into $BUILD_DIR (first time: ~130 MB of jars)..."
    rm -rf "$BUILD_DIR" && mkdir -p "$BUILD_DIR" && cp -r "$SRC/." "$BUILD_DIR/"
    local t0=$SECONDS
    if ! mvn -B -Dstyle.color=never -f "$BUILD_DIR/pom.xml" -DskipTests package >"$BUILD_DIR/build.log" 2>&1; then
      tail -n 40 "$BUILD_DIR/build.log" >&2 || true
      die "mvn failed to build the registry (full log: $BUILD_DIR/build.log)"
    fi
    [[ -f "$RUN_JAR" ]] || die "the build made no $RUN_JAR (log: $BUILD_DIR/build.log)"
    touch "$BUILD_DIR/.complete"
    log "built in $((SECONDS - t0)) s"
  fi
  exec {lock}>&-
}

running_pid() {  # the pid start recorded, if that process still runs
  [[ -f "$PID_FILE" ]] || return 1
  local pid; pid="$(cat "$PID_FILE")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && echo "$pid"
}

answers() {
  python3 - "$URL/subjects" <<'PY' 2>/dev/null
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as r:
    sys.exit(0 if r.status == 200 else 1)
PY
}

start() {
  if pid="$(running_pid)"; then log "already running (pid $pid) at $URL"; return 0; fi
  fetch
  find_java
  mkdir -p "$REGISTRY_RUN_DIR"
  # shellcheck disable=SC2086 # REGISTRY_HEAP_OPTS is a list of JVM options
  nohup "$JAVA" $REGISTRY_HEAP_OPTS -Dquarkus.http.host=127.0.0.1 -Dquarkus.http.port="$REGISTRY_PORT" \
    -jar "$RUN_JAR" >"$OUT_FILE" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$PID_FILE"
  local deadline=$((SECONDS + REGISTRY_START_TIMEOUT_SECONDS))
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 30 "$OUT_FILE" >&2 || true
      rm -f "$PID_FILE"
      die "the registry exited during start (log: $OUT_FILE)"
    fi
    if ((SECONDS >= deadline)); then
      tail -n 30 "$OUT_FILE" >&2 || true
      stop
      die "the registry did not answer within ${REGISTRY_START_TIMEOUT_SECONDS} s (log: $OUT_FILE)"
    fi
    sleep 0.3
  done
  log "ready (pid $pid) at $URL"
}

stop() {
  local pid
  if ! pid="$(running_pid)"; then rm -f "$PID_FILE"; return 0; fi
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then log "pid $pid did not stop in 10 s: SIGKILL"; kill -9 "$pid" 2>/dev/null || true; fi
  rm -f "$PID_FILE"
  log "stopped"
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  status) if pid="$(running_pid)"; then echo "running (pid $pid) at $URL"; else echo "not running"; exit 1; fi ;;
  url) echo "$URL" ;;
  *) echo "usage: $0 fetch|start|stop|status|url" >&2; exit 2 ;;
esac
