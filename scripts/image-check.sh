#!/usr/bin/env bash
# Builds the container image from the Dockerfile, both targets (production and devstack), with podman
# from a local Debian base (dev/base-image.sh: no registry needed; cached under
# ~/.cache/apaas-erp-sync), then checks it against a local broker and the ERP stub
# (dev/image_check.py): non-root uid 10001, a bad setting exits 2 naming it, the spec example is
# delivered byte for byte, SIGTERM to PID 1 exits 0 within the shutdown bound, no compiler; prints
# the image sizes. Run by .ci/run. Installs podman, runc and debootstrap from Debian when missing
# (root); without root it says so in one line and exits 0.
#
#   scripts/image-check.sh                         build + check (about 1 min cached, 3 min the first time)
#   ERP_SYNC_IMAGE=localhost/x:y scripts/image-check.sh
#
# podman runs with --runtime runc: crun, its default, fails on hosts with hybrid cgroups.
set -euo pipefail
ROOT="$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")/.." && pwd -P)"
cd "$ROOT"
say() { printf '[image-check] %s\n' "$*" >&2; }

missing=()
for tool in podman runc debootstrap; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if [[ "$(id -u)" != "0" ]]; then
  echo "image check skipped: it needs root (rootful podman, debootstrap); build by hand with: docker build ."
  exit 0
fi
if ((${#missing[@]})); then
  say "installing Debian packages podman runc debootstrap (missing: ${missing[*]})"
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc debootstrap >/dev/null
fi

bash scripts/bootstrap.sh            # the host's venv: broker harness, stub client, spec example
VENV="${ERP_SYNC_VENV:-$ROOT/.venv}"
PODMAN=(podman --runtime runc)
IMAGE="${ERP_SYNC_IMAGE:-localhost/apaas-erp-sync:check}"
DEVSTACK="$IMAGE-devstack"
BASE="$(bash dev/base-image.sh)"

build_args=(--build-arg "PYTHON_IMAGE=$BASE")
host_ca=/etc/ssl/certs/ca-certificates.crt
if [[ -f "$host_ca" ]]; then
  # the host's CA bundle for pip in the builder (a TLS-inspecting proxy's CA); not kept in any image
  build_args+=(--volume "$host_ca:$host_ca:ro" --build-arg "PIP_CERT=$host_ca")
fi

build() {  # build TARGET TAG: build, and drop the image the tag named before if it changed
  local target="$1" tag="$2" old new log
  old="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)"
  log="$(mktemp)"
  if ! "${PODMAN[@]}" build "${build_args[@]}" --target "$target" -t "$tag" -f Dockerfile . >"$log" 2>&1; then
    tail -n 60 "$log" >&2
    rm -f "$log"
    say "podman build --target $target failed"
    exit 1
  fi
  rm -f "$log"
  new="$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$tag")"
  if [[ -n "$old" && "$old" != "$new" ]]; then
    "${PODMAN[@]}" rmi "$old" >/dev/null 2>&1 || true
  fi
}

t0=$SECONDS
# the builder stage tagged too: its cached layers (apt, pip) stay reachable, and the layers of the
# previous run's builder are dropped with the old tag instead of piling up untagged
build builder "$IMAGE-builder"
build production "$IMAGE"
build devstack "$DEVSTACK"
say "built $IMAGE and $DEVSTACK from $BASE in $((SECONDS - t0)) s"
exec "$VENV/bin/python" dev/image_check.py --image "$IMAGE" --devstack-image "$DEVSTACK" --base-image "$BASE"
