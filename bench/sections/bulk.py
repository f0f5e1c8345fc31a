"""Bulk ingest: finished MP4s uploaded by the processor and by the baseline clients.

The processor (1 worker; 4 and 8 in the full run) against a plain boto3 loop,
``aws s3 cp --recursive`` and ``rclone copy``, one after another on the same data
and server: wall time and the CPU seconds per GiB of each client's process tree.
Each client also has its idle run (and the processor a warm idle run, see
:mod:`bench.sections.idle`). A processor run also reports its memory, where its wall
time went (from its own log) and what the server alone takes to assemble a stream.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.harness import (
    BENCH_DIR,
    CHUNK,
    Broken,
    MemorySampler,
    Run,
    client_env,
    empty_bucket,
    group_pids,
    listing,
    log,
    parse_ts,
    pct,
    proc_role,
    run_child,
    safe_cpu,
    start_py_spy,
    stop_py_spy,
    tool_version,
)
from bench.inputs import warm_set
from bench.sections.assembly import assembly_baseline
from bench.sections.idle import mean_run, repeats
from bench.service import ProcessorRun
from bench.service_api import worker_for
from tests.support.s3server import S3Endpoint, unique_bucket_name


def check_processor_output(client: Any, bucket: str, files: list[Path]) -> None:
    objects = listing(client, bucket)
    for path in files:
        finals = [k for k in objects if k.endswith("/" + path.name)]
        metas = [k for k in objects if k.endswith("/metadata.json")
                 and k.rsplit("/", 2)[-2].startswith(path.stem + "-")]
        if len(finals) != 1 or len(metas) != 1:
            raise Broken(f"processor: {path.name}: final objects {finals}, metadata {metas}")
        if objects[finals[0]] != path.stat().st_size:
            raise Broken(f"processor: {finals[0]} has {objects[finals[0]]} bytes, "
                         f"source {path.stat().st_size}")


def bulk_processor(ep: S3Endpoint, s3: Any, work: Path, data_dir: Path, files: list[Path],
                   workers: int, nbytes: int, profile: Path | None = None) -> Run:
    bucket = unique_bucket_name(f"bench-proc{workers}")
    s3.create_bucket(Bucket=bucket)
    workdir = work / f"proc-{workers}w-{bucket[-6:]}"
    workdir.mkdir()
    pr = ProcessorRun(workdir, data_dir, ep, bucket, workers, stream_timeout=1.0)
    pr.start()
    assert pr.proc is not None
    spy: subprocess.Popen[bytes] | None = None
    try:
        with MemorySampler(pr.proc.pid) as mem:
            if profile is not None:
                pr.wait_for("worker_started", workers, 60)
                worker_pids = [p for p in group_pids(pr.proc.pid)
                               if proc_role(p, pr.proc.pid) == "worker"]
                spy = start_py_spy(worker_pids[0], profile)
            if files:
                done = pr.wait_for("stream_completed", len(files), 600)
            else:  # idle: the fixed cost of starting and stopping
                done = pr.wait_for("bucket_ready", workers, 60)
            wall = done - pr.started
            live_cpu = sum(safe_cpu(p) for p in group_pids(pr.proc.pid))
            stop_py_spy(spy)
        _, usage = pr.stop()
    except BaseException:
        pr.kill()
        raise
    check_processor_output(s3, bucket, files)
    events = pr.events()
    puts = [e["seconds"] for e in events if e.get("event") == "chunk_uploaded"]
    name = f"processor {workers}w" + ("" if nbytes else " idle")
    run = Run(name, wall, usage.ru_utime, usage.ru_stime, nbytes, 0)
    run.extra = {"memory": mem.summary(), "cpu_live_sum_at_done": round(live_cpu, 2),
                 "chunk_puts": len(puts), "put_seconds_p50": round(pct(puts, 50), 4),
                 "max_rss_kb_wait4": usage.ru_maxrss,
                 **bulk_breakdown(events, pr.started_wall)}
    if files and nbytes:
        objects = listing(s3, bucket)
        first = sorted(k for k in objects if f"/{files[0].stem}-" in k and "/chunks/" in k)
        seconds = assembly_baseline(s3, bucket, first)
        run.extra["assembly_baseline_s_per_part"] = round(seconds / len(first), 4)
        run.extra["assembly_baseline_s_all"] = round(
            seconds / len(first) * len(puts), 2)
    empty_bucket(s3, bucket)
    return run


def bulk_breakdown(events: list[dict[str, Any]], started_wall: float) -> dict[str, float]:
    """Where the processor's wall time went, from its own log."""
    chunks = [parse_ts(e["timestamp"]) for e in events if e.get("event") == "chunk_uploaded"]
    full = [parse_ts(e["timestamp"]) for e in events
            if e.get("event") == "chunk_uploaded" and e.get("size") == CHUNK]
    ready = [parse_ts(e["timestamp"]) for e in events if e.get("event") == "bucket_ready"]
    done = [parse_ts(e["timestamp"]) for e in events if e.get("event") == "stream_completed"]
    puts = [e["seconds"] for e in events if e.get("event") == "chunk_uploaded"]
    verified = [e.get("chunks_verified") or {} for e in events
                if e.get("event") == "stream_completed"]
    if not full or not done:  # an idle run, or the warm idle's small files
        return {}
    return {
        "verified_by_read": sum(v.get("read", 0) for v in verified),
        "verified_settled": sum(v.get("settled", 0) for v in verified),
        "start_to_bucket_ready_s": round(min(ready) - started_wall, 2),
        "start_to_first_chunk_s": round(min(chunks) - started_wall, 2),
        "first_to_last_full_chunk_s": round(max(full) - min(chunks), 2),
        "last_full_chunk_to_last_completed_s": round(max(done) - max(full), 2),
        "put_seconds_sum": round(sum(puts), 2),
    }


def find_aws() -> str | None:
    local = Path(sys.executable).with_name("aws")
    if local.exists():
        return str(local)
    return os.environ.get("BENCH_AWS") or shutil.which("aws")


def bulk_baseline(kind: str, ep: S3Endpoint, s3: Any, work: Path, data_dir: Path,
                  files: list[Path], nbytes: int) -> Run:
    bucket = unique_bucket_name(f"bench-{kind}")
    s3.create_bucket(Bucket=bucket)
    env = client_env(ep)
    log_path = work / f"{kind}-{bucket[-6:]}.log"
    if kind == "boto3":
        argv = [sys.executable, str(BENCH_DIR / "boto3_loop.py"),
                "--endpoint", ep.url, "--bucket", bucket, "--prefix", "boto3",
                "--chunk-size", str(CHUNK), str(data_dir)]
    elif kind == "awscli":
        aws = find_aws()
        assert aws is not None
        config = work / "aws-config"
        config.write_text(f"[default]\nregion = {ep.region}\ns3 =\n"
                          "  multipart_threshold = 10MB\n  multipart_chunksize = 10MB\n")
        env["AWS_CONFIG_FILE"] = str(config)
        env["AWS_SHARED_CREDENTIALS_FILE"] = str(work / "no-credentials")
        argv = [aws, "--endpoint-url", ep.url, "s3", "cp", "--recursive", "--quiet",
                "--exclude", "*", "--include", "*.mp4", str(data_dir), f"s3://{bucket}/awscli/"]
    elif kind == "rclone":
        rclone = shutil.which("rclone")
        assert rclone is not None
        (work / "rclone.conf").touch()
        env.update({
            "RCLONE_CONFIG": str(work / "rclone.conf"),
            "RCLONE_CONFIG_BENCH_TYPE": "s3", "RCLONE_CONFIG_BENCH_PROVIDER": "Other",
            "RCLONE_CONFIG_BENCH_ACCESS_KEY_ID": ep.access_key,
            "RCLONE_CONFIG_BENCH_SECRET_ACCESS_KEY": ep.secret_key,
            "RCLONE_CONFIG_BENCH_ENDPOINT": ep.url, "RCLONE_CONFIG_BENCH_REGION": ep.region,
            "RCLONE_CONFIG_BENCH_FORCE_PATH_STYLE": "true",
        })
        argv = [rclone, "copy", str(data_dir), f"bench:{bucket}/rclone", "--include", "*.mp4",
                "--s3-chunk-size", "10Mi", "--s3-upload-cutoff", "10Mi"]
    else:
        raise ValueError(kind)
    run = run_child(kind, argv, env, nbytes, log_path, timeout=900)
    got = sum(listing(s3, bucket).values())
    if got != nbytes:
        raise Broken(f"{kind}: {got} bytes in the bucket, expected {nbytes}")
    empty_bucket(s3, bucket)
    return run


def bulk_section(ep: S3Endpoint, s3: Any, work: Path, data_dir: Path, files: list[Path],
                 nbytes: int, results: dict[str, Any], *, cache_dir: Path, smoke: bool,
                 profile: Path | None, no_baselines: bool) -> list[Run]:
    """Every bulk run in order, idle runs first (each client's fixed cost); the tools
    found (or not) go into ``results["machine"]`` and ``results["notes"]``."""
    runs: list[Run] = []
    empty = work / "empty"
    empty.mkdir()

    def proc(workers: int, idle: bool = False) -> Callable[[], Run]:
        return lambda: bulk_processor(ep, s3, work, empty if idle else data_dir,
                                      [] if idle else files, workers,
                                      0 if idle else nbytes)

    def warm(workers: int) -> Callable[[], Run]:
        def run() -> Run:
            used = {worker_for(p.relative_to(data_dir).as_posix(), workers)
                    for p in files}
            directory, tiny = warm_set(cache_dir, work, workers, used)
            return bulk_processor(ep, s3, work, directory, tiny, workers, 0)
        return run

    def base(kind: str, idle: bool = False) -> Callable[[], Run]:
        return lambda: bulk_baseline(kind, ep, s3, work, empty if idle else data_dir,
                                     [] if idle else files, 0 if idle else nbytes)

    # idle runs (start, connect, stop; no data) give each client's fixed cost
    plan: list[tuple[str, Callable[[], Run]]] = [
        ("boto3 idle", base("boto3", idle=True)),
        ("processor 1w idle", proc(1, idle=True)),
        ("processor 1w warm idle", warm(1)),
        ("boto3", base("boto3")),
        ("processor 1w", proc(1)),
    ]
    if profile:  # profiling perturbs: only the profiled run
        plan = [("processor 1w (py-spy)", lambda: bulk_processor(
            ep, s3, work, data_dir, files, 1, nbytes, profile=profile))]
    elif not smoke:
        plan += [("processor 4w idle", proc(4, idle=True)),
                 ("processor 4w warm idle", warm(4)),
                 ("processor 4w", proc(4)),
                 ("processor 8w idle", proc(8, idle=True)),
                 ("processor 8w warm idle", warm(8)),
                 ("processor 8w", proc(8))]
        if no_baselines:
            results["notes"].append("awscli and rclone skipped (--no-baselines)")
        else:
            aws = find_aws()
            if aws:
                results["machine"]["awscli"] = tool_version([aws, "--version"])
                plan += [("awscli idle", base("awscli", idle=True)),
                         ("awscli", base("awscli"))]
            else:
                results["notes"].append("awscli not found: pip install '.[bench]'")
            if shutil.which("rclone"):
                results["machine"]["rclone"] = tool_version(["rclone", "version"])
                plan += [("rclone idle", base("rclone", idle=True)),
                         ("rclone", base("rclone"))]
            else:
                results["notes"].append("rclone not found: apt-get install rclone")
    for name, fn in plan:
        log(f"bulk: {name}")
        samples = []
        for _ in range(repeats(name, smoke)):
            samples.append(fn())
            log(f"bulk: {name}: {samples[-1].wall:.2f} s wall, "
                f"{samples[-1].cpu:.2f} CPU s")
        r = mean_run(samples)
        r.name = name
        runs.append(r)
    return runs
