"""The uplink cap (contract §8): how close to the cap, what live-first buys, what it costs.

1. What the server takes: a backlog of finished files, 4 workers, no cap. Its rate
   (bytes / wall time) and CPU per GiB are the baseline.
2. The cap's CPU cost: the same backlog with a cap far above that rate
   (``--bwlimit 64GiB/s``), so every body is metered piece by piece and nothing waits.
   The CPU per GiB against the run of 1., pair by pair.
3. Priority: the same backlog under a cap at half the server's rate, while a live
   stream is appended at a quarter of the cap; once with live-first (the default) and
   once with ``--no-live-first``. For each: achieved / cap over the backlog drain
   (every chunk byte acknowledged from the start of the backlog's first PUT to the end
   of its last, live ones included), and the delay from
   each live chunk's last byte written to its ``chunk_uploaded`` (p50, p99, max).
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import CHUNK, Broken, GiB, empty_bucket, listing, log, parse_ts, pct
from bench.service import ProcessorRun
from tests.support.s3server import S3Endpoint, unique_bucket_name

WORKERS = 4


def _backlog(watch: Path, sources: list[Path], copies: int) -> int:
    """Hard links of the sources (no copy), an hour old: finished files."""
    watch.mkdir(parents=True, exist_ok=True)
    hour_ago = time.time() - 3600
    total = 0
    for n in range(copies):
        for src in sources:
            dst = watch / f"old-{n}-{src.name}"
            os.link(src, dst)
            total += dst.stat().st_size
    for path in watch.iterdir():
        os.utime(path, (hour_ago, hour_ago))
    return total


def _run(ep: S3Endpoint, s3: Any, work: Path, name: str, sources: list[Path], copies: int,
         extra: list[str], live: tuple[Path, float, float] | None = None) -> dict[str, Any]:
    """One run on a fresh watch dir; ``live`` = (source, bytes/s, seconds) appended."""
    bucket = unique_bucket_name("bench-up")
    s3.create_bucket(Bucket=bucket)
    workdir = work / f"uplink-{name}"
    watch = workdir / "in"
    nbytes = _backlog(watch, sources, copies)
    files = copies * len(sources) + (1 if live else 0)
    pr = ProcessorRun(workdir, watch, ep, bucket, WORKERS, stream_timeout=2.0, extra=extra)
    boundaries: list[float] = []
    writer: threading.Thread | None = None
    try:
        pr.start()
        pr.wait_for("worker_started", WORKERS, 60)
        if live is not None:
            source, rate, seconds = live
            data = source.read_bytes()

            def write() -> None:
                """The source's bytes over and over at ``rate``, noting each chunk's end."""
                with open(watch / "live.mp4", "ab") as f:
                    start, written = time.monotonic(), 0
                    while time.monotonic() - start < seconds:
                        due = int(rate * (time.monotonic() - start))
                        while written < due:
                            at = written % len(data)
                            upto = min(due, (written // CHUNK + 1) * CHUNK,
                                       written + len(data) - at)
                            f.write(data[at:at + upto - written])
                            f.flush()
                            written = upto
                            if written % CHUNK == 0:
                                boundaries.append(time.time())
                        time.sleep(0.005)

            writer = threading.Thread(target=write)
            writer.start()
        pr.wait_for("stream_completed", files, 900)
        if writer is not None:
            writer.join()
        _, usage = pr.stop()
    except BaseException:
        pr.kill()
        raise
    events = pr.events()
    objects = listing(s3, bucket)
    if sum(1 for k in objects if not k.endswith(("metadata.json",)) and "/chunks/" not in k
           ) != files:
        raise Broken(f"uplink {name}: {files} files, objects: {len(objects)}")
    empty_bucket(s3, bucket)
    live_id = next((e["stream_id"] for e in events if e.get("event") == "stream_detected"
                    and e["rel_path"] == "live.mp4"), None)
    uploads = [e for e in events if e.get("event") == "chunk_uploaded"]
    backlog = [e for e in uploads if e["stream_id"] != live_id]
    times = [parse_ts(e["timestamp"]) for e in backlog]
    opened = min(times) - float(backlog[0]["seconds"])
    # every chunk byte (live ones too) acknowledged while the backlog drained
    sent = sum(int(e["size"]) for e in uploads if opened <= parse_ts(e["timestamp"])
               <= max(times))
    delays = [parse_ts(e["timestamp"]) - boundaries[int(e["index"])] for e in uploads
              if e["stream_id"] == live_id and int(e["index"]) < len(boundaries)]
    return {"bytes": nbytes, "cpu_s": usage.ru_utime + usage.ru_stime,
            "cpu_per_gib": (usage.ru_utime + usage.ru_stime)
            / (sum(int(e["size"]) for e in uploads) / GiB),
            # from the start of the first PUT to the end of the last
            "rate": sent / max(1e-9, max(times) - opened),
            "live_delays": delays}


def uplink_section(ep: S3Endpoint, s3: Any, work: Path, sources: list[Path],
                   smoke: bool) -> dict[str, Any]:
    copies = 1
    pairs = 1 if smoke else 2
    cost: list[float] = []
    server_rate = 0.0
    for i in range(pairs):
        log(f"uplink: no cap vs metered, pair {i + 1}/{pairs}")
        free = _run(ep, s3, work, f"free{i}", sources, copies, [])
        metered = _run(ep, s3, work, f"metered{i}", sources, copies, ["--bwlimit", "64GiB/s"])
        cost.append(metered["cpu_per_gib"] / free["cpu_per_gib"])
        server_rate = max(server_rate, free["rate"])
    cap = int(server_rate / 2)
    live_rate = cap / 4
    seconds = copies * sum(p.stat().st_size for p in sources) / (cap - live_rate)
    runs = {}
    for mode, extra in (("live-first", []), ("no-priority", ["--no-live-first"])):
        log(f"uplink: cap {cap / 1e6:.1f} MB/s, {mode}")
        runs[mode] = _run(ep, s3, work, mode, sources, copies,
                          ["--bwlimit", f"{cap}B/s", *extra],
                          live=(sources[0], live_rate, min(seconds, 120)))
    out: dict[str, Any] = {
        "server_mb_s": round(server_rate / 1e6, 1), "cap_mb_s": round(cap / 1e6, 1),
        "live_mb_s": round(live_rate / 1e6, 1),
        "metered_cpu_per_gib_ratio": [round(c, 3) for c in cost]}
    for mode, run in runs.items():
        delays = run["live_delays"]
        out[mode] = {"achieved_over_cap": round(run["rate"] / cap, 3),
                     "live_chunks": len(delays),
                     "live_visible_p50_s": round(pct(delays, 50), 2) if delays else None,
                     "live_visible_p99_s": round(pct(delays, 99), 2) if delays else None,
                     "live_visible_max_s": round(max(delays), 2) if delays else None}
    return out
