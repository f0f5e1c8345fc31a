"""The real ``processor`` as the bench runs it: one process group per run.

Starting it, its JSON log and its metrics. The bench needs things a test does not:
the moment it was started (wall times are measured from it), a log reader that
follows the file incrementally and notices an event within 20 ms, the rusage of the
whole group when it is reaped (CPU), and a check that nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import CHUNK, Broken, client_env, group_pids, killpg, wait4
from tests.support.s3server import S3Endpoint


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
        timer = threading.Timer(40, lambda: killpg(self.proc.pid))  # type: ignore[union-attr]
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
        killpg(self.proc.pid)
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
            killpg(self.proc.pid)
            with contextlib.suppress(ChildProcessError):
                wait4(self.proc)

    def tail_text(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


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
