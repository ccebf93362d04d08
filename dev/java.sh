# shellcheck shell=bash disable=SC2034  # JAVA is read by the scripts that source this
# Sourced by dev/kafka.sh and dev/registry.sh (each defines die): find_java sets JAVA to the java to
# run, $JAVA_HOME/bin/java first, else the one on PATH (Java 17+).
find_java() {
  if [[ -n "${JAVA_HOME:-}" && -x "$JAVA_HOME/bin/java" ]]; then
    JAVA="$JAVA_HOME/bin/java"
  elif command -v java >/dev/null 2>&1; then
    JAVA="$(command -v java)"
  else
    die "java not found (need Java 17+ on PATH or JAVA_HOME)"
  fi
}
