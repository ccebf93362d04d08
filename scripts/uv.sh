#!/usr/bin/env bash
# Runs the project's pinned uv with the arguments given (scripts/uv.sh lock --check), installing it
# once into ~/.cache/apaas-erp-sync/uv-<version> from requirements/uv.txt (exported from uv.lock,
# hash-checked by pip). `scripts/uv.sh --print-path` prints the binary's path instead.
# uv is told to use the system's trust store (a TLS-inspecting proxy's CA works, as for apt and curl)
# and never to download a Python.
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
CACHE_DIR="${ERP_SYNC_CACHE_DIR:-$HOME/.cache/apaas-erp-sync}"
REQ="$ROOT/requirements/uv.txt"
version="$(sed -n 's/^uv==\([^ ;]*\).*/\1/p' "$REQ")"
[[ -n "$version" ]] || { echo "[uv.sh] no uv==<version> line in $REQ" >&2; exit 1; }
dir="$CACHE_DIR/uv-$version"
uv="$dir/bin/uv"

if [[ ! -x "$uv" ]]; then
  mkdir -p "$CACHE_DIR"
  exec {lock_fd}>"$CACHE_DIR/.uv-$version.lock"
  flock "$lock_fd"
  if [[ ! -x "$uv" ]]; then
    echo "[uv.sh] installing uv $version, the installer, into $dir (first run, a few seconds)..." >&2
    rm -rf "$dir"
    "${PYTHON:-python3}" -m venv "$dir"
    "$dir/bin/python" -m pip install -q --disable-pip-version-check --require-hashes --no-deps -r "$REQ"
  fi
  flock -u "$lock_fd"
fi

export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-true}" UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
if [[ "${1:-}" == "--print-path" ]]; then
  echo "$uv"
  exit 0
fi
exec "$uv" "$@"
