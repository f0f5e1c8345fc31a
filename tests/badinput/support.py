"""Helpers shared by the bad-input and security suites.

A *service run* is one real ``processor`` (tests/support/runner.py) with its own
bucket, recording proxy and ``/metrics`` port, usually module-scoped so that
several inputs share one process. Everything a run produces (its logs, every
``/metrics`` scrape, stderr of failed starts) stays under pytest's session
temp dir, where tests/security/test_secrets.py greps it for the secret key.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import tests.support.runner as runner
from tests.support.bucket import list_keys
from tests.support.http import http_get
from tests.support.metrics import parse_metrics
from tests.support.proxy import RecordingProxy
from tests.support.runner import Processor, wait_until
from tests.support.s3server import S3Endpoint, free_port, unique_bucket_name

#: Buckets of these suites are named ``<BUCKET_PREFIX>-...`` so the security tests
#: can find every one of them on the (session-wide) S3 server.
BUCKET_PREFIX = "vspbad"
PREFIX = "streams"  # the processor's default --s3-prefix

UNPRIVILEGED = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
NOBODY_UID, NOGROUP_GID = 65534, 65534


@dataclass
class Service:
    """One processor with its bucket, proxy, metrics port and checking client."""

    processor: Processor
    proxy: RecordingProxy
    client: Any
    bucket: str
    metrics_port: int
    scrapes: int = 0

    @property
    def watch_dir(self) -> Path:
        return self.processor.watch_dir

    def metrics_text(self) -> str:
        """``GET /metrics``; the text is also saved next to the logs (secret scan)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"

        def answer() -> str | None:
            status, text = http_get(url)
            return text if status == 200 else None

        text: str = wait_until(answer, 30, f"GET {url}", self.processor.tail, every=0.2)
        self.scrapes += 1
        (self.processor.workdir / f"metrics-{self.scrapes}.txt").write_text(text)
        return text

    def metrics(self) -> dict[str, float]:
        return parse_metrics(self.metrics_text())

    def events(self, name: str | None = None, **match: Any) -> list[dict[str, Any]]:
        """Events of every run of the processor, by name and field values."""
        return [e for e in self.processor.all_events()
                if (name is None or e.get("event") == name)
                and all(e.get(k) == v for k, v in match.items())]

    def object_keys(self) -> list[str]:
        return list_keys(self.client, self.bucket)


@contextlib.contextmanager
def command_prefix(prefix: list[str]) -> Iterator[None]:
    """Run the processor through ``prefix`` (e.g. setpriv, unshare) while active."""
    original = runner.processor_command
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "processor_command", lambda: prefix + original())
        yield


def unprivileged_command() -> list[str] | None:
    """How ``nobody`` can run the processor, or None if it cannot here.

    The test venv's interpreter may live where ``nobody`` cannot go (e.g. pyenv under
    /root), so this also tries the system interpreter of the same minor version with
    the venv's site-packages and the project on PYTHONPATH (the compiled wheels are
    built for the CPython 3.x ABI, not the patch release).
    """
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return None
    site = [p for p in sys.path if p.endswith("site-packages")]
    project = str(Path(__file__).resolve().parents[2])
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [sys.executable, f"/usr/bin/{version}", f"/usr/local/bin/{version}"]
    code = "import plyvel, av, boto3, xxhash, supervisor.cli, worker.process"
    for python in candidates:
        env = ["env", "PYTHONPATH=" + os.pathsep.join([project, *site])]
        argv = [*UNPRIVILEGED, *env, python]
        try:
            ok = subprocess.run([*argv, "-c", code], capture_output=True, cwd="/",
                                timeout=120).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            ok = False
        if ok:
            return [*argv, "-c", "import sys; from supervisor.cli import main; sys.exit(main())"]
    return None


@contextlib.contextmanager
def command(argv: list[str]) -> Iterator[None]:
    """Run the processor as ``argv`` (instead of the console script) while active."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "processor_command", lambda: list(argv))
        yield


@contextlib.contextmanager
def service(workdir: Path, s3: S3Endpoint, *, workers: int = 2, stream_timeout: float = 2.0,
            extra: list[str] | None = None, prefix: list[str] | None = None,
            argv: list[str] | None = None, start: bool = True) -> Iterator[Service]:
    """A processor talking to ``s3`` through a recording proxy, metrics on loopback."""
    port = free_port()
    with RecordingProxy(s3.url) as proxy:
        processor = Processor(workdir=workdir, endpoint=s3.with_url(proxy.url),
                              bucket=unique_bucket_name(BUCKET_PREFIX), workers=workers,
                              stream_timeout=stream_timeout,
                              extra=["--metrics-port", str(port), "--metrics-host", "127.0.0.1",
                                     *(extra or [])])
        svc = Service(processor, proxy, s3.client(), processor.bucket, port)
        try:
            if start:
                with command(argv) if argv else command_prefix(prefix or []):
                    processor.start()
                processor.wait_for_event("worker_started", count=workers, timeout=120)
            yield svc
        finally:
            processor.stop()
        assert not proxy.errors, proxy.errors




def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root`` (not following symlinks): type, mode, size, mtime,
    inode and, for files, the SHA-256 of the content."""
    entries: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = ""
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            elif os.path.islink(path):
                digest = os.readlink(path)
            entries[os.path.relpath(path, root)] = (
                st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_uid, digest)
    st = os.lstat(root)
    entries["."] = (st.st_mode, st.st_mtime_ns, st.st_ino, st.st_uid)
    return entries


def keep_artefacts(src: Path, dest: Path) -> None:
    """Copy a run's logs and metrics scrapes into ``dest`` (under the session temp dir)."""
    dest.mkdir(parents=True, exist_ok=True)
    for path in src.iterdir():
        if path.is_file() and path.suffix in (".log", ".txt"):
            shutil.copy(path, dest / path.name)


def appending(path: Path, stop: Callable[[], bool], step: int = 256 << 10,
              pause: float = 0.25, timeout: float = 90.0) -> bytes:
    """Append random bytes to ``path`` every ``pause`` s until ``stop()``; return them all.
    Keeps a stream "growing" (never idle) while a test waits for something."""
    written = bytearray(path.read_bytes() if path.exists() else b"")
    deadline = time.monotonic() + timeout
    with open(path, "ab") as f:
        while not stop():
            if time.monotonic() > deadline:
                raise AssertionError(f"gave up appending to {path}")
            chunk = os.urandom(step)
            f.write(chunk)
            f.flush()
            written += chunk
            time.sleep(pause)
    return bytes(written)
