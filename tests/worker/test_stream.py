"""``worker.stream``: the one aggregate that changes a stream's state.

Pins down that every transition writes LevelDB and memory together: after each one,
the stream is loaded again from a freshly opened ``CheckpointStore`` (as a restarted
worker would) and must equal the one in memory; and that a write that fails leaves
memory where it was, so memory never runs ahead of what a restart finds. Also the
names of the four states, and the chunk arithmetic read from the chunk list (never
``index * chunk_size``), with chunks of varying size. Real LevelDB in tmp_path.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.keys import StreamKeys
from shared.state.errors import StateWriteError
from shared.state.layout import WorkerStateDir
from shared.state.records import ChunkRecord, StreamRecord, StreamStatus
from shared.state.store import CheckpointStore
from worker.planning import ChunkSpan
from worker.settled import FileState
from worker.stream import Stream, StreamState

PREFIX = "streams"
CHUNK = 300


def _record(**changes: object) -> StreamRecord:
    record = StreamRecord(stream_id="cam-0000abcd", rel_path="site/cam.mp4", dev=1, ino=2,
                          chunk_size=CHUNK, started_at=1.0e9, size=0, mtime_ns=5)
    return record.evolve(**changes)


def _chunk(index: int, offset: int, size: int, tag: str = "") -> ChunkRecord:
    return ChunkRecord(index, offset, size, f"{index:08x}{tag}".ljust(32, "0"),
                       uploaded_at=2.0e9 + index)


class Reopened:
    """The stream's LevelDB, closed and opened afresh after each transition."""

    def __init__(self, tmp_path: Path) -> None:
        self.directory = WorkerStateDir(tmp_path / "worker-0")
        self.store = CheckpointStore(self.directory)

    def again(self, stream: Stream) -> Stream:
        """Assert a fresh store holds exactly what ``stream`` holds in memory; return the
        stream loaded from it (on which the test goes on)."""
        self.store.close()
        self.store = CheckpointStore(self.directory)
        record = self.store.stream(stream.stream_id)
        assert record == stream.record
        loaded = Stream.load(self.store, record, PREFIX)
        assert loaded.chunks == stream.chunks
        assert loaded.keys == stream.keys
        return loaded


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Reopened]:
    reopened = Reopened(tmp_path)
    yield reopened
    reopened.store.close()


def _started(db: Reopened, **changes: object) -> Stream:
    record = _record(**changes)
    return Stream.start(db.store, record, StreamKeys(PREFIX, record.rel_path, record.stream_id))


@pytest.mark.parametrize(("status", "end_reason", "state", "unfinished"), [
    (StreamStatus.ACTIVE, None, StreamState.RECORDING, True),
    (StreamStatus.ACTIVE, "source_deleted", StreamState.ENDING, True),
    (StreamStatus.COMPLETE, None, StreamState.COMPLETE, False),
    (StreamStatus.COMPLETE, "source_replaced", StreamState.ENDED, False),
])
def test_state_of_status_and_end_reason(status: StreamStatus, end_reason: str | None,
                                        state: StreamState, unfinished: bool) -> None:
    record = _record(status=status, end_reason=end_reason)
    assert StreamState.of(record) is state
    assert state.unfinished is unfinished


def test_start_records_the_lineage_unsynced_until_made_durable(db: Reopened) -> None:
    """A new stream is the path's current one at once; it is synced by make_durable."""
    stream = _started(db, size=10)
    assert stream.state is StreamState.RECORDING and stream.chunks == []
    assert db.store.current_stream_id("site/cam.mp4") == stream.stream_id
    assert not db.store.is_durable(stream.stream_id)
    stream.make_durable()
    assert db.store.is_durable(stream.stream_id)
    stream = db.again(stream)
    assert db.store.current_stream_id("site/cam.mp4") == stream.stream_id


def test_observation_is_memory_only_until_the_next_transition(db: Reopened) -> None:
    """observed() changes memory alone; the next transition saves it with itself."""
    stream = _started(db)
    stream.observed(700, 99, now=12.0)
    assert stream.last_change == 12.0
    assert db.store.stream(stream.stream_id).size == 0  # type: ignore[union-attr]
    stream.commit_chunk(_chunk(0, 0, CHUNK))
    stream = db.again(stream)
    assert (stream.record.size, stream.record.mtime_ns) == (700, 99)


def test_commit_chunk_appends_then_replaces(db: Reopened) -> None:
    """A new last chunk is appended; one uploaded again replaces its record in place and
    is counted in chunks_reuploaded, in LevelDB as in memory."""
    stream = _started(db, size=1000)
    stream.commit_chunk(_chunk(0, 0, CHUNK))
    stream = db.again(stream)
    stream.commit_chunk(_chunk(1, CHUNK, CHUNK))
    stream = db.again(stream)
    assert [c.index for c in stream.chunks] == [0, 1]
    assert stream.record.chunks_reuploaded == 0

    changed = _chunk(0, 0, CHUNK, tag="ff")
    stream.commit_chunk(changed)
    stream = db.again(stream)
    assert stream.chunks[0] == changed and len(stream.chunks) == 2
    assert stream.record.chunks_reuploaded == 1


def test_upload_transitions(db: Reopened) -> None:
    """open_upload, commit_parts (part ETags on the chunk records) and drop_upload."""
    stream = _started(db, size=1000)
    for i in range(2):
        stream.commit_chunk(_chunk(i, i * CHUNK, CHUNK))
    stream.open_upload("upload-1")
    stream = db.again(stream)
    assert stream.upload_id == "upload-1"

    parts = [ChunkRecord(**{**vars(c), "part_upload": "upload-1", "part_etag": f'"e{i}"'})
             for i, c in enumerate(stream.chunks)]
    stream.commit_parts(parts)
    stream = db.again(stream)
    assert [(c.part_upload, c.part_etag) for c in stream.chunks] == [
        ("upload-1", '"e0"'), ("upload-1", '"e1"')]

    stream.drop_upload()
    stream = db.again(stream)
    assert stream.upload_id is None


def test_end_then_complete_is_ended(db: Reopened) -> None:
    """RECORDING -> ENDING -> ENDED; completing clears the upload."""
    stream = _started(db, size=1000)
    stream.open_upload("upload-2")
    stream.end("source_deleted")
    stream = db.again(stream)
    assert stream.state is StreamState.ENDING
    assert stream.record.end_reason == "source_deleted"
    stream.complete(completed_at=3.0e9)
    stream = db.again(stream)
    assert stream.state is StreamState.ENDED
    assert (stream.record.completed_at, stream.upload_id) == (3.0e9, None)


def test_complete_then_reopen_keeping_chunks(db: Reopened) -> None:
    """COMPLETE -> RECORDING: full chunks are kept, the short last one is dropped (a
    fuller one replaces it at its key), and settled proofs are forgotten."""
    stream = _started(db, size=2 * CHUNK + 50)
    for span in stream.completion_spans():
        stream.commit_chunk(_chunk(span.index, span.offset, span.size))
    stream.complete(completed_at=3.0e9)
    stream = db.again(stream)
    assert stream.state is StreamState.COMPLETE
    stream.settled[0] = (FileState(1, 2, 3, 4, 5), stream.chunks[0].xxh3_128)

    stream.reopen(keep_chunks=True)
    assert stream.settled == {}
    stream = db.again(stream)
    assert stream.state is StreamState.RECORDING
    assert [c.size for c in stream.chunks] == [CHUNK, CHUNK]
    assert (stream.record.reopen_count, stream.record.completed_at) == (1, None)
    assert stream.committed_bytes == 2 * CHUNK


def test_reopen_without_keeping_chunks_drops_them_all(db: Reopened) -> None:
    """With --no-keep-chunks the chunks were deleted in S3: all go up again."""
    stream = _started(db, size=2 * CHUNK)
    for span in stream.completion_spans():
        stream.commit_chunk(_chunk(span.index, span.offset, span.size))
    stream.complete(completed_at=3.0e9)
    stream.reopen(keep_chunks=False)
    stream = db.again(stream)
    assert stream.chunks == [] and db.store.chunks(stream.stream_id) == []
    assert stream.record.reopen_count == 1
    assert stream.next_full_chunk() == ChunkSpan(0, 0, CHUNK)


def test_a_stale_short_tail_is_dropped(db: Reopened) -> None:
    """A short last chunk the file has grown past (a completion cut short) is stale; it
    is dropped from LevelDB and memory, so a fuller chunk replaces it at its key."""
    stream = _started(db, size=CHUNK + 50)
    for span in stream.completion_spans():
        stream.commit_chunk(_chunk(span.index, span.offset, span.size))
    assert not stream.has_stale_tail()  # the file ends where the short chunk ends
    stream.settled[1] = (FileState(1, 2, 3, 4, 5), stream.chunks[1].xxh3_128)
    stream.observed(2 * CHUNK + 10, 8, now=1.0)
    assert stream.has_stale_tail()

    stream.drop_tail()
    assert 1 not in stream.settled
    stream = db.again(stream)
    assert [c.size for c in stream.chunks] == [CHUNK]
    assert not stream.has_stale_tail()
    assert stream.next_full_chunk() == ChunkSpan(1, CHUNK, CHUNK)


def test_a_stream_from_before_layouts_left_without_chunks_stays_fixed(db: Reopened) -> None:
    """A stream recorded before live playlists (chunks, no layout) is fixed. When a
    reopen or a stale tail leaves it no chunk while its objects stay in S3, its record
    says ``fixed``, so the fuller chunk 0 replaces ``000000`` at its key instead of a
    fragmented file's going to ``000000.m4s`` beside it. With ``--no-keep-chunks`` the
    objects are gone and the layout is decided afresh; a decided layout is kept."""
    def short_then(action: str, stream_id: str, layout: str | None = None) -> Stream:
        stream = _started(db, size=CHUNK - 20, stream_id=stream_id)
        if layout:
            stream.set_layout(layout)
        for span in stream.completion_spans():
            stream.commit_chunk(_chunk(span.index, span.offset, span.size))
        if action == "drop_tail":
            stream.observed(2 * CHUNK, 8, now=1.0)
            assert stream.has_stale_tail()
            stream.drop_tail()
        else:
            stream.complete(completed_at=3.0e9)
            stream.reopen(keep_chunks=action == "reopen")
        stream = db.again(stream)
        assert stream.chunks == []
        return stream

    for n, action in enumerate(["reopen", "drop_tail"]):
        stream = short_then(action, stream_id=f"old-0000000{n}")
        assert stream.record.extra["layout"] == "fixed"
        assert stream.keys.chunk(0).endswith("/chunks/000000") and not stream.fragmented
    assert "layout" not in short_then("reopen-without-chunks",
                                      stream_id="old-00000009").record.extra
    kept = short_then("reopen", stream_id="new-00000001", layout="fmp4")
    assert kept.record.extra["layout"] == "fmp4" and kept.keys.chunk(0).endswith(".m4s")


def test_full_chunks_are_never_a_stale_tail(db: Reopened) -> None:
    stream = _started(db, size=3 * CHUNK)
    stream.commit_chunk(_chunk(0, 0, CHUNK))
    assert not stream.has_stale_tail()  # full, however far the file has grown
    assert not _started(db, size=10, stream_id="other-00000001").has_stale_tail()


def test_forget_drops_the_lineage(db: Reopened) -> None:
    stream = _started(db, size=CHUNK)
    stream.commit_chunk(_chunk(0, 0, CHUNK))
    Stream.forget(db.store, stream.stream_id)
    db.store.close()
    db.store = CheckpointStore(db.directory)
    assert db.store.stream(stream.stream_id) is None
    assert db.store.chunks(stream.stream_id) == []
    assert db.store.current_stream_id(stream.rel_path) is None


def test_chunk_arithmetic_follows_the_chunk_list(db: Reopened) -> None:
    """Where chunks end comes from the list, so chunks of varying size need no change:
    the next chunk starts where the last committed one ends."""
    stream = _started(db, size=600)
    assert (stream.committed_bytes, stream.pending_bytes) == (0, 600)
    assert stream.next_full_chunk() == ChunkSpan(0, 0, CHUNK)
    stream.commit_chunk(_chunk(0, 0, 100))
    stream.commit_chunk(_chunk(1, 100, 250))
    assert stream.committed_bytes == 350
    assert stream.pending_bytes == 250
    assert stream.next_full_chunk() is None  # 250 bytes on disk past the chunks: not full
    stream = db.again(stream)
    assert stream.committed_bytes == 350  # the same after a restart

    stream.observed(1000, 6, now=1.0)
    assert stream.next_full_chunk() == ChunkSpan(2, 350, CHUNK)
    assert stream.completion_spans() == [ChunkSpan(2, 350, 300), ChunkSpan(3, 650, 300),
                                         ChunkSpan(4, 950, 50)]
    assert stream.span_of(stream.chunks[1]) == ChunkSpan(1, 100, 250)


def test_progress_reports_committed_bytes(db: Reopened) -> None:
    stream = _started(db, size=1000)
    stream.commit_chunk(_chunk(0, 0, 120))
    stream.observed(1000, 7, now=10.0)
    progress = stream.progress(now=14.0, timeout=30.0)
    assert (progress.bytes_on_disk, progress.bytes_uploaded, progress.chunks) == (1000, 120, 1)
    assert (progress.state, progress.idle_seconds, progress.completes_in) == (
        "growing", 4.0, 26.0)
    stream.end("source_replaced")
    assert stream.progress(now=14.0, timeout=30.0).state == "source_replaced"


def test_a_failed_write_leaves_memory_as_it_was(db: Reopened) -> None:
    """The store is written first: when it fails (here its LevelDB is closed under it),
    the transition raises StateWriteError and memory still matches LevelDB."""
    stream = _started(db, size=1000)
    stream.commit_chunk(_chunk(0, 0, CHUNK))
    stream.open_upload("upload-3")
    before_record, before_chunks = stream.record, list(stream.chunks)
    db.store.close()  # every write now fails

    attempts = [
        lambda: stream.commit_chunk(_chunk(1, CHUNK, CHUNK)),
        lambda: stream.commit_chunk(_chunk(0, 0, CHUNK, tag="ee")),
        lambda: stream.commit_parts([ChunkRecord(**{**vars(before_chunks[0]),
                                                    "part_upload": "upload-3",
                                                    "part_etag": '"x"'})]),
        lambda: stream.open_upload("upload-4"),
        stream.drop_upload,
        lambda: stream.end("source_deleted"),
        lambda: stream.complete(3.0e9),
        lambda: stream.reopen(keep_chunks=False),
        stream.drop_tail,
    ]
    for attempt in attempts:
        with pytest.raises(StateWriteError):
            attempt()
        assert stream.record == before_record
        assert stream.chunks == before_chunks
    db.store = CheckpointStore(db.directory)
    assert db.store.stream(stream.stream_id) == before_record
    assert db.store.chunks(stream.stream_id) == before_chunks
