"""Committed stream state in one worker's LevelDB (plyvel).

Keys:
  ``s/<stream_id>``              the stream's record (JSON)
  ``c/<stream_id>/<index:08d>``  one committed chunk (JSON)
  ``p/<relative path>``          the stream id of the path's current lineage

Every change that must survive a crash is one synchronous write batch, with one
exception: a new lineage is written without a sync, and synced by the tracker within
a second, all new ones in one batch (``make_all_durable``), and in any case before the
first S3 request that names it (``make_durable``). A killed worker keeps it either way
(LevelDB hands every write to the OS at once, and turns the log it recovers at open
into a synced table); a power loss within that second loses a stream no S3 object
names yet, which is detected again under a new id.
"""

from __future__ import annotations

import enum
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import plyvel

from shared import metrics
from shared.routing import path_bytes
from worker.durability import state_write

__all__ = ["StreamStatus", "ChunkRecord", "StreamRecord", "CheckpointStore"]


class StreamStatus(enum.Enum):
    ACTIVE = "active"            # seen, not finalized (growing, or reopened)
    COMPLETE = "complete"        # metadata.json written


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk S3 acknowledged: its place in the file and the hash of its bytes; and,
    once copied, the ETag of its part in the multipart upload ``part_upload``."""

    index: int
    offset: int
    size: int
    xxh3_128: str
    uploaded_at: float
    part_upload: str | None = None
    part_etag: str | None = None

    def to_json(self) -> bytes:
        return json.dumps(vars(self)).encode()  # its fields are all JSON scalars

    def same_bytes(self, other: ChunkRecord) -> bool:
        """The same upload of the same bytes (whatever was copied from it since)."""
        return (self.index, self.size, self.xxh3_128, self.uploaded_at) == (
            other.index, other.size, other.xxh3_128, other.uploaded_at)


@dataclass(frozen=True)
class StreamRecord:
    """One lineage of one file. ``end_reason`` is set when the source went away
    (``source_deleted``) or was replaced/truncated (``source_replaced``): the stream
    is then finalized from what was uploaded. ``upload_id`` is the multipart upload
    of the final object that chunks are being copied into, until it is completed."""

    stream_id: str
    rel_path: str
    dev: int
    ino: int
    chunk_size: int
    started_at: float
    size: int = 0
    mtime_ns: int = 0
    status: StreamStatus = StreamStatus.ACTIVE
    end_reason: str | None = None
    completed_at: float | None = None
    reopen_count: int = 0
    chunks_reuploaded: int = 0
    upload_id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def last_write_at(self) -> float:
        return self.mtime_ns / 1e9

    def to_json(self) -> bytes:
        data = dict(vars(self))  # not asdict(): it deep-copies, on every chunk commit
        data["status"] = self.status.value
        return json.dumps(data).encode()  # ASCII escapes keep undecodable names

    @classmethod
    def from_json(cls, raw: bytes) -> StreamRecord:
        data = json.loads(raw)
        data["status"] = StreamStatus(data["status"])
        return cls(**data)

    def evolve(self, **changes: Any) -> StreamRecord:
        return replace(self, **changes)


def _stream_key(stream_id: str) -> bytes:
    return b"s/" + stream_id.encode()


def _chunk_prefix(stream_id: str) -> bytes:
    return b"c/" + stream_id.encode() + b"/"


def _chunk_key(stream_id: str, index: int) -> bytes:
    return _chunk_prefix(stream_id) + b"%08d" % index


def _path_key(rel_path: str) -> bytes:
    return b"p/" + path_bytes(rel_path)


@contextmanager
def _timed() -> Iterator[None]:
    """A synchronous write: timed, and fatal to the worker if it fails."""
    started = time.perf_counter()
    with state_write("checkpoint write"):
        yield
    metrics.CHECKPOINT_WRITE_SECONDS.observe(time.perf_counter() - started)


class CheckpointStore:
    """A worker's LevelDB. Only its owner opens it (LevelDB holds a lock file)."""

    def __init__(self, directory: Path, *, create: bool = True) -> None:
        if create:
            directory.mkdir(parents=True, exist_ok=True)
        self._db = plyvel.DB(str(directory / "checkpoints.ldb"), create_if_missing=create)
        self._unsynced: set[str] = set()  # lineages started without a sync

    def close(self) -> None:
        self._db.close()

    # reading
    def stream(self, stream_id: str) -> StreamRecord | None:
        raw = self._db.get(_stream_key(stream_id))
        return StreamRecord.from_json(raw) if raw is not None else None

    def current_stream_id(self, rel_path: str) -> str | None:
        raw = self._db.get(_path_key(rel_path))
        return raw.decode() if raw is not None else None

    def chunks(self, stream_id: str) -> list[ChunkRecord]:
        """Committed chunks, in index order."""
        return [ChunkRecord(**json.loads(v))
                for _, v in self._db.iterator(prefix=_chunk_prefix(stream_id))]

    def streams(self) -> Iterator[StreamRecord]:
        for _, raw in self._db.iterator(prefix=b"s/"):
            yield StreamRecord.from_json(raw)

    # writing: each method is one synchronous batch
    def start_stream(self, record: StreamRecord, *, sync: bool = True) -> None:
        """Record a new lineage and make it the path's current one. Unsynced, the worker
        reacts to a new file without an fsync, which under the write-back of recordings
        waited hundreds of ms (measured); ``make_durable`` must then precede any S3
        request that names the stream."""
        with _timed(), self._db.write_batch(sync=sync) as batch:
            batch.put(_stream_key(record.stream_id), record.to_json())
            batch.put(_path_key(record.rel_path), record.stream_id.encode())
        if sync:
            self._unsynced.discard(record.stream_id)
        else:
            self._unsynced.add(record.stream_id)

    def make_durable(self, record: StreamRecord) -> None:
        """Sync a lineage started unsynced; nothing to do for any other."""
        if record.stream_id in self._unsynced:
            self._sync_started([record])

    def make_all_durable(self) -> None:
        """Sync every lineage started unsynced, in one batch: one fsync for all the
        files that appeared since the last call."""
        if self._unsynced:
            self._sync_started([r for sid in self._unsynced
                                if (r := self.stream(sid)) is not None])
            self._unsynced.clear()

    def _sync_started(self, records: list[StreamRecord]) -> None:
        """Rewrite these lineages in one synced batch: each record, and its path entry
        while it is still the path's current one (never pointing a path back)."""
        with _timed(), self._db.write_batch(sync=True) as batch:
            for record in records:
                batch.put(_stream_key(record.stream_id), record.to_json())
                if self.current_stream_id(record.rel_path) == record.stream_id:
                    batch.put(_path_key(record.rel_path), record.stream_id.encode())
        self._unsynced.difference_update(r.stream_id for r in records)

    def is_durable(self, stream_id: str) -> bool:
        return stream_id not in self._unsynced

    def save_stream(self, record: StreamRecord) -> None:
        with _timed():
            self._db.put(_stream_key(record.stream_id), record.to_json(), sync=True)

    def commit_chunk(self, record: StreamRecord, chunk: ChunkRecord) -> None:
        """Record an acknowledged chunk together with the stream's new state."""
        self._put_chunks(record, [chunk], sync=True)

    def commit_parts(self, record: StreamRecord, chunks: list[ChunkRecord]) -> None:
        """Record part copies (chunk records with their part ETags) in one batch. Not
        synced: it survives a crash of the process (the OS holds it), and what a power
        loss takes is only copied again, an idempotent server-side request."""
        self._put_chunks(record, chunks, sync=False)

    def _put_chunks(self, record: StreamRecord, chunks: list[ChunkRecord], *,
                    sync: bool) -> None:
        with _timed(), self._db.write_batch(sync=sync) as batch:
            for chunk in chunks:
                batch.put(_chunk_key(record.stream_id, chunk.index), chunk.to_json())
            batch.put(_stream_key(record.stream_id), record.to_json())

    def drop_chunks_from(self, record: StreamRecord, index: int) -> None:
        """Forget chunks ``index..`` (a partial last chunk that a reopen replaces)."""
        with _timed(), self._db.write_batch(sync=True) as batch:
            for key, _ in self._db.iterator(prefix=_chunk_prefix(record.stream_id)):
                if int(key.rsplit(b"/", 1)[1]) >= index:
                    batch.delete(key)
            batch.put(_stream_key(record.stream_id), record.to_json())

    def forget_stream(self, stream_id: str) -> None:
        """Remove a finished, superseded lineage."""
        record = self.stream(stream_id)
        with _timed(), self._db.write_batch(sync=True) as batch:
            for key, _ in self._db.iterator(prefix=_chunk_prefix(stream_id)):
                batch.delete(key)
            batch.delete(_stream_key(stream_id))
            if record is not None and self.current_stream_id(record.rel_path) == stream_id:
                batch.delete(_path_key(record.rel_path))
        self._unsynced.discard(stream_id)

    # migration between workers
    def export_path(self, rel_path: str) -> list[tuple[bytes, bytes]]:
        """Every key/value belonging to ``rel_path`` (all its lineages)."""
        items: list[tuple[bytes, bytes]] = []
        for record in self.streams():
            if record.rel_path == rel_path:
                items.append((_stream_key(record.stream_id), record.to_json()))
                items.extend(self._db.iterator(prefix=_chunk_prefix(record.stream_id)))
        current = self._db.get(_path_key(rel_path))
        if current is not None:
            items.append((_path_key(rel_path), current))
        return items

    def import_items(self, items: list[tuple[bytes, bytes]]) -> None:
        with _timed(), self._db.write_batch(sync=True) as batch:
            for key, value in items:
                batch.put(key, value)

    def delete_items(self, keys: list[bytes]) -> None:
        with _timed(), self._db.write_batch(sync=True) as batch:
            for key in keys:
                batch.delete(key)

    def rel_paths(self) -> set[str]:
        """Paths with any state here."""
        return {r.rel_path for r in self.streams()}
