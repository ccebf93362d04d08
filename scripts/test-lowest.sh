#!/usr/bin/env bash
# The lower bounds of pyproject.toml, proven: every direct dependency (runtime, the test extra and the
# build group: hatchling, hatch-mypyc, mypy) installed at the lowest version its bound allows
# (uv --resolution lowest-direct; what they depend on resolves as usual), in a separate virtualenv,
# from a copy of the work tree (the editable build's compiled module must not touch the work tree's).
# Then: the hot path must be compiled, and ruff, mypy and every test that needs no broker must pass.
# Run by .ci/run. Takes about a minute.
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
PYTHON="${PYTHON:-python3}"
UV="$(bash "$ROOT/scripts/uv.sh" --print-path)"
export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-true}" UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/erp-sync-lowest.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
say() { printf '[lowest] %s\n' "$*" >&2; }

# the tracked files (no venv, caches, compiled modules); a tree without git: everything but those
tree="$WORK/src"
mkdir -p "$tree"
if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git -C "$ROOT" ls-files -z --cached --others --exclude-standard | (cd "$ROOT" && xargs -0 cp --parents -t "$tree" 2>/dev/null || true)
else
  tar -C "$ROOT" --exclude='./.venv*' --exclude=.git --exclude='*.so' --exclude=__pycache__ --exclude=./build -cf - . \
    | tar -C "$tree" -xf -
fi
cd "$tree"

venv="$WORK/venv"
"$UV" venv -q --python "$PYTHON" "$venv"
py="$venv/bin/python"
mapfile -t build_group < <("$py" -c 'import tomllib; print(*tomllib.load(open("pyproject.toml", "rb"))["dependency-groups"]["build"], sep="\n")')
say "build tools at their lower bounds: ${build_group[*]}"
"$UV" pip install -q --python "$py" --resolution lowest-direct "${build_group[@]}"
say "apaas-erp-sync[test] with every direct dependency at its lower bound (built by those tools)"
"$UV" pip install -q --python "$py" --resolution lowest-direct --no-build-isolation -e ".[test]"

# what was installed, direct dependencies only
"$py" - <<'PY'
import re, tomllib
from importlib.metadata import version
doc = tomllib.load(open("pyproject.toml", "rb"))
reqs = doc["project"]["dependencies"] + doc["project"]["optional-dependencies"]["test"] + doc["dependency-groups"]["build"]
names = sorted({re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower() for r in reqs})
print("[lowest] installed:", ", ".join(f"{n} {version(n)}" for n in names), flush=True)
PY

export PATH="$venv/bin:$PATH"
"$py" -c 'from consumer.decode import avro_v1; assert avro_v1.COMPILED, avro_v1.__file__; print("[lowest] hot path compiled:", avro_v1.__file__)'
echo "== ruff (lowest)"; ruff check consumer tests bench dev
echo "== mypy (lowest)"; mypy
echo "== pytest (lowest; no broker: KAFKA_BOOTSTRAP_SERVERS points nowhere, so a test that needs one fails)"
KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1 "$py" -m pytest -p no:cacheprovider -q -m "not kafka" tests
