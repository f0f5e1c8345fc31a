"""An in-process worker for tests: the real tracker and everything under it
(``worker.wiring.build_tracker``) on real files, LevelDB and the test S3 server,
without the worker process around them, so that a test can step it and look at its
state between two requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import structlog

from shared.s3 import make_client
from shared.settings import Settings
from shared.state.layout import WorkerStateDir
from shared.state.store import CheckpointStore
from shared.state.wal import WriteAheadLog
from tests.support.s3server import S3Endpoint
from worker.liveness import NEVER_STOPS
from worker.settled import SettledFiles
from worker.storage import Storage
from worker.tracker import StreamTracker
from worker.wiring import build_tracker


def build_local(tmp_path: Path, settings: Settings, **parts: Any
                ) -> tuple[StreamTracker, Callable[[], None]]:
    """A tracker whose state lives in ``tmp_path/state``; returns it and what closes it
    all. ``parts`` are handed to ``build_tracker`` (e.g. a stand-in ``storage``)."""
    directory = WorkerStateDir(tmp_path / "state")
    store = CheckpointStore(directory)
    wal = WriteAheadLog(directory)
    client = None if "storage" in parts else make_client(settings)
    tracker, close_parts = build_tracker(settings, store, wal, client, structlog.get_logger(),
                                         NEVER_STOPS, **parts)

    def close() -> None:
        close_parts()
        store.close()
        wal.close()

    return tracker, close


class InProcessWorkers:
    """Builds in-process workers sharing one watch dir, state dir and bucket; closes
    them all at the end. The caller sets the S3 credentials in the environment."""

    def __init__(self, tmp_path: Path, s3: S3Endpoint, bucket: str, chunk_size: int) -> None:
        self.tmp_path = tmp_path
        self.s3 = s3
        self.bucket = bucket
        self.chunk_size = chunk_size
        self.watch = tmp_path / "in"
        self.watch.mkdir()
        self._closers: list[Callable[[], None]] = []

    def build(self, *, stream_timeout: float,
              settled: SettledFiles | None = None) -> tuple[StreamTracker, Storage]:
        settings = Settings(watch_dir=self.watch, state_dir=self.tmp_path / "state",
                            chunk_size=self.chunk_size, stream_timeout=stream_timeout,
                            s3_endpoint=self.s3.url, s3_bucket=self.bucket,
                            s3_region=self.s3.region,
                            # every state here is new: tests/worker/test_recovery.py and
                            # tests/e2e/test_recovery.py cover looking files up in the bucket
                            recover_from_bucket=False)
        tracker, close = build_local(self.tmp_path, settings, settled=settled)
        self._closers.append(close)
        return tracker, tracker.uploader.storage

    def close(self) -> None:
        for close in self._closers:
            close()


def run_until(tracker: StreamTracker, done: Callable[[], bool], timeout: float = 60) -> None:
    """Step the tracker until ``done()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "tracker did not get there in time"
        tracker.step()
        time.sleep(0.02)
