"""An in-process worker for tests: a real tracker and uploader on real files, LevelDB
and the test S3 server, without the worker process around them, so that a test can
step it and look at its state between two requests."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog

from shared.s3 import make_client
from shared.settings import Settings
from tests.support.s3server import S3Endpoint
from worker.checkpoint import CheckpointStore
from worker.settled import SettledFiles
from worker.storage import Storage
from worker.tracker import StreamTracker
from worker.uploader import Uploader
from worker.wal import WriteAheadLog


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
        self._made: list[tuple[Uploader, CheckpointStore, WriteAheadLog]] = []

    def build(self, *, stream_timeout: float,
              settled: SettledFiles | None = None) -> tuple[StreamTracker, Storage]:
        settings = Settings(watch_dir=self.watch, state_dir=self.tmp_path / "state",
                            chunk_size=self.chunk_size, stream_timeout=stream_timeout,
                            s3_endpoint=self.s3.url, s3_bucket=self.bucket,
                            s3_region=self.s3.region)
        store = CheckpointStore(self.tmp_path / "state")
        wal = WriteAheadLog(self.tmp_path / "state" / "intents.wal")
        storage = Storage(make_client(settings), self.bucket)
        log = structlog.get_logger()
        uploader = Uploader(settings, store, wal, storage, log, pulse=lambda: None,
                            settled=settled)
        self._made.append((uploader, store, wal))
        return StreamTracker(settings, store, uploader, log, pulse=lambda: None), storage

    def close(self) -> None:
        for uploader, store, wal in self._made:
            uploader.close()
            store.close()
            wal.close()


def run_until(tracker: StreamTracker, done: Callable[[], bool], timeout: float = 60) -> None:
    """Step the tracker until ``done()``; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "tracker did not get there in time"
        tracker.step()
        time.sleep(0.02)
