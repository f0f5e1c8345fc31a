"""``worker.uploader``: a chunk PUT bracketed by the write-ahead log, and recovery.

Pins down the order that makes a crash anywhere safe: the intent is in the log
before S3 hears of the chunk, the chunk record is committed to LevelDB only after S3
acknowledged it, and the done mark follows the commit. Each order is observed at the
moment it matters (a botocore hook at the PUT reads the log file and LevelDB) or by
cutting the sequence where a crash would (closing the store or the log under the
uploader: the one forced failure, real otherwise). Then ``reconcile``, which a
restarted worker runs on what the log recovered: a chunk that landed whole is
recorded without being sent again, one that did not is not; an upload opened but
never recorded is aborted, the stream's own is kept. Real files, LevelDB, write-ahead
log and the test S3 server throughout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
import xxhash
from structlog.testing import capture_logs

from shared.keys import StreamKeys
from shared.s3 import Cause, StorageError
from shared.state.errors import StateWriteError
from shared.state.layout import WorkerStateDir
from shared.state.records import ChunkRecord, StreamRecord
from shared.state.store import CheckpointStore
from shared.state.wal import Intent, WriteAheadLog, read_pending
from tests.support.s3server import unique_bucket_name
from worker.planning import ChunkSpan
from worker.settled import SettledFiles
from worker.source import SourceFiles
from worker.storage import Storage
from worker.stream import Stream
from worker.uploader import Uploader

CHUNK = 4096  # chunk objects have no size floor; only parts do
PREFIX = "streams"


@contextmanager
def hooked(client: Any, event: str, handler: Callable[..., None]) -> Iterator[None]:
    """Run ``handler`` on a botocore event of the worker's client, for the block."""
    client.meta.events.register(event, handler)
    try:
        yield
    finally:
        client.meta.events.unregister(event, handler)


class Worker:
    """One worker's parts, as ``worker.wiring`` builds them, on tmp_path; ``restart``
    closes and reopens its state, as a new worker process would."""

    def __init__(self, tmp_path: Path, client: Any, bucket: str) -> None:
        self.watch = tmp_path / "in"
        self.watch.mkdir()
        self.directory = WorkerStateDir(tmp_path / "state" / "worker-0")
        self.storage = Storage(client, bucket)
        self.bucket = bucket
        self._open()

    def _open(self) -> None:
        self.store = CheckpointStore(self.directory)
        self.wal = WriteAheadLog(self.directory)
        self.uploader = Uploader(SourceFiles(self.watch), self.wal, self.storage,
                                 structlog.get_logger(), SettledFiles(enabled=False))

    def close(self) -> None:
        for closing in (self.store.close, self.wal.close):
            try:
                closing()
            except Exception:
                pass

    def restart(self) -> None:
        self.close()
        self._open()

    def new_stream(self, name: str, data: bytes) -> Stream:
        path = self.watch / name
        path.write_bytes(data)
        st = os.stat(path)
        record = StreamRecord(stream_id=f"{path.stem}-0000beef", rel_path=name,
                              dev=st.st_dev, ino=st.st_ino, chunk_size=CHUNK,
                              started_at=1.0e9, size=st.st_size, mtime_ns=st.st_mtime_ns)
        return Stream.start(self.store, record, StreamKeys(PREFIX, name, record.stream_id))

    def load(self, stream_id: str) -> Stream:
        record = self.store.stream(stream_id)
        assert record is not None
        return Stream.load(self.store, record, PREFIX)

    def on_disk(self) -> list[Intent]:
        """The log's pending intents as a restart would read them from the file."""
        intents, torn = read_pending(self.wal.path)
        assert torn == 0
        return intents


@pytest.fixture
def worker(tmp_path: Path, worker_client: Any, plain: Any) -> Iterator[Worker]:
    bucket = unique_bucket_name("uploader")
    plain.create_bucket(Bucket=bucket)
    w = Worker(tmp_path, worker_client, bucket)
    yield w
    w.close()


def _data(size: int, seed: int = 0) -> bytes:
    return bytes((i * 7 + seed) % 251 for i in range(size))


def test_upload_chunk_writes_intent_object_record_done_in_order(worker: Worker) -> None:
    """At the PUT, the intent is in the log file (naming key, size, hash) and no chunk
    is recorded; after it, the chunk is recorded, the object holds its bytes and hash,
    and the log has nothing pending."""
    data = _data(2 * CHUNK + 100)
    stream = worker.new_stream("cam.mp4", data)
    seen: list[tuple[list[Intent], list[ChunkRecord], bool]] = []

    def at_put(params: dict[str, Any], **_: Any) -> None:
        seen.append((worker.on_disk(), worker.store.chunks(stream.stream_id),
                     worker.store.is_durable(stream.stream_id)))

    with hooked(worker.storage.client, "provide-client-params.s3.PutObject", at_put), \
            capture_logs() as logs:
        worker.uploader.upload_chunk(stream, stream.next_full_chunk())  # type: ignore[arg-type]

    [(pending, chunks_then, durable_then)] = seen
    digest = xxhash.xxh3_128_hexdigest(data[:CHUNK])
    [intent] = pending
    assert intent.op == "put_chunk" and intent.stream_id == stream.stream_id
    assert intent.fields == {"stream_id": stream.stream_id, "index": 0,
                             "rel_path": "cam.mp4", "offset": 0, "size": CHUNK,
                             "xxh3_128": digest, "key": stream.keys.chunk(0)}
    assert chunks_then == []
    assert durable_then  # the stream's record was synced before S3 heard its name

    assert worker.on_disk() == [] and worker.wal.pending() == []
    [chunk] = worker.store.chunks(stream.stream_id)
    assert (chunk.index, chunk.offset, chunk.size, chunk.xxh3_128) == (0, 0, CHUNK, digest)
    assert stream.chunks == [chunk]
    assert worker.storage.chunk_hash(stream.keys.chunk(0)) == (CHUNK, digest)
    assert [e["event"] for e in logs] == ["chunk_uploaded"]


def test_chunk_is_recorded_before_its_done_mark(worker: Worker) -> None:
    """Cut after the commit (the log's file closed under it once S3 answered): the
    done mark cannot be written, and the chunk is already in LevelDB."""
    stream = worker.new_stream("cam.mp4", _data(CHUNK))

    def after_put(**_: Any) -> None:
        worker.wal._file.close()  # the forced failure: every later append fails

    with hooked(worker.storage.client, "after-call.s3.PutObject", after_put), \
            pytest.raises(StateWriteError):
        worker.uploader.upload_chunk(stream, ChunkSpan(0, 0, CHUNK))
    assert [c.index for c in worker.store.chunks(stream.stream_id)] == [0]
    assert [i.op for i in worker.on_disk()] == ["put_chunk"]  # reconciled after a restart


def test_a_crash_between_put_and_commit_is_recovered_without_a_second_put(
        worker: Worker) -> None:
    """Cut after S3 acknowledged, before the commit (LevelDB closed under it): nothing is
    recorded, the intent stays; after a restart, reconcile finds the chunk whole in S3
    and records it, with no PUT."""
    data = _data(CHUNK, seed=3)
    stream = worker.new_stream("cam.mp4", data)
    stream.make_durable()

    def after_put(**_: Any) -> None:
        worker.store.close()  # the forced failure: the commit fails

    with hooked(worker.storage.client, "after-call.s3.PutObject", after_put), \
            pytest.raises(StateWriteError):
        worker.uploader.upload_chunk(stream, ChunkSpan(0, 0, CHUNK))

    worker.restart()
    [intent] = worker.wal.recovered(stream.stream_id)
    stream = worker.load(stream.stream_id)
    assert stream.chunks == []
    puts: list[str] = []
    with hooked(worker.storage.client, "provide-client-params.s3.PutObject",
                lambda params, **_: puts.append(params["Key"])), capture_logs() as logs:
        worker.uploader.reconcile(stream, intent)
    assert puts == []
    assert [(c.index, c.xxh3_128) for c in worker.store.chunks(stream.stream_id)] == [
        (0, xxhash.xxh3_128_hexdigest(data))]
    assert stream.chunks == worker.store.chunks(stream.stream_id)
    assert worker.wal.recovered() == [] and worker.on_disk() == []
    assert "chunk_recovered" in [e["event"] for e in logs]


def test_failed_puts_leave_one_pending_intent_and_nothing_committed(
        worker: Worker, worker_client: Any, plain: Any) -> None:
    """A PUT that fails (its bucket does not exist yet) leaves its intent pending and
    records nothing; each retry supersedes the last attempt's intent, so one stays
    pending however often it fails, and none once it succeeds."""
    worker.storage = worker.uploader.storage = Storage(worker_client,
                                                       unique_bucket_name("later"))
    stream = worker.new_stream("cam.mp4", _data(CHUNK))
    for _ in range(3):
        with pytest.raises(StorageError) as caught:
            worker.uploader.upload_chunk(stream, ChunkSpan(0, 0, CHUNK))
        assert caught.value.cause is Cause.BUCKET_MISSING
        assert [i.op for i in worker.on_disk()] == ["put_chunk"]
        assert len(worker.wal.pending()) == 1
        assert worker.store.chunks(stream.stream_id) == [] and stream.chunks == []

    plain.create_bucket(Bucket=worker.storage.bucket)
    worker.uploader.upload_chunk(stream, ChunkSpan(0, 0, CHUNK))
    assert worker.on_disk() == [] and worker.wal.pending() == []
    assert len(worker.store.chunks(stream.stream_id)) == 1


def test_a_reupload_replaces_the_record_and_counts(worker: Worker) -> None:
    """A chunk whose bytes changed on disk goes up again to the same key and replaces
    its record; the stream counts it."""
    path = worker.watch / "cam.mp4"
    stream = worker.new_stream("cam.mp4", _data(2 * CHUNK))
    worker.uploader.upload_chunk(stream, ChunkSpan(0, 0, CHUNK))
    worker.uploader.upload_chunk(stream, ChunkSpan(1, CHUNK, CHUNK))
    with open(path, "r+b") as f:  # a muxer patching its header after the fact
        f.write(b"\xff" * 16)
    worker.uploader.upload_chunk(stream, stream.span_of(stream.chunks[0]))

    patched = xxhash.xxh3_128_hexdigest(path.read_bytes()[:CHUNK])
    assert [c.xxh3_128 for c in worker.store.chunks(stream.stream_id)][0] == patched
    assert worker.load(stream.stream_id).record.chunks_reuploaded == 1
    assert worker.storage.chunk_hash(stream.keys.chunk(0)) == (CHUNK, patched)
    assert worker.on_disk() == []


def _recovered_put(worker: Worker, stream: Stream, index: int, data: bytes) -> None:
    """A put_chunk intent as upload_chunk writes it, left pending by a crash."""
    worker.wal.begin("put_chunk", stream_id=stream.stream_id, index=index,
                     rel_path=stream.rel_path, offset=index * CHUNK, size=len(data),
                     xxh3_128=xxhash.xxh3_128_hexdigest(data), key=stream.keys.chunk(index))


def test_reconcile_commits_only_a_chunk_that_landed_whole(worker: Worker) -> None:
    """Chunk 0 landed with its hash; chunk 1's object holds other bytes (an earlier
    upload); chunk 2 never arrived. Only chunk 0 is recorded; every intent is settled."""
    data = _data(3 * CHUNK, seed=5)
    stream = worker.new_stream("cam.mp4", data)
    stream.make_durable()
    pieces = [data[i * CHUNK:(i + 1) * CHUNK] for i in range(3)]
    for index, piece in enumerate(pieces):
        _recovered_put(worker, stream, index, piece)
    worker.storage.put_chunk(stream.keys.chunk(0), pieces[0],
                             xxhash.xxh3_128_hexdigest(pieces[0]))
    stale = _data(CHUNK, seed=99)
    worker.storage.put_chunk(stream.keys.chunk(1), stale, xxhash.xxh3_128_hexdigest(stale))

    worker.restart()
    stream = worker.load(stream.stream_id)
    recovered = worker.wal.recovered(stream.stream_id)
    assert [i.index for i in recovered] == [0, 1, 2]
    with capture_logs():
        for intent in recovered:
            worker.uploader.reconcile(stream, intent)
    assert [(c.index, c.xxh3_128) for c in worker.store.chunks(stream.stream_id)] == [
        (0, xxhash.xxh3_128_hexdigest(pieces[0]))]
    assert worker.wal.recovered() == [] and worker.on_disk() == []


def test_reconcile_does_not_record_a_chunk_twice_or_past_a_gap(worker: Worker) -> None:
    """A landed chunk already recorded is not committed again; one whose predecessor is
    not recorded is not committed out of order."""
    data = _data(3 * CHUNK, seed=7)
    stream = worker.new_stream("cam.mp4", data)
    worker.uploader.upload_chunk(stream, ChunkSpan(0, 0, CHUNK))
    first = stream.chunks[0]
    for index in (0, 2):
        piece = data[index * CHUNK:(index + 1) * CHUNK]
        worker.storage.put_chunk(stream.keys.chunk(index), piece,
                                 xxhash.xxh3_128_hexdigest(piece))
        _recovered_put(worker, stream, index, piece)

    worker.restart()
    stream = worker.load(stream.stream_id)
    with capture_logs() as logs:
        for intent in worker.wal.recovered(stream.stream_id):
            worker.uploader.reconcile(stream, intent)
    assert worker.store.chunks(stream.stream_id) == [first]
    assert stream.record.chunks_reuploaded == 0
    assert "chunk_recovered" not in [e["event"] for e in logs]
    assert worker.on_disk() == []


def test_reconcile_open_upload_aborts_strays_and_keeps_the_streams_own(
        worker: Worker, plain: Any) -> None:
    """An open_upload intent left pending: every upload of the final key but the one the
    stream record holds is aborted. With no stream left, all of them are."""
    stream = worker.new_stream("cam.mp4", _data(CHUNK))
    key = stream.keys.final_object
    own = worker.storage.create_upload(key)
    strays = {worker.storage.create_upload(key) for _ in range(2)}
    stream.open_upload(own)
    worker.wal.begin("open_upload", stream_id=stream.stream_id, index=-1,
                     rel_path=stream.rel_path, key=key)

    worker.restart()
    stream = worker.load(stream.stream_id)
    [intent] = worker.wal.recovered()
    with capture_logs() as logs:
        worker.uploader.reconcile(stream, intent)

    def open_uploads() -> set[str]:
        listing = plain.list_multipart_uploads(Bucket=worker.bucket, Prefix=key)
        return {u["UploadId"] for u in listing.get("Uploads", [])}

    assert open_uploads() == {own}
    assert not strays & open_uploads()
    assert [e.get("uploads") for e in logs if e["event"] == "multipart_aborted"] == [2]
    assert worker.on_disk() == []
    assert stream.upload_id == own

    worker.wal.begin("open_upload", stream_id=stream.stream_id, index=-1,
                     rel_path=stream.rel_path, key=key)
    [intent] = worker.wal.pending()
    with capture_logs():
        worker.uploader.reconcile(None, intent)  # the stream is gone
    assert open_uploads() == set()
