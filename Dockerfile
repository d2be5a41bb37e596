# The xgrader daemon image (multi-stage, non-root).
#
#   podman build -t xgrader:latest .                        # FROM python:3.11-slim (a registry)
#   podman build --network=host --build-arg BASE=xgrader-base:bookworm -t xgrader:latest .
#                                                           # FROM the locally debootstrapped base
# The build stage builds xgrader's wheel and installs it, with EXTRAS, into a
# venv; the wheel carries the in-sandbox runner and the example assignments.
# Offline: `pip wheel -w .cache/wheels '.[EXTRAS]'` on the host first (same
# Python 3.11); the build then installs from those wheels only
# (scripts/build-daemon-image.sh does both). The grading image for student code
# is a different one: sandbox/image/ (see docs/sandbox.md).
ARG BASE=python:3.11-slim

FROM ${BASE} AS build
# Optional features baked in (pyproject.toml): the docker backend for compose,
# a shared redis hint store, AI hints, image assignments (Pillow). EXTRAS="" gives the core install.
ARG EXTRAS=hints,redis,docker,images
# Debian's python3 has no venv/pip: take python3-venv from the Debian mirror (build stage only).
RUN python3 -c "import ensurepip, venv" 2>/dev/null || { \
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null \
      && rm -rf /var/lib/apt/lists/*; }
COPY . /src
RUN set -eu; python3 -m venv /opt/xgrader/venv; pip=/opt/xgrader/venv/bin/pip; \
    spec="xgrader${EXTRAS:+[$EXTRAS]}"; \
    if ls /src/.cache/wheels/xgrader-*.whl >/dev/null 2>&1; then \
      $pip install -q --no-cache-dir --no-index --find-links /src/.cache/wheels "$spec"; \
    else \
      $pip wheel -q --no-cache-dir --no-deps -w /tmp/dist /src; \
      $pip install -q --no-cache-dir "$(ls /tmp/dist/xgrader-*.whl)${EXTRAS:+[$EXTRAS]}"; \
    fi; \
    $pip uninstall -q -y pip setuptools 2>/dev/null || true; \
    # Bytecode goes, but for the runner's: every sandbox imports it (uid 10001 cannot write it later).
    find /opt/xgrader -path '*/xgrader/_sandbox' -prune -o -name __pycache__ -prune -exec rm -rf {} +

FROM ${BASE}
# The bwrap backend: bubblewrap, and /usr/bin/python3 with pytest for the
# sandbox (XGRADER_SANDBOX_PYTHON's default; the daemon's own venv stays apart).
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap python3-pytest >/dev/null \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/xgrader /opt/xgrader
RUN useradd --uid 10001 --user-group --home-dir /var/lib/xgrader --create-home --shell /usr/sbin/nologin xgrader
# TMPDIR holds the job folders the docker backend bind-mounts into grading
# containers: the engine resolves that path on the host, so mount a host
# folder at the same path when the daemon drives the host's engine
# (docs/sandbox.md, "daemon in a container"). Assignments: XGRADER_HANDLERS
# (default: the bundled examples).
ENV PATH=/opt/xgrader/venv/bin:/usr/local/bin:/usr/bin:/bin \
    TMPDIR=/var/lib/xgrader/tmp \
    PYTHONDONTWRITEBYTECODE=1
# /var/lib/xgrader-queue: the queue's data volume (compose) starts with this owner.
RUN mkdir -p /var/lib/xgrader/tmp /var/lib/xgrader-queue && chown xgrader:xgrader /var/lib/xgrader/tmp /var/lib/xgrader-queue
USER xgrader
WORKDIR /var/lib/xgrader
# No entrypoint: the command is the whole argv (`xgrader run`, `xgrader queue serve`...),
# as deploy/compose.yaml writes it.
CMD ["xgrader", "--help"]
