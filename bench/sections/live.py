"""Live latency: streams written at a steady rate, as a camera records them.

One stream per source MP4 (one per worker, so that the figure is the service's own
overhead and not two streams queueing on one worker), each written sequentially at
a fixed rate from its first byte to its last (moov at the end, as a camera finishes
a regular MP4). Per full chunk, the service's overhead is the log time of its
``chunk_uploaded`` minus the time its last byte was written minus the PUT's own
seconds; finalization is ``stream_completed`` minus (last write + stream timeout).
The parts of finalization that are not the service's code (the verification read,
the PyAV probe, the server's CompleteMultipartUpload) are timed alone afterwards.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import xxhash

from bench.harness import CHUNK, Broken, empty_bucket, listing, parse_ts, pct
from bench.sections.assembly import complete_baseline
from bench.service import ProcessorRun
from bench.service_api import probe_media, worker_for
from tests.support.s3server import S3Endpoint, unique_bucket_name


def live_latency(ep: S3Endpoint, s3: Any, work: Path, sources: list[Path], rate: float,
                 workers: int, timeout: float) -> dict[str, Any]:
    """One stream per source MP4, each written sequentially at ``rate`` bytes/s from its
    first byte to its last (moov at the end, as a camera finishes a regular MP4)."""
    streams = len(sources)
    bucket = unique_bucket_name("bench-live")
    s3.create_bucket(Bucket=bucket)
    workdir = work / "live"
    watch = workdir / "in"
    watch.mkdir(parents=True)
    # one stream per worker, so that the figure is the service's own overhead and not
    # two streams queueing on one worker by the luck of the path hash
    names: list[str] = []
    used: set[int] = set()
    i = 0
    while len(names) < streams:
        name = f"live{i:03d}.mp4"
        slot = worker_for(name, workers)
        if slot not in used or len(used) >= workers:
            used.add(slot)
            names.append(name)
        i += 1
    contents = {n: src.read_bytes() for n, src in zip(names, sources, strict=True)}
    pr = ProcessorRun(workdir, watch, ep, bucket, workers, stream_timeout=timeout)
    pr.start()
    boundaries: dict[str, list[float]] = {n: [] for n in names}
    last_write: dict[str, float] = {}
    try:
        pr.wait_for("worker_started", workers, 60)
        pr.wait_for("bucket_ready", workers, 60)
        fds = {n: os.open(watch / n, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
               for n in names}
        written = dict.fromkeys(names, 0)
        t0 = time.monotonic()
        step = 0.005
        while any(written[n] < len(contents[n]) for n in names):
            for n in names:
                due = min(len(contents[n]), int(rate * (time.monotonic() - t0)))
                while written[n] < due:
                    nxt = min(due, (written[n] // CHUNK + 1) * CHUNK)
                    piece = contents[n][written[n]:nxt]
                    os.write(fds[n], piece)
                    written[n] += len(piece)
                    if written[n] % CHUNK == 0:
                        boundaries[n].append(time.time())
                    last_write[n] = time.time()
            time.sleep(step)
        for fd in fds.values():
            os.close(fd)
        last_write = {n: os.stat(watch / n).st_mtime for n in names}
        pr.wait_for("stream_completed", streams, 120 + 3 * timeout)
        _, usage = pr.stop()
    except BaseException:
        pr.kill()
        raise
    events = pr.events()
    by_id = {e["stream_id"]: e["rel_path"] for e in events if e.get("event") == "stream_detected"}
    overheads: list[float] = []
    puts: list[float] = []
    finals: list[float] = []
    completes: list[float] = []
    late_copies: list[int] = []
    tail_puts: list[float] = []
    for e in events:
        if e.get("event") != "chunk_uploaded":
            continue
        name = by_id[e["stream_id"]]
        idx = int(e["index"])
        if idx < len(boundaries[name]) and e["size"] == CHUNK:
            overheads.append(parse_ts(e["timestamp"]) - boundaries[name][idx] - e["seconds"])
            puts.append(e["seconds"])
        else:
            tail_puts.append(e["seconds"])
    for e in events:
        if e.get("event") == "stream_completed":
            name = e["rel_path"]
            finals.append(parse_ts(e["timestamp"]) - (last_write[name] + timeout))
            completes.append(float(e.get("seconds", {}).get("complete", 0.0)))
            late_copies.append(int(e.get("parts_copied_at_completion", 0)))
    # the parts of finalization that are not the service's own code, measured here the
    # same way: the verification read (pread every chunk + xxh3-128, page cache warm),
    # the server's CompleteMultipartUpload (plain boto3) and the PyAV probe
    verify: list[float] = []
    probe: list[float] = []
    for n in names:
        fd = os.open(watch / n, os.O_RDONLY)
        started = time.perf_counter()
        for off in range(0, len(contents[n]), CHUNK):
            xxhash.xxh3_128_hexdigest(os.pread(fd, CHUNK, off))
        verify.append(time.perf_counter() - started)
        os.close(fd)
        started = time.perf_counter()
        probe_media(watch / n)
        probe.append(time.perf_counter() - started)
    objects = listing(s3, bucket)
    for n in names:
        if not any(k.endswith("/" + n) and size == len(contents[n])
                   for k, size in objects.items()):
            raise Broken(f"live: no assembled {n} of {len(contents[n])} bytes")
    first = sorted(k for k in objects if f"/{Path(names[0]).stem}-" in k and "/chunks/" in k)
    complete_alone = complete_baseline(s3, bucket, first, 1)
    complete_together = complete_baseline(s3, bucket, first, streams)
    empty_bucket(s3, bucket)
    chunks = sum(len(c) // CHUNK for c in contents.values())
    if len(overheads) != chunks:
        raise Broken(f"live: {len(overheads)} full-chunk uploads, expected {chunks}")
    return {
        "streams": streams, "rate_mb_s": rate / 1e6,
        "chunks_per_stream": round(chunks / streams, 1),
        "stream_mb": round(max(len(c) for c in contents.values()) / 1e6, 1),
        "workers": workers, "stream_timeout": timeout, "samples": len(overheads),
        "overhead_p50_ms": round(pct(overheads, 50) * 1000, 1),
        "overhead_p99_ms": round(pct(overheads, 99) * 1000, 1),
        "overhead_max_ms": round(max(overheads) * 1000, 1),
        "put_p50_ms": round(pct(puts, 50) * 1000, 1),
        "put_p99_ms": round(pct(puts, 99) * 1000, 1),
        "finalize_p50_s": round(pct(finals, 50), 3),
        "finalize_max_s": round(max(finals), 3),
        "finalize_tail_put_s": round(max(tail_puts, default=0.0), 3),
        "verify_read_s": round(max(verify), 3),
        "probe_s": round(max(probe), 3),
        "parts_copied_at_completion_max": max(late_copies),
        "finalize_complete_request_max_s": round(max(completes), 3),
        "finalize_without_complete_max_s": round(max(f - c for f, c in zip(finals, completes,
                                                                            strict=True)), 3),
        "complete_server_alone_s": round(complete_alone, 3),
        "complete_server_together_s": round(complete_together, 3),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
    }
