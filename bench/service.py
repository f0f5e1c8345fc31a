"""The real ``processor`` as the bench runs it: the tests' runner, plus what only the
bench needs.

The process itself is started, signalled and its JSON log read by
:class:`tests.support.runner.Processor`, the one runner of the test suites, so that
the bench runs the service exactly as the tests do. On top of it (composition, not a
copy) the bench needs: the moment it was started (wall times are measured from it),
waits that notice an event within 20 ms, the rusage of the whole group when it is
reaped (its CPU, from ``wait4``), a check that nothing is left behind, and its
``/metrics`` histograms. A bench run also differs in its options (10 MiB chunks,
any watch dir, ...), given as the runner's ``extra`` arguments, which come last on
the command line: the processor takes the last value of an option given twice.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.harness import CHUNK, Broken, group_pids, killpg, wait4
from tests.support.metrics import parse_metrics
from tests.support.runner import Processor
from tests.support.s3server import S3Endpoint


@dataclass
class ProcessorRun:
    """One run of the processor on ``watch_dir``, uploading to ``bucket``."""

    workdir: Path
    watch_dir: Path
    ep: S3Endpoint
    bucket: str
    workers: int
    stream_timeout: float
    extra: list[str] = field(default_factory=list)
    started: float = 0.0
    started_wall: float = 0.0
    runner: Processor = field(init=False)
    _seen: int = field(default=0, init=False)
    _counts: dict[str, int] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        self.runner = Processor(
            self.workdir, self.ep, self.bucket, workers=self.workers,
            stream_timeout=self.stream_timeout, drain_timeout=20,
            extra=["--watch-dir", str(self.watch_dir), "--s3-region", self.ep.region,
                   "--chunk-size", str(CHUNK), *self.extra])

    @property
    def proc(self) -> Any:
        return self.runner.proc

    @property
    def log_path(self) -> Path:
        return self.runner.log_path()

    def start(self) -> None:
        self.started = time.perf_counter()
        self.started_wall = time.time()
        self.runner.start()

    def count(self, name: str) -> int:
        """How many ``name`` events the log holds so far (reads only what is new)."""
        news = self.runner.log().since(self._seen)
        self._seen += len(news)
        for event in news:
            key = event.get("event", "")
            self._counts[key] = self._counts.get(key, 0) + 1
        return self._counts.get(name, 0)

    def wait_for(self, name: str, count: int, timeout: float, every: float = 0.02) -> float:
        """perf_counter time at which ``count`` ``name`` events were seen."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.count(name) < count:
            if self.proc.poll() is not None:
                raise Broken(f"processor exited ({self.proc.returncode}) waiting for "
                             f"{count}x {name}:\n{self.tail_text()}")
            if time.monotonic() > deadline:
                raise Broken(f"processor: {self.count(name)}/{count} {name} after "
                             f"{timeout:.0f}s:\n{self.tail_text()}")
            time.sleep(every)
        return time.perf_counter()

    def events(self) -> list[dict[str, Any]]:
        """Every event of the run's log (after ``stop``: to its last line)."""
        return self.runner.events()

    def stop(self) -> tuple[int, Any]:
        """SIGTERM, then reap: rusage covers the supervisor and its reaped workers."""
        assert self.proc is not None
        self.runner.signal(signal.SIGTERM)
        timer = threading.Timer(40, lambda: killpg(self.proc.pid))
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
        """After a failure: SIGKILL to the group and reap, without waiting for a drain
        (the runner's ``stop`` would give it ``drain_timeout`` first)."""
        if self.proc is not None and self.proc.returncode is None:
            killpg(self.proc.pid)
            with contextlib.suppress(ChildProcessError):
                wait4(self.proc)

    def tail_text(self, lines: int = 30) -> str:
        return self.runner.tail(lines)


def histogram_p99(port: int, name: str) -> float | None:
    """p99 of a histogram on the processor's /metrics (all processes aggregated), as
    the upper bound of the bucket that holds it, in ms; None if it cannot be read."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    buckets = []
    for series, value in parse_metrics(text).items():
        if series.startswith(name + "_bucket{"):
            le = series.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float(le), value))
    if not buckets or buckets[-1][1] == 0:
        return None
    buckets.sort()
    total = buckets[-1][1]
    bound = next(le for le, count in buckets if count >= 0.99 * total)
    return bound * 1000 if bound != float("inf") else None
