#!/usr/bin/env bash
# Local single-node Apache Kafka (KRaft, combined broker+controller) on 127.0.0.1,
# run straight from the Kafka jars on Maven Central (no Docker, no Kafka tarball).
#
#   dev/kafka.sh fetch|start|stop|restart|status|wipe|logs
#
# See dev/README.md for the environment variables.
set -euo pipefail

SCRIPT_DIR="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)"
POM="$SCRIPT_DIR/pom.xml"

CACHE_DIR="${ERP_SYNC_CACHE_DIR:-$HOME/.cache/apaas-erp-sync}"
KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}"
KAFKA_DATA_DIR="${KAFKA_DATA_DIR:-$CACHE_DIR/kafka-data-$KAFKA_PORT}"
KAFKA_EXTRA_PROPERTIES="${KAFKA_EXTRA_PROPERTIES:-}"
KAFKA_AUTO_CREATE_TOPICS="${KAFKA_AUTO_CREATE_TOPICS:-false}"
KAFKA_START_TIMEOUT_SECONDS="${KAFKA_START_TIMEOUT_SECONDS:-90}"
KAFKA_STOP_TIMEOUT_SECONDS="${KAFKA_STOP_TIMEOUT_SECONDS:-30}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
KAFKA_OPTS="${KAFKA_OPTS:-}"                # extra JVM options for the broker (word-split)
KAFKA_CDS="${KAFKA_CDS:-1}"                 # 1: AppCDS class-data archive for faster JVM start
KAFKA_HOST="127.0.0.1"

KAFKA_HOME="$CACHE_DIR/kafka-$KAFKA_VERSION"
LIBS_DIR="$KAFKA_HOME/libs"
LIBS_MARKER="$LIBS_DIR/.complete"
CDS_DIR="$KAFKA_HOME/cds"

CONF_DIR="$KAFKA_DATA_DIR/config"
SERVER_PROPS="$CONF_DIR/server.properties"
LOG4J_BROKER="$CONF_DIR/log4j2-broker.xml"
LOG4J_TOOLS="$CONF_DIR/log4j2-tools.xml"
LOG_DIRS="$KAFKA_DATA_DIR/logs"          # Kafka data (topic partitions + KRaft metadata log)
APP_LOG="$KAFKA_DATA_DIR/server.log"     # broker's log4j2 output
OUT_FILE="$KAFKA_DATA_DIR/kafka.out"     # JVM stdout/stderr
PID_FILE="$KAFKA_DATA_DIR/kafka.pid"
CDS_PENDING="$KAFKA_DATA_DIR/cds.pending"  # archive the running broker dumps at a clean exit
BOOTSTRAP="$KAFKA_HOST:$KAFKA_PORT"

log() { printf '[kafka.sh:%s] %s\n' "$KAFKA_PORT" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# shellcheck source=dev/java.sh
source "$SCRIPT_DIR/java.sh"  # find_java

validate_env() {
  [[ "$KAFKA_PORT" =~ ^[0-9]+$ ]] || die "KAFKA_PORT must be a number: $KAFKA_PORT"
  [[ "$KAFKA_CONTROLLER_PORT" =~ ^[0-9]+$ ]] || die "KAFKA_CONTROLLER_PORT must be a number"
  [[ "$KAFKA_START_TIMEOUT_SECONDS" =~ ^[0-9]+$ ]] || die "KAFKA_START_TIMEOUT_SECONDS must be a number"
  [[ "$KAFKA_STOP_TIMEOUT_SECONDS" =~ ^[0-9]+$ ]] || die "KAFKA_STOP_TIMEOUT_SECONDS must be a number"
  [[ "$KAFKA_PORT" != "$KAFKA_CONTROLLER_PORT" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ"
}

# Run "$@" while holding an exclusive lock on file $1 (no-op locking if flock is missing).
# The lock fd is closed for children we leave running (see launch_broker).
with_lock() {
  local lockfile="$1"; shift
  mkdir -p "$(dirname "$lockfile")"
  if command -v flock >/dev/null 2>&1; then
    exec {LOCK_FD}>"$lockfile"
    flock "$LOCK_FD"
    local rc=0
    "$@" || rc=$?
    flock -u "$LOCK_FD"
    exec {LOCK_FD}>&-
    return "$rc"
  else
    "$@"
  fi
}

# ---------------------------------------------------------------- fetch

pom_digest() { sha256sum "$POM" | cut -d' ' -f1; }

libs_complete() {
  [[ -f "$LIBS_MARKER" ]] && [[ "$(cat "$LIBS_MARKER")" == "$(pom_digest)" ]]
}

do_fetch() {
  if libs_complete; then
    return 0
  fi
  command -v mvn >/dev/null 2>&1 || die "mvn not found (needed once to fetch the Kafka jars)"
  log "downloading the Kafka $KAFKA_VERSION jars from Maven Central into $LIBS_DIR (first run, up to a minute)..."
  local t0=$SECONDS
  local tmp="$KAFKA_HOME/libs.tmp.$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  local mvn_log="$KAFKA_HOME/fetch.log"
  if ! mvn -B -Dstyle.color=never -f "$POM" \
      org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies \
      -Dkafka.version="$KAFKA_VERSION" \
      -DincludeScope=runtime \
      -DoutputDirectory="$tmp" >"$mvn_log" 2>&1; then
    tail -n 40 "$mvn_log" >&2 || true
    rm -rf "$tmp"
    die "mvn failed to fetch Kafka $KAFKA_VERSION (full log: $mvn_log)"
  fi
  ls "$tmp"/kafka_2.13-"$KAFKA_VERSION".jar >/dev/null 2>&1 \
    || { rm -rf "$tmp"; die "kafka_2.13-$KAFKA_VERSION.jar missing after fetch"; }
  rm -rf "$LIBS_DIR" "$CDS_DIR"   # a CDS archive is only valid for the exact jars it was made from
  mv "$tmp" "$LIBS_DIR"
  pom_digest >"$LIBS_MARKER"
  log "downloaded $(find "$LIBS_DIR" -name '*.jar' | wc -l) jars in $((SECONDS - t0)) s"
}

cmd_fetch() {
  with_lock "$CACHE_DIR/.kafka-$KAFKA_VERSION.lock" do_fetch
  echo "$LIBS_DIR"
}

# ---------------------------------------------------------------- process helpers

# Is $1 a live Kafka broker process started with this data dir's server.properties?
# (Pure bash: no forks, so scanning /proc stays cheap.)
is_our_broker() {
  local pid="$1" i
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  local -a args=()
  mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null || return 1
  for ((i = 0; i + 1 < ${#args[@]}; i++)); do
    [[ "${args[i]}" == "kafka.Kafka" && "${args[i+1]}" == "$SERVER_PROPS" ]] && return 0
  done
  return 1
}

# Print the pid of the broker for this data dir, or return 1.
# Uses the pid file; if that is missing or stale, scans /proc for a broker
# started with our server.properties (and repairs the pid file).
broker_pid() {
  local pid=""
  if [[ -f "$PID_FILE" ]]; then
    pid="$(tr -dc '0-9' <"$PID_FILE" || true)"
    if is_our_broker "$pid"; then
      echo "$pid"; return 0
    fi
  fi
  local d
  for d in /proc/[0-9]*; do
    pid="${d#/proc/}"
    if is_our_broker "$pid"; then
      [[ -d "$KAFKA_DATA_DIR" ]] && echo "$pid" >"$PID_FILE"
      echo "$pid"; return 0
    fi
  done
  [[ -f "$PID_FILE" ]] && rm -f "$PID_FILE"   # stale
  return 1
}

port_open() {  # port_open PORT -> 0 if something accepts TCP connections on 127.0.0.1:PORT
  (exec 3<>"/dev/tcp/$KAFKA_HOST/$1") 2>/dev/null
}

tools_java() {  # run a Kafka CLI tool class quietly (small heap, fast JIT): tools_java TIMEOUT CLASS ARGS...
  local secs="$1"; shift
  timeout "$secs" "$JAVA" -Xmx128m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$LOG4J_TOOLS" \
    -cp "$LIBS_DIR/*" "$@"
}

# Ready = the broker answers a Metadata request and lists itself (registered + unfenced).
# Fast path: stdlib-only Python probe (~0.1 s); fallback: Kafka's own CLI tool (~2 s JVM).
PY_PROBE=""   # "yes"/"no" once decided
python_probe_usable() {
  if [[ -z "$PY_PROBE" ]]; then
    PY_PROBE=no
    # (a pyenv shim can exist yet fail, e.g. for a .python-version naming an uninstalled version)
    if [[ -z "${KAFKA_READY_USE_JAVA:-}" ]] && command -v python3 >/dev/null 2>&1 \
        && timeout 15 python3 -c 'import socket, struct' >/dev/null 2>&1; then
      PY_PROBE=yes
    fi
  fi
  [[ "$PY_PROBE" == yes ]]
}

broker_answers_metadata() {
  local rc=3
  if python_probe_usable; then
    rc=0
    timeout 15 python3 "$SCRIPT_DIR/kafka_ready.py" "$KAFKA_HOST" "$KAFKA_PORT" 1 || rc=$?
    [[ $rc -eq 0 ]] && return 0
    [[ $rc -ne 3 ]] && return 1
  fi
  local out
  out="$(tools_java 30 org.apache.kafka.tools.BrokerApiVersionsCommand --bootstrap-server "$BOOTSTRAP" 2>&1)" || return 1
  # One line per broker from the metadata response: "127.0.0.1:9092 (id: 1 rack: null) -> ( ... )"
  [[ "$out" == *"$BOOTSTRAP (id: 1"* ]]
}

# ---------------------------------------------------------------- config

random_cluster_id() {
  # Kafka Uuid: 16 random bytes, URL-safe base64 without padding, must not start with '-'.
  local id
  while :; do
    id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
    [[ ${#id} -eq 22 && "$id" != -* && "$id" != "AAAAAAAAAAAAAAAAAAAAAA" && "$id" != "AAAAAAAAAAAAAAAAAAAAAQ" ]] && break
  done
  echo "$id"
}

# KAFKA_EXTRA_PROPERTIES: "k=v" entries separated by newlines or commas. A comma
# segment without '=' is glued to the previous entry, so "a=1,b=x,y" keeps b=x,y.
extra_properties() {
  local raw="$KAFKA_EXTRA_PROPERTIES" entry="" seg
  [[ -n "$raw" ]] || return 0
  raw="${raw//$'\n'/,}"
  local IFS=','
  local -a segs
  read -r -a segs <<<"$raw" || true
  for seg in "${segs[@]}"; do
    seg="${seg#"${seg%%[![:space:]]*}"}"; seg="${seg%"${seg##*[![:space:]]}"}"
    [[ -n "$seg" ]] || continue
    if [[ "$seg" == *=* && "$seg" != \#* ]]; then
      [[ -n "$entry" ]] && printf '%s\n' "$entry"
      entry="$seg"
    elif [[ -n "$entry" ]]; then
      entry="$entry,$seg"
    fi
  done
  [[ -n "$entry" ]] && printf '%s\n' "$entry"
  return 0
}

write_config() {
  mkdir -p "$CONF_DIR" "$LOG_DIRS"
  local auto_create="false"
  [[ "${KAFKA_AUTO_CREATE_TOPICS,,}" == "true" || "$KAFKA_AUTO_CREATE_TOPICS" == "1" ]] && auto_create="true"
  cat >"$SERVER_PROPS" <<EOF
# Generated by dev/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT,CONTROLLER://$KAFKA_HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$KAFKA_HOST:$KAFKA_PORT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=$LOG_DIRS
num.partitions=1
default.replication.factor=1
auto.create.topics.enable=$auto_create
group.initial.rebalance.delay.ms=0
offsets.topic.replication.factor=1
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=168
delete.topic.enable=true
EOF
  local extra
  extra="$(extra_properties)"
  if [[ -n "$extra" ]]; then
    { echo "# KAFKA_EXTRA_PROPERTIES (later keys win)"; printf '%s\n' "$extra"; } >>"$SERVER_PROPS"
  fi

  cat >"$LOG4J_BROKER" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN" shutdownHook="disable">
  <Appenders>
    <RollingFile name="file" fileName="$APP_LOG" filePattern="$APP_LOG.%i">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <Policies><SizeBasedTriggeringPolicy size="20 MB"/></Policies>
      <DefaultRolloverStrategy max="3"/>
    </RollingFile>
    <Console name="stderr" target="SYSTEM_ERR">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
      <ThresholdFilter level="ERROR"/>
    </Console>
  </Appenders>
  <Loggers>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.controller" level="INFO"/>
    <Logger name="kafka.log.LogCleaner" level="INFO"/>
    <Logger name="state.change.logger" level="INFO"/>
    <Logger name="kafka.authorizer.logger" level="INFO"/>
    <Logger name="org.apache.kafka.controller" level="INFO"/>
    <Root level="INFO">
      <AppenderRef ref="file"/>
      <AppenderRef ref="stderr"/>
    </Root>
  </Loggers>
</Configuration>
EOF

  cat >"$LOG4J_TOOLS" <<'EOF'
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="ERROR">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console>
  </Appenders>
  <Loggers><Root level="ERROR"><AppenderRef ref="stderr"/></Root></Loggers>
</Configuration>
EOF
}

is_formatted() { [[ -f "$LOG_DIRS/meta.properties" ]]; }

format_storage() {
  local cid
  cid="$(random_cluster_id)"
  log "formatting $LOG_DIRS (cluster id $cid)"
  # Static controller quorum (controller.quorum.voters) => plain "format", no --standalone.
  if ! tools_java 120 kafka.tools.StorageTool format -t "$cid" -c "$SERVER_PROPS" >>"$OUT_FILE" 2>&1; then
    tail -n 50 "$OUT_FILE" >&2 || true
    die "kafka-storage format failed"
  fi
}

# ---------------------------------------------------------------- start/stop

# ---- AppCDS: the first broker run records the classes it loads into an archive
# (-XX:ArchiveClassesAtExit, written when the JVM exits cleanly on "stop");
# later runs map it (-XX:SharedArchiveFile), cutting JVM start-up by ~1/3.
# Keyed by the java binary and the jar set; an unusable archive only makes the
# JVM print a warning and start without it.
cds_archive() {
  local java_real key
  java_real="$(readlink -f "$JAVA")"
  key="$(printf '%s|%s|%s|%s' "$java_real" "$(stat -Lc '%s-%Y' "$java_real")" \
          "$(cat "$LIBS_MARKER" 2>/dev/null)" "$(stat -c '%Y' "$LIBS_DIR")" | sha256sum | cut -c1-16)"
  echo "$CDS_DIR/kafka-$key.jsa"
}

cds_jvm_opts() {  # prints one JVM option (or nothing)
  [[ "$KAFKA_CDS" == "1" ]] || return 0
  local archive
  archive="$(cds_archive)"
  if [[ -s "$archive" ]]; then
    echo "-XX:SharedArchiveFile=$archive"
  else
    mkdir -p "$CDS_DIR"
    local tmp="$archive.tmp.$$.$RANDOM"
    printf '%s\n%s\n' "$tmp" "$archive" >"$CDS_PENDING"
    echo "-XX:ArchiveClassesAtExit=$tmp"
  fi
}

# After the broker exited: keep its archive if it exited cleanly ($1=1), else drop it.
cds_finish() {
  [[ -f "$CDS_PENDING" ]] || return 0
  local tmp archive
  { IFS= read -r tmp; IFS= read -r archive; } <"$CDS_PENDING" || true
  rm -f "$CDS_PENDING"
  [[ -n "$tmp" ]] || return 0
  if [[ "$1" == "1" && -s "$tmp" && -n "$archive" ]]; then
    mv -f "$tmp" "$archive" && log "saved class-data archive $archive"
  else
    rm -f "$tmp"
  fi
}

launch_broker() {
  # New session (setsid) so the broker outlives the caller's terminal/process group;
  # all std fds redirected and the lock fd closed so callers capturing our output
  # (e.g. subprocess.run(capture_output=True)) are not blocked by the daemon.
  cds_finish 0   # leftover from a broker that died on its own
  local -a heap_opts=() extra_opts=() cds_opts=()
  read -r -a heap_opts <<<"$KAFKA_HEAP_OPTS" || true
  read -r -a extra_opts <<<"$KAFKA_OPTS" || true
  local cds_opt
  cds_opt="$(cds_jvm_opts)"
  [[ -n "$cds_opt" ]] && cds_opts=("$cds_opt")
  local -a jvm=(
    "${heap_opts[@]}"
    "${cds_opts[@]}"
    -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35
    -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15
    -Djava.awt.headless=true
    -Dlog4j2.configurationFile="$LOG4J_BROKER"
    -Dkafka.logs.dir="$KAFKA_DATA_DIR"
    "${extra_opts[@]}"
    -cp "$LIBS_DIR/*"
    kafka.Kafka "$SERVER_PROPS"
  )
  {
    echo "===== $(date '+%F %T') starting Kafka $KAFKA_VERSION on $BOOTSTRAP"
  } >>"$OUT_FILE"
  local setsid_cmd=()
  command -v setsid >/dev/null 2>&1 && setsid_cmd=(setsid)
  if [[ -n "${LOCK_FD:-}" ]]; then
    nohup "${setsid_cmd[@]}" "$JAVA" "${jvm[@]}" </dev/null >>"$OUT_FILE" 2>&1 {LOCK_FD}>&- &
  else
    nohup "${setsid_cmd[@]}" "$JAVA" "${jvm[@]}" </dev/null >>"$OUT_FILE" 2>&1 &
  fi
  local pid=$!
  echo "$pid" >"$PID_FILE"
  echo "$pid"
}

print_failure_logs() {
  if [[ -f "$APP_LOG" ]]; then
    log "last 50 lines of $APP_LOG:"
    tail -n 50 "$APP_LOG" >&2 || true
  fi
  if [[ -f "$OUT_FILE" ]]; then
    log "last 50 lines of $OUT_FILE:"
    tail -n 50 "$OUT_FILE" >&2 || true
  fi
}

do_start() {
  local pid
  if pid="$(broker_pid)"; then
    log "already running (pid $pid) on $BOOTSTRAP, data in $KAFKA_DATA_DIR"
    echo "$BOOTSTRAP"
    return 0
  fi
  local p
  for p in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    if port_open "$p"; then
      die "port $KAFKA_HOST:$p is already in use by another process (not the broker for $KAFKA_DATA_DIR)"
    fi
  done

  mkdir -p "$KAFKA_DATA_DIR"
  write_config
  is_formatted || format_storage

  local t0=$SECONDS
  pid="$(launch_broker)"
  log "started java pid $pid; waiting up to ${KAFKA_START_TIMEOUT_SECONDS}s for $BOOTSTRAP"

  local deadline=$((SECONDS + KAFKA_START_TIMEOUT_SECONDS))
  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      # ($! may be a setsid wrapper if setsid had to fork: look the broker up by its cmdline)
      local found
      if found="$(broker_pid)"; then
        pid="$found"
        continue
      fi
      rm -f "$PID_FILE"
      cds_finish 0
      print_failure_logs
      die "broker process $pid exited during startup"
    fi
    if port_open "$KAFKA_PORT" && broker_answers_metadata; then
      break
    fi
    if ((SECONDS >= deadline)); then
      print_failure_logs
      log "broker not ready after ${KAFKA_START_TIMEOUT_SECONDS}s; stopping it"
      do_stop >/dev/null 2>&1 || true
      die "Kafka did not become ready on $BOOTSTRAP"
    fi
    sleep 0.5
  done
  log "ready in $((SECONDS - t0))s (pid $pid, data in $KAFKA_DATA_DIR, logs in $APP_LOG)"
  echo "$BOOTSTRAP"
}

cmd_start() {
  validate_env
  find_java
  cmd_fetch >/dev/null
  with_lock "$KAFKA_DATA_DIR.lock" do_start
}

do_stop() {
  local pid
  if ! pid="$(broker_pid)"; then
    log "not running ($BOOTSTRAP, $KAFKA_DATA_DIR)"
    return 0
  fi
  log "stopping pid $pid (SIGTERM, up to ${KAFKA_STOP_TIMEOUT_SECONDS}s)"
  local clean=1
  kill -TERM "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + KAFKA_STOP_TIMEOUT_SECONDS))
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      log "pid $pid still alive after ${KAFKA_STOP_TIMEOUT_SECONDS}s; SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      local i
      for i in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      clean=0
      break
    fi
    sleep 0.2
  done
  rm -f "$PID_FILE"
  cds_finish "$clean"
  log "stopped"
}

cmd_stop() {
  validate_env
  with_lock "$KAFKA_DATA_DIR.lock" do_stop
}

cmd_status() {
  local pid
  if pid="$(broker_pid)"; then
    echo "running pid $pid on $BOOTSTRAP"
    return 0
  fi
  echo "not running on $BOOTSTRAP (data dir $KAFKA_DATA_DIR)"
  return 1
}

do_wipe() {
  do_stop
  if [[ -d "$KAFKA_DATA_DIR" ]]; then
    rm -rf "$KAFKA_DATA_DIR"
    log "deleted $KAFKA_DATA_DIR"
  fi
}

cmd_wipe() {
  validate_env
  with_lock "$KAFKA_DATA_DIR.lock" do_wipe
  rm -f "$KAFKA_DATA_DIR.lock"
}

usage() {
  cat <<EOF
usage: $(basename "$0") fetch|start|stop|restart|status|wipe|logs

  fetch    download the Kafka $KAFKA_VERSION jars (cached in $KAFKA_HOME)
  start    start the broker on $BOOTSTRAP (no-op if already running); prints the bootstrap address
  stop     stop it (SIGTERM, then SIGKILL after \$KAFKA_STOP_TIMEOUT_SECONDS); data is kept
  restart  stop + start
  status   exit 0 and print "running pid N on $BOOTSTRAP" if running, else exit 1
  wipe     stop and delete the data dir ($KAFKA_DATA_DIR)
  logs     tail the broker log (\$APP_LOG)

env: KAFKA_PORT KAFKA_CONTROLLER_PORT KAFKA_DATA_DIR KAFKA_VERSION KAFKA_EXTRA_PROPERTIES
     KAFKA_AUTO_CREATE_TOPICS KAFKA_START_TIMEOUT_SECONDS KAFKA_STOP_TIMEOUT_SECONDS
     KAFKA_HEAP_OPTS KAFKA_OPTS KAFKA_CDS ERP_SYNC_CACHE_DIR JAVA_HOME
EOF
}

main() {
  local cmd="${1:-}"
  case "$cmd" in
    fetch)   find_java; cmd_fetch ;;
    start)   cmd_start ;;
    stop)    cmd_stop ;;
    restart) cmd_stop; cmd_start ;;
    status)  cmd_status ;;
    wipe)    cmd_wipe ;;
    logs)    tail -n "${2:-100}" "$APP_LOG" ;;
    -h|--help|help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
