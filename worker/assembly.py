"""Copy-as-you-go assembly of the final object.

The contract has the final object assembled server-side from part copies of the
chunks. Doing every copy at completion put one request per chunk between the
idle deadline and ``metadata.json``: seconds for a long recording, more when
several streams finish together. Instead, once a stream has a committed chunk,
the uploader opens the multipart upload of its final object (recorded in the
stream record, bracketed by a WAL intent) and this module copies each committed
chunk into its part on a few threads while the loop goes on uploading. A chunk
uploaded again (its bytes changed on disk) loses its part and is copied again.
Completion waits for the copies in flight, copies what is left, and completes.

Only the loop thread touches LevelDB and the runtimes. The threads run
``Storage.copy_part`` and nothing else; ``harvest`` records what they did.
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
from worker.backoff import retry_delay
from worker.checkpoint import CheckpointStore, ChunkRecord
from worker.planning import MAX_PARTS
from worker.runtime import StreamRuntime
from worker.storage import Storage, UploadLost

__all__ = ["PartCopier", "COPY_THREADS", "BACKGROUND_IN_FLIGHT"]

COPY_THREADS = 8          # copies in flight when a stream completes
BACKGROUND_IN_FLIGHT = 4  # copies in flight while streams are still being recorded


@dataclass
class _Copy:
    stream_id: str
    upload_id: str
    chunk: ChunkRecord
    future: Future[str]


class PartCopier:
    """Part copies of one worker, run on its copy threads, recorded by its loop."""

    def __init__(self, storage: Storage, store: CheckpointStore, log: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self.store = store
        self.log = log
        self.clock = clock
        self._pool = ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="part-copy")
        self._copies: dict[tuple[str, int], _Copy] = {}
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self._scan_from: dict[str, tuple[str, int]] = {}  # stream -> (upload, first uncopied)

    def close(self) -> None:
        """Drop queued copies; one in flight ends with its request (it is recopied
        by whoever completes the stream, as nothing recorded it)."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    def in_flight(self) -> int:
        return len(self._copies)

    def backing_off(self, stream_id: str) -> bool:
        return self._retry_at.get(stream_id, 0.0) > self.clock()

    @staticmethod
    def missing(rt: StreamRuntime) -> list[ChunkRecord]:
        """Chunks that are not parts of the stream's open upload yet."""
        upload_id = rt.record.upload_id
        return [c for c in rt.chunks[:MAX_PARTS] if c.part_upload != upload_id]

    def submit(self, rt: StreamRuntime, limit: int | None = None, *,
               background: bool = False) -> int:
        """Start copies of ``rt``'s missing parts, keeping at most ``limit`` in flight.

        In the background, where chunks are only ever appended, the scan starts at
        the first part not yet known to be copied, so a long recording costs the loop
        O(1) per step, not O(chunks); completion scans everything."""
        upload_id = rt.record.upload_id
        if upload_id is None:
            return 0
        start = 0
        hint = self._scan_from.get(rt.stream_id)
        if background and hint is not None and hint[0] == upload_id:
            start = hint[1]
        started = 0
        first_missing: int | None = None
        end = min(len(rt.chunks), MAX_PARTS)
        for chunk in rt.chunks[start:end]:
            if chunk.part_upload == upload_id:
                continue
            if first_missing is None:
                first_missing = chunk.index
            if limit is not None and len(self._copies) >= limit:
                break
            slot = (rt.stream_id, chunk.index)
            if slot in self._copies:  # never two copies racing into one part
                continue
            future = self._pool.submit(self.storage.copy_part, rt.keys.final_object, upload_id,
                                       chunk.index + 1, rt.keys.chunk(chunk.index))
            self._copies[slot] = _Copy(rt.stream_id, upload_id, chunk, future)
            started += 1
        self._scan_from[rt.stream_id] = (upload_id, end if first_missing is None
                                         else first_missing)
        return started

    def forget(self, stream_id: str) -> None:
        """Drop what is kept about a stream that is done."""
        self._scan_from.pop(stream_id, None)
        self._failures.pop(stream_id, None)
        self._retry_at.pop(stream_id, None)

    def harvest(self, runtimes: Mapping[str, StreamRuntime], only: str | None = None) -> int:
        """Record finished copies, one LevelDB batch per stream. A copy made stale by a
        re-upload of its chunk or by a new upload is dropped. Returns how many finished."""
        finished = 0
        copied: dict[str, list[ChunkRecord]] = defaultdict(list)
        asked: set[str] = set()  # streams whose upload was looked up in this harvest
        for slot, copy in list(self._copies.items()):
            if (only is not None and copy.stream_id != only) or not copy.future.done():
                continue
            del self._copies[slot]
            finished += 1
            rt = runtimes.get(copy.stream_id)
            current = rt is not None and rt.record.upload_id == copy.upload_id
            try:
                etag = copy.future.result()
            except UploadLost as exc:
                if rt is not None and current:
                    self.lose(rt, exc)
                continue
            except StorageError as exc:
                if rt is not None and current and copy.stream_id not in asked:
                    asked.add(copy.stream_id)
                    if self.storage.upload_exists(rt.keys.final_object, copy.upload_id) is False:
                        self.lose(rt, exc)
                        continue
                self.failed(copy.stream_id, exc)
                continue
            if rt is None or not current:
                continue
            index = copy.chunk.index
            if index < len(rt.chunks) and rt.chunks[index].same_bytes(copy.chunk):
                copied[copy.stream_id].append(
                    replace(rt.chunks[index], part_upload=copy.upload_id, part_etag=etag))
        for stream_id, chunks in copied.items():
            rt = runtimes[stream_id]
            self.store.commit_parts(rt.record, chunks)
            for chunk in chunks:
                rt.chunks[chunk.index] = chunk
            self._failures.pop(stream_id, None)
            self._retry_at.pop(stream_id, None)
        return finished

    def finish(self, rt: StreamRuntime, pulse: Callable[[], None]) -> int:
        """Make every chunk of ``rt`` a part of its open upload; returns how many copies
        that took. Raises ``UploadLost`` when the upload turned out to be gone,
        ``StorageError`` when copies failed."""
        upload_id = rt.record.upload_id

        def settle() -> None:
            self._settle(rt, pulse)
            if rt.record.upload_id != upload_id:  # a copy found the upload gone
                raise UploadLost("upload_part_copy", ErrorKind.TRANSIENT, "NoSuchUpload")

        settle()  # earlier copies first: they may be stale
        started = self.submit(rt)
        settle()
        missing = self.missing(rt)
        if missing:
            raise StorageError("upload_part_copy", ErrorKind.TRANSIENT,
                               f"{len(missing)} part copies failed")
        return started

    def _settle(self, rt: StreamRuntime, pulse: Callable[[], None]) -> None:
        runtimes = {rt.stream_id: rt}
        while True:
            futures = [c.future for c in self._copies.values() if c.stream_id == rt.stream_id]
            if not futures:
                return
            wait(futures, timeout=0.5, return_when=FIRST_COMPLETED)
            self.harvest(runtimes, only=rt.stream_id)
            pulse()  # heartbeat and drain check, on the loop's thread

    def lose(self, rt: StreamRuntime, exc: StorageError) -> None:
        """Forget a multipart upload S3 no longer has; the next one starts afresh."""
        self.log.warning("multipart_lost", stream_id=rt.stream_id,
                         upload_id=rt.record.upload_id, error=exc.detail)
        rt.record = rt.record.evolve(upload_id=None)
        self.store.save_stream(rt.record)

    def failed(self, stream_id: str, exc: StorageError) -> None:
        """A background copy (or opening the upload) failed: back off this stream's
        copies; completion will copy again, and report the error if it persists."""
        failures = self._failures.get(stream_id, 0) + 1
        self._failures[stream_id] = failures
        delay = retry_delay(exc.kind, failures)
        self._retry_at[stream_id] = self.clock() + delay
        metrics.record_s3_failure(exc.operation, exc.kind.value)
        if failures <= 3 or failures % 10 == 0:
            self.log.warning("s3_retry", stream_id=stream_id, operation=exc.operation,
                             error=exc.detail, attempt=failures, retry_in=round(delay, 2))
