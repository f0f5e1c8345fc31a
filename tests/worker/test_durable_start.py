"""A new stream is recorded without an fsync and synced before S3 first hears of it.

Driven in-process (a real tracker and uploader, real files, LevelDB and the test S3
server), so that every S3 request can be checked, as botocore builds it, against the
checkpoint's state at that moment. Nothing is faked; a power loss cannot be made here,
so what is checked is the order: no request names a stream whose record is not synced.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shared.state.layout import WorkerStateDir
from shared.state.records import StreamRecord
from shared.state.store import CheckpointStore
from tests.support.s3server import S3Endpoint, unique_bucket_name
from tests.worker.inprocess import InProcessWorkers, run_until
from worker.tracker import StreamTracker

CHUNK = 5 << 20


class Requests:
    """Every S3 request of the worker: its operation, its key, and for each stream the
    tracker knows, whether its checkpoint was durable when the request was made."""

    def __init__(self, tracker: StreamTracker, store: CheckpointStore) -> None:
        self.tracker = tracker
        self.store = store
        self.seen: list[tuple[str, str, dict[str, bool]]] = []

    def __call__(self, params: dict[str, Any], model: Any, **_: Any) -> None:
        durable = {sid: self.store.is_durable(sid) for sid in self.tracker.streams}
        self.seen.append((model.name, str(params.get("Key", "")), durable))

    def naming(self, stream_id: str) -> list[tuple[str, bool]]:
        return [(op, state.get(stream_id, False)) for op, key, state in self.seen
                if stream_id in key]

    def unsynced_at_some_point(self, stream_id: str) -> bool:
        return any(state.get(stream_id) is False for _, _, state in self.seen)


@pytest.fixture
def worker(tmp_path: Path, s3: S3Endpoint,
           monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    workers = InProcessWorkers(tmp_path, s3, unique_bucket_name("durable"), CHUNK)

    def build(stream_timeout: float,
              sync_every: float = float("inf")) -> tuple[StreamTracker, Requests, Path]:
        """``sync_every`` is the tracker's batch sync of new streams; off by default, so
        that what is tested is the uploader syncing a stream before naming it."""
        tracker, storage = workers.build(stream_timeout=stream_timeout)
        tracker.sync_every = sync_every
        requests = Requests(tracker, tracker.store)
        storage.client.meta.events.register("provide-client-params.s3.*", requests)
        return tracker, requests, workers.watch

    yield build
    workers.close()


def _completed(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "stream_completed"]


def test_a_recording_is_synced_before_its_first_chunk_goes_up(
        worker: Callable[..., Any]) -> None:
    """Detected without an fsync; synced before its first chunk, and so before the
    part copies and the completion that name it too."""
    tracker, requests, watch = worker(stream_timeout=0.3)
    (watch / "cam.mp4").write_bytes(os.urandom(2 * CHUNK + 777))
    with capture_logs() as logs:
        tracker.touch("cam.mp4")
        run_until(tracker, lambda: bool(_completed(logs)))
    (detected,) = [e for e in logs if e["event"] == "stream_detected"]
    stream_id = detected["stream_id"]
    # detected without a sync: the bucket check of the same step saw it unsynced ...
    assert requests.unsynced_at_some_point(stream_id)
    # ... and every request naming it (chunks, part copies, completion) found it synced
    naming = requests.naming(stream_id)
    assert [op for op, _ in naming][:1] == ["PutObject"]
    assert {op for op, _ in naming} >= {"PutObject", "CreateMultipartUpload",
                                        "UploadPartCopy", "CompleteMultipartUpload"}
    assert all(durable for _, durable in naming), naming


def test_a_file_deleted_before_any_chunk_is_synced_before_its_metadata(
        worker: Callable[..., Any]) -> None:
    """The one stream whose first S3 object is not a chunk: deleted while under a chunk,
    it is finalized from nothing (an empty object and metadata.json)."""
    tracker, requests, watch = worker(stream_timeout=30)
    (watch / "short.mp4").write_bytes(os.urandom(1000))
    with capture_logs() as logs:
        tracker.touch("short.mp4")
        tracker.step()
        (detected,) = [e for e in logs if e["event"] == "stream_detected"]
        stream_id = detected["stream_id"]
        assert requests.naming(stream_id) == []  # under a chunk and not idle: nothing sent
        assert tracker.store.is_durable(stream_id) is False
        (watch / "short.mp4").unlink()
        tracker.touch("short.mp4")
        run_until(tracker, lambda: bool(_completed(logs)))
    assert _completed(logs)[0]["status"] == "source_deleted"
    naming = requests.naming(stream_id)
    assert {op for op, _ in naming} >= {"PutObject"}  # the empty object, metadata.json
    assert all(durable for _, durable in naming), naming


def test_making_an_old_lineage_durable_leaves_the_path_with_the_new_one(
        tmp_path: Path) -> None:
    """A lineage ended early (its file replaced) is synced when it is finalized, after
    the path moved on: the path must keep pointing at the newer lineage."""
    store = CheckpointStore(WorkerStateDir(tmp_path / "w"))
    old = StreamRecord(stream_id="cam-00000001", rel_path="cam.mp4", dev=1, ino=2,
                       chunk_size=CHUNK, started_at=1.0)
    new = StreamRecord(stream_id="cam-00000002", rel_path="cam.mp4", dev=1, ino=3,
                       chunk_size=CHUNK, started_at=2.0)
    store.start_stream(old, sync=False)
    store.start_stream(new, sync=False)
    assert not store.is_durable(old.stream_id) and not store.is_durable(new.stream_id)
    store.make_durable(old)
    assert store.is_durable(old.stream_id) and not store.is_durable(new.stream_id)
    assert store.current_stream_id("cam.mp4") == new.stream_id
    store.make_durable(new)
    store.forget_stream(old.stream_id)
    store.close()
    reopened = CheckpointStore(WorkerStateDir(tmp_path / "w"))
    assert reopened.current_stream_id("cam.mp4") == new.stream_id
    assert reopened.stream(new.stream_id) == new
    reopened.close()


def test_new_streams_are_synced_together_within_the_sync_interval(
        worker: Callable[..., Any]) -> None:
    """A file that stays under a chunk for minutes (a low-bitrate camera) is not left
    unsynced that long: the tracker syncs every new stream, in one batch, each interval."""
    tracker, requests, watch = worker(stream_timeout=30, sync_every=0.3)
    with capture_logs() as logs:
        for name in ("a.mp4", "b.mp4", "c.mp4"):
            (watch / name).write_bytes(os.urandom(1000))
            tracker.touch(name)
        tracker.step()
        ids = [e["stream_id"] for e in logs if e["event"] == "stream_detected"]
    assert len(ids) == 3
    assert not any(tracker.store.is_durable(i) for i in ids)
    time.sleep(0.35)
    tracker.step()
    assert all(tracker.store.is_durable(i) for i in ids)
    assert all(requests.naming(i) == [] for i in ids)  # synced with nothing sent
