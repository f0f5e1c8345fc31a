#!/usr/bin/env python3
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

Exit status is non-zero only when something is broken (a client failed, objects are
missing or the wrong size, the processor did not finish or exit cleanly), never
because a target is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import xxhash  # noqa: E402

from shared.routing import worker_for  # noqa: E402
from tests.support.s3server import (  # noqa: E402
    S3Endpoint,
    free_port,
    s3_endpoint,
    unique_bucket_name,
)
from tests.support.videos import ffmpeg_exe, make_video  # noqa: E402

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK = 10 * MiB
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


class Broken(Exception):
    """Something did not work (not: something was slow)."""


# ---------------------------------------------------------------------------- helpers
def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def read_events(path: Path) -> list[dict[str, Any]]:
    events = []
    if not path.exists():
        return events
    for line in path.read_text(errors="replace").splitlines():
        with contextlib.suppress(ValueError):
            events.append(json.loads(line))
    return events


class LogTail:
    """Incremental reader of the processor's JSON log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.events: list[dict[str, Any]] = []
        self.counts: dict[str, int] = {}

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self.events.append(event)
            name = event.get("event", "")
            self.counts[name] = self.counts.get(name, 0) + 1

    def count(self, name: str) -> int:
        self.poll()
        return self.counts.get(name, 0)


def group_pids(pgid: int) -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2:].split()
        if int(fields[2]) == pgid:  # state ppid pgrp ...
            pids.append(int(entry.name))
    return pids


def proc_cpu(pid: int) -> float:
    """utime+stime of one process (all threads), seconds."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rfind(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_role(pid: int, root: int) -> str:
    if pid == root:
        return "supervisor"
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return "gone"
    if b"resource_tracker" in cmd:
        return "resource_tracker"
    if b"spawn_main" in cmd:
        return "worker"
    if b"worker.prober" in cmd:
        return "probe helper"
    return "other"


def smaps(pid: int) -> tuple[int, int]:
    """(Rss, Pss) in bytes from smaps_rollup."""
    rss = pss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
            elif line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
    return rss, pss


class MemorySampler:
    """Samples every process of a process group: peak RSS per process, peak total PSS."""

    def __init__(self, pgid: int, every: float = 0.25) -> None:
        self.pgid = pgid
        self.every = every
        self.peak_rss: dict[int, int] = {}
        self.roles: dict[int, str] = {}
        self.peak_pss_total = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for pid in group_pids(self.pgid):
                try:
                    rss, pss = smaps(pid)
                except OSError:
                    continue
                if pid not in self.roles:
                    self.roles[pid] = proc_role(pid, self.pgid)
                self.peak_rss[pid] = max(self.peak_rss.get(pid, 0), rss)
                total += pss
            self.peak_pss_total = max(self.peak_pss_total, total)
            self.samples += 1
            self._stop.wait(self.every)

    def summary(self) -> dict[str, Any]:
        workers = [v for p, v in self.peak_rss.items() if self.roles.get(p) == "worker"]
        sup = [v for p, v in self.peak_rss.items() if self.roles.get(p) == "supervisor"]
        helpers = [v for p, v in self.peak_rss.items() if self.roles.get(p) == "probe helper"]
        return {
            "samples": self.samples,
            "supervisor_peak_rss_mb": round(max(sup, default=0) / 1e6, 1),
            "worker_peak_rss_mb": round(max(workers, default=0) / 1e6, 1),
            "worker_peak_rss_mb_each": sorted(round(w / 1e6, 1) for w in workers),
            "probe_helper_peak_rss_mb": round(max(helpers, default=0) / 1e6, 1),
            "total_peak_pss_mb": round(self.peak_pss_total / 1e6, 1),
        }


@dataclass
class Run:
    """One client run: wall seconds and CPU of its whole process tree (from wait4)."""

    name: str
    wall: float
    cpu_user: float
    cpu_sys: float
    nbytes: int
    returncode: int
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu(self) -> float:
        return self.cpu_user + self.cpu_sys

    @property
    def idle(self) -> bool:
        return self.nbytes == 0

    @property
    def cpu_per_gib(self) -> float:
        return self.cpu / (self.nbytes / GiB) if self.nbytes else float("nan")

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / 1e6 / self.wall if self.nbytes else float("nan")


def wait4(proc: subprocess.Popen[bytes]) -> tuple[int, Any]:
    """Reap ``proc`` ourselves to get its rusage (its own + reaped descendants')."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage


def run_child(name: str, argv: list[str], env: dict[str, str], nbytes: int,
              log_path: Path, timeout: float) -> Run:
    with open(log_path, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    timer = threading.Timer(timeout, lambda: _killpg(proc.pid))
    timer.start()
    try:
        code, usage = wait4(proc)
    finally:
        timer.cancel()
    wall = time.perf_counter() - started
    _killpg(proc.pid)  # stragglers, if any
    if code != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise Broken(f"{name} exited with {code}:\n{tail}")
    return Run(name, wall, usage.ru_utime, usage.ru_stime, nbytes, code)


def _killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def client_env(ep: S3Endpoint) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROCESSOR_", "AWS_", "RCLONE_"))}
    env.update(ep.env())
    return env


def empty_bucket(client: Any, bucket: str) -> None:
    """Free the server's memory between runs (moto keeps everything in RAM)."""
    with contextlib.suppress(Exception):
        for up in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            client.abort_multipart_upload(Bucket=bucket, Key=up["Key"], UploadId=up["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    with contextlib.suppress(Exception):
        client.delete_bucket(Bucket=bucket)


def listing(client: Any, bucket: str, prefix: str = "") -> dict[str, int]:
    found: dict[str, int] = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for o in page.get("Contents", []):
            found[o["Key"]] = int(o["Size"])
    return found


# ---------------------------------------------------------------------------- videos
def video_set(cache: Path, smoke: bool) -> tuple[Path, list[Path]]:
    """Finished, real H.264 MP4s made once by the bundled ffmpeg (cached)."""
    if smoke:
        directory, count, spec = cache / "smoke", 2, dict(seconds=16.0)
    else:
        # 1280x720 noise at 48 Mb/s: ~6 MB per second of video, 23 s => ~140 MB a file,
        # 8 files => ~1.05 GiB. Every file has its own noise seed (no duplicate content).
        directory, count, spec = cache / "bulk", 8, dict(seconds=23.0, size="1280x720",
                                                         bitrate_mbps=48.0)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = directory / f"cam{i:02d}.mp4"
        if not path.exists():
            log(f"generating {path} with ffmpeg (cached for later runs)")
            tmp = directory / f".tmp-cam{i:02d}.mp4"
            make_video(tmp, seed=1000 + i, **spec)  # type: ignore[arg-type]
            # old mtime: a finished recording, idle at once for the processor
            os.utime(tmp, (time.time() - 3600, time.time() - 3600))
            tmp.rename(path)
        files.append(path)
    total = sum(p.stat().st_size for p in files)
    if not smoke and total < GiB:
        raise Broken(f"bulk set is only {total} bytes; delete {directory} and re-run")
    return directory, files


IDLE_REPEATS = 2  # idle and warm idle runs vary by ±0.3 CPU-s alone; their mean is used


def mean_run(samples: list[Run]) -> Run:
    """One run standing for several of the same client (the idle runs): mean wall and
    CPU, the samples kept in ``extra["cpu_samples"]``, the rest from the last one."""
    last = samples[-1]
    if len(samples) == 1:
        return last
    n = len(samples)
    extra = dict(last.extra, cpu_samples=[round(s.cpu, 2) for s in samples])
    return Run(last.name, sum(s.wall for s in samples) / n,
               sum(s.cpu_user for s in samples) / n, sum(s.cpu_sys for s in samples) / n,
               last.nbytes, max((s.returncode for s in samples), key=abs), extra)


def histogram_p99(port: int, name: str) -> float | None:
    """p99 of a histogram on the processor's /metrics (all processes aggregated), as
    the upper bound of the bucket that holds it, in ms; None if it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    buckets = []
    for line in text.splitlines():
        if line.startswith(name + "_bucket{"):
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    if not buckets or buckets[-1][1] == 0:
        return None
    buckets.sort()
    total = buckets[-1][1]
    bound = next(le for le, count in buckets if count >= 0.99 * total)
    return bound * 1000 if bound != float("inf") else None


def warm_set(cache: Path, work: Path, workers: int,
             slots: set[int]) -> tuple[Path, list[Path]]:
    """One small finished MP4 (0.5 s of video, ~40 KB) for each worker in ``slots``,
    each named so that it routes to that worker: the warm idle run's input. Only the
    workers the measured files land on are warmed: a worker that gets no file pays no
    one-time cost in the measured run either, so warming it would subtract a cost the
    run never had (8 files on 8 workers use 5 of them)."""
    tiny = cache / "warm" / "tiny.mp4"
    if not tiny.exists():
        tiny.parent.mkdir(parents=True, exist_ok=True)
        make_video(tiny.with_name(".tmp-tiny.mp4"), 0.5, seed=7)
        tiny.with_name(".tmp-tiny.mp4").rename(tiny)
    directory = Path(tempfile.mkdtemp(prefix=f"warm-{workers}w-", dir=work))
    by_worker: dict[int, Path] = {}
    k = 0
    while len(by_worker) < len(slots):
        name = f"warm{k:03d}.mp4"
        slot = worker_for(name, workers)
        if slot in slots:
            by_worker.setdefault(slot, directory / name)
        k += 1
    for path in by_worker.values():
        shutil.copyfile(tiny, path)
        os.utime(path, (time.time() - 3600, time.time() - 3600))  # finished: idle at once
    return directory, sorted(by_worker.values())


# ---------------------------------------------------------------------------- processor
@dataclass
class ProcessorRun:
    workdir: Path
    watch_dir: Path
    ep: S3Endpoint
    bucket: str
    workers: int
    stream_timeout: float
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    started_wall: float = 0.0

    @property
    def log_path(self) -> Path:
        return self.workdir / "processor.log"

    def start(self) -> LogTail:
        processor = Path(sys.executable).with_name("processor")
        cmd = [str(processor)] if processor.exists() else [sys.executable, "-m",
                                                           "supervisor.cli"]
        argv = cmd + [
            "--watch-dir", str(self.watch_dir), "--state-dir", str(self.workdir / "state"),
            "--s3-endpoint", self.ep.url, "--s3-bucket", self.bucket,
            "--s3-region", self.ep.region, "--workers", str(self.workers),
            "--chunk-size", str(CHUNK), "--stream-timeout", str(self.stream_timeout),
            "--metrics-port", "0", "--drain-timeout", "20", *self.extra]
        with open(self.log_path, "wb") as out:
            self.started = time.perf_counter()
            self.started_wall = time.time()
            self.proc = subprocess.Popen(argv, cwd=self.workdir, env=client_env(self.ep),
                                         stdout=out, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        return LogTail(self.log_path)

    def wait_for(self, tail: LogTail, name: str, count: int, timeout: float,
                 every: float = 0.02) -> float:
        """perf_counter time at which ``count`` ``name`` events were seen."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while tail.count(name) < count:
            if self.proc.poll() is not None:
                raise Broken(f"processor exited ({self.proc.returncode}) waiting for "
                             f"{count}x {name}:\n{self.tail_text()}")
            if time.monotonic() > deadline:
                raise Broken(f"processor: {tail.count(name)}/{count} {name} after "
                             f"{timeout:.0f}s:\n{self.tail_text()}")
            time.sleep(every)
        return time.perf_counter()

    def stop(self) -> tuple[int, Any]:
        """SIGTERM, then reap: rusage covers the supervisor and its reaped workers."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGTERM)
        timer = threading.Timer(40, lambda: _killpg(self.proc.pid))  # type: ignore[union-attr]
        timer.start()
        try:
            code, usage = wait4(self.proc)
        finally:
            timer.cancel()
        # multiprocessing's resource tracker (if any) exits on its own once the
        # supervisor is gone; anything still there after a few seconds is a leak
        deadline = time.monotonic() + 5
        leftovers = group_pids(self.proc.pid)
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.05)
            leftovers = group_pids(self.proc.pid)
        _killpg(self.proc.pid)
        keep = os.environ.get("BENCH_KEEP_LOGS")
        if keep:  # the processor's JSON log, for a closer look
            Path(keep).mkdir(parents=True, exist_ok=True)
            shutil.copy(self.log_path, Path(keep) / f"{self.workdir.name}.log")
        if code != 0:
            raise Broken(f"processor exited with {code} after SIGTERM:\n{self.tail_text()}")
        if leftovers:
            raise Broken(f"processor left processes behind: {leftovers}")
        return code, usage

    def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            _killpg(self.proc.pid)
            with contextlib.suppress(ChildProcessError):
                wait4(self.proc)

    def tail_text(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


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


# ---------------------------------------------------------------------------- bulk
def bulk_processor(ep: S3Endpoint, s3: Any, work: Path, data_dir: Path, files: list[Path],
                   workers: int, nbytes: int, profile: Path | None = None) -> Run:
    bucket = unique_bucket_name(f"bench-proc{workers}")
    s3.create_bucket(Bucket=bucket)
    workdir = work / f"proc-{workers}w-{bucket[-6:]}"
    workdir.mkdir()
    pr = ProcessorRun(workdir, data_dir, ep, bucket, workers, stream_timeout=1.0)
    tail = pr.start()
    assert pr.proc is not None
    spy: subprocess.Popen[bytes] | None = None
    try:
        with MemorySampler(pr.proc.pid) as mem:
            if profile is not None:
                pr.wait_for(tail, "worker_started", workers, 60)
                worker_pids = [p for p in group_pids(pr.proc.pid)
                               if proc_role(p, pr.proc.pid) == "worker"]
                spy = start_py_spy(worker_pids[0], profile)
            if files:
                done = pr.wait_for(tail, "stream_completed", len(files), 600)
            else:  # idle: the fixed cost of starting and stopping
                done = pr.wait_for(tail, "bucket_ready", workers, 60)
            wall = done - pr.started
            live_cpu = sum(_safe_cpu(p) for p in group_pids(pr.proc.pid))
            stop_py_spy(spy)
        _, usage = pr.stop()
    except BaseException:
        pr.kill()
        raise
    check_processor_output(s3, bucket, files)
    events = read_events(pr.log_path)
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


def start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """py-spy record (collapsed stacks, one line per stack with its sample count)."""
    spy = Path(sys.executable).with_name("py-spy")
    exe = str(spy) if spy.exists() else (shutil.which("py-spy") or "py-spy")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--rate", "200", "--format",
                             "raw", "--nonblocking", "--threads", "--output", str(output)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(spy: subprocess.Popen[bytes] | None) -> None:
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        try:
            spy.wait(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()


def _copied_upload(s3: Any, bucket: str, key: str,
                   chunk_keys: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """A multipart upload of ``key`` whose parts are copies of ``chunk_keys``, one
    after another, by plain boto3: its id and parts, ready to complete."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for n, ck in enumerate(chunk_keys, start=1):
        r = s3.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                                CopySource={"Bucket": bucket, "Key": ck})
        parts.append({"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]})
    return upload, parts


def _complete(s3: Any, bucket: str, key: str, upload: str,
              parts: list[dict[str, Any]]) -> None:
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                 MultipartUpload={"Parts": parts})


def assembly_baseline(s3: Any, bucket: str, chunk_keys: list[str]) -> float:
    """Seconds the server takes for a whole multipart part-copy assembly of
    ``chunk_keys`` (copies one after another, then complete), by plain boto3."""
    started = time.perf_counter()
    key = "bench-assembly-baseline"
    _complete(s3, bucket, key, *_copied_upload(s3, bucket, key, chunk_keys))
    return time.perf_counter() - started


def complete_baseline(s3: Any, bucket: str, chunk_keys: list[str], at_once: int) -> float:
    """Seconds the server takes for ``CompleteMultipartUpload`` of a part-copy upload of
    ``chunk_keys``, ``at_once`` such uploads completed together by plain boto3 (the
    parts are copied first, untimed): the part of finalization that is the server's
    when every part was copied while recording."""
    keys = [f"bench-complete-baseline-{i}" for i in range(at_once)]
    uploads = {key: _copied_upload(s3, bucket, key, chunk_keys) for key in keys}
    started = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        list(pool.map(lambda key: _complete(s3, bucket, key, *uploads[key]), keys))
    return time.perf_counter() - started


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


def _safe_cpu(pid: int) -> float:
    try:
        return proc_cpu(pid)
    except OSError:
        return 0.0


def find_aws() -> str | None:
    local = Path(sys.executable).with_name("aws")
    if local.exists():
        return str(local)
    return os.environ.get("BENCH_AWS") or shutil.which("aws")


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "unknown"


def bulk_baseline(kind: str, ep: S3Endpoint, s3: Any, work: Path, data_dir: Path,
                  files: list[Path], nbytes: int) -> Run:
    bucket = unique_bucket_name(f"bench-{kind}")
    s3.create_bucket(Bucket=bucket)
    env = client_env(ep)
    log_path = work / f"{kind}-{bucket[-6:]}.log"
    if kind == "boto3":
        argv = [sys.executable, str(Path(__file__).with_name("boto3_loop.py")),
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


# ---------------------------------------------------------------------------- live
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
    tail = pr.start()
    boundaries: dict[str, list[float]] = {n: [] for n in names}
    last_write: dict[str, float] = {}
    try:
        pr.wait_for(tail, "worker_started", workers, 60)
        pr.wait_for(tail, "bucket_ready", workers, 60)
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
        pr.wait_for(tail, "stream_completed", streams, 120 + 3 * timeout)
        _, usage = pr.stop()
    except BaseException:
        pr.kill()
        raise
    events = read_events(pr.log_path)
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
    from worker.media import probe_media
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


# ---------------------------------------------------------------------------- many
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
    tail = pr.start()
    assert pr.proc is not None
    created: dict[str, float] = {}
    phase: dict[str, str] = {}
    try:
        pr.wait_for(tail, "worker_started", workers, 60)
        pr.wait_for(tail, "bucket_ready", workers, 60)
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
            group0 = sum(_safe_cpu(p) for p in group_pids(sup))
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
            group1 = sum(_safe_cpu(p) for p in group_pids(sup))
        pr.wait_for(tail, "stream_detected", count + probes, 60)
        dispatch = histogram_p99(metrics_port, "processor_dispatch_seconds")
        stop_py_spy(spy)
        for fd in fds.values():
            os.close(fd)
        _, usage = pr.stop()
    except BaseException:
        pr.kill()
        raise
    events = read_events(pr.log_path)
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


# ---------------------------------------------------------------------------- report
def machine_info(ep: S3Endpoint, moto: bool) -> dict[str, str]:
    import boto3
    import botocore

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {
        "cpu": f"{cpu} x {os.cpu_count()}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "boto3": boto3.__version__, "botocore": botocore.__version__,
        "load_avg_at_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "s3_server": "moto server (in-memory)" if moto else ep.url,
        "ffmpeg": tool_version([ffmpeg_exe(), "-version"]),
    }
    if moto:
        import moto as moto_pkg
        info["moto"] = moto_pkg.__version__
    return info


def row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def report(results: dict[str, Any]) -> str:
    out: list[str] = []
    bulk: list[Run] = results.get("bulk_runs", [])
    base = next((r for r in bulk if r.name == "boto3"), None)
    if bulk:
        idle = {r.name[:-len(" idle")]: r for r in bulk if r.idle}
        base_m = marginal(base, idle) if base else float("nan")
        aws = next((r for r in bulk if r.name == "awscli"), None)
        aws_m = marginal(aws, idle) if aws else float("nan")
        out.append(f"Bulk ingest: {results['bulk_files']} finished MP4s, "
                   f"{results['bulk_bytes'] / GiB:.3f} GiB, 10 MiB chunks. CPU = user+sys "
                   "of the client's process tree (wait4); 'marginal' subtracts the same "
                   "client's idle run (start, connect, stop, no data); 'steady marginal' "
                   "subtracts the processor's warm idle run instead (start, one small file "
                   "through each worker the data lands on, stop), which also holds the "
                   "one-time costs a long-running service pays once: each worker's probe "
                   "helper and first request of each kind.")
        out.append("")
        out.append(row(["client", "wall s", "MB/s", "throughput vs boto3", "CPU s (user+sys)",
                        "CPU s/GiB", "vs boto3", "vs awscli", "marginal CPU s/GiB",
                        "marginal vs boto3", "marginal vs awscli",
                        "steady marginal CPU s/GiB", "steady marginal vs awscli"]))
        out.append(row(["---"] * 13))
        for r in bulk:
            if r.idle:
                continue
            m = marginal(r, idle)
            out.append(row([
                r.name, f"{r.wall:.2f}", f"{r.mb_per_s:.0f}",
                f"{base.wall / r.wall:.2f}x" if base else "-",
                f"{r.cpu:.2f} ({r.cpu_user:.2f}+{r.cpu_sys:.2f})", f"{r.cpu_per_gib:.2f}",
                f"{r.cpu_per_gib / base.cpu_per_gib:.2f}x" if base else "-",
                f"{r.cpu_per_gib / aws.cpu_per_gib:.2f}x" if aws else "-",
                f"{m:.2f}", ratio(m, base_m), ratio(m, aws_m),
                f"{sm:.2f}" if (sm := steady_marginal(r, idle)) == sm else "-",
                ratio(sm, aws_m)]))
        out.append("")
        out.append(row(["idle run (fixed cost)", "wall s", "CPU s (user+sys)",
                        "CPU s of each run (the mean is used)"]))
        out.append(row(["---"] * 4))
        for r in bulk:
            if r.idle:
                each = r.extra.get("cpu_samples", [round(r.cpu, 2)])
                out.append(row([r.name, f"{r.wall:.2f}",
                                f"{r.cpu:.2f} ({r.cpu_user:.2f}+{r.cpu_sys:.2f})",
                                " / ".join(f"{c:.2f}" for c in each)]))
        out.append("")
        out.append(row(["processor run", "start→first chunk s", "uploads s (first→last full)",
                        "last full chunk→last metadata s", "Σ PUT s", "PUT p50 s",
                        "server part-copy, boto3 alone s (all parts)",
                        "chunks verified: re-read / settled"]))
        out.append(row(["---"] * 8))
        for r in bulk:
            if r.name.startswith("processor") and not r.idle:
                x = r.extra
                out.append(row([r.name, str(x.get("start_to_first_chunk_s")),
                                str(x.get("first_to_last_full_chunk_s")),
                                str(x.get("last_full_chunk_to_last_completed_s")),
                                str(x.get("put_seconds_sum")), str(x.get("put_seconds_p50")),
                                str(x.get("assembly_baseline_s_all")),
                                f"{x.get('verified_by_read')} / {x.get('verified_settled')}"]))
        out.append("")
        out.append(row(["processor run", "supervisor peak RSS MB", "worker peak RSS MB (max)",
                        "each worker", "probe helper peak RSS MB (max)",
                        "total peak PSS MB (all processes)"]))
        out.append(row(["---"] * 6))
        for r in bulk:
            if r.name.startswith("processor"):
                m = r.extra["memory"]
                out.append(row([r.name, str(m["supervisor_peak_rss_mb"]),
                                str(m["worker_peak_rss_mb"]),
                                " ".join(str(x) for x in m["worker_peak_rss_mb_each"]),
                                str(m.get("probe_helper_peak_rss_mb", 0)),
                                str(m["total_peak_pss_mb"])]))
    live = results.get("live")
    if live:
        out.append("")
        out.append(f"Live: {live['streams']} streams x {live['rate_mb_s']:.0f} MB/s, "
                   f"whole real MP4s of ~{live['stream_mb']} MB "
                   f"({live['chunks_per_stream']} full chunks + tail each), "
                   f"{live['workers']} workers, --stream-timeout {live['stream_timeout']}")
        out.append("")
        out.append(row(["metric", "value"]))
        out.append(row(["---", "---"]))
        for key in ("samples", "overhead_p50_ms", "overhead_p99_ms", "overhead_max_ms",
                    "put_p50_ms", "put_p99_ms", "finalize_p50_s", "finalize_max_s",
                    "finalize_tail_put_s", "verify_read_s", "probe_s",
                    "parts_copied_at_completion_max", "finalize_complete_request_max_s",
                    "finalize_without_complete_max_s", "complete_server_alone_s",
                    "complete_server_together_s"):
            out.append(row([key, str(live[key])]))
    many = results.get("many")
    if many:
        out.append("")
        out.append(f"Many streams: {many['streams']} growing files, {many['workers']} workers, "
                   f"{many['appends_per_s']} appends/s for {many['steady_s']} s, "
                   f"{many['probes']} probe files")
        out.append("")
        out.append(row(["metric", "value"]))
        out.append(row(["---", "---"]))
        for key in ("supervisor_cpu_pct", "group_cpu_pct", "detect_ramp_p50_ms",
                    "detect_ramp_p99_ms", "detect_probe_p50_ms", "detect_probe_p99_ms",
                    "detect_probe_first_half_p50_ms", "detect_probe_second_half_p50_ms",
                    "dispatch_to_worker_p99_ms_at_most"):
            out.append(row([key, str(many[key])]))
        m = many["memory"]
        out.append(row(["supervisor_peak_rss_mb", str(m["supervisor_peak_rss_mb"])]))
        out.append(row(["worker_peak_rss_mb", str(m["worker_peak_rss_mb"])]))
        out.append(row(["total_peak_pss_mb", str(m["total_peak_pss_mb"])]))
    out.append("")
    out.append(targets(results))
    return "\n".join(out)


def marginal(r: Run, idle: dict[str, Run]) -> float:
    """CPU s/GiB above the client's own fixed cost (its idle run), when measured."""
    fixed = idle.get(r.name)
    if fixed is None or not r.nbytes:
        return float("nan")
    return (r.cpu - fixed.cpu) / (r.nbytes / GiB)


def ratio(value: float, baseline: float) -> str:
    """``value / baseline`` as "0.59x", or "-" when either is missing (NaN)."""
    return f"{value / baseline:.2f}x" if value == value and baseline == baseline else "-"


def steady_marginal(r: Run, idle: dict[str, Run]) -> float:
    """CPU s/GiB above the processor's warm idle run: start, one small file through
    every worker the data lands on (so each has started its probe helper and made each
    kind of S3 request once), stop. What a long-running service pays per GiB once those
    one-time costs are behind it."""
    fixed = idle.get(r.name + " warm")
    if fixed is None or not r.nbytes:
        return float("nan")
    return (r.cpu - fixed.cpu) / (r.nbytes / GiB)


def targets(results: dict[str, Any]) -> str:
    lines = [row(["target", "measured", "met"]), row(["---"] * 3)]
    bulk: list[Run] = results.get("bulk_runs", [])
    base = next((r for r in bulk if r.name == "boto3"), None)
    aws = next((r for r in bulk if r.name == "awscli"), None)
    p1 = next((r for r in bulk if r.name == "processor 1w"), None)

    def add(name: str, value: float, ok: bool, fmt: str = "{:.2f}") -> None:
        lines.append(row([name, fmt.format(value), "yes" if ok else "NO"]))

    idle = {r.name[:-len(" idle")]: r for r in bulk if r.idle}
    for r in bulk:
        if r.name.startswith("processor") and not r.idle:
            add(f"{r.name}: CPU <= 1.2 s/GiB", r.cpu_per_gib, r.cpu_per_gib <= 1.2)
            m = marginal(r, idle)
            if m == m:
                add(f"{r.name}: marginal CPU <= 1.2 s/GiB", m, m <= 1.2)
            if aws:
                v = r.cpu_per_gib / aws.cpu_per_gib
                add(f"{r.name}: CPU <= 0.6x awscli", v, v <= 0.6, "{:.2f}x")
                ma = marginal(aws, idle)
                if m == m and ma == ma:
                    add(f"{r.name}: marginal CPU <= 0.6x awscli's", m / ma, m / ma <= 0.6,
                        "{:.2f}x")
            sm = steady_marginal(r, idle)
            if sm == sm:
                add(f"{r.name}: steady-state marginal CPU <= 1.2 s/GiB", sm, sm <= 1.2)
                ma = marginal(aws, idle) if aws else float("nan")
                if ma == ma:
                    add(f"{r.name}: steady-state marginal CPU <= 0.6x awscli's marginal",
                        sm / ma, sm / ma <= 0.6, "{:.2f}x")
    if p1 and base:
        v = base.wall / p1.wall
        add("processor 1w throughput >= 0.95x boto3 loop", v, v >= 0.95, "{:.2f}x")
    live = results.get("live")
    if live:
        add("chunk visibility overhead p99 <= 50 ms", live["overhead_p99_ms"],
            live["overhead_p99_ms"] <= 50, "{:.1f} ms")
        budget = 1.0 + live["verify_read_s"] + live["finalize_tail_put_s"]
        add(f"finalization <= 1 s + verify read + tail PUT (= {budget:.2f} s); the server's "
            f"CompleteMultipartUpload alone takes {live['complete_server_alone_s']:.2f} s, "
            f"{live['streams']} at once {live['complete_server_together_s']:.2f} s",
            live["finalize_max_s"], live["finalize_max_s"] <= budget, "{:.2f} s")
        add("finalization without the server's CompleteMultipartUpload request "
            f"<= {budget:.2f} s", live["finalize_without_complete_max_s"],
            live["finalize_without_complete_max_s"] <= budget, "{:.2f} s")
    many = results.get("many")
    if many:
        add("supervisor CPU <= 10% of a core", many["supervisor_cpu_pct"],
            many["supervisor_cpu_pct"] <= 10, "{:.1f}%")
        add("dispatch (first reaction) p99 <= 100 ms", many["detect_probe_p99_ms"],
            many["detect_probe_p99_ms"] <= 100, "{:.1f} ms")
        to_worker = many.get("dispatch_to_worker_p99_ms_at_most")
        if to_worker is not None:
            add("dispatch (supervisor's event to the worker's receipt; histogram bucket "
                "bound) p99 <= 100 ms", to_worker, to_worker <= 100, "<= {:.0f} ms")
        grow = many["detect_probe_second_half_p50_ms"] - many["detect_probe_first_half_p50_ms"]
        add("no backlog growth (probe p50 2nd half - 1st half)", grow, grow <= 50,
            "{:+.1f} ms")
    for r in bulk:
        if r.name.startswith("processor") and not r.idle:
            m = r.extra["memory"]["worker_peak_rss_mb"]
            add(f"{r.name}: worker RSS <= 80 MB", m, m <= 80, "{:.1f} MB")
    return "\n".join(lines)


def to_json(results: dict[str, Any]) -> dict[str, Any]:
    data = dict(results)
    data["bulk_runs"] = [
        {"name": r.name, "wall_s": round(r.wall, 3), "cpu_user_s": round(r.cpu_user, 3),
         "cpu_sys_s": round(r.cpu_sys, 3), "cpu_s_per_gib": round(r.cpu_per_gib, 3),
         "mb_per_s": round(r.mb_per_s, 1), **r.extra} for r in results.get("bulk_runs", [])]
    return data


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true",
                        help="small and fast (< 1 min): 1 worker vs the boto3 loop only")
    parser.add_argument("--sections", default="bulk,live,many",
                        help="comma separated subset of bulk,live,many")
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
                        directory, tiny = warm_set(args.cache_dir, work, workers, used)
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
                if args.profile:  # profiling perturbs: only the profiled run
                    plan = [("processor 1w (py-spy)", lambda: bulk_processor(
                        ep, s3, work, data_dir, files, 1, nbytes, profile=args.profile))]
                elif not smoke:
                    plan += [("processor 4w idle", proc(4, idle=True)),
                             ("processor 4w warm idle", warm(4)),
                             ("processor 4w", proc(4)),
                             ("processor 8w idle", proc(8, idle=True)),
                             ("processor 8w warm idle", warm(8)),
                             ("processor 8w", proc(8))]
                    if args.no_baselines:
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
                    for _ in range(1 if smoke or not name.endswith(" idle") else IDLE_REPEATS):
                        samples.append(fn())
                        log(f"bulk: {name}: {samples[-1].wall:.2f} s wall, "
                            f"{samples[-1].cpu:.2f} CPU s")
                    r = mean_run(samples)
                    r.name = name
                    runs.append(r)
                results["bulk_runs"] = runs
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


if __name__ == "__main__":
    sys.exit(main())
