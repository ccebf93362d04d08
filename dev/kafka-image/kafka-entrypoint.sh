#!/bin/bash
# Writes server.properties from the KAFKA_* environment (the apache/kafka image's convention), formats
# the storage once, and runs the broker in the foreground (PID 1: a stop is a controlled shutdown).
set -euo pipefail
DATA="${KAFKA_DATA_DIR:-/var/lib/kafka/data}"
CONF=/var/lib/kafka/server.properties
mkdir -p "$DATA"

{
  echo "# from the KAFKA_* environment (kafka-entrypoint.sh)"
  while IFS='=' read -r -d '' name value; do
    case "$name" in
      KAFKA_HEAP_OPTS|KAFKA_OPTS|KAFKA_JVM_PERFORMANCE_OPTS|KAFKA_LOG4J_OPTS|KAFKA_DATA_DIR) continue ;;
      KAFKA_*) ;;
      *) continue ;;
    esac
    key="${name#KAFKA_}"
    key="${key//___/-}"          # ___ -> -
    key="${key//__/@}"           # __  -> _ (via a placeholder)
    key="${key//_/.}"            # _   -> .
    key="${key//@/_}"
    printf '%s=%s\n' "${key,,}" "$value"
  done < <(env -0)
  [[ -n "${KAFKA_LOG_DIRS:-}" ]] || echo "log.dirs=$DATA"
} >"$CONF"

if [[ ! -f "$DATA/meta.properties" ]]; then
  cluster_id="${CLUSTER_ID:-}"
  while [[ -z "$cluster_id" || "$cluster_id" == -* ]]; do
    cluster_id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
  done
  java -Xmx128m -XX:TieredStopAtLevel=1 -cp '/opt/kafka/libs/*' kafka.tools.StorageTool \
    format -t "$cluster_id" -c "$CONF" >&2
fi

cat >/var/lib/kafka/log4j2.xml <<'XML'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders><Console name="stdout" target="SYSTEM_OUT"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console></Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Root level="INFO"><AppenderRef ref="stdout"/></Root>
  </Loggers>
</Configuration>
XML

# shellcheck disable=SC2086  # the options are word lists
exec java $KAFKA_HEAP_OPTS ${KAFKA_OPTS:-} -XX:+UseG1GC -Djava.awt.headless=true \
  -Dlog4j2.configurationFile=/var/lib/kafka/log4j2.xml -cp '/opt/kafka/libs/*' kafka.Kafka "$CONF"
