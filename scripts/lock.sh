#!/usr/bin/env bash
# The lock: uv.lock pins every package of every environment (runtime, test extra, build and tools
# groups) with hashes; requirements/*.txt are the parts of it that pip installs, exported from it:
#   requirements/runtime.txt  the image's dependencies (Dockerfile)
#   requirements/build.txt    what builds the wheel: hatchling, hatch-mypyc, mypy (Dockerfile)
#   requirements/uv.txt       uv itself (scripts/uv.sh)
#
#   scripts/lock.sh --upgrade                  refresh: every package to its newest allowed version
#   scripts/lock.sh --upgrade-package httpx    one package
#   scripts/lock.sh                            after editing pyproject.toml: re-resolve what changed
#   scripts/lock.sh --check                    uv.lock matches pyproject.toml and requirements/ match uv.lock
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
UV=(bash "$ROOT/scripts/uv.sh")

export_all() {  # export_all DIR: write the requirements files into DIR
  local out="$1"
  "${UV[@]}" export -q --frozen --no-emit-project --no-default-groups --format requirements-txt \
    -o "$out/runtime.txt"
  "${UV[@]}" export -q --frozen --no-emit-project --only-group build --format requirements-txt \
    -o "$out/build.txt"
  "${UV[@]}" export -q --frozen --no-emit-project --only-group tools --format requirements-txt \
    -o "$out/uv.txt"
}

if [[ "${1:-}" == "--check" ]]; then
  "${UV[@]}" lock --check -q || { echo "uv.lock is out of date with pyproject.toml: run scripts/lock.sh" >&2; exit 1; }
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  export_all "$tmp"
  for f in runtime.txt build.txt uv.txt; do
    # the header names the output path; compare the rest
    if ! diff -q <(grep -v '^#' "$tmp/$f") <(grep -v '^#' "requirements/$f") >/dev/null; then
      echo "requirements/$f does not match uv.lock: run scripts/lock.sh" >&2
      exit 1
    fi
  done
  echo "uv.lock and requirements/ are current"
  exit 0
fi

"${UV[@]}" lock "$@"
mkdir -p requirements
export_all requirements
echo "uv.lock and requirements/{runtime,build,uv}.txt written"
