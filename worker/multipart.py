"""The final object's multipart upload, in one place: open, copy ahead, lose, finish,
complete, abandon.

The contract has the final object assembled server-side from part copies of the
chunks. Doing every copy at completion put one request per chunk between the idle
deadline and ``metadata.json``: seconds for a long recording, more when several
streams finish together. Instead, once a stream has a committed chunk, its upload is
opened (recorded in the stream record, bracketed by a WAL intent) and each committed
chunk is copied into its part on a few threads while the loop goes on uploading. A
chunk uploaded again (its bytes changed on disk) loses its part and is copied again.
Completion waits for the copies in flight, copies what is left, and completes.

An upload can be lost (a lifecycle rule aborted it, or a completion just before a
crash used it up): any request that finds it gone forgets it, and the next one is
opened afresh. Only the loop thread touches LevelDB and the streams; the threads run
``Storage.copy_part`` and nothing else, and ``harvest`` records what they did.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any

from shared import metrics
from shared.s3 import ErrorKind, StorageError
from shared.state.records import ChunkRecord
from shared.state.wal import WriteAheadLog
from worker.backoff import retry_delay
from worker.groups import MAX_OBJECT_BYTES, Groups
from worker.liveness import Liveness
from worker.storage import Storage, UploadLost
from worker.stream import Stream, StreamState

__all__ = ["FinalUpload", "COPY_THREADS", "BACKGROUND_IN_FLIGHT"]

COPY_THREADS = 8          # copies in flight when a stream completes
BACKGROUND_IN_FLIGHT = 4  # copies in flight while streams are still being recorded


@dataclass
class _Copy:
    stream_id: str
    upload_id: str
    chunk: ChunkRecord
    future: Future[str]


class FinalUpload:
    """The multipart uploads of one worker's streams, copied into on its copy threads."""

    def __init__(self, storage: Storage, wal: WriteAheadLog, log: Any, live: Liveness,
                 max_parts: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self.wal = wal
        self.log = log
        self.live = live
        self.max_parts = max_parts
        self.clock = clock
        self._pool = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="part-copy")
        self._copies: dict[tuple[str, int], _Copy] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._scan_from: dict[str, tuple[str, int]] = {}  # stream -> (upload, first uncopied)
        self._last_failure: dict[str, tuple[int, StorageError]] = {}  # stream -> (count, last)
        self.groups = Groups(storage, self._pool, max_parts, log)  # past max_parts chunks

    def close(self) -> None:
        """Drop queued copies; one in flight ends with its request (it is recopied
        by whoever completes the stream, as nothing recorded it)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def in_flight(self) -> int:
        return len(self._copies) + self.groups.in_flight()

    def fits(self, stream: Stream) -> bool:
        """Whether the stream can be assembled: in one upload's parts, or in groups
        (worker/groups.py), within S3's object limit either way."""
        if self.groups.needed(stream):
            return self.groups.fits(stream)
        return stream.committed_bytes <= MAX_OBJECT_BYTES

    def _level(self, stream: Stream) -> bool:
        """Whether the stream is assembled in two levels; switches it there (dropping
        its one-level upload, whose parts are chunks) once it has more chunks than an
        upload may have parts."""
        if stream.record.group_chunks is not None:
            return True
        if len(stream.chunks) <= self.max_parts:
            return False
        self.abandon(stream)
        self.groups.start(stream)
        return True

    # opening and losing
    def open(self, stream: Stream) -> None:
        key = stream.keys.final_object
        intent = self.wal.begin("open_upload", stream_id=stream.stream_id, index=-1,
                                rel_path=stream.rel_path, key=key)
        # no upload is recorded, so any of this key is a leftover the log could not name
        # (its intent lost with a damaged log tail): abort it rather than leave it billed
        aborted = self.storage.abort_uploads(key)
        if aborted:
            self.log.info("multipart_aborted", stream_id=stream.stream_id, uploads=aborted)
        stream.open_upload(self.storage.create_upload(key))
        self.wal.done(intent)
        self.log.info("multipart_started", stream_id=stream.stream_id, chunks=len(stream.chunks))

    def lose(self, stream: Stream, exc: StorageError) -> None:
        """Forget an upload S3 no longer has; the next one starts afresh."""
        self.log.warning("multipart_lost", stream_id=stream.stream_id,
                         upload_id=stream.upload_id, error=exc.detail)
        stream.drop_upload()

    def abandon(self, stream: Stream) -> None:
        """Abort the stream's upload: its chunks cannot be assembled this way."""
        upload_id = stream.upload_id
        if upload_id is not None:
            self.storage.abort_upload(stream.keys.final_object, upload_id)
            stream.drop_upload()

    def give_up(self, stream: Stream) -> None:
        """The stream cannot be assembled at all (past S3's limits): leave nothing
        unfinished behind; its chunks are the data. Its group builds in flight end
        first, so that none completes after the sweep; the groups it removed are
        forgotten, so that a later assembly builds them again."""
        self._settle(stream)
        self.abandon(stream)
        if stream.record.group_chunks is not None:
            self.groups.sweep(stream)
            self.groups.forget_intermediates(stream)

    def forget(self, stream_id: str) -> None:
        """Drop what is kept about a stream that is done."""
        self._scan_from.pop(stream_id, None)
        self._last_failure.pop(stream_id, None)
        self._failures.pop(stream_id, None)
        self._retry_at.pop(stream_id, None)

    # copying while streams are recorded
    def copy_ahead(self, streams: Mapping[str, Stream], now: float) -> bool:
        """Between uploads: record finished part copies and start new ones for streams
        still being recorded, so that completion finds its parts already copied."""
        did = self.harvest(streams) > 0
        for stream in list(streams.values()):
            if self.in_flight() >= BACKGROUND_IN_FLIGHT:
                break
            if (stream.state is not StreamState.RECORDING or not stream.chunks
                    or not self.fits(stream) or stream.next_attempt > now
                    or self._retry_at.get(stream.stream_id, 0.0) > self.clock()):
                continue
            try:
                if self._level(stream):
                    did |= self._groups_ahead(stream)
                    continue
                if stream.upload_id is None:
                    self.open(stream)
                did |= self._submit(stream, limit=BACKGROUND_IN_FLIGHT, background=True) > 0
            except StorageError as exc:
                self._failed(stream.stream_id, exc)
        return did

    def _groups_ahead(self, stream: Stream) -> bool:
        """Build the full groups and copy them into the final upload, opened once the
        first group exists; the scan starts at the first group not yet done."""
        if stream.upload_id is None and stream.record.groups:
            self.open(stream)
        hint = self._scan_from.get(stream.stream_id)
        first = hint[1] if hint is not None and hint[0] == stream.upload_id else 0
        started, pending = self.groups.submit(stream, full_only=True,
                                              limit=BACKGROUND_IN_FLIGHT, first=first)
        if stream.upload_id is not None:  # the hint is for this upload's copies
            self._scan_from[stream.stream_id] = (stream.upload_id, pending)
        return started > 0

    def missing(self, stream: Stream) -> list[ChunkRecord]:
        """Chunks that are not parts of the stream's open upload yet."""
        upload_id = stream.upload_id
        return [c for c in stream.chunks[:self.max_parts] if c.part_upload != upload_id]

    def _submit(self, stream: Stream, limit: int | None = None, *,
                background: bool = False) -> int:
        """Start copies of the stream's missing parts, keeping at most ``limit`` in flight.

        In the background, where chunks are only ever appended, the scan starts at
        the first part not yet known to be copied, so a long recording costs the loop
        O(1) per step, not O(chunks); completion scans everything."""
        upload_id = stream.upload_id
        if upload_id is None:
            return 0
        start = 0
        hint = self._scan_from.get(stream.stream_id)
        if background and hint is not None and hint[0] == upload_id:
            start = hint[1]
        started = 0
        first_missing: int | None = None
        end = min(len(stream.chunks), self.max_parts)
        for chunk in stream.chunks[start:end]:
            if chunk.part_upload == upload_id:
                continue
            if first_missing is None:
                first_missing = chunk.index
            if limit is not None and len(self._copies) >= limit:
                break
            slot = (stream.stream_id, chunk.index)
            if slot in self._copies:  # never two copies racing into one part
                continue
            future = self._pool.submit(self.storage.copy_part, stream.keys.final_object,
                                       upload_id, chunk.index + 1,
                                       stream.keys.chunk(chunk.index))
            self._copies[slot] = _Copy(stream.stream_id, upload_id, chunk, future)
            started += 1
        self._scan_from[stream.stream_id] = (upload_id, end if first_missing is None
                                             else first_missing)
        return started

    def harvest(self, streams: Mapping[str, Stream], only: str | None = None) -> int:
        """Record finished copies, one LevelDB batch per stream. A copy made stale by a
        re-upload of its chunk or by a new upload is dropped. Returns how many finished."""
        finished, failures, succeeded = self.groups.harvest(streams, only)
        for stream_id in succeeded:
            self._failures.pop(stream_id, None)
            self._retry_at.pop(stream_id, None)
        for stream_id, exc, upload_id in failures:
            stream = streams.get(stream_id)
            if not isinstance(exc, StorageError):
                raise exc
            if stream is not None and upload_id is not None and upload_id == stream.upload_id \
                    and (isinstance(exc, UploadLost) or self.storage.upload_exists(
                        stream.keys.final_object, upload_id) is False):
                self.lose(stream, exc)  # see the one-level copies below
                continue
            self._failed(stream_id, exc)
        copied: dict[str, list[ChunkRecord]] = defaultdict(list)
        asked: set[str] = set()  # streams whose upload was looked up in this harvest
        for slot, copy in list(self._copies.items()):
            if (only is not None and copy.stream_id != only) or not copy.future.done():
                continue
            del self._copies[slot]
            finished += 1
            stream = streams.get(copy.stream_id)
            current = stream is not None and stream.upload_id == copy.upload_id
            try:
                etag = copy.future.result()
            except UploadLost as exc:
                if stream is not None and current:
                    self.lose(stream, exc)
                continue
            except StorageError as exc:
                if stream is not None and current and copy.stream_id not in asked:
                    asked.add(copy.stream_id)
                    if self.storage.upload_exists(stream.keys.final_object,
                                                  copy.upload_id) is False:
                        self.lose(stream, exc)
                        continue
                self._failed(copy.stream_id, exc)
                continue
            if stream is None or not current:
                continue
            index = copy.chunk.index
            if index < len(stream.chunks) and stream.chunks[index].same_bytes(copy.chunk):
                copied[copy.stream_id].append(
                    replace(stream.chunks[index], part_upload=copy.upload_id, part_etag=etag))
        for stream_id, chunks in copied.items():
            streams[stream_id].commit_parts(chunks)
            self._failures.pop(stream_id, None)
            self._retry_at.pop(stream_id, None)
        return finished

    def _failed(self, stream_id: str, exc: StorageError) -> None:
        """A background copy (or opening the upload) failed: back off this stream's
        copies; completion will copy again, and report the error if it persists."""
        count = self._last_failure.get(stream_id, (0, exc))[0]
        self._last_failure[stream_id] = (count + 1, exc)  # what completion raises
        failures = self._failures.get(stream_id, 0) + 1
        self._failures[stream_id] = failures
        delay = retry_delay(exc.kind, failures)
        self._retry_at[stream_id] = self.clock() + delay
        metrics.record_s3_failure(exc.operation, exc.kind.value)
        if failures <= 3 or failures % 10 == 0:
            self.log.warning("s3_retry", stream_id=stream_id, operation=exc.operation,
                             error=exc.detail, attempt=failures, retry_in=round(delay, 2))

    # completion
    def prepare(self, stream: Stream) -> int:
        """Make every chunk a part of the stream's open upload (opening one if needed, and
        replacing a lost one once, at once); returns how many copies that took."""
        grouped = self._level(stream)
        for attempt in (1, 2):
            if stream.upload_id is None:
                self.open(stream)
            try:
                return self._finish_groups(stream) if grouped else self._finish(stream)
            except UploadLost:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _finish(self, stream: Stream) -> int:
        """Raises ``UploadLost`` when the upload turned out to be gone, ``StorageError``
        when copies failed."""
        upload_id = stream.upload_id

        def settle() -> None:
            self._settle(stream)
            if stream.upload_id != upload_id:  # a copy found the upload gone
                raise UploadLost("upload_part_copy", ErrorKind.TRANSIENT, "NoSuchUpload")

        settle()  # earlier copies first: they may be stale
        started = self._submit(stream)
        settle()
        missing = self.missing(stream)
        if missing:
            raise StorageError("upload_part_copy", ErrorKind.TRANSIENT,
                               f"{len(missing)} part copies failed")
        return started

    def _finish_groups(self, stream: Stream) -> int:
        """``_finish`` for a two-level stream: build every group left (the last one,
        partial, at least) and copy each into the open upload."""
        upload_id, started = stream.upload_id, 0
        self._settle(stream)  # earlier jobs first: they may be stale (their failures too)
        while True:
            if stream.upload_id != upload_id:  # a copy found the upload gone
                raise UploadLost("upload_part_copy", ErrorKind.TRANSIENT, "NoSuchUpload")
            more, pending = self.groups.submit(stream, full_only=False, limit=None)
            if pending >= self.groups.count(stream):
                return started
            if not more:
                raise StorageError("assemble_groups", ErrorKind.TRANSIENT,
                                   f"group {pending} could not be started")
            started += more
            failures = self._last_failure.get(stream.stream_id, (0, None))[0]
            self._settle(stream)
            count, error = self._last_failure.get(stream.stream_id, (0, None))
            if count > failures and error is not None:
                raise error  # its own kind: a KMS AccessDenied is not retried soon

    def _settle(self, stream: Stream) -> None:
        streams = {stream.stream_id: stream}
        while True:
            futures = [c.future for c in self._copies.values()
                       if c.stream_id == stream.stream_id]
            futures += [j.future for j in self.groups.jobs.values()
                        if j.stream_id == stream.stream_id]
            if not futures:
                return
            wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
            self.harvest(streams, only=stream.stream_id)
            self.live.pulse()

    def complete(self, stream: Stream) -> None:
        """Complete the upload from the parts, in chunk order."""
        upload_id = stream.upload_id
        assert upload_id is not None
        key = stream.keys.final_object
        etags = (self.groups.etags(stream) if stream.record.group_chunks is not None
                 else [str(c.part_etag) for c in stream.chunks])
        try:
            self.storage.complete_upload(key, upload_id, etags)
        except UploadLost as exc:
            self.lose(stream, exc)
            raise
        except StorageError as exc:
            # Ceph RGW answers a complete of an aborted upload with 500 ("completion
            # already in progress"), not NoSuchUpload: ask, or it is retried forever
            if self.storage.upload_exists(key, upload_id) is False:
                self.lose(stream, exc)
            raise
