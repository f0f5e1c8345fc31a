# syntax=docker/dockerfile:1
#
# video-stream-processor: watches /data/input for growing MP4 files and ships
# them to S3 in chunks.  Build:  docker build -t video-stream-processor .
#
# BASE_IMAGE must provide CPython 3.11 or 3.12 on x86-64: plyvel publishes
# wheels only for those, and no compiler is installed here to build it.
# Override it to build from a locally imported base, e.g.
#   docker build --build-arg BASE_IMAGE=local/python:3.12-slim-bookworm .
ARG BASE_IMAGE=python:3.12-slim-bookworm

# --- builder: install the project and its dependencies into a venv ----------
FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python3 -m venv /opt/venv

WORKDIR /src
COPY pyproject.toml README.md ./
COPY supervisor/ supervisor/
COPY worker/ worker/
COPY shared/ shared/
RUN /opt/venv/bin/pip install --no-cache-dir .

# --- runtime: the venv, tini and an unprivileged user --------------------------
FROM ${BASE_IMAGE}

# tini is PID 1: it forwards SIGTERM to the supervisor and reaps zombies. tzdata:
# a --bwlimit timetable is read in local time, and TZ=Europe/Berlin needs the zone
# files (without them glibc falls back to UTC without a word).
# Not version-pinned (DL3008): they come from the base image's Debian release,
# and a pinned Debian revision breaks the build whenever that release moves.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini tzdata \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 10001 processor \
    && useradd --system --uid 10001 --gid processor \
        --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin processor \
    && mkdir -p /data/input /data/state \
    && chown processor:processor /data/state

COPY --from=builder /opt/venv /opt/venv

ENV PATH="/opt/venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PROCESSOR_WATCH_DIR=/data/input \
    PROCESSOR_STATE_DIR=/data/state

WORKDIR /app
USER 10001:10001

# /metrics, /healthz, /readyz
EXPOSE 9100

# No curl in slim images: probe /healthz with the standard library.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('PROCESSOR_METRICS_PORT', '9100'), timeout=4)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "--", "processor"]
