#!/usr/bin/env bash
# Builds the service image and runs it, for real, against a local S3 server.
#
#   make docker-smoke          (or: bash deploy/docker-smoke.sh)
#
# 1. a Docker engine: uses the one that answers; otherwise installs Debian's
#    docker.io (as root) and starts dockerd with vfs storage, no iptables and no
#    bridge (it is stopped again at the end; its log is $DOCKERD_LOG);
# 2. the base image: $BASE_IMAGE (default local/bookworm-python, made by
#    deploy/base-image.sh with debootstrap when missing, since no registry may be
#    reachable); pass BASE_IMAGE=python:3.12-slim-bookworm where one is;
# 3. docker build --network host --build-arg BASE_IMAGE=... -t $IMAGE .
# 4. a moto S3 server on 127.0.0.1 (the project's venv: $VENV, .venv, else
#    /tmp/venvtest);
# 5. the container: --network host, input dir bind-mounted read-only at
#    /data/input, a named volume at /data/state, 5 MiB chunks, 2 s stream timeout;
# 6. a real MP4 (> 5 MiB, so several chunks) made by the bundled ffmpeg is dropped
#    into the input dir; checks: metadata.json lands, the assembled object is
#    byte-identical, /healthz /readyz /metrics from the host, the image's own
#    HEALTHCHECK turns "healthy", every process runs as the non-root user,
#    `docker stop -t 35` exits 0 inside the grace period after drain_started and
#    drain_finished, image size, and no compiler in the image.
#
# Prints PASS/FAIL per check and a summary; exits 1 on any failure. Removes its
# container, volume, moto server and temp dirs; keeps the images (re-runs reuse
# the build cache). KEEP_TMP=1 keeps the temp dir (logs) for inspection.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1

BASE_IMAGE="${BASE_IMAGE:-local/bookworm-python}"
IMAGE="${IMAGE:-local/video-stream-processor:smoke}"
DOCKERD_LOG="${DOCKERD_LOG:-/tmp/docker-smoke-dockerd.log}"
STOP_GRACE=35        # docker-compose.yml's stop_grace_period
RUN_ID="vsp-smoke-$$"
BUCKET="$RUN_ID"
ACCESS_KEY=smoke-access
SECRET_KEY=smoke-secret-do-not-log

WORK=""
CONTAINER=""
VOLUME=""
MOTO_PID=""
DOCKERD_PID=""
FAILED=0
declare -a RESULTS=() TIMINGS=()

say()  { printf '[docker-smoke] %s\n' "$*" >&2; }
pass() { RESULTS+=("PASS  $1"); say "PASS $1"; }
fail() { RESULTS+=("FAIL  $1"); say "FAIL $1"; FAILED=1; }
timing() { TIMINGS+=("$(printf '%-34s %6ss' "$1" "$2")"); }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

summary() {
    echo
    echo "================ docker-smoke summary ================"
    local r t
    for r in "${RESULTS[@]}"; do echo "  $r"; done
    echo "  -- timings --"
    for t in "${TIMINGS[@]}"; do echo "  $t"; done
    if ((FAILED)); then
        echo "RESULT: FAIL"
    else
        echo "RESULT: PASS (${#RESULTS[@]} checks)"
    fi
    echo "======================================================"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    if [[ -n "$CONTAINER" ]]; then
        if ((FAILED)) && [[ -n "$WORK" ]]; then
            $DOCKER logs "$CONTAINER" >"$WORK/container.log" 2>&1 || true
            say "last container log lines:"
            tail -n 25 "$WORK/container.log" >&2 || true
        fi
        $DOCKER rm -f "$CONTAINER" >/dev/null 2>&1 || true
    fi
    [[ -n "$VOLUME" ]] && $DOCKER volume rm -f "$VOLUME" >/dev/null 2>&1
    if [[ -n "$MOTO_PID" ]]; then
        kill "$MOTO_PID" 2>/dev/null
        for _ in $(seq 50); do kill -0 "$MOTO_PID" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$MOTO_PID" 2>/dev/null
        wait "$MOTO_PID" 2>/dev/null
    fi
    if [[ -n "$DOCKERD_PID" ]]; then
        say "stopping the dockerd this script started (pid $DOCKERD_PID)"
        kill "$DOCKERD_PID" 2>/dev/null
        for _ in $(seq 300); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            say "dockerd did not stop within 30 s; killing it"
            kill -9 "$DOCKERD_PID" 2>/dev/null
        fi
    fi
    if [[ -n "$WORK" ]]; then
        if [[ "${KEEP_TMP:-0}" == 1 ]]; then
            say "kept $WORK"
        else
            # the input dir is read by uid 10001 only; everything in it is ours
            rm -rf --one-file-system "$WORK"
        fi
    fi
    if [[ $rc -ne 0 && $FAILED -eq 0 ]]; then
        fail "interrupted or aborted (status $rc)"
    fi
    summary
    ((FAILED)) && exit 1
    exit 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Stops here: the remaining checks depend on this one.
fatal() { fail "$1"; exit 1; }

# ---------------------------------------------------------------- 1. the engine
T_TOTAL=$(now)
T=$(now)
if [[ -z "${DOCKER:-}" ]]; then
    # Debian's client when present: it matches Debian's engine and uses the
    # classic builder, which honours --network host without buildx.
    if [[ -x /usr/bin/docker ]]; then DOCKER=/usr/bin/docker; else DOCKER=docker; fi
fi
if ! $DOCKER info >/dev/null 2>&1; then
    if ! command -v dockerd >/dev/null && [[ ! -x /usr/sbin/dockerd ]]; then
        [[ $(id -u) -eq 0 ]] || fatal "no Docker engine answers and installing docker.io needs root"
        say "installing docker.io from Debian's packages"
        if ! { apt-get -o DPkg::Lock::Timeout=600 update -qq &&
               DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
                   install -y -qq docker.io; } >/tmp/docker-smoke-apt.log 2>&1; then
            tail -n 20 /tmp/docker-smoke-apt.log >&2
            fatal "apt-get install docker.io failed (log: /tmp/docker-smoke-apt.log)"
        fi
    fi
    DOCKER=/usr/bin/docker
    if ! $DOCKER info >/dev/null 2>&1; then
        [[ $(id -u) -eq 0 ]] || fatal "no Docker engine answers and starting dockerd needs root"
        DOCKERD="$(command -v dockerd || echo /usr/sbin/dockerd)"
        say "starting $DOCKERD (vfs, no iptables, no bridge); log: $DOCKERD_LOG"
        setsid "$DOCKERD" --storage-driver=vfs --iptables=false --bridge=none \
            >>"$DOCKERD_LOG" 2>&1 </dev/null &
        DOCKERD_PID=$!
        for _ in $(seq 120); do
            $DOCKER info >/dev/null 2>&1 && break
            kill -0 "$DOCKERD_PID" 2>/dev/null || break
            sleep 0.5
        done
        if ! $DOCKER info >/dev/null 2>&1; then
            tail -n 20 "$DOCKERD_LOG" >&2
            kill -0 "$DOCKERD_PID" 2>/dev/null || DOCKERD_PID=""
            fatal "dockerd did not come up (log: $DOCKERD_LOG)"
        fi
    fi
fi
pass "docker engine $($DOCKER version -f '{{.Server.Version}}' 2>/dev/null) answers ($( [[ -n $DOCKERD_PID ]] && echo "started here" || echo "already running"))"
timing "engine ready" "$(since "$T")"

WORK="$(mktemp -d /tmp/docker-smoke.XXXXXX)"
chmod 0755 "$WORK"

# ------------------------------------------------------------ 2. the base image
T=$(now)
if ! $DOCKER image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    if [[ "$BASE_IMAGE" == local/* ]]; then
        say "building the base image $BASE_IMAGE (debootstrap)"
        DOCKER="$DOCKER" bash deploy/base-image.sh "$BASE_IMAGE" ||
            fatal "base image $BASE_IMAGE could not be built"
    else
        say "$BASE_IMAGE is not local; docker build will pull it"
    fi
fi
timing "base image" "$(since "$T")"

# ------------------------------------------------------------- 3. the service image
T=$(now)
say "docker build --network host --build-arg BASE_IMAGE=$BASE_IMAGE -t $IMAGE ."
if $DOCKER build --network host --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$IMAGE" . \
        >"$WORK/build.log" 2>&1; then
    pass "docker build (base $BASE_IMAGE)"
else
    tail -n 40 "$WORK/build.log" >&2
    fatal "docker build failed"
fi
timing "docker build" "$(since "$T")"

# ---------------------------------------------------------------- 4. moto S3
if [[ -n "${VENV:-}" && -x "$VENV/bin/python" ]]; then PY="$VENV/bin/python"
elif [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=/tmp/venvtest/bin/python; fi
[[ -x "$PY" ]] || fatal "no venv with the test extras (.venv or /tmp/venvtest); run make venv"
"$PY" -c 'import moto.server, boto3, imageio_ffmpeg' 2>/dev/null ||
    fatal "$PY lacks moto[server], boto3 or imageio-ffmpeg (pip install -e '.[test]')"

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_status() {  # URL -> HTTP status, or 000 when nothing answers
    "$PY" - "$1" <<'EOF'
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=3).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
}

T=$(now)
for _attempt in 1 2 3; do
    S3_PORT=$(free_port)
    env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_SESSION_TOKEN -u AWS_PROFILE \
        "$PY" -m moto.server -H 127.0.0.1 -p "$S3_PORT" >>"$WORK/moto.log" 2>&1 </dev/null &
    MOTO_PID=$!
    for _ in $(seq 200); do
        [[ $(http_status "http://127.0.0.1:$S3_PORT/") != 000 ]] && break
        kill -0 "$MOTO_PID" 2>/dev/null || break
        sleep 0.1
    done
    [[ $(http_status "http://127.0.0.1:$S3_PORT/") != 000 ]] && break
    kill "$MOTO_PID" 2>/dev/null; wait "$MOTO_PID" 2>/dev/null; MOTO_PID=""
done
[[ -n "$MOTO_PID" ]] || { tail -n 20 "$WORK/moto.log" >&2; fatal "moto server did not start"; }
S3_URL="http://127.0.0.1:$S3_PORT"
pass "moto S3 server at $S3_URL"
timing "moto server up" "$(since "$T")"

# ---------------------------------------------------------------- 5. the container
INPUT="$WORK/input"
STAGE="$WORK/stage"
mkdir -p "$INPUT" "$STAGE"
chmod 0755 "$INPUT"     # read by uid 10001 through the read-only bind mount
METRICS_PORT=$(free_port)
CONTAINER="$RUN_ID"
VOLUME="$RUN_ID-state"
$DOCKER volume create "$VOLUME" >/dev/null || fatal "docker volume create failed"

T=$(now)
if ! $DOCKER run -d --name "$CONTAINER" --network host \
        -e PROCESSOR_S3_ENDPOINT="$S3_URL" \
        -e PROCESSOR_S3_BUCKET="$BUCKET" \
        -e AWS_ACCESS_KEY_ID="$ACCESS_KEY" -e AWS_SECRET_ACCESS_KEY="$SECRET_KEY" \
        -e AWS_DEFAULT_REGION=us-east-1 \
        -e PROCESSOR_STREAM_TIMEOUT=2 \
        -e PROCESSOR_CHUNK_SIZE=5MiB \
        -e PROCESSOR_WORKERS=2 \
        -e PROCESSOR_METRICS_PORT="$METRICS_PORT" \
        -e PROCESSOR_METRICS_HOST=127.0.0.1 \
        -v "$INPUT:/data/input:ro" \
        -v "$VOLUME:/data/state" \
        --health-interval=2s --health-start-period=30s --health-retries=3 \
        "$IMAGE" >"$WORK/container.id" 2>"$WORK/run.err"; then
    cat "$WORK/run.err" >&2
    fatal "docker run failed"
fi

container_running() { [[ $($DOCKER inspect -f '{{.State.Running}}' "$CONTAINER" 2>/dev/null) == true ]]; }

for _ in $(seq 120); do
    [[ $(http_status "http://127.0.0.1:$METRICS_PORT/healthz") == 200 ]] && break
    container_running || break
    sleep 0.5
done
if [[ $(http_status "http://127.0.0.1:$METRICS_PORT/healthz") == 200 ]]; then
    pass "container up: /healthz 200 from the host on port $METRICS_PORT"
else
    fatal "container never answered /healthz (running: $(container_running && echo yes || echo no))"
fi
timing "container start -> /healthz 200" "$(since "$T")"

# ------------------------------------------------------------ 6. a real MP4
T=$(now)
FFMPEG=$("$PY" -c 'import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())')
# testsrc2 + noise is nearly incompressible: 8 s at 12 Mbit/s is ~12.6 MB, 3 chunks.
if ! "$FFMPEG" -hide_banner -nostdin -loglevel error -y \
        -f lavfi -i "testsrc2=size=640x360:rate=25,noise=alls=100:allf=t+u" -frames:v 200 \
        -c:v libx264 -preset ultrafast -pix_fmt yuv420p -threads 1 -g 25 \
        -b:v 12000k -maxrate 12000k -bufsize 12000k "$STAGE/cam1.mp4" 2>"$WORK/ffmpeg.err"; then
    cat "$WORK/ffmpeg.err" >&2
    fatal "ffmpeg could not make the test video"
fi
chmod 0644 "$STAGE/cam1.mp4"
SIZE=$(stat -c %s "$STAGE/cam1.mp4")
((SIZE > 5 * 1024 * 1024)) || fatal "test video is only $SIZE bytes"
timing "make the test MP4 ($SIZE B)" "$(since "$T")"
# One rename: the file appears whole in the watched dir, after start-up.
mv "$STAGE/cam1.mp4" "$INPUT/cam1.mp4"
SRC="$INPUT/cam1.mp4"

T=$(now)
if "$PY" - "$S3_URL" "$BUCKET" "$SRC" "$ACCESS_KEY" "$SECRET_KEY" "$WORK/metadata.json" \
        "$CONTAINER" "$DOCKER" <<'EOF'
import hashlib, json, subprocess, sys, time
import boto3
from botocore.config import Config

url, bucket, src, ak, sk, out, container, docker = sys.argv[1:9]
s3 = boto3.session.Session().client(
    "s3", endpoint_url=url, aws_access_key_id=ak, aws_secret_access_key=sk,
    region_name="us-east-1", config=Config(s3={"addressing_style": "path"}))
def running():
    r = subprocess.run([docker, "inspect", "-f", "{{.State.Running}}", container],
                       capture_output=True, text=True)
    return r.stdout.strip() == "true"
deadline = time.monotonic() + 180
key = None
while time.monotonic() < deadline and key is None:
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="streams/"):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/metadata.json"):
                    key = obj["Key"]
    except s3.exceptions.NoSuchBucket:
        pass
    if key is None:
        if not running():
            sys.exit("the container exited before metadata.json appeared")
        time.sleep(0.5)
if key is None:
    sys.exit("no metadata.json within 180 s")
meta = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
with open(out, "w") as f:
    json.dump(meta, f, indent=2)
data = open(src, "rb").read()
final = s3.get_object(Bucket=bucket, Key=meta["object_key"])["Body"].read()
problems = []
if hashlib.sha256(final).digest() != hashlib.sha256(data).digest():
    problems.append(f"final object differs ({len(final)} B vs {len(data)} B)")
if meta.get("status") != "complete":
    problems.append(f"status {meta.get('status')!r}")
if meta.get("total_size_bytes") != len(data):
    problems.append(f"total_size_bytes {meta.get('total_size_bytes')} != {len(data)}")
chunks = meta.get("chunks", [])
if len(chunks) < 2:
    problems.append(f"only {len(chunks)} chunk(s)")
if meta.get("chunk_size") != 5 * 1024 * 1024:
    problems.append(f"chunk_size {meta.get('chunk_size')}")
for c in chunks:
    body = s3.get_object(Bucket=bucket, Key=c["key"])["Body"].read()
    if body != data[c["offset"]:c["offset"] + c["size"]]:
        problems.append(f"chunk {c['index']} differs from the source")
if meta.get("media_duration_seconds") is None:
    problems.append(f"no media duration ({meta.get('media_error')})")
if problems:
    sys.exit("; ".join(problems))
print(f"{meta['object_key']}: {len(data)} B byte-identical, {len(chunks)} chunks, "
      f"media {meta['media_duration_seconds']} s ({meta.get('media', {}).get('video_codec')})")
EOF
then
    pass "stream shipped: metadata.json present, final object and chunks byte-identical"
else
    fail "stream not shipped correctly (see above)"
fi
timing "file dropped -> verified in S3" "$(since "$T")"

# ------------------------------------------------------- 7. health, metrics, user
for ep in healthz readyz; do
    st=$(http_status "http://127.0.0.1:$METRICS_PORT/$ep")
    if [[ $st == 200 ]]; then pass "/$ep 200 from the host"; else fail "/$ep answered $st"; fi
done
if "$PY" - "http://127.0.0.1:$METRICS_PORT/metrics" <<'EOF'
import sys, urllib.request
text = urllib.request.urlopen(sys.argv[1], timeout=5).read().decode()
vals = {}
for line in text.splitlines():
    if line.startswith("processor_chunks_uploaded_total ") or line.startswith("processor_chunks_uploaded_total{"):
        vals["chunks"] = vals.get("chunks", 0) + float(line.rsplit(" ", 1)[1])
    if line.startswith("processor_streams_completed_total"):
        vals["streams"] = vals.get("streams", 0) + float(line.rsplit(" ", 1)[1])
if vals.get("chunks", 0) < 2 or vals.get("streams", 0) < 1:
    sys.exit(f"metrics: {vals}")
print(f"metrics: {vals}")
EOF
then
    pass "/metrics counts the chunks and the completed stream"
else
    fail "/metrics lacks the uploaded chunks or the completed stream"
fi

for _ in $(seq 60); do
    HEALTH=$($DOCKER inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{end}}' "$CONTAINER")
    [[ "$HEALTH" == healthy || "$HEALTH" == unhealthy ]] && break
    sleep 1
done
if [[ "$HEALTH" == healthy ]]; then
    pass "image HEALTHCHECK reports healthy (its own command, run every 2 s here)"
else
    fail "image HEALTHCHECK status: ${HEALTH:-none}"
fi

EXEC_UID=$($DOCKER exec "$CONTAINER" id -u 2>&1)
if [[ "$EXEC_UID" == 10001 ]]; then
    pass "docker exec id -u = 10001 (non-root)"
else
    fail "docker exec id -u = $EXEC_UID"
fi
# docker top prints host uids (no user namespace here); every process must be 10001.
TOP=$($DOCKER top "$CONTAINER" -eo uid,pid,args 2>&1)
echo "$TOP" >"$WORK/top.txt"
NPROC=$(echo "$TOP" | awk 'NR > 1' | wc -l)
NOTUSER=$(echo "$TOP" | awk 'NR > 1 && $1 != "10001"' | wc -l)
if ((NPROC >= 3 && NOTUSER == 0)); then
    pass "docker top: all $NPROC processes (tini, supervisor, workers) run as uid 10001"
else
    echo "$TOP" >&2
    fail "docker top: $NOTUSER of $NPROC processes not uid 10001"
fi
PID1=$($DOCKER exec "$CONTAINER" cat /proc/1/cmdline 2>/dev/null | tr '\0' ' ')
if [[ "$PID1" == /usr/bin/tini* ]]; then pass "PID 1 is tini ($PID1)"; else fail "PID 1 is '$PID1'"; fi
if $DOCKER exec "$CONTAINER" sh -c 'touch /data/input/x' >/dev/null 2>&1; then
    fail "/data/input is writable inside the container"
else
    pass "/data/input is read-only inside the container"
fi

# ---------------------------------------------------------------- 8. drain
T=$(now)
$DOCKER stop -t "$STOP_GRACE" "$CONTAINER" >/dev/null
STOP_S=$(since "$T")
timing "docker stop -t $STOP_GRACE" "$STOP_S"
EXIT_CODE=$($DOCKER inspect -f '{{.State.ExitCode}}' "$CONTAINER")
OOM=$($DOCKER inspect -f '{{.State.OOMKilled}}' "$CONTAINER")
if [[ "$EXIT_CODE" == 0 ]] && awk -v s="$STOP_S" -v g="$STOP_GRACE" 'BEGIN { exit !(s < g) }'; then
    pass "docker stop: exit code 0 after ${STOP_S}s (grace ${STOP_GRACE}s)"
else
    fail "docker stop: exit code $EXIT_CODE (OOMKilled $OOM) after ${STOP_S}s"
fi
$DOCKER logs "$CONTAINER" >"$WORK/container.log" 2>&1
if "$PY" - "$WORK/container.log" "$SECRET_KEY" <<'EOF'
import json, sys
events, bad = [], 0
text = open(sys.argv[1], errors="replace").read()
for line in text.splitlines():
    try:
        rec = json.loads(line)
    except ValueError:
        bad += 1
        continue
    events.append(rec.get("event"))
problems = []
for name in ("drain_started", "drain_finished"):
    if name not in events:
        problems.append(f"no {name}")
if "drain_started" in events and "drain_finished" in events and \
        events.index("drain_started") > events.index("drain_finished"):
    problems.append("drain_finished before drain_started")
for name in ("drain_timeout", "quit_now", "stream_failed"):
    if name in events:
        problems.append(f"logged {name}")
if sys.argv[2] in text:
    problems.append("the secret key appears in the logs")
if bad:
    problems.append(f"{bad} non-JSON log line(s)")
if problems:
    sys.exit("; ".join(problems))
print(f"{len(events)} JSON log lines; drain_started .. drain_finished; no secret")
EOF
then
    pass "logs: drain_started then drain_finished, all JSON, no secret"
else
    fail "logs: drain events missing or wrong (see above)"
fi

# ---------------------------------------------------------------- 9. the image
SIZE_B=$($DOCKER image inspect -f '{{.Size}}' "$IMAGE")
SIZE_MB=$(awk -v b="$SIZE_B" 'BEGIN { printf "%.0f", b / 1000000 }')
BASE_B=$($DOCKER image inspect -f '{{.Size}}' "$BASE_IMAGE" 2>/dev/null || echo 0)
BASE_MB=$(awk -v b="$BASE_B" 'BEGIN { printf "%.0f", b / 1000000 }')
pass "image size: $SIZE_B bytes (~${SIZE_MB} MB; base $BASE_IMAGE ~${BASE_MB} MB)"
COMPILERS=$($DOCKER run --rm --entrypoint sh "$IMAGE" -c 'command -v gcc cc c++ g++ clang make' 2>&1)
if [[ -z "$COMPILERS" ]]; then
    pass "no compiler in the image (gcc, cc, c++, g++, clang, make: none)"
else
    fail "compiler found in the image: $COMPILERS"
fi

timing "total" "$(since "$T_TOTAL")"
