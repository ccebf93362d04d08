#!/usr/bin/env bash
# README command 1: the main job on the local stack, from a fresh machine.
#   Kafka (KRaft, from the Maven jars) → topics → ERP stub → sample events → erp-sync run → report
# Environment: DEMO_COUNT (default 20 sample events), KEEP_RUNNING=1 leaves Kafka and the stub up and
# prints the exports that point the erp-sync tools at them, KAFKA_PORT (default 9092), NO_COLOR.
# A failing step stops the demo with one line naming the step and its log, and exit status 1.
# It stops only what it started, by pid (the stub) or through dev/kafka.sh (the broker of its data dir).
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
VENV="${ERP_SYNC_VENV:-$ROOT/.venv}"
RUN_DIR="$(mktemp -d "${TMPDIR:-/tmp}/erp-sync-demo.XXXXXX")"   # every step's log; kept

if [[ -t 1 && -z "${NO_COLOR+set}" ]]; then BOLD=$'\033[1m' PLAIN=$'\033[0m'; else BOLD="" PLAIN=""; fi
step() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$PLAIN"; }
fail() { printf 'demo stopped: %s\n' "$*" >&2; exit 1; }   # one line: the step and where its log is
logged() {  # logged LOG CMD...: CMD's output on the terminal and in LOG; CMD's exit status (pipefail)
  local log="$1"; shift
  "$@" 2>&1 | tee "$log"
}

rc=0
logged "$RUN_DIR/bootstrap.log" bash scripts/bootstrap.sh || rc=$?
((rc == 0)) || fail "installing (scripts/bootstrap.sh) failed (exit $rc); log: $RUN_DIR/bootstrap.log"
export PATH="$VENV/bin:$PATH"

free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
answers() {  # answers URL: a 2xx from URL within 2 s (python of the venv: no curl needed; no proxy for 127.0.0.1)
  python -c 'import sys, urllib.request as u; u.build_opener(u.ProxyHandler({})).open(sys.argv[1], timeout=2)' \
    "$1" >/dev/null 2>&1
}

export KAFKA_PORT="${KAFKA_PORT:-9092}"
export KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-${ERP_SYNC_CACHE_DIR:-$HOME/.cache/apaas-erp-sync}/demo-kafka-$KAFKA_PORT}"
STUB_PORT="$(free_port)"
export ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
export ERP_SYNC_TOPIC="${ERP_SYNC_TOPIC:-apaas.workflow.completed}"
export ERP_SYNC_GROUP_ID="${ERP_SYNC_GROUP_ID:-apaas-erp-sync}"
export ERP_SYNC_ERP_URL="http://127.0.0.1:$STUB_PORT/erp/push"
export ERP_SYNC_METRICS_PORT="${ERP_SYNC_METRICS_PORT:-$(free_port)}"
export ERP_SYNC_LOG_FORMAT="${ERP_SYNC_LOG_FORMAT:-text}"
KAFKA_STARTED=0
STUB_PID=""

keep_running() {  # what is left running, the exports that point the tools at it, how to stop it
  local kafka_pid="" line
  if ((KAFKA_STARTED)) && line="$(bash dev/kafka.sh status 2>/dev/null)"; then
    kafka_pid="$(sed -n 's/^running pid \([0-9]*\) .*/\1/p' <<<"$line")"
  fi
  [[ -n "$kafka_pid" || -n "$STUB_PID" ]] || return 0
  echo
  echo "KEEP_RUNNING=1: left running:"
  [[ -z "$kafka_pid" ]] || echo "  Kafka on 127.0.0.1:$KAFKA_PORT (pid $kafka_pid, data in $KAFKA_DATA_DIR)"
  [[ -z "$STUB_PID" ]] || echo "  the ERP stub on 127.0.0.1:$STUB_PORT (pid $STUB_PID)"
  echo "point erp-sync status, replay, dlq replay, reset-offsets at them (paste into a shell):"
  # shellcheck disable=SC2016  # $PATH is for the shell the line is pasted into
  printf 'export PATH=%q:"$PATH"\n' "$VENV/bin"
  printf 'export %s=%q\n' \
    ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS "$ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS" \
    ERP_SYNC_TOPIC "$ERP_SYNC_TOPIC" \
    ERP_SYNC_GROUP_ID "$ERP_SYNC_GROUP_ID" \
    ERP_SYNC_DLQ_TOPIC "${ERP_SYNC_DLQ_TOPIC:-${ERP_SYNC_TOPIC%%,*}.dlq}" \
    ERP_SYNC_ERP_URL "$ERP_SYNC_ERP_URL"
  echo "stop them:"
  [[ -z "$STUB_PID" ]] || echo "  kill $STUB_PID"
  [[ -z "$kafka_pid" ]] || printf '  KAFKA_PORT=%q KAFKA_DATA_DIR=%q %q stop\n' "$KAFKA_PORT" "$KAFKA_DATA_DIR" \
    "$ROOT/dev/kafka.sh"
}

cleanup() {
  if [[ "${KEEP_RUNNING:-0}" == "1" ]]; then
    keep_running
    return
  fi
  [[ -z "$STUB_PID" ]] || kill "$STUB_PID" 2>/dev/null || true
  ((KAFKA_STARTED == 0)) || bash dev/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "1/6 Kafka (single-node KRaft on 127.0.0.1:$KAFKA_PORT, fresh data)"
bash dev/kafka.sh wipe >/dev/null 2>&1 || true   # the previous demo broker of this data dir, if any
logged "$RUN_DIR/kafka.log" bash dev/kafka.sh start || rc=$?
((rc == 0)) || fail "Kafka did not start on 127.0.0.1:$KAFKA_PORT (dev/kafka.sh start exited $rc); log:" \
  "$RUN_DIR/kafka.log, the broker's: $KAFKA_DATA_DIR/server.log"
KAFKA_STARTED=1

step "2/6 topics"
logged "$RUN_DIR/create-topics.log" erp-sync create-topics --partitions 3 || rc=$?
((rc == 0)) || fail "erp-sync create-topics failed (exit $rc); log: $RUN_DIR/create-topics.log"

step "3/6 ERP stub on 127.0.0.1:$STUB_PORT"
erp-sync erp-stub --port "$STUB_PORT" >"$RUN_DIR/erp-stub.log" 2>&1 &
STUB_PID=$!
health="http://127.0.0.1:$STUB_PORT/_stub/health"
for _ in $(seq 1 50); do
  answers "$health" && break
  kill -0 "$STUB_PID" 2>/dev/null || break
  sleep 0.2
done
if ! answers "$health"; then
  why="within 10 s"
  if ! kill -0 "$STUB_PID" 2>/dev/null; then
    wait "$STUB_PID" || rc=$?
    STUB_PID=""
    why="(it exited $rc)"
  fi
  fail "the ERP stub (erp-sync erp-stub) did not answer $health $why; log: $RUN_DIR/erp-stub.log"
fi
echo "push URL: $ERP_SYNC_ERP_URL"

step "4/6 sample events"
logged "$RUN_DIR/produce-sample.log" erp-sync produce-sample --count "${DEMO_COUNT:-20}" || rc=$?
((rc == 0)) || fail "erp-sync produce-sample failed (exit $rc); log: $RUN_DIR/produce-sample.log"

step "5/6 erp-sync run (exits once caught up and idle for 3 s; metrics on :$ERP_SYNC_METRICS_PORT)"
# pipefail: the pipeline fails when run does (the filter's own status is ignored)
erp-sync run --exit-when-idle 3 2>&1 | tee "$RUN_DIR/consumer.log" | { grep -v -E '"level": "DEBUG"' || true; } \
  || rc=$?
((rc == 0)) || fail "erp-sync run failed (exit $rc); log: $RUN_DIR/consumer.log"

step "6/6 what happened"
logged "$RUN_DIR/report.log" python -m consumer.devstack.report --stub "http://127.0.0.1:$STUB_PORT" || rc=$?
((rc == 0)) || fail "the report found records not accounted for, or the spec example's body differs (exit $rc);" \
  "log: $RUN_DIR/report.log"
echo
if [[ "${KEEP_RUNNING:-0}" == "1" ]]; then
  echo "logs: $RUN_DIR"
else
  echo "logs: $RUN_DIR   (KEEP_RUNNING=1 scripts/demo.sh leaves Kafka on :$KAFKA_PORT and the stub up)"
fi
