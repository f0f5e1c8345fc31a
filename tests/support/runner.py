"""Runs the real ``processor`` console script as a process group, as users run it.

Why one module: the end-to-end, fault, bad-input and security suites (and the
benchmark) all need the same thing -- start the service on a working dir, read
its JSON log, signal or ``kill -9`` it, tear it down whatever state it is in --
and each kept its own copy. This is the one copy; it reads the log through
:class:`tests.support.logs.LogReader`, so waiting costs only the new lines.

The processor is told an :class:`S3Endpoint` (usually a ``RecordingProxy`` in
front of the S3 server, so tests can count what the server received).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.logs import LogReader
from tests.support.s3server import S3Endpoint

__all__ = ["PROCESSOR", "Processor", "alive", "processor_command", "wait_group_gone",
           "wait_until", "worker_pids"]

PROCESSOR = Path(sys.executable).with_name("processor")


def processor_command() -> list[str]:
    """The installed console script, as users run it (tests may monkeypatch this
    module's function to run it through e.g. ``setpriv`` or ``unshare``)."""
    if PROCESSOR.exists():
        return [str(PROCESSOR)]
    return [sys.executable, "-m", "supervisor.cli"]


@dataclass
class Processor:
    """One service instance: a working dir with ``in/`` and ``state/``, its logs
    (``run-<n>.log``, one per start)."""

    workdir: Path
    endpoint: S3Endpoint           # what the processor is told (usually the proxy)
    bucket: str
    workers: int = 2
    stream_timeout: float = 2.0
    drain_timeout: float = 10.0
    extra: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # e.g. AWS_CA_BUNDLE
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0
    _logs: dict[int, LogReader] = field(default_factory=dict, repr=False)

    @property
    def watch_dir(self) -> Path:
        return self.workdir / "in"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def log_path(self, run: int | None = None) -> Path:
        return self.workdir / f"run-{self.runs if run is None else run}.log"

    def start(self, *, workers: int | None = None, extra: list[str] | None = None) -> None:
        self.watch_dir.mkdir(parents=True, exist_ok=True)
        if workers is not None:
            self.workers = workers
        self.runs += 1
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PROCESSOR_", "AWS_"))}
        env.update(self.endpoint.env())
        env.update(self.env)
        argv = processor_command() + [
            "--watch-dir", str(self.watch_dir), "--state-dir", str(self.state_dir),
            "--s3-endpoint", self.endpoint.url, "--s3-bucket", self.bucket,
            "--workers", str(self.workers), "--chunk-size", "5MiB",
            "--stream-timeout", str(self.stream_timeout),
            "--drain-timeout", str(self.drain_timeout), "--metrics-port", "0",
            *self.extra, *(extra or [])]
        out = open(self.log_path(), "wb")
        self.proc = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    # logs
    def log(self, run: int | None = None) -> LogReader:
        """The incremental reader of run ``run``'s log (default: the current run)."""
        number = self.runs if run is None else run
        if number not in self._logs:
            self._logs[number] = LogReader(self.log_path(number))
        return self._logs[number]

    def _exited(self, run: int) -> bool:
        return run != self.runs or self.proc is None or self.proc.poll() is not None

    def events(self, run: int | None = None) -> list[dict[str, Any]]:
        """The events of run ``run`` (default: the current one), oldest first."""
        number = self.runs if run is None else run
        return self.log(number).events(final=self._exited(number))

    def all_events(self) -> list[dict[str, Any]]:
        return [e for run in range(1, self.runs + 1) for e in self.events(run)]

    def wait_for_event(self, name: str, predicate: Callable[[dict[str, Any]], bool] = bool,
                       timeout: float = 60.0, count: int = 1) -> list[dict[str, Any]]:
        """The current run's ``name`` events satisfying ``predicate``, once there are
        ``count`` of them; fails if the processor exits first or after ``timeout``."""
        deadline = time.monotonic() + timeout
        log, seen, matches = self.log(), 0, []
        while True:
            news = log.since(seen)
            seen += len(news)
            matches += [e for e in news if e.get("event") == name and predicate(e)]
            if len(matches) >= count:
                return matches
            if self.proc is not None and self.proc.poll() is not None:
                news = log.since(seen)  # what it wrote before it went
                matches += [e for e in news if e.get("event") == name and predicate(e)]
                if len(matches) >= count:
                    return matches
                raise AssertionError(f"processor exited ({self.proc.returncode}) waiting for "
                                     f"{name}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count}x {name} within {timeout}s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 40) -> str:
        return self.log().tail(lines)

    # signals
    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def kill9(self) -> None:
        """``kill -9`` of the whole process group: supervisor and every worker."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        wait_group_gone(self.proc.pid)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Tear down after a test, whatever state it is in."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.drain_timeout + 5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               tail: Callable[[], str] = lambda: "", every: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail after
    ``timeout`` seconds naming ``what`` and showing ``tail()`` (e.g. the service's log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n{tail()}")
        time.sleep(every)


def wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    """Until no process of group ``pgid`` is left."""
    def gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, timeout, f"process group {pgid} gone", every=0.05)


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie is dead for our purposes)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def worker_pids(processor: Processor) -> dict[int, int]:
    """Slot -> pid of the newest worker in each slot, from the current run's log."""
    pids: dict[int, int] = {}
    for event in processor.events():
        if event.get("event") in ("worker_spawned", "worker_restarted"):
            pids[event["slot"]] = event["pid"]
    return pids
