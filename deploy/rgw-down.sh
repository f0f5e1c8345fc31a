#!/usr/bin/env bash
# Stop the single-node Ceph/radosgw cluster started by rgw-up.sh.
# Usage: rgw-down.sh [DATA_DIR]   (default /tmp/ceph-rgw)
# Only kills processes whose pid is recorded in DATA_DIR/run/*.pid AND whose
# command line references DATA_DIR (guards against pid reuse).
set -u
DATA=${1:-/tmp/ceph-rgw}
DATA=$(readlink -m "$DATA")
RUN="$DATA/run"
[ -d "$RUN" ] || exit 0

alive() { [ -n "$1" ] && kill -0 "$1" 2>/dev/null; }
ours() { tr '\0' ' ' < "/proc/$1/cmdline" 2>/dev/null | grep -qF -- "$DATA/"; }

# A memstore OSD dumps its whole in-RAM store to disk on a clean shutdown, which
# is pointless for this throw-away cluster (rgw-up.sh always wipes): SIGKILL it.
osd_sig=TERM
grep -Eq '^osd objectstore = memstore' "$DATA/ceph.conf" 2>/dev/null && osd_sig=KILL

# stop in reverse dependency order: rgw, mgr, osd, mon
for pat in 'client.rgw*' 'mgr.*' 'osd.*' 'mon.*'; do
  sig=TERM; [ "$pat" = 'osd.*' ] && sig=$osd_sig
  pids=()
  for f in "$RUN"/$pat.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null)
    if alive "$pid" && ours "$pid"; then
      kill -"$sig" "$pid" 2>/dev/null && pids+=("$pid")
    fi
    rm -f "$f"
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 50); do alive "$pid" || break; sleep 0.2; done
    if alive "$pid"; then kill -KILL "$pid" 2>/dev/null; fi
  done
done
exit 0
