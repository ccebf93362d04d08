#!/usr/bin/env bash
# README command 2: the whole test suite, broker included.
#   lint (ruff) → types (mypy) → pytest (unit, integration on a real Kafka broker started from the
#   Maven jars by tests/conftest.py, fault tests, deploy checks with promtool/kubernetes-validate)
# Extra arguments go to pytest, e.g.  scripts/test.sh -k offsets
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
bash scripts/bootstrap.sh --with-tools
VENV="${ERP_SYNC_VENV:-$ROOT/.venv}"
export PATH="$VENV/bin:$PATH"
bash dev/kafka.sh fetch >/dev/null   # cached Kafka jars (Maven Central), before timing starts
echo "== ruff"; ruff check consumer tests bench dev
echo "== mypy"; mypy
echo "== pytest"
exec python -m pytest -p no:cacheprovider "$@"
