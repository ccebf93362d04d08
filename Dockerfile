# syntax=docker/dockerfile:1
#
# apaas-erp-sync container image.
#
#   docker build -t apaas-erp-sync:local .                                   # production (the last stage)
#   docker build --target devstack -t apaas-erp-sync:devstack .              # + ERP stub, sample producer
#   docker run --rm -e ERP_SYNC_ERP_URL=... apaas-erp-sync:local            # = erp-sync run
#   docker run --rm apaas-erp-sync:local check-config                        # any subcommand
#
# Without a registry (podman and a Debian base made here): scripts/image-check.sh builds and checks it;
# the base comes in through PYTHON_IMAGE, e.g. --build-arg PYTHON_IMAGE=localhost/apaas-erp-sync-base:bookworm.
#
# Stages:
#   builder     wheels of the project and of every runtime dependency. The versions and hashes come from
#               the lock (requirements/runtime.txt and requirements/build.txt, exported from uv.lock by
#               scripts/lock.sh): pip refuses a file whose hash differs. gcc is here because the project's
#               wheel compiles its hot path (consumer/decode/avro_v1.py) with mypyc, with the locked mypy.
#               Build with --build-arg HATCH_BUILD_NO_HOOKS=true for a pure-Python wheel (same
#               behaviour, about 3x the decode CPU).
#               It also installs them into a virtualenv, /opt/erp-sync, and a copy without consumer/devstack.
#   runtime     the common base of the images: a non-root user, no compiler.
#   devstack    the virtualenv with consumer/devstack: the ERP stub, the sample producer and the demo
#               report, for deploy/compose (it needs no dependency beyond production's).
#   production  the virtualenv without consumer/devstack: `erp-sync erp-stub` and `produce-sample` say
#               they are not in this image. The default target.
#
# Works with the official python:3.11-slim (Python in /usr/local, pip on PATH, headers included) and
# with Debian's python3 (a bare `python3`, no pip, headers in python3-dev): pip runs from a virtualenv
# of the builder, and the builder adds python3-dev only where Python.h is missing.
# Needs BuildKit (default in current Docker; podman/buildah too) for the pip cache mount.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ARG HATCH_BUILD_NO_HOOKS=false
# Where a TLS-inspecting proxy stands between the build and PyPI: --build-arg
# PIP_CERT=/etc/ssl/certs/ca-certificates.crt with the host's bundle mounted over that file (podman
# build --volume; scripts/image-check.sh does it). Unset (the default): pip trusts its own CA list.
# An ARG, not an ENV: it is not kept in any image.
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HATCH_BUILD_NO_HOOKS=${HATCH_BUILD_NO_HOOKS}

RUN pkgs="gcc libc6-dev" \
 && if ! python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then \
        pkgs="$pkgs python3-dev"; \
    fi \
 && apt-get update \
 && apt-get install -y --no-install-recommends $pkgs \
 && rm -rf /var/lib/apt/lists/*

# The build tools (hatchling, hatch-mypyc, mypy) from the lock, in their own virtualenv; then the
# runtime dependencies' wheels, hash-checked (--no-deps: the export is complete, nothing is resolved).
RUN python3 -m venv /opt/build
COPY requirements/build.txt requirements/runtime.txt /src/requirements/
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/build/bin/pip install --require-hashes --no-deps -r /src/requirements/build.txt \
 && /opt/build/bin/pip wheel --require-hashes --no-deps --wheel-dir /wheels -r /src/requirements/runtime.txt

WORKDIR /src
# The whole build context; .dockerignore keeps .venv, .git, caches and data out. schemas/ ships
# inside the package as package data. If the version ever comes from git (setuptools-scm /
# hatch-vcs), pass it in, e.g. SETUPTOOLS_SCM_PRETEND_VERSION, since .git is not in the context.
COPY . .
RUN /opt/build/bin/pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

# The installed application: a virtualenv without pip, from those wheels only (--no-index: nothing is
# fetched here; pip check: nothing missing). /opt/erp-sync is the devstack one; the production copy
# leaves consumer/devstack out. The final stages copy one of them to /opt/erp-sync (same base image,
# so the same interpreter path). Copying beats `RUN --mount=from=builder` in the final stages:
# buildah/podman 4 reuse such a RUN from its cache even when the builder's wheels changed.
RUN python3 -m venv --without-pip /opt/erp-sync \
 && /opt/build/bin/pip --python /opt/erp-sync/bin/python install --no-index --no-deps /wheels/*.whl \
 && /opt/build/bin/pip --python /opt/erp-sync/bin/python check \
 && cp -a /opt/erp-sync /opt/erp-sync-production \
 && site="$(/opt/erp-sync-production/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
 && rm -r "$site/consumer/devstack" \
 && sed -i '\#^consumer/devstack/#d' "$site"/apaas_erp_sync-*.dist-info/RECORD

# ---------------------------------------------------------------- runtime (common base, no compiler)
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="apaas-erp-sync" \
      org.opencontainers.image.description="Pushes approved aPaaS workflow instances from Kafka to the customer's ERP" \
      org.opencontainers.image.source="https://github.com/apaas/apaas-erp-sync"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PATH=/opt/erp-sync/bin:$PATH

# Numeric, fixed UID/GID 10001: Kubernetes runAsNonRoot can only verify a
# numeric user, and deploy/k8s sets runAsUser/fsGroup 10001 to match.
RUN groupadd --system --gid 10001 erpsync \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin erpsync

# ---------------------------------------------------------------- devstack (deploy/compose)
FROM runtime AS devstack

COPY --from=builder /opt/erp-sync /opt/erp-sync

USER 10001:10001
WORKDIR /tmp
# /metrics, /healthz and /readyz (ERP_SYNC_METRICS_PORT); the ERP stub's port in the compose stack.
EXPOSE 8000 8080
ENTRYPOINT ["erp-sync"]
CMD ["run"]

# ---------------------------------------------------------------- production (default)
FROM runtime AS production

# Without consumer/devstack (none of its files is in any layer of this image). It needs no
# dependency of its own: everything it imports is a runtime dependency anyway.
COPY --from=builder /opt/erp-sync-production /opt/erp-sync

USER 10001:10001
WORKDIR /tmp

# /metrics, /healthz and /readyz (ERP_SYNC_METRICS_PORT).
EXPOSE 8000

# No HEALTHCHECK on purpose: on Kubernetes the liveness (/healthz) and
# readiness (/readyz) probes do this job (deploy/k8s/base/deployment.yaml),
# and the compose file defines its own checks where it needs them.

# Exec form: erp-sync is PID 1 and receives SIGTERM directly, so it can finish
# in-flight ERP requests and commit within ERP_SYNC_SHUTDOWN_TIMEOUT_SECONDS.
ENTRYPOINT ["erp-sync"]
CMD ["run"]
