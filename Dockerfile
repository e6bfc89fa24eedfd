# syntax=docker/dockerfile:1
#
# One image for every Meshcast service; the command picks the service:
#   docker run meshcast python -m meshcast.gateway
#
# Build from the repository root:  docker build -t meshcast:dev .

ARG PYTHON_IMAGE=python:3.11-slim

# --------------------------------------------------------------------------
# builder: a self-contained virtualenv in /opt/venv with the locked
# third-party dependencies, then the project's own packages (non-editable).
# --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src

# Locked runtime dependencies first: this layer is reused as long as the lock is
# unchanged. requirements.lock holds only what the services run on; the tests'
# and tools' pins (requirements-dev.lock) never enter the image.
COPY requirements.lock ./
RUN pip install -c requirements.lock -r requirements.lock

# The project's runtime packages (not libs/testing, the pytest plugin, nor
# libs/devtools, `make run`). --no-deps: every dependency came from the lock, and
# pip check proves the lock is their whole closure.
COPY libs/ libs/
COPY services/ services/
RUN pip install --no-deps libs/proto libs/protocol libs/bus libs/backend libs/common libs/tokens services/* \
 && pip check

# --------------------------------------------------------------------------
# runtime: same base, only the virtualenv and the default config, non-root.
# --------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime

ARG MESHCAST_UID=10001
RUN groupadd --system --gid ${MESHCAST_UID} meshcast \
 && useradd --system --uid ${MESHCAST_UID} --gid meshcast \
        --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin meshcast

COPY --from=builder /opt/venv /opt/venv

# Default namespaces config; Kubernetes mounts a ConfigMap over /etc/meshcast
# and compose bind-mounts config/namespaces.yaml at the same path.
COPY config/namespaces.yaml /etc/meshcast/namespaces.yaml

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    MESHCAST_GATEWAY_HOST=0.0.0.0 \
    MESHCAST_GATEWAY_PORT=8000 \
    MESHCAST_NAMESPACES_FILE=/etc/meshcast/namespaces.yaml

# No writable working directory is needed: the root filesystem can be read-only.
WORKDIR /
USER ${MESHCAST_UID}:${MESHCAST_UID}

EXPOSE 8000
# The gateway drains on SIGTERM (MESHCAST_DRAIN_SECONDS) and exits 0.
STOPSIGNAL SIGTERM
CMD ["python", "-m", "meshcast.gateway"]
