"""``worker.groups``: two-level assembly, step by step against the real test S3 server.

With ``max_parts=2`` a group holds 2 chunks and the final object at most 2 groups
(3 and 3 for the reopen).
Pins down: a stream that passes 2 chunks drops its one-level upload and has its full
groups built and copied while recorded; completion builds the last, partial group;
the final object is byte-identical and no intermediate or upload is left; after
completion the groups are recorded as living in the final object, so a reopen copies
them from there and rebuilds only the group its new chunks touch; a chunk changed
on disk rebuilds its group only.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import structlog

from shared.keys import StreamKeys
from shared.s3 import StorageError
from shared.state.records import ChunkRecord, StreamRecord
from tests.worker.test_multipart import CHUNK, Parts
from worker.groups import MAX_OBJECT_BYTES, chunks_per_group, group_digest
from worker.liveness import NEVER_STOPS
from worker.multipart import FinalUpload
from worker.stream import Stream


def _grow(parts: Parts, stream: Stream, data: bytes) -> None:
    path = parts.watch / stream.rel_path
    with open(path, "ab") as f:
        f.write(data)
    st = os.stat(path)
    stream.observed(st.st_size, st.st_mtime_ns, 0.0)
    while (span := stream.next_full_chunk()) is not None:
        parts.uploader.upload_chunk(stream, span)


def _leftovers(parts: Parts, stream: Stream) -> list[str]:
    prefix = stream.keys.groups_prefix
    objects = parts.plain.list_objects_v2(Bucket=parts.bucket, Prefix=prefix).get("Contents", [])
    uploads = parts.plain.list_multipart_uploads(Bucket=parts.bucket).get("Uploads", [])
    return [o["Key"] for o in objects] + [u["Key"] for u in uploads]


def _finish(parts: Parts, stream: Stream) -> int:
    parts.upload_tail(stream)
    started = parts.upload.prepare(stream)
    parts.upload.complete(stream)
    parts.upload.groups.settle(stream)
    parts.upload.groups.sweep(stream)
    return started


def test_group_size_is_bounded_by_parts_and_5_gib() -> None:
    assert chunks_per_group(10_000, 10 << 20) == 512
    assert chunks_per_group(4, 5 << 20) == 4
    assert chunks_per_group(10_000, 5 << 30) == 1
    # chunks that end on fragments hold up to twice chunk_size: groups of half as many
    fragmented = Stream(None, StreamRecord(  # type: ignore[arg-type]
        stream_id="c-1", rel_path="c.mp4", dev=1, ino=1, chunk_size=10 << 20, started_at=0.0,
        extra={"layout": "fmp4"}), [], StreamKeys("s", "c.mp4", "c-1"))
    assert fragmented.largest_chunk == 20 << 20
    assert chunks_per_group(10_000, fragmented.largest_chunk) * (20 << 20) <= 5 << 30
    chunk = ChunkRecord(0, 0, 10, "a" * 32, 1.0)
    assert group_digest([chunk]) != group_digest([ChunkRecord(0, 0, 10, "b" * 32, 1.0)])
    assert group_digest([chunk]) == group_digest([ChunkRecord(0, 0, 10, "a" * 32, 9.0)])


def test_a_stream_past_max_parts_is_grouped_while_recorded_and_assembled(
        tmp_path: Path, worker_client: Any, plain: Any) -> None:
    parts = Parts(tmp_path, worker_client, plain, max_parts=2)
    try:
        stream = parts.recording("cam.mp4", full_chunks=2, tail=0)
        parts.copy_ahead_until_idle(stream)
        one_level = stream.upload_id
        assert one_level is not None and stream.record.group_chunks is None

        _grow(parts, stream, b"c" * CHUNK)  # 3 chunks: past max_parts
        parts.copy_ahead_until_idle(stream)
        assert stream.record.group_chunks == 2
        assert one_level not in parts.open_uploads(stream.keys.final_object)
        groups = stream.record.groups
        assert [(g.index, g.at, g.size) for g in groups] == [(0, "group", 2 * CHUNK)]
        assert groups[0].part_upload == stream.upload_id is not None  # copied in already
        reloaded = parts.store.stream(stream.stream_id)
        assert reloaded is not None and reloaded.groups == groups  # it is in LevelDB

        _grow(parts, stream, b"tail")
        started = _finish(parts, stream)
        assert started == 2  # the partial last group: built, then copied
        assert parts.final_bytes(stream) == (parts.watch / "cam.mp4").read_bytes()
        assert _leftovers(parts, stream) == []
        assert [(g.at, g.offset) for g in stream.record.groups] == [("final", 0),
                                                                     ("final", 2 * CHUNK)]
        assert parts.upload.fits(stream)
    finally:
        parts.close()


def test_a_reopen_rebuilds_only_the_group_it_touches(tmp_path: Path, worker_client: Any,
                                                     plain: Any) -> None:
    parts = Parts(tmp_path, worker_client, plain, max_parts=3)
    try:
        stream = parts.recording("cam.mp4", full_chunks=3, tail=1000)
        _finish(parts, stream)
        first = parts.final_bytes(stream)
        assert parts.upload.groups.assembled(stream)  # a retry would copy nothing
        stream.complete(1.0)

        stream.reopen(keep_chunks=True)  # grows: the 1000-byte tail becomes a full chunk
        # the short tail is dropped, to be replaced: the object holds more than that
        assert not parts.upload.groups.assembled(stream)
        _grow(parts, stream, b"n" * CHUNK)
        assert not parts.upload.groups.assembled(stream)
        builds = []
        original = parts.upload.groups._build

        def counted(key: str, chunk_keys: list[str], threads: int) -> int:
            builds.append(key)
            return original(key, chunk_keys, threads)
        parts.upload.groups._build = counted  # type: ignore[method-assign]
        _finish(parts, stream)
        # groups of 3: chunk 3 (the old tail) changed and chunk 4 is new, so group 1 is
        # built again, and group 0 is copied from the final object
        assert builds == [stream.keys.group(1)]
        data = (parts.watch / "cam.mp4").read_bytes()
        assert parts.final_bytes(stream) == data and data.startswith(first[:3 * CHUNK])
        assert _leftovers(parts, stream) == []
    finally:
        parts.close()


def test_past_5_tib_or_too_many_groups_does_not_fit(tmp_path: Path, worker_client: Any,
                                                    plain: Any) -> None:
    parts = Parts(tmp_path, worker_client, plain, max_parts=2)
    try:
        stream = parts.recording("cam.mp4", full_chunks=4, tail=0)
        assert parts.upload.fits(stream)  # 2 groups of 2
        _grow(parts, stream, b"x" * CHUNK)
        assert not parts.upload.fits(stream)  # 3 groups
        huge = parts.recording("huge.mp4", full_chunks=1, tail=0)
        huge.chunks[0] = ChunkRecord(0, 0, MAX_OBJECT_BYTES + 1, "0" * 32, 1.0)
        assert not parts.upload.fits(huge)
    finally:
        parts.close()


def test_give_up_waits_for_builds_and_forgets_the_groups_it_removed(
        tmp_path: Path, worker_client: Any, plain: Any) -> None:
    """A stream past the limits with group builds in flight: nothing is left once they
    end, and with a higher limit later (the operator raised --max-parts) it is
    assembled, its removed groups built again rather than copied from nowhere."""
    parts = Parts(tmp_path, worker_client, plain, max_parts=2)
    try:
        stream = parts.recording("cam.mp4", full_chunks=5, tail=0)  # 3 groups of 2
        original = parts.storage.copy_part

        def slow(*args: Any, **kwargs: Any) -> str:
            time.sleep(0.3)
            return original(*args, **kwargs)
        parts.storage.copy_part = slow  # type: ignore[method-assign]
        stream.save_groups(2, [])
        parts.upload.groups.submit(stream, full_only=True, limit=None)
        assert parts.upload.groups.in_flight() == 2 and not parts.upload.fits(stream)
        parts.upload.give_up(stream)
        assert parts.upload.groups.in_flight() == 0 and _leftovers(parts, stream) == []
        assert stream.record.groups == []  # built, then removed: forgotten
        parts.storage.copy_part = original  # type: ignore[method-assign]

        parts.upload.close()
        parts.upload = FinalUpload(parts.storage, parts.wal, structlog.get_logger(),
                                   NEVER_STOPS, max_parts=3)
        stream.chunks.pop()  # 4 chunks: 2 groups of 2 fit in 3 parts
        assert parts.upload.fits(stream)
        parts.upload.prepare(stream)
        parts.upload.complete(stream)
        assert parts.final_bytes(stream) == (parts.watch / "cam.mp4").read_bytes()[:4 * CHUNK]
    finally:
        parts.close()


def test_a_drain_stops_a_group_build_between_copies(tmp_path: Path, worker_client: Any,
                                                    plain: Any) -> None:
    stopping = threading.Event()
    parts = Parts(tmp_path, worker_client, plain, max_parts=4)
    try:
        parts.storage.stopping = stopping.is_set
        stream = parts.recording("cam.mp4", full_chunks=4, tail=0)
        original = parts.storage.copy_part
        calls = []

        def copy_then_stop(*args: Any, **kwargs: Any) -> str:
            calls.append(args)
            stopping.set()  # SIGTERM arrives during the first copies
            return original(*args, **kwargs)
        parts.storage.copy_part = copy_then_stop  # type: ignore[method-assign]
        with pytest.raises(StorageError, match="stopping"):
            parts.upload.groups._build(stream.keys.group(0),
                                       [stream.keys.chunk(i) for i in range(4)], 1)
        assert len(calls) == 1 and _leftovers(parts, stream) == []  # its upload aborted
    finally:
        parts.close()
