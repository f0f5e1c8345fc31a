"""Committed stream state in one worker's LevelDB (plyvel); keys and records are in
``shared.state.records``. Only ``worker.stream`` changes a stream's state through it;
migration and ``processor inspect`` use its bulk and read methods.

Every change that must survive a crash is one synchronous write batch, with one
exception: a new lineage is written without a sync, and synced by the tracker within
a second, all new ones in one batch (``make_all_durable``), and in any case before the
first S3 request that names it (``make_durable``). A killed worker keeps it either way
(LevelDB hands every write to the OS at once, and turns the log it recovers at open
into a synced table); a power loss within that second loses a stream no S3 object
names yet, which is detected again under a new id.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import plyvel

from shared import metrics
from shared.state.durable import fsync_dir, make_dirs, write_file
from shared.state.errors import state_write
from shared.state.layout import WorkerStateDir
from shared.state.records import (
    STREAM_PREFIX,
    ChunkRecord,
    StreamRecord,
    chunk_index_of,
    chunk_key,
    chunk_prefix,
    path_key,
    stream_key,
)

__all__ = ["CheckpointStore"]


def _create_durably(directory: WorkerStateDir) -> None:
    """A new, empty LevelDB at ``directory.checkpoints`` that survives a power cut.

    LevelDB 1.22 (in plyvel's wheels) closes a new database's first MANIFEST without
    an fsync, and renames CURRENT into place without an fsync of the directory. Cut
    the power after the next MANIFEST's directory sync and CURRENT names an empty
    MANIFEST: "Corruption: no meta-nextfile entry", a worker that cannot start
    (tests/faults/test_power_cut.py). So the database is made under another name,
    closed, its directory synced, and only then renamed into place: a cut before the
    rename leaves no database (made again next start), after it a consistent one."""
    staging = directory.checkpoints_staging
    shutil.rmtree(staging, ignore_errors=True)  # what a cut left of an earlier try
    plyvel.DB(str(staging), create_if_missing=True, error_if_exists=True).close()
    fsync_dir(staging)
    os.rename(staging, directory.checkpoints)
    fsync_dir(directory.path)


class CheckpointStore:
    """A worker's LevelDB. Only its owner opens it (LevelDB holds a lock file)."""

    def __init__(self, directory: WorkerStateDir, *, create: bool = True) -> None:
        if create:
            with state_write(f"cannot create {directory.path}"):
                make_dirs(directory.path)
        self.fresh = create and not directory.has_checkpoints()  # made from nothing now
        self._born = directory.born
        if self.fresh:  # first, so that no LevelDB exists without it
            with state_write(f"cannot write {self._born.name}"):
                write_file(self._born, repr(time.time()))
            with state_write(f"cannot create {directory.checkpoints.name}"):
                _create_durably(directory)
        self._db = plyvel.DB(str(directory.checkpoints), create_if_missing=create)
        self._checkpoints = str(directory.checkpoints)
        self._logs_synced: set[str] = set()  # LevelDB's log files whose names are durable
        if create:
            with state_write(f"cannot sync {directory.path}"):
                # the CURRENT this open renamed into place; and checkpoints.ldb's own
                # entry, which a kill right after _create_durably's rename left unsynced
                self._sync_entries()
                fsync_dir(directory.path)
        self._unsynced: set[str] = set()  # lineages started without a sync

    @contextmanager
    def _timed(self, sync: bool = True) -> Iterator[None]:
        """A write: timed, and fatal to the worker if it fails. A synced one is
        durable only once its log file's name is: see ``_sync_entries``."""
        started = time.perf_counter()
        with state_write("checkpoint write"):
            yield
            if sync and self._new_log():
                self._sync_entries()
        metrics.CHECKPOINT_WRITE_SECONDS.observe(time.perf_counter() - started)

    def _logs(self) -> set[str]:
        return {n for n in os.listdir(self._checkpoints) if n.endswith(".log")}

    def _new_log(self) -> bool:
        """Whether LevelDB writes to a log file whose name is not durable yet."""
        return not self._logs() <= self._logs_synced

    def _sync_entries(self) -> None:
        """fsync the LevelDB directory. LevelDB 1.22 syncs it only with its MANIFEST:
        when a full memtable moves writes to a new log file, synced writes land in a
        file whose name is durable only after the compaction that follows. A power cut
        in between took 20-29 acknowledged writes in most of 8 runs of a test here. So
        a synced write that finds a log file not seen at the last sync (one listing of
        a small directory, ~10 µs) is followed by this fsync: about once per 4 MiB
        written. Names, not the directory's mtime: a coarse clock can leave it equal."""
        logs = self._logs()
        fsync_dir(Path(self._checkpoints))
        self._logs_synced = logs

    @property
    def born_at(self) -> float:
        """When this state dir was made; 0 for one made before this was recorded."""
        try:
            return float(self._born.read_text())
        except (OSError, ValueError):
            return 0.0

    def close(self) -> None:
        self._db.close()

    # reading
    def stream(self, stream_id: str) -> StreamRecord | None:
        raw = self._db.get(stream_key(stream_id))
        return StreamRecord.from_json(raw) if raw is not None else None

    def current_stream_id(self, rel_path: str) -> str | None:
        raw = self._db.get(path_key(rel_path))
        return raw.decode() if raw is not None else None

    def chunks(self, stream_id: str) -> list[ChunkRecord]:
        """Committed chunks, in index order."""
        return [ChunkRecord.from_json(v)
                for _, v in self._db.iterator(prefix=chunk_prefix(stream_id))]

    def streams(self) -> Iterator[StreamRecord]:
        for _, raw in self._db.iterator(prefix=STREAM_PREFIX):
            yield StreamRecord.from_json(raw)

    # writing: each method is one synchronous batch
    def start_stream(self, record: StreamRecord, *, sync: bool = True) -> None:
        """Record a new lineage and make it the path's current one. Unsynced, the worker
        reacts to a new file without an fsync, which under the write-back of recordings
        waited hundreds of ms (measured); ``make_durable`` must then precede any S3
        request that names the stream."""
        with self._timed(sync), self._db.write_batch(sync=sync) as batch:
            batch.put(stream_key(record.stream_id), record.to_json())
            batch.put(path_key(record.rel_path), record.stream_id.encode())
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
        with self._timed(), self._db.write_batch(sync=True) as batch:
            for record in records:
                batch.put(stream_key(record.stream_id), record.to_json())
                if self.current_stream_id(record.rel_path) == record.stream_id:
                    batch.put(path_key(record.rel_path), record.stream_id.encode())
        self._unsynced.difference_update(r.stream_id for r in records)

    def is_durable(self, stream_id: str) -> bool:
        return stream_id not in self._unsynced

    def recover_stream(self, record: StreamRecord, chunks: list[ChunkRecord]) -> None:
        """Record a stream found again in S3 (worker/recovery.py) as the path's current
        lineage, with its verified chunks, in one synced batch."""
        with self._timed(), self._db.write_batch(sync=True) as batch:
            batch.put(stream_key(record.stream_id), record.to_json())
            batch.put(path_key(record.rel_path), record.stream_id.encode())
            for chunk in chunks:
                batch.put(chunk_key(record.stream_id, chunk.index), chunk.to_json())

    def save_stream(self, record: StreamRecord) -> None:
        with self._timed():
            self._db.put(stream_key(record.stream_id), record.to_json(), sync=True)

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
        with self._timed(sync), self._db.write_batch(sync=sync) as batch:
            for chunk in chunks:
                batch.put(chunk_key(record.stream_id, chunk.index), chunk.to_json())
            batch.put(stream_key(record.stream_id), record.to_json())

    def drop_chunks_from(self, record: StreamRecord, index: int) -> None:
        """Forget chunks ``index..`` (a partial last chunk that a reopen replaces)."""
        with self._timed(), self._db.write_batch(sync=True) as batch:
            for key, _ in self._db.iterator(prefix=chunk_prefix(record.stream_id)):
                if chunk_index_of(key) >= index:
                    batch.delete(key)
            batch.put(stream_key(record.stream_id), record.to_json())

    def forget_stream(self, stream_id: str) -> None:
        """Remove a finished, superseded lineage."""
        record = self.stream(stream_id)
        with self._timed(), self._db.write_batch(sync=True) as batch:
            for key, _ in self._db.iterator(prefix=chunk_prefix(stream_id)):
                batch.delete(key)
            batch.delete(stream_key(stream_id))
            if record is not None and self.current_stream_id(record.rel_path) == stream_id:
                batch.delete(path_key(record.rel_path))
        self._unsynced.discard(stream_id)

    # migration between workers
    def export_path(self, rel_path: str) -> list[tuple[bytes, bytes]]:
        """Every key/value belonging to ``rel_path`` (all its lineages)."""
        items: list[tuple[bytes, bytes]] = []
        for record in self.streams():
            if record.rel_path == rel_path:
                items.append((stream_key(record.stream_id), record.to_json()))
                items.extend(self._db.iterator(prefix=chunk_prefix(record.stream_id)))
        current = self._db.get(path_key(rel_path))
        if current is not None:
            items.append((path_key(rel_path), current))
        return items

    def import_items(self, items: list[tuple[bytes, bytes]]) -> None:
        with self._timed(), self._db.write_batch(sync=True) as batch:
            for key, value in items:
                batch.put(key, value)

    def delete_items(self, keys: list[bytes]) -> None:
        with self._timed(), self._db.write_batch(sync=True) as batch:
            for key in keys:
                batch.delete(key)

    def rel_paths(self) -> set[str]:
        """Paths with any state here."""
        return {r.rel_path for r in self.streams()}
