"""Recovery from the bucket (contract §10, ``--recover-from-bucket``): a file whose
stream the state dir does not know, while the state is new or was lost, is looked
up in S3 by its source path before it becomes a new stream.

A replaced disk or ``docker compose down -v`` loses the checkpoints, not the bucket.
Every stream of ``dir/cam.mp4`` lives under ``<prefix>/dir/cam-<8 hex>/``: one LIST
of ``<prefix>/dir/cam-`` names the candidates. A finished one is known by its
``metadata.json``, an unfinished one by its chunk objects, whose xxh3-128 each chunk
carries as object metadata. A candidate matches when the file holds exactly those
bytes (the verification read; nothing is uploaded): then its ``stream_id`` is kept.
An unfinished stream continues after its verified chunks, a finished unchanged file
is left alone, and a grown one is reopened. A file that matches nothing is new.

When to look: for an unknown file older than the state dir, and, in the first minute
of the run that made the state dir, for any unknown file (one still being written
when the state was lost). A file newer than the state dir is new, and known files
are never looked up: nothing is asked while the state is intact.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared import metrics
from shared.keys import StreamKeys, key_text, new_stream_id
from shared.s3 import StorageError
from shared.settings import Settings
from shared.state.records import ChunkRecord, StreamRecord, StreamStatus
from worker.backoff import retry_delay
from worker.source import SourceFiles
from worker.storage import Storage

__all__ = ["BucketRecovery", "Found"]

_STREAM_ID_TAIL = re.compile(r"^-[0-9a-f]{8}$")
STARTUP_WINDOW = 60.0  # seconds of a first run in which a newer file is looked up too


@dataclass(frozen=True)
class Found:
    """A stream found in S3 whose bytes the file holds."""

    record: StreamRecord
    chunks: list[ChunkRecord]
    finished: bool


def _timestamp(text: Any, default: float) -> float:
    try:
        return datetime.strptime(str(text), "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=UTC).timestamp()
    except ValueError:
        return default


class BucketRecovery:
    """Looks lost streams up in S3 for one worker."""

    def __init__(self, settings: Settings, storage: Storage, source: SourceFiles, log: Any,
                 pulse: Callable[[], None], *, fresh: bool, born_at: float) -> None:
        self.enabled = settings.recover_from_bucket
        self.prefix = settings.s3_prefix
        self.chunk_size = settings.chunk_size
        self.storage = storage
        self.source = source
        self.log = log
        self.pulse = pulse
        self.fresh = fresh        # this run made the state dir
        self.born_at = born_at    # when the state dir was made (0: before this feature)
        self.started_at: float | None = None  # the first file looked at (monotonic)
        self.pending: dict[str, float] = {}  # rel_path -> when to look it up (monotonic)
        self._failures: dict[str, int] = {}

    def applies(self, st: os.stat_result, now: float) -> bool:
        """Whether an unknown file is looked up: it is older than the state dir, or it
        is found in the first minute of a run on a new one (a recording that went on
        writing while the state was lost)."""
        if not self.enabled:
            return False
        if self.started_at is None:
            self.started_at = now
        return st.st_mtime < self.born_at or (self.fresh and
                                               now - self.started_at < STARTUP_WINDOW)

    def wait(self, rel_path: str) -> None:
        """Look ``rel_path`` up once S3 can be asked (after the bucket check)."""
        self.pending.setdefault(rel_path, 0.0)

    def step(self, now: float, adopt: Callable[[Found], None],
             start: Callable[[str, os.stat_result], None],
             between: Callable[[], None]) -> bool:
        """Look up the paths that are due: ``adopt`` what is found, ``start`` a new
        stream for a file that matches nothing. When S3 cannot say, that path waits
        and is asked again (never a duplicate stream for want of an answer)."""
        did = False
        for rel_path, due in list(self.pending.items()):
            if due > now:
                continue
            st = self.source.stat(rel_path)
            if st is None or not stat.S_ISREG(st.st_mode):
                del self.pending[rel_path]  # gone meanwhile: nothing to do
                continue
            try:
                found = self.find(rel_path, st)
            except StorageError as exc:
                failures = self._failures.get(rel_path, 0) + 1
                self._failures[rel_path] = failures
                self.pending[rel_path] = now + retry_delay(exc.kind, failures)
                metrics.record_s3_failure(exc.operation, exc.kind.value)
                self.log.warning("recovery_lookup_failed", rel_path=rel_path,
                                 error=exc.detail, attempt=failures)
                continue
            del self.pending[rel_path]
            self._failures.pop(rel_path, None)
            if found is not None:
                adopt(found)
            else:
                start(rel_path, st)
            did = True
            between()
        return did

    def find(self, rel_path: str, st: os.stat_result) -> Found | None:
        """The stream of ``rel_path`` in S3 that the file's bytes match, with the most
        bytes verified; None when none does. Raises ``StorageError`` when S3 cannot say
        (the caller tries again later rather than starting a duplicate)."""
        stem = new_stream_id(rel_path)[:-len("-00000000")]  # as every id of this path starts
        parent = StreamKeys(self.prefix, rel_path, f"{stem}-00000000").prefix.rpartition("/")[0]
        listed = self.storage.prefixes_under(f"{parent}/{stem}-" if parent else f"{stem}-")
        best: Found | None = None
        for candidate in listed:
            stream_id = candidate.rstrip("/").rpartition("/")[2]
            if not _STREAM_ID_TAIL.match(stream_id[len(stem):]):
                continue  # another file's stream (cam-2.mp4 is listed for cam.mp4)
            keys = StreamKeys(self.prefix, rel_path, stream_id)
            found = self._match(keys, rel_path, st)
            if found is not None and (best is None or
                                      found.record.size > best.record.size):
                best = found
        if best is not None:
            self.log.info("stream_recovered", stream_id=best.record.stream_id,
                          rel_path=rel_path, chunks=len(best.chunks),
                          finished=best.finished, candidates=len(listed))
        return best

    def _match(self, keys: StreamKeys, rel_path: str, st: os.stat_result) -> Found | None:
        document = self.storage.get_json(keys.metadata)
        if document is not None:
            if document.get("source_path") != key_text(rel_path) or \
                    document.get("status") != "complete":
                return None  # another path's, or a lineage that ended early
            chunks = [(int(c["index"]), int(c["offset"]), int(c["size"]), str(c["xxh3_128"]),
                       _timestamp(c.get("uploaded_at"), time.time()))
                      for c in document.get("chunks", [])]
            verified = self._verify(rel_path, st, chunks, whole=True)
            if verified is None:
                return None
            total = sum(c.size for c in verified)
            now = time.time()
            record = StreamRecord(
                stream_id=keys.stream_id, rel_path=rel_path, dev=st.st_dev, ino=st.st_ino,
                chunk_size=int(document.get("chunk_size") or self.chunk_size),
                started_at=_timestamp(document.get("started_at"), now),
                # an unchanged file is known unchanged; a grown one is reopened
                size=total, mtime_ns=st.st_mtime_ns if st.st_size == total else 0,
                status=StreamStatus.COMPLETE,
                completed_at=_timestamp(document.get("completed_at"), now),
                reopen_count=int(document.get("reopen_count") or 0),
                chunks_reuploaded=int(document.get("chunks_reuploaded") or 0),
                extra={"recovered_at": now})
            return Found(record, verified, finished=True)
        sizes = self.storage.sizes_under(keys.chunks_prefix)
        indexed = sorted((i, k) for k in sizes if (i := StreamKeys.chunk_index(k)) is not None)
        chunks, offset = [], 0
        for position, (index, key) in enumerate(indexed):
            if index != position:
                break  # a gap: only what is contiguous from the start is a stream
            head = self.storage.chunk_hash(key)
            if head is None or not head[1]:
                break
            chunks.append((index, offset, head[0], head[1], time.time()))
            offset += head[0]
        verified = self._verify(rel_path, st, chunks, whole=False)
        if not verified:
            return None
        sizes_seen = {c.size for c in verified[:-1]}
        chunk_size = sizes_seen.pop() if len(sizes_seen) == 1 else self.chunk_size
        if verified[-1].size < chunk_size:
            verified = verified[:-1]  # a short tail: uploaded again, fuller, at its key
        if not verified:
            return None
        now = time.time()
        record = StreamRecord(
            stream_id=keys.stream_id, rel_path=rel_path, dev=st.st_dev, ino=st.st_ino,
            chunk_size=chunk_size, started_at=now, size=verified[-1].end, mtime_ns=0,
            extra={"recovered_at": now})
        return Found(record, verified, finished=False)

    def _verify(self, rel_path: str, st: os.stat_result,
                chunks: list[tuple[int, int, int, str, float]],
                whole: bool) -> list[ChunkRecord] | None:
        """The chunks the file holds, read and hashed: all of them (``whole``: None when
        one differs), or the longest run from the start."""
        probe = StreamRecord(stream_id="-", rel_path=rel_path, dev=st.st_dev, ino=st.st_ino,
                             chunk_size=self.chunk_size, started_at=0.0)
        verified: list[ChunkRecord] = []
        try:
            with self.source.opened(probe) as (fd, now_st):
                for index, offset, size, digest, uploaded_at in chunks:
                    if offset + size > now_st.st_size or \
                            self.source.hash_range(fd, offset, size) != digest:
                        if whole:
                            return None
                        break
                    verified.append(ChunkRecord(index, offset, size, digest, uploaded_at))
                    self.pulse()
        except StorageError:
            raise
        except Exception:  # noqa: BLE001 - the file went or changed: no match
            return None
        return verified
