"""Side-by-side benchmark of the processor against a boto3 loop, awscli and rclone.

``make bench`` (full, a few minutes) or ``make bench-smoke`` (``--smoke``, < 1 min).
Everything runs in one invocation against one S3 server (moto's server in its own
process, or ``TEST_S3_ENDPOINT``/``TEST_S3_ACCESS_KEY``/``TEST_S3_SECRET_KEY``), so
figures are reported as ratios to the boto3 loop measured a moment earlier on the
same (possibly shared) machine. See docs/BENCHMARKS.md.

Sections:
  bulk     finished MP4s, processor with 1 and 4 (and 8) workers vs boto3 loop,
           ``aws s3 cp --recursive`` and ``rclone copy``: wall time and the client's
           CPU seconds per GiB (user+sys of the client's process tree, from wait4).
  memory   peak RSS per process and peak total PSS (smaps_rollup), sampled during bulk.
  live     streams appended at a steady rate: per-chunk service overhead (log time of
           ``chunk_uploaded`` - time the chunk's last byte was written - PUT seconds)
           and finalization (``stream_completed`` - (last write + stream timeout)).
  many     hundreds of slowly growing files, 8 workers: supervisor CPU, first-reaction
           (dispatch) latency, backlog trend.
  uplink   --bwlimit: the metering's CPU per GiB against no cap, and under a cap at half
           the server's rate, achieved / cap and live chunk visibility with and without
           live-first (bench/sections/uplink.py).
  playlist the live playlist's CPU per GiB against --no-live-playlist, pair by pair,
           and the delay from a fragment on disk to the playlist listing it beyond the
           chunk PUT (bench/sections/playlist.py).

Exit status is non-zero only when something is broken (a client failed, objects are
missing or the wrong size, the processor did not finish or exit cleanly), never
because a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import Broken, GiB, MiB, log
from bench.inputs import video_set
from bench.report import machine_info, report, to_json
from bench.sections.bulk import bulk_section
from bench.sections.live import live_latency
from bench.sections.many import many_streams
from bench.sections.playlist import playlist_section
from bench.sections.uplink import uplink_section
from tests.support.s3server import s3_endpoint


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="small and fast (< 1 min): 1 worker vs the boto3 loop only")
    parser.add_argument("--sections", default="bulk,live,many,uplink,playlist",
                        help="comma separated subset of bulk,live,many,uplink,playlist")
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache"
                                                    / "video-stream-processor-bench")))
    parser.add_argument("--json", type=Path, help="also write the raw figures here")
    parser.add_argument("--profile", type=Path,
                        help="instead of the bulk comparison, py-spy record (collapsed stacks) "
                             "worker-0 of a 1-worker bulk run into FILE, and the supervisor "
                             "of the many-streams run into FILE.supervisor (needs py-spy)")
    parser.add_argument("--no-baselines", action="store_true",
                        help="skip awscli and rclone even when installed")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    profile_supervisor = (args.profile.with_name(args.profile.name + ".supervisor")
                          if args.profile else None)
    smoke = args.smoke
    started = time.monotonic()
    results: dict[str, Any] = {"mode": "smoke" if smoke else "full", "notes": []}
    data_dir, files = video_set(args.cache_dir, smoke)
    nbytes = sum(p.stat().st_size for p in files)
    results["bulk_files"], results["bulk_bytes"] = len(files), nbytes
    with tempfile.TemporaryDirectory(prefix="vsp-bench-") as tmp, s3_endpoint() as ep:
        work = Path(tmp)
        s3 = ep.client()
        moto = not os.environ.get("TEST_S3_ENDPOINT")
        results["machine"] = machine_info(ep, moto)
        log(f"S3 endpoint {ep.url}; {len(files)} files, {nbytes / GiB:.3f} GiB in {data_dir}")
        for p in files:  # warm the page cache: every client reads from memory
            with open(p, "rb") as f:
                while f.read(8 * MiB):
                    pass
        try:
            if "bulk" in sections:
                results["bulk_runs"] = bulk_section(
                    ep, s3, work, data_dir, files, nbytes, results, cache_dir=args.cache_dir,
                    smoke=smoke, profile=args.profile, no_baselines=args.no_baselines)
            if "live" in sections:
                log("live latency")
                if smoke:
                    results["live"] = live_latency(ep, s3, work, files[:1], rate=10e6,
                                                   workers=1, timeout=1.0)
                else:
                    results["live"] = live_latency(ep, s3, work, files[:3], rate=10e6,
                                                   workers=4, timeout=2.0)
            if "many" in sections:
                log("many streams")
                if smoke:
                    results["many"] = many_streams(ep, s3, work, files[0], count=50, workers=1,
                                                   ramp=2.0, steady=4.0, probe_every=0.25,
                                                   append_every=2.0)
                else:
                    results["many"] = many_streams(ep, s3, work, files[0], count=500,
                                                   workers=8, ramp=5.0, steady=20.0,
                                                   probe_every=0.25, append_every=2.0,
                                                   profile=profile_supervisor)
            if "uplink" in sections:
                results["uplink"] = uplink_section(ep, s3, work, files, smoke)
            if "playlist" in sections:
                results["playlist"] = playlist_section(ep, s3, work, files, smoke)
        except Broken as exc:
            print(f"BROKEN: {exc}", file=sys.stderr)
            return 1
    results["elapsed_s"] = round(time.monotonic() - started, 1)
    results["machine"]["load_avg_at_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(report(results))
    print()
    for key, value in results["machine"].items():
        print(f"{key}: {value}")
    for note in results["notes"]:
        print(f"note: {note}")
    print(f"elapsed: {results['elapsed_s']} s")
    if args.json:
        args.json.write_text(json.dumps(to_json(results), indent=2, default=str))
    return 0
