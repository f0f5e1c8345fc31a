"""One stream (one lineage of one file): the only code that changes a stream's state.

Each transition below changes the in-memory record and LevelDB together, in one
place, so memory never runs ahead of what a restart would find: a method writes the
store first (a failed write ends the worker, ``StateWriteError``) and then memory.
What lives in memory alone is observation: the size and mtime last seen (saved with
the next transition), when the file last changed, and the backoff of failed attempts.

The stored pair (``status``, ``end_reason``) makes four states, named here::

    RECORDING --end()--> ENDING --complete()--> ENDED      (source deleted/replaced)
        |  ^                                               (forgotten, see forget())
   complete()  reopen()
        v  |
      COMPLETE
"""

from __future__ import annotations

import enum
from dataclasses import replace

from shared.keys import FRAGMENT_SUFFIX, StreamKeys
from shared.messages import StreamProgress
from shared.state.records import ChunkRecord, GroupRecord, StreamRecord, StreamStatus
from shared.state.store import CheckpointStore
from worker.planning import (
    ChunkSpan,
    aligned_chunk_limit,
    chunks_kept_on_reopen,
    completion_spans,
    next_full_chunk,
)
from worker.settled import FileState

__all__ = ["Stream", "StreamState", "keys_of"]


def _suffix(record: StreamRecord) -> str:
    return FRAGMENT_SUFFIX if record.extra.get("layout") == "fmp4" else ""


def keys_of(prefix: str, record: StreamRecord) -> StreamKeys:
    """A stream's keys: its chunk keys end in ``.m4s`` when it has a live playlist."""
    return StreamKeys(prefix, record.rel_path, record.stream_id, _suffix(record))


class StreamState(enum.Enum):
    RECORDING = "recording"  # chunks go up as the file grows; completes after the timeout
    ENDING = "ending"        # the file went away or was replaced: finalize what was uploaded
    COMPLETE = "complete"    # metadata.json written; reopened if the file grows again
    ENDED = "ended"          # completed after an early end: nothing looks at it again

    @classmethod
    def of(cls, record: StreamRecord) -> StreamState:
        if record.status is StreamStatus.ACTIVE:
            return cls.RECORDING if record.end_reason is None else cls.ENDING
        return cls.COMPLETE if record.end_reason is None else cls.ENDED

    @property
    def unfinished(self) -> bool:
        return self in (StreamState.RECORDING, StreamState.ENDING)


class Stream:
    """A stream's committed state (record, chunks) and what was last observed."""

    def __init__(self, store: CheckpointStore, record: StreamRecord,
                 chunks: list[ChunkRecord], keys: StreamKeys) -> None:
        self._store = store
        self.record = record
        self.chunks = chunks
        self.keys = keys
        # observations: memory only
        self.last_change: float | None = None  # monotonic time of the last change seen
        self.next_attempt = 0.0                # monotonic time before which no S3 work
        self.failures = 0
        self.permanent_logged = False
        self.source_error_logged = False
        # chunk index -> (the settled file's state before the chunk was read, its xxh3):
        # completion need not read it again while the file is still in that state
        self.settled: dict[int, tuple[FileState, str]] = {}

    # construction
    @classmethod
    def load(cls, store: CheckpointStore, record: StreamRecord, prefix: str) -> Stream:
        return cls(store, record, store.chunks(record.stream_id), keys_of(prefix, record))

    @classmethod
    def start(cls, store: CheckpointStore, record: StreamRecord, keys: StreamKeys) -> Stream:
        """Record a new lineage, current for its path. Unsynced: detecting a file costs
        no fsync of its own; ``make_durable`` (or the worker's once-a-second batch,
        ``CheckpointStore.make_all_durable``) syncs it before S3 hears of it."""
        store.start_stream(record, sync=False)
        return cls(store, record, [], keys)

    @staticmethod
    def source_removed(store: CheckpointStore, record: StreamRecord, reason: str | None,
                       at: float | None) -> StreamRecord:
        """COMPLETE, its file (about to be) removed by local retention: the path's next
        file is a new stream, whatever inode it gets. Recorded before the file is touched
        and cleared again (``reason`` None) if it stays."""
        removed = record.with_extra(source_removed=reason, source_removed_at=at)
        store.save_stream(removed)
        return removed

    @staticmethod
    def forget(store: CheckpointStore, stream_id: str) -> None:
        """Drop a finished lineage's checkpoint (its objects in S3 stay)."""
        store.forget_stream(stream_id)

    # reading
    @property
    def stream_id(self) -> str:
        return self.record.stream_id

    @property
    def rel_path(self) -> str:
        return self.record.rel_path

    @property
    def state(self) -> StreamState:
        return StreamState.of(self.record)

    @property
    def upload_id(self) -> str | None:
        return self.record.upload_id

    @property
    def fragmented(self) -> bool:
        """Chunks that end on fragments, with a live playlist (worker/live.py)."""
        return self.record.extra.get("layout") == "fmp4"

    @property
    def largest_chunk(self) -> int:
        """The most bytes one chunk may hold: ``chunk_size``, or for chunks that end on
        fragments (worker/live.py) up to twice that, and never past S3's 5 GiB PUT."""
        size = self.record.chunk_size
        return aligned_chunk_limit(size) if self.fragmented else size

    @property
    def committed_bytes(self) -> int:
        """Where the committed chunks end (they are contiguous from offset 0)."""
        return self.chunks[-1].end if self.chunks else 0

    @property
    def pending_bytes(self) -> int:
        """Bytes seen on disk past the committed chunks."""
        return max(0, self.record.size - self.committed_bytes)

    def span_of(self, chunk: ChunkRecord) -> ChunkSpan:
        """A committed chunk's place, to upload it again."""
        return ChunkSpan(chunk.index, chunk.offset, chunk.size)

    def next_full_chunk(self) -> ChunkSpan | None:
        return next_full_chunk(len(self.chunks), self.committed_bytes, self.record.size,
                               self.record.chunk_size)

    def completion_spans(self) -> list[ChunkSpan]:
        return completion_spans(len(self.chunks), self.committed_bytes, self.record.size,
                                self.record.chunk_size)

    def live(self, now: float, timeout: float) -> bool:
        """Live (contract §8): still recording, its file changed within the timeout.
        A file complete on disk when first seen counts as idle from the start."""
        return (self.state is StreamState.RECORDING and self.record.end_reason is None
                and self.last_change is not None and now - self.last_change < timeout)

    def progress(self, now: float, timeout: float) -> StreamProgress:
        """What this unfinished stream is doing, for ``/streams``."""
        record = self.record
        idle = now - self.last_change if self.last_change is not None else 0.0
        if record.end_reason is not None:
            state = record.end_reason
        elif self.next_attempt > now:
            state = "backoff"
        elif idle >= timeout:
            state = "finalizing"
        else:
            state = "growing"
        return StreamProgress(
            stream_id=self.stream_id, rel_path=record.rel_path, state=state,
            bytes_on_disk=record.size, bytes_uploaded=self.committed_bytes,
            chunks=len(self.chunks), started_at=record.started_at,
            last_write_at=record.last_write_at, idle_seconds=round(idle, 3),
            completes_in=round(max(0.0, timeout - idle), 3), failures=self.failures,
            priority="live" if self.live(now, timeout) else "backlog")

    # observation: memory only, saved with the next transition
    def observed(self, size: int, mtime_ns: int, now: float) -> None:
        self.record = self.record.evolve(size=size, mtime_ns=mtime_ns)
        self.last_change = now

    # transitions: LevelDB and memory together
    def make_durable(self) -> None:
        """Sync the record if it was started unsynced: before any S3 request names it."""
        self._store.make_durable(self.record)

    def commit_chunk(self, chunk: ChunkRecord) -> None:
        """S3 acknowledged chunk ``chunk.index``: a new last chunk, or a replacement of
        one whose bytes changed on disk (counted in ``chunks_reuploaded``)."""
        replacing = chunk.index < len(self.chunks)
        record = self.record
        if replacing:
            record = record.evolve(chunks_reuploaded=record.chunks_reuploaded + 1)
        self._store.commit_chunk(record, chunk)
        self.record = record
        if replacing:
            self.chunks[chunk.index] = chunk
        else:
            self.chunks.append(chunk)

    def set_layout(self, layout: str) -> None:
        """Before the first chunk: ``fmp4`` (chunks end on fragments, keys end in
        ``.m4s``) or ``fixed`` (worker/live.py)."""
        assert not self.chunks, "a layout is decided before the first chunk"
        self._save(self.record.with_extra(layout=layout))
        self.keys = replace(self.keys, chunk_suffix=_suffix(self.record))

    def fix_layout_from(self, index: int) -> None:
        """Chunks from ``index`` on are fixed-size: no fragment boundary came in time."""
        self._save(self.record.with_extra(fixed_from=index))

    def open_upload(self, upload_id: str) -> None:
        """The final object's multipart upload was created."""
        self._save(self.record.evolve(upload_id=upload_id))

    def commit_parts(self, chunks: list[ChunkRecord]) -> None:
        """Chunks copied into parts of the open upload (records with their part ETags)."""
        self._store.commit_parts(self.record, chunks)
        for chunk in chunks:
            self.chunks[chunk.index] = chunk

    def save_groups(self, group_chunks: int | None, groups: list[GroupRecord]) -> None:
        """The two-level assembly's groups changed (worker/groups.py); ``None``: the
        stream is assembled in one level again."""
        self._save(self.record.with_extra(
            group_chunks=group_chunks,
            groups=[g.to_json() for g in groups] if group_chunks is not None else None))

    def drop_upload(self) -> None:
        """The multipart upload is gone or abandoned: the next one starts afresh."""
        self._save(self.record.evolve(upload_id=None))

    def end(self, end_reason: str) -> None:
        """RECORDING -> ENDING: the file was deleted or replaced while recording."""
        self._save(self.record.evolve(end_reason=end_reason))

    def complete(self, completed_at: float, verified_ctime_ns: int = 0) -> None:
        """RECORDING -> COMPLETE, or ENDING -> ENDED: metadata.json is written.
        ``verified_ctime_ns`` is the file's ctime when completion verified it (with the
        record's inode, size and mtime: the state local retention requires unchanged)."""
        record = self.record.evolve(status=StreamStatus.COMPLETE, completed_at=completed_at,
                                    upload_id=None)
        self._save(record.with_extra(verified_ctime_ns=verified_ctime_ns or None))

    def reopen(self, keep_chunks: bool) -> None:
        """COMPLETE -> RECORDING: the file grew after completion. A short last chunk is
        replaced by a fuller one at its key; without ``keep_chunks`` every chunk was
        deleted in S3, so all are uploaded again."""
        kept = chunks_kept_on_reopen([c.size for c in self.chunks], self.record.chunk_size)
        keep = self.chunks[:kept] if keep_chunks else []
        record = self.record.evolve(status=StreamStatus.ACTIVE, completed_at=None,
                                    reopen_count=self.record.reopen_count + 1)
        if keep_chunks:
            record = self._layout_kept(record, kept)
        self._store.drop_chunks_from(record, len(keep))
        self.record = record
        self.chunks = list(keep)
        self.settled.clear()  # the file moved on: every chunk is read again at completion

    def has_stale_tail(self) -> bool:
        """Whether the last chunk is a short tail that the file has grown past: left by a
        completion that found the file moved on (or was cut short) after uploading it.
        Chunks after it would leave a gap, or a part under S3's minimum size."""
        chunks = self.chunks
        return (bool(chunks) and chunks[-1].size < self.record.chunk_size
                and self.record.size > self.committed_bytes)

    def drop_tail(self) -> None:
        """Forget the last chunk, to be replaced by a fuller one at its key (as ``reopen``
        replaces a short last chunk)."""
        index = len(self.chunks) - 1
        record = self._layout_kept(self.record, index)
        self._store.drop_chunks_from(record, index)
        self.record = record
        self.chunks.pop()
        self.settled.pop(index, None)

    def _layout_kept(self, record: StreamRecord, kept: int) -> StreamRecord:
        """A stream with chunks but no layout (recorded before live playlists) is fixed
        (worker/live.py). Left with no chunk while their objects stay in S3, it would
        have its layout decided afresh, and a fragmented file's chunk 0 would go to
        ``000000.m4s`` beside the ``000000`` it replaces: so it says ``fixed`` now."""
        if kept == 0 and self.chunks and "layout" not in record.extra:
            return record.with_extra(layout="fixed")
        return record

    def _save(self, record: StreamRecord) -> None:
        self._store.save_stream(record)
        self.record = record

    def __repr__(self) -> str:
        return f"Stream({self.stream_id}, {self.state.value}, chunks={len(self.chunks)})"
