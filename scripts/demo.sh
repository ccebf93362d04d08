#!/usr/bin/env bash
# README command 1: the main job on the local stack, from a fresh machine.
#   Kafka (KRaft, from the Maven jars) → topics → ERP stub → sample events → erp-sync run → report
# Environment: DEMO_COUNT (default 20 sample events), KEEP_RUNNING=1 leaves Kafka and the stub up.
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
bash scripts/bootstrap.sh
VENV="${ERP_SYNC_VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"

free_port() { python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

export KAFKA_PORT="${KAFKA_PORT:-9092}"
export KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-${ERP_SYNC_CACHE_DIR:-$HOME/.cache/apaas-erp-sync}/demo-kafka-$KAFKA_PORT}"
STUB_PORT="$(free_port)"
export ERP_SYNC_KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:$KAFKA_PORT"
export ERP_SYNC_TOPIC="${ERP_SYNC_TOPIC:-apaas.workflow.completed}"
export ERP_SYNC_GROUP_ID="${ERP_SYNC_GROUP_ID:-apaas-erp-sync}"
export ERP_SYNC_ERP_URL="http://127.0.0.1:$STUB_PORT/erp/push"
export ERP_SYNC_METRICS_PORT="${ERP_SYNC_METRICS_PORT:-$(free_port)}"
export ERP_SYNC_LOG_FORMAT="${ERP_SYNC_LOG_FORMAT:-text}"
RUN_DIR="$(mktemp -d)"

cleanup() {
  if [[ "${KEEP_RUNNING:-0}" == "1" ]]; then
    echo "KEEP_RUNNING=1: Kafka on 127.0.0.1:$KAFKA_PORT and the ERP stub (pid ${STUB_PID:-?}) keep running."
    echo "  stop them: kill ${STUB_PID:-<stub pid>}; KAFKA_PORT=$KAFKA_PORT KAFKA_DATA_DIR=$KAFKA_DATA_DIR dev/kafka.sh stop"
    return
  fi
  [[ -n "${STUB_PID:-}" ]] && kill "$STUB_PID" 2>/dev/null || true
  bash dev/kafka.sh stop >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "1/6 Kafka (single-node KRaft on 127.0.0.1:$KAFKA_PORT, fresh data)"
bash dev/kafka.sh wipe >/dev/null 2>&1 || true
bash dev/kafka.sh start

step "2/6 topics"
erp-sync create-topics --partitions 3

step "3/6 ERP stub on 127.0.0.1:$STUB_PORT"
erp-sync erp-stub --port "$STUB_PORT" >"$RUN_DIR/erp-stub.log" 2>&1 &
STUB_PID=$!
for _ in $(seq 1 50); do
  curl -fsS "http://127.0.0.1:$STUB_PORT/_stub/health" >/dev/null 2>&1 && break
  sleep 0.2
done
curl -fsS "http://127.0.0.1:$STUB_PORT/_stub/health" >/dev/null || { cat "$RUN_DIR/erp-stub.log"; exit 1; }
echo "push URL: $ERP_SYNC_ERP_URL"

step "4/6 sample events"
erp-sync produce-sample --count "${DEMO_COUNT:-20}"

step "5/6 erp-sync run (exits once caught up and idle for 3 s; metrics on :$ERP_SYNC_METRICS_PORT)"
erp-sync run --exit-when-idle 3 2>&1 | tee "$RUN_DIR/consumer.log" | grep -v -E '"level": "DEBUG"' || true
[[ "${PIPESTATUS[0]}" == "0" ]] || { echo "erp-sync run failed"; exit 1; }

step "6/6 what happened"
python -m consumer.devstack.report --stub "http://127.0.0.1:$STUB_PORT"
echo
echo "logs: $RUN_DIR   (KEEP_RUNNING=1 scripts/demo.sh leaves Kafka on :$KAFKA_PORT and the stub up)"
