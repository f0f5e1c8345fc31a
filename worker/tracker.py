"""Decides, stream by stream, what happens next: observe the file, upload a full
chunk, finalize after the idle timeout, reopen, supersede, or back off.

It never blocks on anything but the one S3 call or file read in progress, and it
does at most one unit of work per stream per step, so streams on one worker
take turns and the upload loop keeps sending heartbeats.
"""

from __future__ import annotations

import os
import stat
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

from shared import metrics
from shared.keys import MAX_KEY_BYTES, StreamKeys, new_stream_id
from shared.messages import Completion, StreamProgress
from shared.paths import lstat_beneath
from shared.s3 import ErrorKind, StorageError
from shared.settings import Settings
from shared.timefmt import now as wall_now
from worker.backoff import retry_delay
from worker.checkpoint import CheckpointStore, StreamRecord, StreamStatus
from worker.planning import chunks_kept_on_reopen, next_full_chunk
from worker.runtime import StreamRuntime
from worker.uploader import SourceChanged, SourceError, Uploader
from worker.wal import Intent

__all__ = ["StreamTracker"]

SYNC_NEW_STREAMS_EVERY = 1.0  # seconds a new stream's record may stay unsynced


class StreamTracker:
    def __init__(self, settings: Settings, store: CheckpointStore, uploader: Uploader,
                 log: Any, pulse: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.store = store
        self.uploader = uploader
        self.log = log
        self.pulse = pulse
        self.clock = clock
        self.runtimes: dict[str, StreamRuntime] = {}
        self.current: dict[str, str] = {}          # rel_path -> stream id held in memory
        self.touched: set[str] = set()
        self.intents: dict[str, list[Intent]] = defaultdict(list)
        self.orphan_intents: list[Intent] = []
        self.bucket_ready = False
        self.bucket_failures = 0
        self.bucket_retry_at = 0.0
        self.completions: deque[Completion] = deque(maxlen=20)
        self.refused: set[str] = set()              # paths whose keys S3 would reject
        self.sync_every = SYNC_NEW_STREAMS_EVERY
        self.synced_at = clock()                    # last sync of new streams' records

    # set-up
    def load(self, pending: list[Intent]) -> None:
        """Resume every unfinished stream, forget finished lineages that nothing will
        look at again, and queue the intents to reconcile."""
        for record in list(self.store.streams()):
            if record.status is StreamStatus.ACTIVE:
                self._add(record)
            elif self._finished_with(record):
                self._forget(record)
        for intent in pending:
            if intent.stream_id in self.runtimes:
                self.intents[intent.stream_id].append(intent)
            else:
                self.orphan_intents.append(intent)

    def touch(self, rel_path: str) -> None:
        self.touched.add(rel_path)

    def active_count(self) -> int:
        return sum(1 for rt in self.runtimes.values() if rt.record.status is StreamStatus.ACTIVE)

    def progress(self, limit: int) -> tuple[StreamProgress, ...]:
        """What every unfinished stream is doing, oldest first (for ``/streams``)."""
        now = self.clock()
        found = []
        for rt in self.runtimes.values():
            record = rt.record
            if record.status is not StreamStatus.ACTIVE:
                continue
            idle = now - rt.last_change if rt.last_change is not None else 0.0
            if record.end_reason is not None:
                state = record.end_reason
            elif rt.next_attempt > now:
                state = "backoff"
            elif idle >= self.settings.stream_timeout:
                state = "finalizing"
            else:
                state = "growing"
            found.append(StreamProgress(
                stream_id=rt.stream_id, rel_path=record.rel_path, state=state,
                bytes_on_disk=record.size, bytes_uploaded=rt.committed_bytes,
                chunks=len(rt.chunks), started_at=record.started_at,
                last_write_at=record.last_write_at, idle_seconds=round(idle, 3),
                completes_in=round(max(0.0, self.settings.stream_timeout - idle), 3),
                failures=rt.failures))
        found.sort(key=lambda p: p.started_at)
        return tuple(found[:limit])

    def lag_bytes(self) -> int:
        """Bytes on disk not yet uploaded, over all unfinished streams."""
        return sum(max(0, rt.record.size - rt.committed_bytes) for rt in self.runtimes.values()
                   if rt.record.status is StreamStatus.ACTIVE and rt.record.end_reason is None)

    def oldest_age(self) -> float:
        started = [rt.record.started_at for rt in self.runtimes.values()
                   if rt.record.status is StreamStatus.ACTIVE]
        return max(0.0, wall_now() - min(started)) if started else 0.0

    def idle_wait(self) -> float:
        """How long the loop may sleep when nothing was done."""
        return max(0.05, min(0.5, self.settings.stream_timeout / 4))

    # the loop's unit
    def step(self) -> bool:
        """Look at touched paths, then give every due stream one unit of work."""
        did = False
        touched, self.touched = self.touched, set()
        for rel_path in touched:
            try:
                self._look_at(rel_path)
            except Exception as exc:  # one odd path must never take the worker down
                self.log.exception("path_failed", rel_path=rel_path, error=repr(exc))
        self._sync_new_streams()
        if not self._ensure_bucket():
            return False
        while self.orphan_intents:
            intent = self.orphan_intents[0]
            try:
                self.uploader.reconcile(None, intent)
            except StorageError:
                return did  # retried on the next step, after the bucket check
            self.orphan_intents.pop(0)
            did = True
        for rt in list(self.runtimes.values()):
            if rt.stream_id not in self.runtimes or rt.next_attempt > self.clock():
                continue
            did |= self._attempt(rt)
            self.pulse()
        did |= self.uploader.copy_ahead(self.runtimes, self.clock())
        return did

    def _sync_new_streams(self) -> None:
        """New streams are recorded without an fsync, so that detecting a file costs
        none of its own; their records are synced here, all in one batch, at most
        ``sync_every`` later (and before any S3 request names them, by the uploader)."""
        now = self.clock()
        if now - self.synced_at >= self.sync_every:
            self.synced_at = now
            self.store.make_all_durable()

    def _attempt(self, rt: StreamRuntime) -> bool:
        was_complete = rt.record.status is StreamStatus.COMPLETE
        try:
            did = self._advance(rt)
        except StorageError as exc:
            if exc.detail.startswith("NoSuchBucket"):
                self.bucket_ready = False
            self._failed(rt, exc.kind, exc.operation, exc.detail)
            return True
        except SourceError as exc:
            metrics.SOURCE_ERRORS.inc()
            if not rt.source_error_logged:
                self.log.error("source_unreadable", stream_id=rt.stream_id,
                               rel_path=rt.record.rel_path, error=str(exc))
                rt.source_error_logged = True
            rt.failures += 1
            rt.next_attempt = self.clock() + retry_delay(ErrorKind.TRANSIENT, rt.failures)
            rt.reload(self.store)
            return True
        except SourceChanged as exc:
            self.log.info("stream_changed_during_work", stream_id=rt.stream_id, reason=str(exc))
            rt.reload(self.store)
            return True
        except Exception as exc:  # a bug: contain it to this stream, retry it slowly
            self.log.exception("stream_failed", stream_id=rt.stream_id,
                               rel_path=rt.record.rel_path, error=repr(exc))
            self._failed(rt, ErrorKind.PERMANENT, "internal", repr(exc))
            return True
        if rt.failures:
            self.log.info("s3_recovered", stream_id=rt.stream_id, failures=rt.failures)
            rt.failures, rt.permanent_logged, rt.source_error_logged = 0, False, False
        if rt.record.status is StreamStatus.COMPLETE and not was_complete:
            record = rt.record
            self.completions.append(Completion(
                stream_id=record.stream_id, rel_path=record.rel_path,
                status=record.end_reason or "complete", total_size_bytes=rt.committed_bytes,
                chunks=len(rt.chunks), completed_at=record.completed_at or wall_now(),
                reopen_count=record.reopen_count))
            self._unload(rt)  # a later event for its path loads it again
            if self._finished_with(record):
                self._forget(record)
        return did

    def _advance(self, rt: StreamRuntime) -> bool:
        self._observe(rt)
        record = rt.record
        if rt.stream_id not in self.runtimes or record.status is StreamStatus.COMPLETE:
            return False
        intents = self.intents.get(rt.stream_id)
        while intents:
            self.uploader.reconcile(rt, intents[0])
            intents.pop(0)
        if record.end_reason is not None:
            self.uploader.finalize(rt)
            return True
        if record.size - len(rt.chunks) * record.chunk_size >= record.chunk_size // 2:
            # half a chunk on disk: allocate the buffer now, not after the chunk's last byte
            self.uploader.reserve_chunk_buffer(record.chunk_size)
        span = next_full_chunk(len(rt.chunks), record.size, record.chunk_size)
        if span is not None:
            self.uploader.upload_chunk(rt, span.index, span.size)
            return True
        assert rt.last_change is not None
        if self.clock() - rt.last_change >= self.settings.stream_timeout:
            self.uploader.finalize(rt)
            return True
        return False

    # observation: stat only, no S3
    def _look_at(self, rel_path: str) -> None:
        stream_id = self.current.get(rel_path) or self.store.current_stream_id(rel_path)
        if stream_id is not None:
            rt = self.runtimes.get(stream_id)
            if rt is None:
                record = self.store.stream(stream_id)
                if record is None:
                    return
                rt = self._add(record)
            try:
                self._observe(rt)
            except SourceError:
                pass  # reported by the attempt that needs the file
            return
        try:
            st = lstat_beneath(self.settings.watch_dir, rel_path)
        except OSError:
            return  # vanished before it was read, or not reachable: nothing to do
        if stat.S_ISREG(st.st_mode):
            self._new_stream(rel_path, st, reason="new")

    def _observe(self, rt: StreamRuntime) -> None:
        record = rt.record
        try:
            st: os.stat_result | None = lstat_beneath(self.settings.watch_dir, record.rel_path)
        except FileNotFoundError:
            st = None
        except OSError as exc:
            raise SourceError(f"cannot stat source: {exc.strerror}") from exc
        if st is None or not stat.S_ISREG(st.st_mode):
            if record.status is StreamStatus.COMPLETE:
                self._unload(rt)  # kept: the file may come back (a directory moved away
                # and back, a mount not there yet), and must not be uploaded again then
            elif record.end_reason is None:
                self._end(rt, "source_deleted")
            return
        if record.end_reason is not None:
            return  # an old lineage being finalized; the path has a new one
        if st.st_ino != record.ino or st.st_size < record.size:
            reason = "replaced" if st.st_ino != record.ino else "shrank"
            if record.status is StreamStatus.ACTIVE:
                self._end(rt, "source_replaced", reason=reason)
            else:
                self._unload(rt)
                self._forget(record)
            self._new_stream(record.rel_path, st, reason=reason)
            return
        if (st.st_size, st.st_mtime_ns) != (record.size, record.mtime_ns):
            rt.record = record.evolve(size=st.st_size, mtime_ns=st.st_mtime_ns)
            rt.last_change = self.clock()
            if record.status is StreamStatus.COMPLETE:
                self._reopen(rt)
        elif record.status is StreamStatus.COMPLETE:
            self._unload(rt)  # completed and unchanged: nothing to do
        if rt.last_change is None:
            rt.last_change = self._change_time(st)

    def _change_time(self, st: os.stat_result) -> float:
        """A monotonic time for the last write, from the file's age (capped by the
        timeout): a file untouched for long counts as idle at once."""
        age = min(max(0.0, wall_now() - st.st_mtime), self.settings.stream_timeout)
        return self.clock() - age

    # transitions
    def _new_stream(self, rel_path: str, st: os.stat_result, reason: str) -> None:
        stream_id = new_stream_id(rel_path)
        key_bytes = StreamKeys(self.settings.s3_prefix, rel_path, stream_id).longest_key_bytes
        if key_bytes > MAX_KEY_BYTES:
            # S3 would answer KeyTooLongError to every request, forever: say so once and
            # leave the file alone (a shorter --s3-prefix or directory path fixes it)
            if rel_path not in self.refused:
                self.refused.add(rel_path)
                metrics.FILES_REFUSED.inc()
                self.log.error("key_too_long", rel_path=rel_path, key_bytes=key_bytes,
                               limit=MAX_KEY_BYTES)
            return
        record = StreamRecord(
            stream_id=stream_id, rel_path=rel_path, dev=st.st_dev, ino=st.st_ino,
            chunk_size=self.settings.chunk_size, started_at=wall_now(), size=st.st_size,
            mtime_ns=st.st_mtime_ns)
        self.store.start_stream(record, sync=False)  # synced by _sync_new_streams
        rt = self._add(record)
        rt.last_change = self._change_time(st)
        self.log.info("stream_detected", stream_id=record.stream_id, rel_path=rel_path,
                      size=st.st_size, reason=reason, object_prefix=rt.keys.prefix)

    def _end(self, rt: StreamRuntime, end_reason: str, **fields: Any) -> None:
        rt.record = rt.record.evolve(end_reason=end_reason)
        self.store.save_stream(rt.record)
        if self.current.get(rt.record.rel_path) == rt.stream_id:
            del self.current[rt.record.rel_path]
        self.log.warning(f"stream_{end_reason}", stream_id=rt.stream_id,
                         rel_path=rt.record.rel_path, uploaded_bytes=rt.committed_bytes, **fields)

    def _reopen(self, rt: StreamRuntime) -> None:
        record = rt.record
        kept = chunks_kept_on_reopen([c.size for c in rt.chunks], record.chunk_size)
        keep = rt.chunks[:kept] if self.settings.keep_chunks else []  # else: deleted in S3
        rt.record = record.evolve(status=StreamStatus.ACTIVE, completed_at=None,
                                  reopen_count=record.reopen_count + 1)
        self.store.drop_chunks_from(rt.record, len(keep))
        rt.chunks = list(keep)
        rt.settled.clear()  # the file moved on: every chunk is read again at completion
        metrics.STREAMS_REOPENED.inc()
        self.log.info("stream_reopened", stream_id=rt.stream_id, rel_path=record.rel_path,
                      reopen_count=rt.record.reopen_count, size=record.size)

    def _add(self, record: StreamRecord) -> StreamRuntime:
        rt = StreamRuntime(record=record, chunks=self.store.chunks(record.stream_id),
                           keys=StreamKeys(self.settings.s3_prefix, record.rel_path,
                                           record.stream_id))
        self.runtimes[record.stream_id] = rt
        if record.end_reason is None:
            self.current[record.rel_path] = record.stream_id
        return rt

    def _unload(self, rt: StreamRuntime) -> None:
        self.runtimes.pop(rt.stream_id, None)
        if self.current.get(rt.record.rel_path) == rt.stream_id:
            del self.current[rt.record.rel_path]

    def _finished_with(self, record: StreamRecord) -> bool:
        """A completed lineage nothing will look at again: its path has a newer one, or
        it was ended early (its file deleted or replaced while recording), so whatever
        is at the path now is another file. A normal completion stays, file or not."""
        return record.status is StreamStatus.COMPLETE and (
            record.end_reason is not None
            or self.store.current_stream_id(record.rel_path) != record.stream_id)

    def _forget(self, record: StreamRecord) -> None:
        """Drop a finished lineage's checkpoint: without this the store (and every
        start-up, which reads it whole) grows with each file ever replaced. Its objects
        in S3 stay. The path is looked at again: a file there now is a new stream."""
        reason = record.end_reason or "superseded"
        self.store.forget_stream(record.stream_id)
        self.touched.add(record.rel_path)
        self.log.info("stream_forgotten", stream_id=record.stream_id,
                      rel_path=record.rel_path, reason=reason)

    # failures
    def _failed(self, rt: StreamRuntime, kind: ErrorKind, operation: str, detail: str) -> None:
        rt.failures += 1
        delay = retry_delay(kind, rt.failures)
        rt.next_attempt = self.clock() + delay
        rt.reload(self.store)
        metrics.record_s3_failure(operation, kind.value)
        fields = dict(stream_id=rt.stream_id, operation=operation, error=detail,
                      attempt=rt.failures, retry_in=round(delay, 2))
        if kind is ErrorKind.PERMANENT:
            if not rt.permanent_logged:
                self.log.error("s3_permanent_error", **fields)
                rt.permanent_logged = True
        elif rt.failures <= 3 or rt.failures % 10 == 0:
            self.log.warning("s3_retry", **fields)

    def _ensure_bucket(self) -> bool:
        if self.bucket_ready:
            return True
        if self.clock() < self.bucket_retry_at:
            return False
        try:
            self.uploader.storage.ensure_bucket(self.settings.create_bucket)
        except StorageError as exc:
            self.bucket_failures += 1
            self.bucket_retry_at = self.clock() + retry_delay(exc.kind, self.bucket_failures)
            metrics.record_s3_failure(exc.operation, exc.kind.value)
            if self.bucket_failures <= 3 or self.bucket_failures % 10 == 0:
                self.log.warning("bucket_unavailable", bucket=self.settings.s3_bucket,
                                 error=exc.detail, attempt=self.bucket_failures)
            return False
        self.bucket_ready, self.bucket_failures = True, 0
        self.log.info("bucket_ready", bucket=self.settings.s3_bucket)
        return True
