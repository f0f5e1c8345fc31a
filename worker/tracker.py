"""Decides, stream by stream, what happens next: observe the file, upload a full
chunk, finalize after the idle timeout, reopen, supersede, or back off.

It never blocks on anything but the one S3 call or file read in progress, and it
does at most one unit of work per stream per step, so streams on one worker take
turns and the loop can send its heartbeat between them. Every change of a stream's
state goes through ``worker.stream.Stream``; the tracker only decides which.
"""

from __future__ import annotations

import os
import stat
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared import metrics
from shared.keys import MAX_KEY_BYTES, StreamKeys, new_stream_id
from shared.messages import Completion
from shared.paths import lstat_beneath
from shared.s3 import ErrorKind, StorageError
from shared.settings import Settings
from shared.state.records import StreamRecord, StreamStatus
from shared.state.store import CheckpointStore
from shared.state.wal import WriteAheadLog
from shared.timefmt import now as wall_now
from worker.backoff import retry_delay
from worker.completion import Finalizer
from worker.live_first import LiveFirst
from worker.multipart import FinalUpload
from worker.recovery import BucketRecovery, Found
from worker.retention import Retention
from worker.source import SourceChanged, SourceError, SourceFiles
from worker.storage import BucketCheck
from worker.stream import Stream, StreamState
from worker.uploader import Uploader

if TYPE_CHECKING:  # worker/live.py imports the stream and the storage this uses
    from worker.live import LivePlaylists

__all__ = ["StreamTracker"]

SYNC_NEW_STREAMS_EVERY = 1.0  # seconds a new stream's record may stay unsynced


class StreamTracker:
    def __init__(self, settings: Settings, store: CheckpointStore, wal: WriteAheadLog,
                 source: SourceFiles, uploader: Uploader, upload: FinalUpload,
                 finalizer: Finalizer, bucket: BucketCheck, retention: Retention, log: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.store = store
        self.wal = wal
        self.source = source
        self.uploader = uploader
        self.upload = upload
        self.finalizer = finalizer
        self.bucket = bucket
        self.retention = retention
        self.log = log
        self.clock = clock
        self.streams: dict[str, Stream] = {}
        self.resumed: set[str] = set()  # unfinished at start: they settle their own intents
        self.current: dict[str, str] = {}          # rel_path -> stream id held in memory
        self.touched: set[str] = set()
        self.completions: deque[Completion] = deque(maxlen=20)
        self.refused: set[str] = set()              # paths whose keys S3 would reject
        self.sync_every = SYNC_NEW_STREAMS_EVERY
        self.synced_at = clock()                    # last sync of new streams' records
        self.order = LiveFirst(uploader, settings.watch_dir, settings.stream_timeout, clock,
                               settings.live_first)
        self.lane = self.order.lane
        self.recovery: BucketRecovery | None = None  # set by worker/wiring.py
        self.playlists: LivePlaylists | None = None  # set by worker/wiring.py

    # set-up
    def load(self) -> None:
        """Resume every unfinished stream and forget finished lineages that nothing will
        look at again. Intents the log recovered are reconciled by ``step``: a resumed
        stream's by its next attempt, every other one on its own first (a removal's at
        once, before any path is looked at). Completed streams become retention's
        candidates."""
        self.retention.recover()
        for record in list(self.store.streams()):
            if record.status is StreamStatus.ACTIVE:
                self._add(record)
                self.resumed.add(record.stream_id)
            elif self._finished_with(record):
                self._forget(record)
            else:
                self.retention.consider(record)
        if self.retention.unverified:
            self.log.warning("retention_skips_unverified", streams=self.retention.unverified,
                             why="completed by a release before local retention: their "
                                 "files are never removed")
        self.retention.unverified_logging = True

    def touch(self, rel_path: str) -> None:
        self.touched.add(rel_path)

    # the loop (what it reports each second: worker/report.py)
    def idle_wait(self) -> float:
        """How long the loop may sleep when nothing was done."""
        return max(0.05, min(0.5, self.settings.stream_timeout / 4))

    def step(self, between: Callable[[], None] = lambda: None) -> bool:
        """Look at touched paths, then give every due stream one unit of work, calling
        ``between`` after each (the loop's heartbeat and stop check)."""
        did = False
        sent = self.lane.collect()  # the lane's backlog chunk: committed as an attempt
        if sent is not None:
            did = self._attempt(*sent)
        touched, self.touched = self.touched, set()
        for rel_path in touched:
            if self.lane.holds(self.current.get(rel_path, "")):
                self.touched.add(rel_path)  # looked at once its chunk is collected
                continue
            try:
                self._look_at(rel_path)
            except Exception as exc:  # one odd path must never take the worker down
                self.log.exception("path_failed", rel_path=rel_path, error=repr(exc))
        self._sync_new_streams()
        if not self.bucket.ensure():
            return False
        for intent in self.wal.recovered():
            if intent.stream_id in self.resumed:
                continue  # settled by its stream's next attempt
            try:
                self.uploader.reconcile(None, intent)
            except StorageError:
                return did  # retried on the next step, after the bucket check
            did = True
        if self.recovery is not None and self.recovery.pending:
            did |= self.recovery.step(self.clock(), self._has_stream, self._adopt,
                                      self._new_file)
        for stream in self.order.in_turn(self.streams.values()):
            if (stream.stream_id not in self.streams or stream.next_attempt > self.clock()
                    or self.lane.holds(stream.stream_id)):
                continue
            did |= self._attempt(stream)
            between()
        did |= self.upload.copy_ahead(self.streams, self.clock())
        did |= self.retention.step(between)
        return did

    def _sync_new_streams(self) -> None:
        """New streams are recorded without an fsync, so that detecting a file costs
        none of its own; their records are synced here, all in one batch, at most
        ``sync_every`` later (and before any S3 request names them, by the uploader)."""
        now = self.clock()
        if now - self.synced_at >= self.sync_every:
            self.synced_at = now
            self.store.make_all_durable()

    def _attempt(self, stream: Stream,
                 work: Callable[[Stream], bool] | None = None) -> bool:
        was_finished = not stream.state.unfinished
        try:
            did = (work or self._advance)(stream)
        except StorageError as exc:
            self.bucket.saw(exc)
            self._failed(stream, exc.kind, exc.operation, exc.detail)
            return True
        except SourceError as exc:
            metrics.SOURCE_ERRORS.inc()
            if not stream.source_error_logged:
                self.log.error("source_unreadable", stream_id=stream.stream_id,
                               rel_path=stream.rel_path, error=str(exc))
                stream.source_error_logged = True
            stream.failures += 1
            stream.next_attempt = self.clock() + retry_delay(ErrorKind.TRANSIENT,
                                                             stream.failures)
            return True
        except SourceChanged as exc:
            self.log.info("stream_changed_during_work", stream_id=stream.stream_id,
                          reason=str(exc))
            return True
        except Exception as exc:  # a bug: contain it to this stream, retry it slowly
            self.log.exception("stream_failed", stream_id=stream.stream_id,
                               rel_path=stream.rel_path, error=repr(exc))
            self._failed(stream, ErrorKind.PERMANENT, "internal", repr(exc))
            return True
        if stream.failures:
            self.log.info("s3_recovered", stream_id=stream.stream_id, failures=stream.failures)
            stream.failures, stream.permanent_logged = 0, False
            stream.source_error_logged = False
        if not stream.state.unfinished and not was_finished:
            record = stream.record
            self.completions.append(Completion(
                stream_id=record.stream_id, rel_path=record.rel_path,
                status=record.end_reason or "complete",
                total_size_bytes=stream.committed_bytes, chunks=len(stream.chunks),
                completed_at=record.completed_at or wall_now(),
                reopen_count=record.reopen_count))
            self._unload(stream)  # a later event for its path loads it again
            if self._finished_with(record):
                self._forget(record)
            else:
                self.retention.consider(record)
        return did

    def _advance(self, stream: Stream) -> bool:
        self._observe(stream)
        if stream.stream_id not in self.streams or not stream.state.unfinished:
            return False
        if stream.stream_id in self.resumed:
            for intent in self.wal.recovered(stream.stream_id):
                self.uploader.reconcile(stream, intent)
        if stream.state is StreamState.ENDING:
            self.finalizer.finalize(stream)
            return True
        if stream.has_stale_tail():
            self.log.info("short_chunk_replaced", stream_id=stream.stream_id,
                          index=len(stream.chunks) - 1, size=stream.chunks[-1].size)
            stream.drop_tail()
        if stream.pending_bytes >= stream.record.chunk_size // 2 and self.order.is_live(stream):
            # half a chunk on disk: allocate the buffer now, not after the chunk's last
            # byte (a chunk that ends on a fragment runs past chunk_size by part of one)
            size = stream.record.chunk_size
            self.source.reserve_chunk_buffer(size + size // 4 if stream.fragmented else size)
        playlists = self.playlists
        if playlists is not None:
            playlists.refresh(stream)  # after the chunks committed since the last step
        span = stream.next_full_chunk() if playlists is None else \
            playlists.next_full_chunk(stream)
        if span is not None:
            return self.order.send(stream, span)
        assert stream.last_change is not None
        if self.clock() - stream.last_change >= self.settings.stream_timeout:
            self.finalizer.finalize(stream)
            return True
        return False

    # observation: stat only, no S3
    def _look_at(self, rel_path: str) -> None:
        stream_id = self.current.get(rel_path) or self.store.current_stream_id(rel_path)
        if stream_id is not None:
            stream = self.streams.get(stream_id)
            if stream is None:
                record = self.store.stream(stream_id)
                if record is None:
                    return
                stream = self._add(record)
            try:
                self._observe(stream)
            except SourceError:
                pass  # reported by the attempt that needs the file
            return
        try:
            st = lstat_beneath(self.settings.watch_dir, rel_path)
        except OSError:
            return  # vanished before it was read, or not reachable: nothing to do
        if stat.S_ISREG(st.st_mode):
            if self.recovery is not None and (rel_path in self.recovery.pending
                                              or self.recovery.applies(st)):
                self.recovery.wait(rel_path)  # found again in S3, or new (worker/recovery.py)
                return
            self._new_stream(rel_path, st, reason="new")

    def _observe(self, stream: Stream) -> None:
        record = stream.record
        state = stream.state
        st = self.source.stat(record.rel_path)
        if st is None or not stat.S_ISREG(st.st_mode):
            if not state.unfinished:
                self._unload(stream)  # kept: the file may come back (a directory moved
                # away and back, a mount not there yet), and must not be uploaded again then
            elif state is StreamState.RECORDING:
                self._end(stream, "source_deleted")
            return
        if record.end_reason is not None:
            return  # an old lineage being finalized; the path has a new one
        if record.source_removed is not None and state is StreamState.COMPLETE:
            # retention removed its file: this one is new, even on a reused inode
            self._unload(stream)
            self._new_stream(record.rel_path, st, reason="new")
            return
        if st.st_ino != record.ino or st.st_size < record.size:
            reason = "replaced" if st.st_ino != record.ino else "shrank"
            if state is StreamState.RECORDING:
                self._end(stream, "source_replaced", reason=reason)
            else:
                self._unload(stream)
                self._forget(record)
            self._new_stream(record.rel_path, st, reason=reason)
            return
        if (st.st_size, st.st_mtime_ns) != (record.size, record.mtime_ns):
            stream.observed(st.st_size, st.st_mtime_ns, self.clock())
            if state is StreamState.COMPLETE:
                self._reopen(stream)
        elif state is StreamState.COMPLETE:
            self._unload(stream)  # completed and unchanged: nothing to do
        if stream.last_change is None:
            stream.last_change = self._change_time(st)

    def _change_time(self, st: os.stat_result) -> float:
        """A monotonic time for the last write, from the file's age (capped by the
        timeout): a file untouched for long counts as idle at once."""
        age = min(max(0.0, wall_now() - st.st_mtime), self.settings.stream_timeout)
        return self.clock() - age

    # transitions, decided here and made by the stream
    def _new_stream(self, rel_path: str, st: os.stat_result, reason: str) -> None:
        stream_id = new_stream_id(rel_path)
        keys = StreamKeys(self.settings.s3_prefix, rel_path, stream_id)
        if keys.longest_key_bytes > MAX_KEY_BYTES:
            # S3 would answer KeyTooLongError to every request, forever: say so once and
            # leave the file alone (a shorter --s3-prefix or directory path fixes it)
            if rel_path not in self.refused:
                self.refused.add(rel_path)
                metrics.FILES_REFUSED.inc()
                self.log.error("key_too_long", rel_path=rel_path,
                               key_bytes=keys.longest_key_bytes, limit=MAX_KEY_BYTES)
            return
        record = StreamRecord(
            stream_id=stream_id, rel_path=rel_path, dev=st.st_dev, ino=st.st_ino,
            chunk_size=self.settings.chunk_size, started_at=wall_now(), size=st.st_size,
            mtime_ns=st.st_mtime_ns)
        stream = Stream.start(self.store, record, keys)  # synced by _sync_new_streams
        self._hold(stream)
        stream.last_change = self._change_time(st)
        self.log.info("stream_detected", stream_id=stream_id, rel_path=rel_path,
                      size=st.st_size, reason=reason, object_prefix=keys.prefix)

    def _new_file(self, rel_path: str, st: os.stat_result) -> None:
        self._new_stream(rel_path, st, reason="new")

    def _has_stream(self, rel_path: str) -> bool:
        return rel_path in self.current or self.store.current_stream_id(rel_path) is not None

    def _adopt(self, found: Found) -> None:
        """A stream found again in S3: recorded, then observed like any known one (an
        unfinished one continues, a grown one is reopened, an unchanged one rests and
        may be removed by local retention)."""
        self.store.recover_stream(found.record, found.chunks)
        if found.finished:
            self.retention.consider(found.record)
        self._look_at(found.record.rel_path)

    def _end(self, stream: Stream, end_reason: str, **fields: Any) -> None:
        stream.end(end_reason)
        if self.current.get(stream.rel_path) == stream.stream_id:
            del self.current[stream.rel_path]
        self.log.warning(f"stream_{end_reason}", stream_id=stream.stream_id,
                         rel_path=stream.rel_path, uploaded_bytes=stream.committed_bytes,
                         **fields)

    def _reopen(self, stream: Stream) -> None:
        size = stream.record.size
        self.retention.discard(stream.stream_id)
        stream.reopen(keep_chunks=self.settings.keep_chunks)  # else: deleted in S3
        metrics.STREAMS_REOPENED.inc()
        self.log.info("stream_reopened", stream_id=stream.stream_id, rel_path=stream.rel_path,
                      reopen_count=stream.record.reopen_count, size=size)

    def _add(self, record: StreamRecord) -> Stream:
        return self._hold(Stream.load(self.store, record, self.settings.s3_prefix))

    def _hold(self, stream: Stream) -> Stream:
        self.streams[stream.stream_id] = stream
        if stream.record.end_reason is None:
            self.current[stream.rel_path] = stream.stream_id
        return stream

    def unload_stream(self, stream_id: str) -> None:
        """Drop a completed stream held in memory (local retention is about to mark its
        record removed: the next look at its path reads the record again)."""
        stream = self.streams.get(stream_id)
        if stream is not None and not stream.state.unfinished:
            self._unload(stream)

    def _unload(self, stream: Stream) -> None:
        self.streams.pop(stream.stream_id, None)
        if self.playlists is not None:
            self.playlists.forget(stream.stream_id)
        if self.current.get(stream.rel_path) == stream.stream_id:
            del self.current[stream.rel_path]

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
        Stream.forget(self.store, record.stream_id)
        self.retention.discard(record.stream_id)
        self.touched.add(record.rel_path)
        self.log.info("stream_forgotten", stream_id=record.stream_id,
                      rel_path=record.rel_path, reason=reason)

    # failures
    def _failed(self, stream: Stream, kind: ErrorKind, operation: str, detail: str) -> None:
        stream.failures += 1
        delay = retry_delay(kind, stream.failures)
        stream.next_attempt = self.clock() + delay
        metrics.record_s3_failure(operation, kind.value)
        fields = dict(stream_id=stream.stream_id, operation=operation, error=detail,
                      attempt=stream.failures, retry_in=round(delay, 2))
        if kind is ErrorKind.PERMANENT:
            if not stream.permanent_logged:
                self.log.error("s3_permanent_error", **fields)
                stream.permanent_logged = True
        elif stream.failures <= 3 or stream.failures % 10 == 0:
            self.log.warning("s3_retry", **fields)
