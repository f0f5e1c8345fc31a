#!/usr/bin/env bash
# Bring up a throw-away single-node Ceph (Pacific, Debian 12) cluster with one
# mon, one osd and radosgw (beast) on 127.0.0.1:PORT, for S3 testing.
#
# Usage: rgw-up.sh [DATA_DIR] [PORT]      defaults: /tmp/ceph-rgw 7480
# Env:   OBJECTSTORE=bluestore|memstore   default bluestore on a sparse file DATA_DIR/osd/block.img
#                                          (memstore keeps data in RAM and its RSS is ~2x the data stored)
#        STORE_GB=12                       memstore capacity / bluestore sparse file size
#        MON_PORT=PORT+10000               msgr2 port of the monitor (17480 by default)
#        WITH_MGR=0                        set to 1 to also start a ceph-mgr
# Every run wipes DATA_DIR and builds a fresh cluster. Stop with rgw-down.sh DATA_DIR.
# Used by `make test-rgw` / `make rgw-up`: a second, compiled S3 implementation to run
# the tests and the benchmark against where MinIO cannot run (see README, Testing).
set -euo pipefail

DATA=$(readlink -m "${1:-/tmp/ceph-rgw}")
PORT=${2:-7480}
OBJECTSTORE=${OBJECTSTORE:-bluestore}
STORE_GB=${STORE_GB:-12}
MON_PORT=${MON_PORT:-$(( PORT + 10000 <= 65535 ? PORT + 10000 : 3300 ))}
WITH_MGR=${WITH_MGR:-0}
ACCESS_KEY=benchaccess
SECRET_KEY=benchsecret0123456789
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
MARK=.rgw-up-cluster
T0=$(date +%s)

log() { echo "[rgw-up $(( $(date +%s) - T0 ))s] $*" >&2; }
die() { echo "[rgw-up] ERROR: $*" >&2; exit 1; }

case "$OBJECTSTORE" in memstore|bluestore) ;; *) die "OBJECTSTORE must be memstore or bluestore";; esac
[[ "$PORT" =~ ^[0-9]+$ ]] || die "bad port $PORT"

# --- packages --------------------------------------------------------------
need=()
for b in ceph-mon ceph-osd radosgw radosgw-admin ceph; do command -v "$b" >/dev/null || need+=("$b"); done
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ceph packages (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || apt-get update -q
  apt-get install -y -q ceph-mon ceph-osd ceph-mgr radosgw ceph-common >&2
fi

# --- stop previous instance & wipe -----------------------------------------
[ "$DATA" != "/" ] || die "refusing DATA_DIR=/"
if [ -d "$DATA" ]; then
  if [ -n "$(ls -A "$DATA")" ] && [ ! -e "$DATA/$MARK" ]; then
    die "$DATA exists, is not empty and was not created by rgw-up.sh; refusing to wipe it"
  fi
  "$HERE/rgw-down.sh" "$DATA"
  rm -rf "$DATA"
fi
port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q LISTEN; }
for p in "$PORT" "$MON_PORT"; do
  port_busy "$p" && die "127.0.0.1:$p is already in use (another rgw-up cluster? use another PORT/MON_PORT or rgw-down.sh)"
done
mkdir -p "$DATA"/{run,log,mon,osd,rgw,mgr,crash,tmp}
touch "$DATA/$MARK"

FSID=$(uuidgen)
CONF="$DATA/ceph.conf"
STORE_BYTES=$(( STORE_GB * 1024 * 1024 * 1024 ))

cat > "$CONF" <<CONF
[global]
fsid = $FSID
mon host = v2:127.0.0.1:$MON_PORT
mon initial members = a
public addr = 127.0.0.1
cluster addr = 127.0.0.1
ms bind ipv6 = false
ms bind msgr1 = false

auth cluster required = none
auth service required = none
auth client required = none
auth supported = none

run dir = $DATA/run
admin socket = $DATA/run/\$name.asok
log file = $DATA/log/\$name.log
pid file =
crash dir = $DATA/crash
mon data = $DATA/mon/\$cluster-\$id
osd data = $DATA/osd/\$cluster-\$id
mgr data = $DATA/mgr/\$cluster-\$id
rgw data = $DATA/rgw/\$cluster-\$id
keyring = $DATA/keyring

# single node, single replica, few PGs
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon max pg per osd = 1000
mon warn on pool no redundancy = false
mon warn on insecure global id reclaim allowed = false
mon warn on msgr2 not enabled = false
mon osd min down reporters = 1
mon data avail warn = 2
mon data avail crit = 1

[mon]
mon cluster log file = $DATA/log/cluster.log
mon pg warn min per osd = 0
# single mon: commit map changes quickly (faster pool creation)
paxos propose interval = 0.05
paxos min wait = 0.01

[osd]
osd objectstore = $OBJECTSTORE
memstore device bytes = $STORE_BYTES
memstore page set = true
bluestore block path = $DATA/osd/block.img
bluestore block create = true
bluestore block size = $STORE_BYTES
bluestore block db create = false
bluestore block wal create = false
bluestore fsck on mount = false
bdev enable discard = true
osd memory target = 1073741824
osd memory cache min = 134217728
osd op num shards = 2
osd op num threads per shard = 2
osd scrub auto repair = false
osd max object size = 134217728
osd check max object name len on startup = false

[mgr]
mgr initial modules = iostat

[client]
admin socket =
log file = $DATA/log/\$name.log

[client.rgw.a]
admin socket = $DATA/run/\$name.asok
rgw frontends = beast endpoint=127.0.0.1:$PORT
# radosgw defaults to a "secure" mon connection, impossible with auth none
ms mon client mode = crc
rgw thread pool size = 128
rgw enable usage log = false
rgw enable ops log = false
rgw gc obj min wait = 60
rgw gc processor period = 60
rgw lc debug interval = -1
rgw dns name = localhost
# bucket policies (contract §9): SSE-C and SSE-KMS on the plain-http test port, with
# the testing KMS backend and its one key (its id goes in TEST_S3_KMS_KEY_ID)
rgw crypt require ssl = false
rgw crypt s3 kms backend = testing
rgw crypt s3 kms encryption keys = testkey-1=$(head -c 32 /dev/urandom | base64 -w0)
CONF

CEPH=(ceph -c "$CONF" --connect-timeout 10)

start() { # start <name> <cmd...> : run a daemon in the foreground in its own session
  local name=$1; shift
  setsid nohup env MALLOC_MMAP_THRESHOLD_=262144 MALLOC_ARENA_MAX=4 "$@" -c "$CONF" -f > "$DATA/log/$name.out" 2>&1 < /dev/null &
  echo $! > "$DATA/run/$name.pid"
}

# --- mon ---------------------------------------------------------------------
log "creating mon (fsid $FSID)"
monmaptool --create --fsid "$FSID" --addv a "[v2:127.0.0.1:$MON_PORT]" "$DATA/tmp/monmap" >/dev/null
ceph-mon -c "$CONF" --mkfs -i a --monmap "$DATA/tmp/monmap" >> "$DATA/log/mkfs.out" 2>&1
start mon.a ceph-mon -i a
for i in $(seq 1 60); do
  kill -0 "$(cat "$DATA/run/mon.a.pid")" 2>/dev/null || die "ceph-mon exited; see $DATA/log/mon.a.log"
  [ "$("${CEPH[@]}" fsid 2>/dev/null)" = "$FSID" ] && break   # make sure we talk to OUR mon
  sleep 0.5; [ "$i" -lt 60 ] || die "mon did not come up; see $DATA/log/mon.a.log"
done

# --- mgr (optional) ------------------------------------------------------------
if [ "$WITH_MGR" = 1 ]; then
  log "starting mgr"
  mkdir -p "$DATA/mgr/ceph-x"
  start mgr.x ceph-mgr -i x
fi

# --- osd ---------------------------------------------------------------------
log "creating osd ($OBJECTSTORE, ${STORE_GB} GiB)"
OSD_UUID=$(uuidgen)
OSD_ID=$("${CEPH[@]}" osd new "$OSD_UUID")
mkdir -p "$DATA/osd/ceph-$OSD_ID"
ceph-osd -c "$CONF" -i "$OSD_ID" --mkfs --osd-uuid "$OSD_UUID" >> "$DATA/log/mkfs.out" 2>&1 \
  || die "osd mkfs failed; see $DATA/log/mkfs.out and $DATA/log/osd.$OSD_ID.log"
start "osd.$OSD_ID" ceph-osd -i "$OSD_ID"
for i in $(seq 1 120); do
  "${CEPH[@]}" osd dump 2>/dev/null | grep -q "^osd.$OSD_ID up" && break
  sleep 0.5; [ "$i" -lt 120 ] || die "osd did not come up; see $DATA/log/osd.$OSD_ID.log"
done

# --- pools -------------------------------------------------------------------
# pre-create the rgw pools (size 1, 8 PGs) so the first bucket creation is fast
log "creating rgw pools"
for pool in .rgw.root default.rgw.control default.rgw.meta default.rgw.log \
            default.rgw.buckets.index default.rgw.buckets.non-ec default.rgw.buckets.data \
            default.rgw.STANDARD_IA.data; do
  "${CEPH[@]}" osd pool create "$pool" 8 8 replicated >/dev/null 2>&1 || die "pool create $pool failed"
  "${CEPH[@]}" osd pool application enable "$pool" rgw >/dev/null 2>&1 || die "pool application enable $pool failed"
done

# --- rgw ---------------------------------------------------------------------
log "creating S3 user"
radosgw-admin -c "$CONF" user create --uid=bench --display-name="bench user" \
  --access-key="$ACCESS_KEY" --secret-key="$SECRET_KEY" > "$DATA/log/user-create.json" 2>> "$DATA/log/radosgw-admin.out" \
  || die "radosgw-admin user create failed; see $DATA/log/radosgw-admin.out"
# a second storage class, for --storage-class (contract §9): rgw refuses unknown ones
log "adding storage class STANDARD_IA to default-placement"
radosgw-admin -c "$CONF" zonegroup placement add --rgw-zonegroup default \
  --placement-id default-placement --storage-class STANDARD_IA \
  >> "$DATA/log/radosgw-admin.out" 2>&1 || die "zonegroup placement add failed"
radosgw-admin -c "$CONF" zone placement add --rgw-zone default \
  --placement-id default-placement --storage-class STANDARD_IA \
  --data-pool default.rgw.STANDARD_IA.data \
  >> "$DATA/log/radosgw-admin.out" 2>&1 || die "zone placement add failed"
log "starting radosgw on 127.0.0.1:$PORT"
start client.rgw.a radosgw -n client.rgw.a
for i in $(seq 1 120); do
  code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$PORT/" || true)
  [ "$code" = 200 ] && break
  kill -0 "$(cat "$DATA/run/client.rgw.a.pid")" 2>/dev/null || die "radosgw exited; see $DATA/log/client.rgw.a.log"
  sleep 0.5; [ "$i" -lt 120 ] || die "radosgw did not answer; see $DATA/log/client.rgw.a.log"
done

log "cluster up in $(( $(date +%s) - T0 ))s (data dir $DATA, conf $CONF)"
echo "export TEST_S3_ENDPOINT=http://127.0.0.1:$PORT AWS_ACCESS_KEY_ID=$ACCESS_KEY AWS_SECRET_ACCESS_KEY=$SECRET_KEY AWS_DEFAULT_REGION=us-east-1 TEST_S3_KMS_KEY_ID=testkey-1"
