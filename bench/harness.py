"""What the bench measures any client with: its process group, wall time, CPU, memory.

Every client (the processor, the boto3 loop, awscli, rclone) runs as a process group
of its own. Its CPU is user+sys of the whole tree, read by the OS when it is reaped
(``wait4``); while it runs, ``/proc`` is sampled for the CPU and memory of each of
its processes. The figures must not depend on which client is measured, so all of
them go through these few functions. Also here: the bucket helpers every section
uses to check a client's output and free the server's memory between runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.service_api import PROBE_HELPER_MODULE
from tests.support.s3server import S3Endpoint

MiB = 1024 * 1024
GiB = 1024 * MiB
CHUNK = 10 * MiB
CLK_TCK = os.sysconf("SC_CLK_TCK")
BENCH_DIR = Path(__file__).resolve().parent


class Broken(Exception):
    """Something did not work (not: something was slow)."""


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


# ---------------------------------------------------------------------------- /proc
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


def safe_cpu(pid: int) -> float:
    try:
        return proc_cpu(pid)
    except OSError:
        return 0.0


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
    if PROBE_HELPER_MODULE.encode() in cmd:
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


# ---------------------------------------------------------------------------- runs
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


def killpg(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def run_child(name: str, argv: list[str], env: dict[str, str], nbytes: int,
              log_path: Path, timeout: float) -> Run:
    with open(log_path, "wb") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    timer = threading.Timer(timeout, lambda: killpg(proc.pid))
    timer.start()
    try:
        code, usage = wait4(proc)
    finally:
        timer.cancel()
    wall = time.perf_counter() - started
    killpg(proc.pid)  # stragglers, if any
    if code != 0:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise Broken(f"{name} exited with {code}:\n{tail}")
    return Run(name, wall, usage.ru_utime, usage.ru_stime, nbytes, code)


def client_env(ep: S3Endpoint) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PROCESSOR_", "AWS_", "RCLONE_"))}
    env.update(ep.env())
    return env


def tool_version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    return (out.stdout or out.stderr).strip().splitlines()[0] if (out.stdout or out.stderr) \
        else "unknown"


# ---------------------------------------------------------------------------- py-spy
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


# ---------------------------------------------------------------------------- buckets
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
