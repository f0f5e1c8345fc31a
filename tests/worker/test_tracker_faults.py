"""The tracker contains failures to one stream: S3 errors back off, bugs do not crash."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from structlog.testing import capture_logs

from shared.s3 import ErrorKind, StorageError
from shared.settings import Settings
from tests.worker.inprocess import build_local
from worker.liveness import Draining
from worker.tracker import StreamTracker


class FlakyStorage:
    """Stands in for S3 only where a failure must be forced: the bucket is fine, every
    chunk PUT raises what the test chose."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.puts = 0

    bucket = "test-bucket"

    def ensure_bucket(self, create: bool) -> None:
        pass

    def put_chunk(self, key: str, data: bytes, digest: str, live: bool = True) -> None:
        self.puts += 1
        raise self.error


def build(tmp_path: Path, error: BaseException) -> tuple[StreamTracker, FlakyStorage, Any]:
    watch = tmp_path / "in"
    watch.mkdir()
    (watch / "a.mp4").write_bytes(b"x" * (5 << 20))
    (watch / "b.mp4").write_bytes(b"y" * (5 << 20))
    settings = Settings(watch_dir=watch, state_dir=tmp_path / "state", chunk_size=5 << 20,
                        recover_from_bucket=False)  # no lookups: the stand-in has no LIST
    storage = FlakyStorage(error)
    tracker, close = build_local(tmp_path, settings, storage=storage)
    tracker.touch("a.mp4")
    tracker.touch("b.mp4")
    return tracker, storage, close


def test_transient_errors_back_off_per_stream(tmp_path: Path) -> None:
    """A 503 makes each stream wait before its next attempt: no busy loop."""
    tracker, storage, close = build(tmp_path, StorageError("put_chunk", ErrorKind.TRANSIENT,
                                                           "SlowDown (HTTP 503)"))
    with capture_logs() as logs:
        for _ in range(20):
            tracker.step()
    assert storage.puts == 2  # one attempt per stream, then both are backing off
    assert all(s.next_attempt > tracker.clock() for s in tracker.streams.values())
    assert [e["event"] for e in logs].count("s3_retry") == 2
    close()


def test_unexpected_error_is_contained_to_its_stream(tmp_path: Path) -> None:
    """A bug in one upload is logged as stream_failed; the worker keeps running."""
    tracker, storage, close = build(tmp_path, RuntimeError("boom"))
    with capture_logs() as logs:
        tracker.step()
    failed = [e for e in logs if e["event"] == "stream_failed"]
    assert len(failed) == 2 and "boom" in failed[0]["error"]
    close()


def test_draining_is_never_swallowed(tmp_path: Path) -> None:
    """The drain signal raised mid-upload reaches the worker loop."""
    tracker, storage, close = build(tmp_path, Draining())
    try:
        tracker.step()
    except Draining:
        pass
    else:
        raise AssertionError("Draining was swallowed")
    finally:
        close()
