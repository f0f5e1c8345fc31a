"""What a worker does to a stream: upload a chunk, finalize, reconcile an intent.

Each S3 side effect is bracketed by the write-ahead log: intent (fsynced), the
call, the checkpoint commit, then the done mark. Failures raise ``StorageError``
or ``SourceError``; the tracker backs off and calls again, so every method here
may be re-run from the start after a failure or a crash.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import xxhash

from shared import metrics
from shared.paths import lstat_beneath, open_beneath
from shared.s3 import ErrorKind, StorageError
from shared.settings import Settings
from shared.timefmt import now
from worker.assembly import BACKGROUND_IN_FLIGHT, PartCopier
from worker.checkpoint import CheckpointStore, ChunkRecord, StreamStatus
from worker.media import MediaInfo
from worker.metadata import build_metadata
from worker.planning import MAX_PARTS, completion_spans
from worker.prober import Prober
from worker.runtime import StreamRuntime
from worker.settled import FileState, SettledFiles
from worker.storage import Storage, UploadLost
from worker.wal import Intent, WriteAheadLog

__all__ = ["Uploader", "SourceError", "SourceChanged"]


VERIFY_PIECE = 1 << 20


class _PhaseClock:
    """Seconds spent in each phase of a completion, for the ``stream_completed`` line."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        moment = time.monotonic()
        self.laps[phase] = round(moment - self._last, 4)
        self._last = moment


class SourceError(Exception):
    """The source file cannot be read now (e.g. permissions); retried slowly."""

    kind = ErrorKind.PERMANENT


class SourceChanged(Exception):
    """The file changed under us (grew, shrank, replaced): observe again, no failure."""


def _open_source(watch_dir: Path, rel_path: str, ino: int) -> tuple[int, os.stat_result]:
    """A descriptor for the stream's file (inode ``ino``), reached through no symlink,
    and its stat at opening."""
    try:
        fd = open_beneath(watch_dir, rel_path)
    except FileNotFoundError as exc:
        raise SourceChanged("file vanished") from exc
    except OSError as exc:
        raise SourceError(f"cannot open source: {exc.strerror}") from exc
    st = os.fstat(fd)
    if st.st_ino != ino or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise SourceChanged("file replaced")
    return fd, st


def _read_range(watch_dir: Path, rel_path: str, ino: int, offset: int, size: int,
                into: bytearray | None = None) -> tuple[bytes | bytearray, os.stat_result]:
    """Read ``size`` bytes at ``offset`` of the file with inode ``ino``, never via a symlink;
    into the reusable buffer ``into`` when given (its length must be ``size``). Also the
    file's stat taken before the read."""
    fd, st = _open_source(watch_dir, rel_path, ino)
    try:
        if into is None:
            data: bytes | bytearray = os.pread(fd, size, offset)
            read = len(data)
        else:
            data, read = into, os.preadv(fd, [into], offset)
    except OSError as exc:
        raise SourceError(f"cannot read source: {exc.strerror}") from exc
    finally:
        os.close(fd)
    if read != size:
        raise SourceChanged("file shrank")
    return data, st


class Uploader:
    """Performs the S3 work of one worker, one blocking call at a time."""

    def __init__(self, settings: Settings, store: CheckpointStore, wal: WriteAheadLog,
                 storage: Storage, log: Any, pulse: Callable[[], None],
                 settled: SettledFiles | None = None) -> None:
        self.settings = settings
        self.store = store
        self.wal = wal
        self.storage = storage
        self.log = log
        self.pulse = pulse
        self._open: dict[tuple[str, str, int], Intent] = {}
        self._buffer = bytearray()
        self._verify_buffer = bytearray(VERIFY_PIECE)
        self.parts = PartCopier(storage, store, log)
        self.prober = Prober(pulse)
        self.settled = settled if settled is not None else SettledFiles(
            enabled=settings.trust_settled)

    def close(self) -> None:
        self.parts.close()
        self.prober.close()

    def reserve_chunk_buffer(self, size: int) -> None:
        """Allocate the full-chunk buffer ahead of the first full chunk (the tracker asks
        once half a chunk is on disk): bytearray() zeroes it, so its 2,560 page faults
        (10–66 ms on a loaded VM) land while the chunk is still being written, not between
        its last byte and its upload. Files under half a chunk never allocate it."""
        if len(self._buffer) != size:
            self._buffer = bytearray(size)

    def _read_chunk(self, rt: StreamRuntime, offset: int,
                    size: int) -> tuple[bytes | bytearray, os.stat_result]:
        """A chunk's bytes, and the file's stat before they were read. Full chunks are read
        into one reused buffer: allocating (and page-faulting) 10 MiB per chunk cost a
        quarter of the worker's CPU. The buffer is valid until the next read; boto3 sends
        a bytearray as it is."""
        record = rt.record
        if size != record.chunk_size:
            return _read_range(self.settings.watch_dir, record.rel_path, record.ino, offset, size)
        self.reserve_chunk_buffer(size)
        return _read_range(self.settings.watch_dir, record.rel_path, record.ino, offset, size,
                           self._buffer)

    def _intend(self, op: str, stream_id: str, index: int, durable: bool = True,
                **fields: Any) -> Intent:
        """Log an intent; one left open by a failed attempt of the same effect is
        superseded by this retry (the retry re-does it), so pending intents stay few."""
        slot = (stream_id, op, index)
        previous = self._open.pop(slot, None)
        if previous is not None:
            self.wal.done(previous)
        intent = self.wal.intend(op, durable=durable, stream_id=stream_id, index=index,
                                 **fields)
        self._open[slot] = intent
        return intent

    def _done(self, intent: Intent) -> None:
        self._open.pop((intent.stream_id, intent.op, int(intent.fields.get("index", -1))), None)
        self.wal.done(intent)

    # chunks
    def upload_chunk(self, rt: StreamRuntime, index: int, size: int) -> None:
        """Upload chunk ``index`` (new, or a replacement of one whose bytes changed)."""
        record = rt.record
        self.store.make_durable(record)  # the key below names the stream
        offset = index * record.chunk_size
        data, before = self._read_chunk(rt, offset, size)
        digest = xxhash.xxh3_128_hexdigest(data)
        key = rt.keys.chunk(index)
        # A new chunk's intent is not fsynced: a killed worker still finds it and settles
        # the chunk with a HEAD; after a power loss that drops it, the chunk in flight is
        # sent again (same key, same bytes), which the contract allows. Its record (below)
        # is synced. One fsync less per chunk, on the path to the chunk being visible.
        # A re-upload's intent is: its record already names other bytes, and if the file
        # is gone after the loss, only the intent can tell that S3 holds the new ones.
        intent = self._intend("put_chunk", record.stream_id, index,
                              durable=index < len(rt.chunks),
                              rel_path=record.rel_path, offset=offset, size=size,
                              xxh3_128=digest, key=key)
        started = time.monotonic()
        self.storage.put_chunk(key, data, digest)
        elapsed = time.monotonic() - started
        self._commit_chunk(rt, ChunkRecord(index, offset, size, digest, now()))
        self._done(intent)
        proof = self.settled.proof(before)
        if proof is not None:
            rt.settled[index] = (proof, digest)
        else:
            rt.settled.pop(index, None)
        metrics.CHUNKS_UPLOADED.inc()
        metrics.UPLOADED_BYTES.inc(size)
        metrics.CHUNK_UPLOAD_SECONDS.observe(elapsed)
        self.log.info("chunk_uploaded", stream_id=record.stream_id, index=index, offset=offset,
                      size=size, seconds=round(elapsed, 4))

    def _commit_chunk(self, rt: StreamRuntime, chunk: ChunkRecord) -> None:
        replacing = chunk.index < len(rt.chunks)
        if replacing:
            rt.record = rt.record.evolve(chunks_reuploaded=rt.record.chunks_reuploaded + 1)
        self.store.commit_chunk(rt.record, chunk)
        if replacing:
            rt.chunks[chunk.index] = chunk
        else:
            rt.chunks.append(chunk)

    # recovery
    def reconcile(self, rt: StreamRuntime | None, intent: Intent) -> None:
        """Settle an intent found pending after a crash with what S3 holds."""
        if intent.op == "put_chunk" and rt is not None:
            index, size = int(intent.fields["index"]), int(intent.fields["size"])
            digest = str(intent.fields["xxh3_128"])
            landed = self.storage.chunk_hash(str(intent.fields["key"])) == (size, digest)
            recorded = index < len(rt.chunks) and rt.chunks[index].xxh3_128 == digest
            if landed and not recorded and index <= len(rt.chunks):
                self._commit_chunk(rt, ChunkRecord(index, int(intent.fields["offset"]), size,
                                                   digest, now()))
                self.log.info("chunk_recovered", stream_id=rt.stream_id, index=index)
        elif intent.op in ("open_upload", "assemble"):
            # an upload opened but never recorded, or left by an older version: abort
            # it; the one the stream record holds is resumed
            keep = rt.record.upload_id if rt is not None else None
            aborted = self.storage.abort_uploads(str(intent.fields["key"]), keep=keep)
            if aborted:
                self.log.info("multipart_aborted", stream_id=intent.stream_id, uploads=aborted)
        self.wal.done(intent)

    # completion
    def finalize(self, rt: StreamRuntime) -> None:
        """Tail, verify, assemble, probe, write metadata.json; raises SourceChanged when
        the file moved on, which simply sends the stream back to being watched."""
        record = rt.record
        self.store.make_durable(record)  # a stream with no chunk gets its first S3 object here
        clock = _PhaseClock()
        if record.end_reason is None:
            self._check_unchanged(rt)
            for span in completion_spans(len(rt.chunks), record.size, record.chunk_size):
                self.upload_chunk(rt, span.index, span.size)
                self.pulse()
            clock.lap("tail")
            verified = self._verify(rt)
            self._check_unchanged(rt)
            clock.lap("verify")
            media = self._probe(rt)
            clock.lap("probe")
            status = "complete"
        else:
            media = MediaInfo(None, None, None, None, None,
                              error=f"{record.end_reason.replace('_', ' ')} before completion")
            status = record.end_reason
            verified = {}
        object_key: str | None = rt.keys.final_object
        copied_late = 0
        if len(rt.chunks) > MAX_PARTS:
            object_key = None
            self._abandon_upload(rt)
            self.log.error("assembly_impossible", stream_id=record.stream_id,
                           chunks=len(rt.chunks), max_parts=MAX_PARTS)
        else:
            copied_late = self._assemble(rt, clock)
        clock.lap("check")
        completed_at = now()
        rt.record = record = rt.record.evolve(status=StreamStatus.COMPLETE,
                                              completed_at=completed_at)
        document = build_metadata(record, rt.chunks, rt.keys, media, status=status,
                                  completed_at=completed_at, object_key=object_key)
        self.storage.put_json(rt.keys.metadata, document)
        self.store.save_stream(record)
        clock.lap("metadata")
        if not self.settings.keep_chunks and object_key is not None:  # else they are the data
            self.storage.delete_keys([rt.keys.chunk(c.index) for c in rt.chunks])
        self.parts.forget(record.stream_id)
        metrics.STREAMS_COMPLETED.labels(status=status).inc()
        self.log.info("stream_completed", stream_id=record.stream_id, rel_path=record.rel_path,
                      status=status, total_size_bytes=document["total_size_bytes"],
                      chunks=len(rt.chunks), chunks_reuploaded=record.chunks_reuploaded,
                      media_duration_seconds=document["media_duration_seconds"],
                      media_error=document.get("media_error"), reopen_count=record.reopen_count,
                      parts_copied_at_completion=copied_late, chunks_verified=verified,
                      seconds=clock.laps)
        if document.get("media_error"):
            metrics.MEDIA_ERRORS.inc()

    def _probe(self, rt: StreamRuntime) -> MediaInfo:
        """Probe (in the helper process, worker/prober.py) through a descriptor opened
        beneath the watch dir, so PyAV reads exactly the verified file, nothing outside."""
        fd, _ = _open_source(self.settings.watch_dir, rt.record.rel_path, rt.record.ino)
        try:
            return self.prober.probe(fd)
        finally:
            os.close(fd)

    def _check_unchanged(self, rt: StreamRuntime) -> None:
        try:
            st = lstat_beneath(self.settings.watch_dir, rt.record.rel_path)
        except FileNotFoundError as exc:
            raise SourceChanged("file vanished") from exc
        if (st.st_ino, st.st_size, st.st_mtime_ns) != (rt.record.ino, rt.record.size,
                                                       rt.record.mtime_ns):
            raise SourceChanged("file changed during finalization")

    def _verify(self, rt: StreamRuntime) -> dict[str, int]:
        """Check every chunk against the file; re-upload those whose bytes changed since
        their upload (MP4 muxers patch headers after the fact). A chunk read from a file
        that had settled, and that is still in that state, is known unchanged without a
        read (worker/settled.py); every other chunk is read and hashed again. Returns how
        many chunks were checked each way."""
        fd, st = _open_source(self.settings.watch_dir, rt.record.rel_path, rt.record.ino)
        now_state = FileState.of(st)
        counts = {"read": 0, "settled": 0}
        try:
            for chunk in list(rt.chunks):
                if rt.settled.get(chunk.index) == (now_state, chunk.xxh3_128):
                    counts["settled"] += 1
                    continue
                counts["read"] += 1
                if self._hash_range(fd, chunk.offset, chunk.size) != chunk.xxh3_128:
                    self.log.info("chunk_changed_on_disk", stream_id=rt.stream_id,
                                  index=chunk.index)
                    self.upload_chunk(rt, chunk.index, chunk.size)
                    metrics.CHUNKS_REUPLOADED.inc()
                self.pulse()
        finally:
            os.close(fd)
        for by, count in counts.items():
            metrics.CHUNKS_VERIFIED.labels(by=by).inc(count)
        return counts

    def _hash_range(self, fd: int, offset: int, size: int) -> str:
        """xxh3-128 of the bytes at ``offset`` of the open file ``fd``, read 1 MiB at a
        time into one small buffer that stays in the CPU cache: 0.15 CPU-s per GiB against
        0.20 for reading whole 10 MiB chunks and hashing them from memory (measured here)."""
        view = memoryview(self._verify_buffer)
        hasher = xxhash.xxh3_128()
        try:
            done = 0
            while done < size:
                piece = view[:min(len(view), size - done)]
                read = os.preadv(fd, [piece], offset + done)
                if read == 0:
                    raise SourceChanged("file shrank")
                hasher.update(piece[:read])
                done += read
        except OSError as exc:
            raise SourceError(f"cannot read source: {exc.strerror}") from exc
        finally:
            view.release()
        return hasher.hexdigest()

    # assembly (see worker/assembly.py)
    def copy_ahead(self, runtimes: dict[str, StreamRuntime], now: float) -> bool:
        """Between uploads: record finished part copies and start new ones for streams
        still being recorded, so that completion finds its parts already copied."""
        did = self.parts.harvest(runtimes) > 0
        for rt in list(runtimes.values()):
            if self.parts.in_flight() >= BACKGROUND_IN_FLIGHT:
                break
            record = rt.record
            if (record.status is not StreamStatus.ACTIVE or record.end_reason is not None
                    or not rt.chunks or len(rt.chunks) > MAX_PARTS or rt.next_attempt > now
                    or self.parts.backing_off(rt.stream_id)):
                continue
            try:
                if record.upload_id is None:
                    self._open_upload(rt)
                did |= self.parts.submit(rt, limit=BACKGROUND_IN_FLIGHT, background=True) > 0
            except StorageError as exc:
                self.parts.failed(rt.stream_id, exc)
        return did

    def _open_upload(self, rt: StreamRuntime) -> None:
        key = rt.keys.final_object
        intent = self._intend("open_upload", rt.stream_id, -1, rel_path=rt.record.rel_path,
                              key=key)
        # no upload is recorded, so any of this key is a leftover the log could not name
        # (its intent lost with a damaged log tail): abort it rather than leave it billed
        aborted = self.storage.abort_uploads(key)
        if aborted:
            self.log.info("multipart_aborted", stream_id=rt.stream_id, uploads=aborted)
        upload_id = self.storage.create_upload(key)
        rt.record = rt.record.evolve(upload_id=upload_id)
        self.store.save_stream(rt.record)
        self._done(intent)
        self.log.info("multipart_started", stream_id=rt.stream_id, chunks=len(rt.chunks))

    def _abandon_upload(self, rt: StreamRuntime) -> None:
        upload_id = rt.record.upload_id
        if upload_id is not None:
            self.storage.abort_upload(rt.keys.final_object, upload_id)
            rt.record = rt.record.evolve(upload_id=None)
            self.store.save_stream(rt.record)

    def _assemble(self, rt: StreamRuntime, clock: _PhaseClock) -> int:
        """Complete the stream's multipart upload (copying the parts still missing), or
        for a stream of at most one chunk and no upload, one plain request. Returns how
        many part copies were left for now (the rest were made while recording)."""
        key = rt.keys.final_object
        copied = 0
        if rt.record.upload_id is None and len(rt.chunks) <= 1:
            intent = self._intend("assemble", rt.stream_id, -1, rel_path=rt.record.rel_path,
                                  key=key)
            self.storage.abort_uploads(key)  # leftovers of an attempt cut short
            if rt.chunks:
                self.storage.copy_object(key, rt.keys.chunk(0))
            else:
                self.storage.put_empty(key)
        else:
            for attempt in (1, 2):  # a lost upload is replaced once, at once
                if rt.record.upload_id is None:
                    self._open_upload(rt)
                try:
                    copied = self.parts.finish(rt, self.pulse)
                    break
                except UploadLost:
                    if attempt == 2:
                        raise
            upload_id = rt.record.upload_id
            assert upload_id is not None
            clock.lap("copy")
            intent = self._intend("assemble", rt.stream_id, -1, rel_path=rt.record.rel_path,
                                  key=key)
            try:
                self.storage.complete_upload(key, upload_id,
                                             [str(c.part_etag) for c in rt.chunks])
            except UploadLost as exc:
                self.parts.lose(rt, exc)
                raise
            except StorageError as exc:
                # Ceph RGW answers a complete of an aborted upload with 500 ("completion
                # already in progress"), not NoSuchUpload: ask, or it is retried forever
                if self.storage.upload_exists(key, upload_id) is False:
                    self.parts.lose(rt, exc)
                raise
            rt.record = rt.record.evolve(upload_id=None)  # saved with the completion
            clock.lap("complete")
        size = self.storage.object_size(key)
        if size != rt.committed_bytes:
            raise StorageError("assemble", ErrorKind.TRANSIENT,
                               f"assembled object has {size} bytes, expected {rt.committed_bytes}")
        self._done(intent)
        return copied
