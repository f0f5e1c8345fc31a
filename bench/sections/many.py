"""Many streams: hundreds of slowly growing files, as a recorder with many cameras.

The files are created at a steady pace (the ramp), then each grows by 4 KiB at a
steady rate while a new file appears every so often (the probes). Measured: the
supervisor's CPU share and the whole group's, how soon each new file is detected
(dispatch, the first reaction), whether that grows over the run (a backlog), the
dispatch histogram of the workers themselves (``/metrics``) and peak memory.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from bench.harness import (
    MemorySampler,
    empty_bucket,
    group_pids,
    parse_ts,
    pct,
    proc_cpu,
    safe_cpu,
    start_py_spy,
    stop_py_spy,
)
from bench.service import ProcessorRun, histogram_p99
from tests.support.s3server import S3Endpoint, free_port, unique_bucket_name


def many_streams(ep: S3Endpoint, s3: Any, work: Path, source: Path, count: int,
                 workers: int, ramp: float, steady: float, probe_every: float,
                 append_every: float, profile: Path | None = None) -> dict[str, Any]:
    bucket = unique_bucket_name("bench-many")
    s3.create_bucket(Bucket=bucket)
    workdir = work / "many"
    watch = workdir / "in"
    watch.mkdir(parents=True)
    head = source.read_bytes()[:64 * 1024]
    piece = head[:4096]
    metrics_port = free_port()
    pr = ProcessorRun(workdir, watch, ep, bucket, workers, stream_timeout=600,
                      extra=["--metrics-port", str(metrics_port), "--metrics-host", "127.0.0.1"])
    pr.start()
    assert pr.proc is not None
    created: dict[str, float] = {}
    phase: dict[str, str] = {}
    try:
        pr.wait_for("worker_started", workers, 60)
        pr.wait_for("bucket_ready", workers, 60)
        sup = pr.proc.pid
        names = [f"s{i:04d}.mp4" for i in range(count)]

        fds: dict[str, int] = {}

        def create(name: str, kind: str) -> None:
            # like a recorder: the file stays open and is appended to (no open/close
            # events per write)
            fd = os.open(watch / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND,
                         0o644)
            os.write(fd, head)
            created[name] = time.time()
            phase[name] = kind
            fds[name] = fd

        # ramp: create the files at a steady pace
        t0 = time.monotonic()
        for i, name in enumerate(names):
            target = t0 + ramp * i / count
            delay = target - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            create(name, "ramp")
        # steady state: every file grows by 4 KiB every ``append_every`` s (spread evenly),
        # and a new probe file appears every ``probe_every`` s
        spy = start_py_spy(sup, profile) if profile else None
        with MemorySampler(sup, every=1.0) as mem:
            cpu0, w0 = proc_cpu(sup), time.monotonic()
            group0 = sum(safe_cpu(p) for p in group_pids(sup))
            appends = 0
            probes = 0
            start = time.monotonic()
            next_probe = start
            i = 0
            while time.monotonic() - start < steady:
                now = time.monotonic()
                if now >= next_probe:
                    create(f"p{probes:04d}.mp4", "probe")
                    probes += 1
                    next_probe += probe_every
                target = start + appends * append_every / count
                if now >= target:
                    os.write(fds[names[i % count]], piece)
                    appends += 1
                    i += 1
                else:
                    time.sleep(min(target, next_probe) - now)
            cpu1, w1 = proc_cpu(sup), time.monotonic()
            group1 = sum(safe_cpu(p) for p in group_pids(sup))
        pr.wait_for("stream_detected", count + probes, 60)
        dispatch = histogram_p99(metrics_port, "processor_dispatch_seconds")
        stop_py_spy(spy)
        for fd in fds.values():
            os.close(fd)
        _, usage = pr.stop()
    except BaseException:
        pr.kill()
        raise
    events = pr.events()
    detected = {e["rel_path"]: parse_ts(e["timestamp"]) for e in events
                if e.get("event") == "stream_detected"}
    lat = {n: detected[n] - created[n] for n in created}
    ramp_lat = [v for n, v in lat.items() if phase[n] == "ramp"]
    probe_order = sorted((n for n in lat if phase[n] == "probe"), key=created.__getitem__)
    probe_lat = [lat[n] for n in probe_order]
    half = len(probe_lat) // 2
    empty_bucket(s3, bucket)
    return {
        "streams": count, "workers": workers, "steady_s": round(w1 - w0, 1),
        "appends_per_s": round(appends / (w1 - w0), 1), "probes": probes,
        "supervisor_cpu_pct": round(100 * (cpu1 - cpu0) / (w1 - w0), 1),
        "group_cpu_pct": round(100 * (group1 - group0) / (w1 - w0), 1),
        "detect_ramp_p50_ms": round(pct(ramp_lat, 50) * 1000, 1),
        "detect_ramp_p99_ms": round(pct(ramp_lat, 99) * 1000, 1),
        "dispatch_to_worker_p99_ms_at_most": dispatch,
        "detect_probe_p50_ms": round(pct(probe_lat, 50) * 1000, 1),
        "detect_probe_p99_ms": round(pct(probe_lat, 99) * 1000, 1),
        "detect_probe_first_half_p50_ms": round(pct(probe_lat[:half], 50) * 1000, 1),
        "detect_probe_second_half_p50_ms": round(pct(probe_lat[half:], 50) * 1000, 1),
        "memory": mem.summary(),
        "cpu_total_s": round(usage.ru_utime + usage.ru_stime, 2),
    }
