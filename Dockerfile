# syntax=docker/dockerfile:1
#
# apaas-erp-sync container image.
#
#   docker build -t apaas-erp-sync:local .
#   docker run --rm -e ERP_SYNC_ERP_URL=... apaas-erp-sync:local            # = erp-sync run
#   docker run --rm apaas-erp-sync:local check-config                        # any subcommand
#
# Two stages: the builder turns the project and all its dependencies into
# wheels; the final image only installs those wheels. confluent-kafka ships
# manylinux wheels with librdkafka inside. The builder has gcc because the
# project's wheel compiles its hot path (consumer/decode/avro_v1.py) with mypyc; the
# final image has no compiler. Build with --build-arg HATCH_BUILD_NO_HOOKS=true
# for a pure-Python wheel (same behaviour, about 3x the decode CPU).
# Needs BuildKit (default in current Docker) for the cache and bind mounts.

ARG PYTHON_IMAGE=python:3.11-slim

# ---------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ARG HATCH_BUILD_NO_HOOKS=false
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HATCH_BUILD_NO_HOOKS=${HATCH_BUILD_NO_HOOKS}

RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# The whole build context; .dockerignore keeps .venv, .git, caches and data out.
COPY . .
# Wheels for the project and every runtime dependency (schemas/ ships inside
# the package as package data). If the version ever comes from git
# (setuptools-scm / hatch-vcs), pass it in, e.g. SETUPTOOLS_SCM_PRETEND_VERSION,
# since .git is not in the build context.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip wheel --wheel-dir /wheels .

# ------------------------------------------------------------------ final
FROM ${PYTHON_IMAGE}

LABEL org.opencontainers.image.title="apaas-erp-sync" \
      org.opencontainers.image.description="Pushes approved aPaaS workflow instances from Kafka to the customer's ERP" \
      org.opencontainers.image.source="https://github.com/apaas/apaas-erp-sync"

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Numeric, fixed UID/GID 10001: Kubernetes runAsNonRoot can only verify a
# numeric user, and deploy/k8s sets runAsUser/fsGroup 10001 to match.
RUN groupadd --system --gid 10001 erpsync \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin erpsync

# Install only the wheels built above (bind-mounted: they never land in a layer).
# --no-index: nothing is fetched from PyPI at this point.
RUN --mount=type=bind,from=builder,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels /wheels/*.whl

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
