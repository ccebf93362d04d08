#!/usr/bin/env bash
# Installs what the project needs on a fresh machine, once: the virtualenv with the package, its test
# extra and its build tools, exactly as pinned by uv.lock, and the Debian tools the tests use
# (promtool/prometheus). Idempotent and quick when nothing changed. Run by scripts/demo.sh and
# scripts/test.sh.
#
# uv (pinned in requirements/uv.txt, see scripts/uv.sh) installs from uv.lock with --locked: a
# pyproject.toml edited without re-locking stops here (run scripts/lock.sh). The package is installed
# editable and built without build isolation, by the locked hatchling + hatch-mypyc + mypy (the
# `build` group), so the compiled hot path is the one the lock describes.
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
PYTHON="${PYTHON:-python3}"
VENV="${ERP_SYNC_VENV:-$ROOT/.venv}"

say() { printf '[bootstrap] %s\n' "$*" >&2; }

# What a fresh Debian or Ubuntu with python3 may lack, named at once with the packages that bring it,
# before anything is installed (instead of a failure deep inside venv or the mypyc build).
preflight() {
  local missing=() packages=()
  if ! command -v "$PYTHON" >/dev/null 2>&1 \
      || ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1; then
    missing+=("Python 3.11 or newer as $PYTHON (or PYTHON=/path/to/python3.11)"); packages+=(python3)
  else
    if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1; then
      missing+=("the venv module ($PYTHON -m venv)"); packages+=(python3-venv)
    fi
    if [[ "${HATCH_BUILD_NO_HOOKS:-false}" != "true" ]]; then   # mypyc compiles the hot path: headers, compiler
      if ! "$PYTHON" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' >/dev/null 2>&1; then
        missing+=("Python's C headers (Python.h)"); packages+=(python3-dev)
      fi
      local cc="${CC:-gcc}"
      if ! command -v "${cc%% *}" >/dev/null 2>&1; then
        missing+=("a C compiler (${cc%% *})"); packages+=(gcc)
      fi
    fi
  fi
  ((${#missing[@]} == 0)) && return 0
  local list
  list="$(printf '%s, ' "${missing[@]}")"
  say "cannot install: missing ${list%, }"
  say "on Debian or Ubuntu: sudo apt-get install ${packages[*]}"
  exit 1
}

# One line per phase that takes a while, so a first run does not look hung; nothing when all is in place.
stamp="$VENV/.erp-sync-installed"
# the lock, pyproject.toml and the modules mypyc compiles at install time (a changed source needs a rebuild)
want="$(cat "$ROOT/pyproject.toml" "$ROOT/uv.lock" "$ROOT/consumer/decode/avro_v1.py" | sha256sum | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  preflight
  UV="$(bash "$ROOT/scripts/uv.sh" --print-path)"
  export UV_SYSTEM_CERTS="${UV_SYSTEM_CERTS:-true}" UV_PYTHON_DOWNLOADS="${UV_PYTHON_DOWNLOADS:-never}"
  export UV_PROJECT_ENVIRONMENT="$VENV"
  if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating the virtual environment $VENV..."
    "$PYTHON" -m venv "$VENV"
  fi
  if [[ -f "$stamp" ]]; then
    say "updating the dependencies from uv.lock (pyproject.toml, uv.lock or consumer/decode/avro_v1.py changed)..."
  else
    say "installing the dependencies from uv.lock (first run, up to a minute)..."
  fi
  # --inexact: leave what else the venv holds (pip, bench/requirements.txt) in place
  sync=("$UV" sync --project "$ROOT" --locked --inexact --extra test --group build --quiet)
  "${sync[@]}" --no-install-project                     # 1. everything but the package, build tools included
  say "building apaas-erp-sync: mypyc compiles its hot path (up to a minute)..."
  "${sync[@]}" --no-build-isolation --reinstall-package apaas-erp-sync   # 2. the package, built by them
  echo "$want" > "$stamp"
  say "installed into $VENV"
fi

# Debian's prometheus package starts a service (:9090) when installed; the tests start their own
# prometheus on a free port, so none is wanted. A policy-rc.d answering 101 ("action forbidden") makes
# invoke-rc.d and deb-systemd-invoke start nothing. It is ours only when we created it, and removed
# then; an existing one is the administrator's policy and stays as it is. (ERP_SYNC_POLICY_RC_D: the
# path, for the tests.) Nothing is stopped afterwards: this script ends only processes it started.
POLICY_RC_D="${ERP_SYNC_POLICY_RC_D:-/usr/sbin/policy-rc.d}"
OWN_POLICY=""
drop_policy() { [[ -z "$OWN_POLICY" ]] || rm -f "$OWN_POLICY"; OWN_POLICY=""; }
apt_install_without_services() {  # apt_install_without_services PACKAGE...
  trap drop_policy EXIT
  # set -C: created only if absent, atomically (never overwrites one that appeared meanwhile)
  if (set -C; printf '#!/bin/sh\n# apaas-erp-sync scripts/bootstrap.sh: no service starts while it installs\nexit 101\n' \
        >"$POLICY_RC_D") 2>/dev/null; then
    OWN_POLICY="$POLICY_RC_D"
    chmod 755 "$POLICY_RC_D"
  fi
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  drop_policy
}

if [[ "${1:-}" == "--with-tools" ]]; then
  if ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; then
    if [[ "$(id -u)" == "0" ]]; then
      say "installing Debian package prometheus (promtool, prometheus)"
      apt_install_without_services prometheus
    else
      say "promtool is missing: run 'sudo apt-get install -y prometheus' (Debian) and retry"
      exit 1
    fi
  fi
  command -v java >/dev/null 2>&1 || { say "java (17+) is required to run the local Kafka"; exit 1; }
  command -v mvn >/dev/null 2>&1 || { say "maven is required to fetch the Kafka jars"; exit 1; }
fi
