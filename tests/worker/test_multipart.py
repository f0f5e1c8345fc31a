"""``worker.multipart.FinalUpload``: the final object's multipart upload.

Pins down, against the real test S3 server: the upload is opened once a recording
stream has a chunk, and its chunks are copied into parts on threads while it is
recorded, the ETags recorded (LevelDB and memory) by ``harvest``; a copy made stale by
a re-upload of its chunk is dropped and copied again; ``prepare`` + ``complete``
produce an object byte-identical to the file; an upload aborted behind the worker's
back (a lifecycle rule) is replaced once, not endlessly; and a stream with more
chunks than ``max_parts`` groups of ``max_parts`` gets no upload, or has its upload
aborted. Chunks are
uploaded by the real ``Uploader`` from real files, so they are real S3 parts (5 MiB).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from shared.keys import StreamKeys
from shared.s3 import StorageError
from shared.state.layout import WorkerStateDir
from shared.state.records import StreamRecord
from shared.state.store import CheckpointStore
from shared.state.wal import WriteAheadLog, read_pending
from tests.support.s3server import unique_bucket_name
from worker.liveness import NEVER_STOPS
from worker.multipart import FinalUpload
from worker.settled import SettledFiles
from worker.source import SourceFiles
from worker.storage import Storage, UploadLost
from worker.stream import Stream
from worker.uploader import Uploader

CHUNK = 5 << 20  # S3's smallest part but the last
TAIL = 1000
PREFIX = "streams"


class Parts:
    """One worker's store, log, uploader and FinalUpload, on tmp_path and a new bucket."""

    def __init__(self, tmp_path: Path, client: Any, plain: Any, max_parts: int) -> None:
        self.plain = plain
        self.bucket = unique_bucket_name("multipart")
        plain.create_bucket(Bucket=self.bucket)
        self.watch = tmp_path / "in"
        self.watch.mkdir()
        directory = WorkerStateDir(tmp_path / "state" / "worker-0")
        self.store = CheckpointStore(directory)
        self.wal = WriteAheadLog(directory)
        self.storage = Storage(client, self.bucket)
        log = structlog.get_logger()
        self.uploader = Uploader(SourceFiles(self.watch), self.wal, self.storage, log,
                                 SettledFiles(enabled=False))
        self.upload = FinalUpload(self.storage, self.wal, log, NEVER_STOPS, max_parts)

    def close(self) -> None:
        self.upload.close()
        self.store.close()
        self.wal.close()

    def recording(self, name: str, full_chunks: int, tail: int = TAIL) -> Stream:
        """A file of ``full_chunks`` chunks and a tail, with its full chunks uploaded."""
        path = self.watch / name
        with open(path, "wb") as f:
            for i in range(full_chunks):
                f.write(bytes([65 + i]) * CHUNK)
            f.write(b"t" * tail)
        st = os.stat(path)
        record = StreamRecord(stream_id=f"{path.stem}-0000cafe", rel_path=name,
                              dev=st.st_dev, ino=st.st_ino, chunk_size=CHUNK,
                              started_at=1.0e9, size=st.st_size, mtime_ns=st.st_mtime_ns)
        stream = Stream.start(self.store, record, StreamKeys(PREFIX, name, record.stream_id))
        while (span := stream.next_full_chunk()) is not None:
            self.uploader.upload_chunk(stream, span)
        return stream

    def upload_tail(self, stream: Stream) -> None:
        for span in stream.completion_spans():
            self.uploader.upload_chunk(stream, span)

    def copy_ahead_until_idle(self, stream: Stream, timeout: float = 20.0) -> None:
        """Step copy_ahead (as the worker loop does between uploads) until no copy is in
        flight and nothing more was started."""
        deadline = time.monotonic() + timeout
        while True:
            did = self.upload.copy_ahead({stream.stream_id: stream}, time.monotonic())
            if not did and self.upload.in_flight() == 0:
                return
            assert time.monotonic() < deadline, "part copies did not finish"
            time.sleep(0.02)

    def open_uploads(self, key: str) -> set[str]:
        listing = self.plain.list_multipart_uploads(Bucket=self.bucket, Prefix=key)
        return {u["UploadId"] for u in listing.get("Uploads", []) if u["Key"] == key}

    def final_bytes(self, stream: Stream) -> bytes:
        got = self.plain.get_object(Bucket=self.bucket, Key=stream.keys.final_object)
        return bytes(got["Body"].read())


@pytest.fixture
def parts(tmp_path: Path, worker_client: Any, plain: Any) -> Iterator[Parts]:
    p = Parts(tmp_path, worker_client, plain, max_parts=10_000)
    yield p
    p.close()


def test_copy_ahead_waits_for_a_chunk_then_opens_and_copies(parts: Parts) -> None:
    """No upload for a stream without chunks; once it has some, one upload is opened
    (recorded, its intent settled, a leftover of the key that no record names aborted)
    and every chunk becomes a part, recorded in LevelDB as in memory with its ETag."""
    stream = parts.recording("cam.mp4", full_chunks=0)
    assert parts.upload.copy_ahead({stream.stream_id: stream}, time.monotonic()) is False
    assert stream.upload_id is None
    assert parts.open_uploads(stream.keys.final_object) == set()

    stream = parts.recording("cam2.mp4", full_chunks=2)
    leftover = parts.storage.create_upload(stream.keys.final_object)  # its intent lost
    with capture_logs() as logs:
        parts.copy_ahead_until_idle(stream)
    upload_id = stream.upload_id
    assert upload_id is not None
    assert parts.open_uploads(stream.keys.final_object) == {upload_id}
    assert upload_id != leftover
    assert parts.store.stream(stream.stream_id).upload_id == upload_id  # type: ignore[union-attr]
    assert read_pending(parts.wal.path)[0] == []  # open_upload and put_chunk intents done
    stored = parts.store.chunks(stream.stream_id)
    assert stored == stream.chunks
    assert all(c.part_upload == upload_id and c.part_etag for c in stored)
    assert parts.upload.missing(stream) == []
    listed = parts.plain.list_parts(Bucket=parts.bucket, Key=stream.keys.final_object,
                                    UploadId=upload_id)["Parts"]
    # radosgw 16 answers UploadPartCopy with an unquoted ETag, ListParts with a quoted one
    assert [(p["PartNumber"], p["ETag"].strip('"')) for p in listed] == [
        (c.index + 1, str(c.part_etag).strip('"')) for c in stored]
    events = [e["event"] for e in logs]
    assert events.count("multipart_started") == 1 and "multipart_aborted" in events


def test_prepare_and_complete_give_the_file_byte_for_byte(parts: Parts) -> None:
    """Completion copies what copy-ahead left (the tail) and completes in chunk order."""
    stream = parts.recording("cam.mp4", full_chunks=2)
    parts.copy_ahead_until_idle(stream)
    parts.upload_tail(stream)
    with capture_logs():
        assert parts.upload.prepare(stream) == 1  # only the tail was left to copy
        parts.upload.complete(stream)
    assert parts.final_bytes(stream) == (parts.watch / "cam.mp4").read_bytes()
    assert parts.open_uploads(stream.keys.final_object) == set()


def test_prepare_opens_an_upload_when_none_was(parts: Parts) -> None:
    """A stream that completes before copy-ahead ran gets its upload, and all its
    copies, at completion."""
    stream = parts.recording("cam.mp4", full_chunks=1)
    parts.upload_tail(stream)
    with capture_logs():
        assert parts.upload.prepare(stream) == 2
        parts.upload.complete(stream)
    assert parts.final_bytes(stream) == (parts.watch / "cam.mp4").read_bytes()


def test_a_copy_made_stale_by_a_reupload_is_dropped_and_copied_again(parts: Parts) -> None:
    """Chunk 0 goes up again (its bytes changed on disk) while its part copy is in flight
    or unrecorded: that copy is not recorded, and completion copies the new bytes."""
    stream = parts.recording("cam.mp4", full_chunks=2)
    with capture_logs():
        assert parts.upload.copy_ahead({stream.stream_id: stream}, time.monotonic())
    assert parts.upload.in_flight() == 2  # nothing harvested yet
    path = parts.watch / "cam.mp4"
    with open(path, "r+b") as f:
        f.write(b"PATCHED-HEADER")
    parts.uploader.upload_chunk(stream, stream.span_of(stream.chunks[0]))

    parts.copy_ahead_until_idle(stream)  # harvests both; re-copies chunk 0 afterwards
    upload_id = stream.upload_id
    assert all(c.part_upload == upload_id and c.part_etag for c in stream.chunks)

    parts.upload_tail(stream)
    with capture_logs():
        assert parts.upload.prepare(stream) == 1  # the tail: chunk 0 was copied again
        parts.upload.complete(stream)
    assert parts.final_bytes(stream) == path.read_bytes()


def test_harvest_drops_the_stale_copy(parts: Parts) -> None:
    """The same as above, one step at a time: the harvest right after the re-upload
    records chunk 1's part and not chunk 0's."""
    stream = parts.recording("cam.mp4", full_chunks=2)
    with capture_logs():
        parts.upload.copy_ahead({stream.stream_id: stream}, time.monotonic())
    with open(parts.watch / "cam.mp4", "r+b") as f:
        f.write(b"PATCHED-HEADER")
    parts.uploader.upload_chunk(stream, stream.span_of(stream.chunks[0]))
    deadline = time.monotonic() + 20
    while parts.upload.in_flight():
        parts.upload.harvest({stream.stream_id: stream})
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert [c.part_upload is not None for c in stream.chunks] == [False, True]
    assert parts.store.chunks(stream.stream_id) == stream.chunks
    assert [c.index for c in parts.upload.missing(stream)] == [0]


def test_a_lost_upload_is_replaced_once(parts: Parts) -> None:
    """The upload aborted behind the worker's back (a lifecycle rule): prepare finds it
    gone, logs multipart_lost, copies into a new upload, and the object is complete."""
    stream = parts.recording("cam.mp4", full_chunks=2)
    parts.copy_ahead_until_idle(stream)
    lost = stream.upload_id
    assert lost is not None
    parts.plain.abort_multipart_upload(Bucket=parts.bucket, Key=stream.keys.final_object,
                                       UploadId=lost)
    parts.upload_tail(stream)
    with capture_logs() as logs:
        assert parts.upload.prepare(stream) == 3  # every chunk copied again
        parts.upload.complete(stream)
    events = [e["event"] for e in logs]
    assert events.count("multipart_lost") == 1
    assert events.count("multipart_started") == 1
    assert stream.upload_id not in (None, lost)
    assert parts.final_bytes(stream) == (parts.watch / "cam.mp4").read_bytes()


def test_an_upload_lost_again_is_not_replaced_forever(parts: Parts) -> None:
    """Every upload vanishes as soon as it is copied into (aborted on each copy request):
    prepare replaces the first once, then gives up with UploadLost (the tracker backs
    off), having forgotten the lost upload."""
    stream = parts.recording("cam.mp4", full_chunks=1)
    parts.upload_tail(stream)
    client = parts.storage.client
    aborted: list[str] = []

    def abort_it(params: dict[str, Any], **_: Any) -> None:
        if params["UploadId"] not in aborted:
            aborted.append(params["UploadId"])
            parts.plain.abort_multipart_upload(Bucket=parts.bucket, Key=params["Key"],
                                               UploadId=params["UploadId"])

    client.meta.events.register("provide-client-params.s3.UploadPartCopy", abort_it)
    try:
        with capture_logs() as logs, pytest.raises(UploadLost):
            parts.upload.prepare(stream)
    finally:
        client.meta.events.unregister("provide-client-params.s3.UploadPartCopy", abort_it)
    assert len(aborted) == 2  # the first upload, and its one replacement
    assert [e["event"] for e in logs].count("multipart_started") == 2
    assert stream.upload_id is None
    assert parts.store.stream(stream.stream_id).upload_id is None  # type: ignore[union-attr]


def test_complete_of_a_lost_upload_forgets_it(parts: Parts) -> None:
    """Aborted between prepare and complete: complete fails, and the stream no longer
    names the upload, so the retry opens a new one (and then succeeds)."""
    stream = parts.recording("cam.mp4", full_chunks=1)
    parts.upload_tail(stream)
    with capture_logs():
        parts.upload.prepare(stream)
    lost = stream.upload_id
    parts.plain.abort_multipart_upload(Bucket=parts.bucket, Key=stream.keys.final_object,
                                       UploadId=lost)
    with capture_logs() as logs, pytest.raises(StorageError):
        parts.upload.complete(stream)
    assert "multipart_lost" in [e["event"] for e in logs]
    assert stream.upload_id is None
    with capture_logs():
        parts.upload.prepare(stream)
        parts.upload.complete(stream)
    assert parts.final_bytes(stream) == (parts.watch / "cam.mp4").read_bytes()


def test_more_chunks_than_groups_of_parts_get_no_upload_and_lose_theirs(
        tmp_path: Path, worker_client: Any, plain: Any) -> None:
    """With max_parts=2, groups hold 2 chunks and the final object at most 2 groups: a
    stream of 5 chunks does not fit, copy-ahead leaves it alone, and give_up aborts its
    upload and forgets it (worker/groups.py covers the 3- and 4-chunk streams)."""
    parts = Parts(tmp_path, worker_client, plain, max_parts=2)
    try:
        stream = parts.recording("cam.mp4", full_chunks=2, tail=0)
        assert parts.upload.fits(stream)
        parts.copy_ahead_until_idle(stream)
        upload_id = stream.upload_id
        assert upload_id is not None and stream.record.group_chunks is None

        big = parts.recording("big.mp4", full_chunks=5, tail=0)
        assert not parts.upload.fits(big)
        with capture_logs():
            assert parts.upload.copy_ahead({big.stream_id: big}, time.monotonic()) is False
        assert big.upload_id is None and parts.upload.in_flight() == 0

        parts.upload.abandon(stream)
        assert stream.upload_id is None
        assert parts.store.stream(stream.stream_id).upload_id is None  # type: ignore[union-attr]
        assert parts.open_uploads(stream.keys.final_object) == set()
        parts.upload.give_up(stream)  # nothing left to abort: a no-op
    finally:
        parts.close()
