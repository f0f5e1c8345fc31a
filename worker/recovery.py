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

When to look: for an unknown file older than the state dir, and, in the state dir's
first minute, for any unknown file (one still being written when the state was
lost). A file newer than the state dir is new, and known files are never looked up:
nothing is asked while the state is intact (but for an unknown file with an old
mtime, such as one copied in with ``cp -p``). One path is looked up per loop step,
so uploads go on meanwhile.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from shared import metrics
from shared.keys import FRAGMENT_SUFFIX, StreamKeys, key_text, new_stream_id
from shared.s3 import ErrorKind, StorageError
from shared.settings import Settings
from shared.state.records import ChunkRecord, StreamRecord, StreamStatus
from worker.backoff import retry_delay
from worker.fmp4 import NotMP4, file_reader, next_boundary
from worker.planning import aligned_chunk_limit
from worker.source import SourceChanged, SourceError, SourceFiles
from worker.storage import Storage

__all__ = ["BucketRecovery", "Found"]

_STREAM_ID_TAIL = re.compile(r"^-[0-9a-f]{8}$")
STARTUP_WINDOW = 60.0  # seconds after a state dir is made in which newer files are looked up
MAX_CANDIDATES = 50    # earlier lineages of one path looked at, at most


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
                 pulse: Callable[[], None], *, born_at: float) -> None:
        self.enabled = settings.recover_from_bucket
        self.prefix = settings.s3_prefix
        self.chunk_size = settings.chunk_size
        self.storage = storage
        self.source = source
        self.log = log
        self.pulse = pulse
        self.born_at = born_at    # when the state dir was made (0: before this feature)
        self.taken: Callable[[str], bool] = lambda stream_id: False  # ids the state has
        self.pending: dict[str, float] = {}  # rel_path -> when to look it up (monotonic)
        self._failures: dict[str, int] = {}

    def applies(self, st: os.stat_result) -> bool:
        """Whether an unknown file is looked up: it is older than the state dir, or the
        state dir is less than a minute old (a recording still being written when the
        state was lost, whichever process or restart first sees it)."""
        if not self.enabled or self.born_at <= 0:
            return False  # a state dir from before recovery existed is intact by definition
        return st.st_mtime < self.born_at or time.time() - self.born_at < STARTUP_WINDOW

    def wait(self, rel_path: str) -> None:
        """Look ``rel_path`` up once S3 can be asked (after the bucket check)."""
        self.pending.setdefault(rel_path, 0.0)

    def step(self, now: float, known: Callable[[str], bool], adopt: Callable[[Found], None],
             start: Callable[[str, os.stat_result], None]) -> bool:
        """Look up one path that is due, so that uploads go on between lookups: ``adopt``
        what is found, ``start`` a new stream for a file that matches nothing. When S3
        or the file cannot say, the path waits and is asked again: never a duplicate
        stream for want of an answer. A path that has a stream meanwhile is dropped."""
        for rel_path, due in list(self.pending.items()):
            if due > now:
                continue
            if known(rel_path):
                del self.pending[rel_path]
                continue
            try:
                st = self.source.stat(rel_path)
                if st is None or not stat.S_ISREG(st.st_mode):
                    del self.pending[rel_path]  # gone meanwhile: nothing to do
                    continue
                found = self.find(rel_path, st)
            except (StorageError, SourceError) as exc:
                failures = self._failures.get(rel_path, 0) + 1
                self._failures[rel_path] = failures
                kind = exc.kind if isinstance(exc, StorageError) else ErrorKind.TRANSIENT
                self.pending[rel_path] = now + retry_delay(kind, failures)
                if isinstance(exc, StorageError):
                    metrics.record_s3_failure(exc.operation, exc.kind.value)
                self.log.warning("recovery_lookup_failed", rel_path=rel_path,
                                 error=getattr(exc, "detail", str(exc)), attempt=failures)
                return True
            del self.pending[rel_path]
            self._failures.pop(rel_path, None)
            if found is not None:
                adopt(found)
            else:
                start(rel_path, st)
            return True
        return False

    def find(self, rel_path: str, st: os.stat_result) -> Found | None:
        """The stream of ``rel_path`` in S3 that the file's bytes match, with the most
        bytes verified; None when none does. Raises ``StorageError`` when S3 cannot say
        (the caller tries again later rather than starting a duplicate); a candidate
        S3 refuses outright (a key changed since) is passed over."""
        stem = new_stream_id(rel_path)[:-len("-00000000")]  # as every id of this path starts
        parent = StreamKeys(self.prefix, rel_path, f"{stem}-00000000").prefix.rpartition("/")[0]
        listed = self.storage.prefixes_under(f"{parent}/{stem}-" if parent else f"{stem}-")
        best: Found | None = None
        for candidate in listed[:MAX_CANDIDATES]:
            stream_id = candidate.rstrip("/").rpartition("/")[2]
            if not _STREAM_ID_TAIL.match(stream_id[len(stem):]) or self.taken(stream_id):
                continue  # another file's stream (cam-2.mp4 is listed for cam.mp4)
            keys = StreamKeys(self.prefix, rel_path, stream_id)
            try:
                found = self._match(keys, rel_path, st)
            except StorageError as exc:
                if exc.kind is not ErrorKind.PERMANENT:
                    raise
                self.log.warning("recovery_candidate_refused", rel_path=rel_path,
                                 stream_id=stream_id, error=exc.detail)
                continue
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
            return self._match_finished(document, keys, rel_path, st)
        # unfinished: its chunk objects, each checked as it is listed, from the start
        sizes = self.storage.sizes_under(keys.chunks_prefix)
        self.pulse()
        indexed = sorted((i, k) for k in sizes if (i := StreamKeys.chunk_index(k)) is not None)
        verified: list[ChunkRecord] = []
        with self._opened(rel_path, st) as fd:
            for position, (index, key) in enumerate(indexed):
                if index != position:
                    break  # a gap: only what is contiguous from the start is a stream
                head = self.storage.chunk_hash(key)
                offset = verified[-1].end if verified else 0
                if head is None or not head[1] or offset + head[0] > st.st_size or \
                        self.source.hash_range(fd, offset, head[0]) != head[1]:
                    break
                verified.append(ChunkRecord(index, offset, head[0], head[1], time.time()))
                self.pulse()
            sizes_seen = {c.size for c in verified[:-1]}
            layout = _layout(key for _, key in indexed)
            if layout:  # chunks of whole fragments: each full one at least chunk_size long
                chunk_size = min([self.chunk_size, *sizes_seen])
            else:
                chunk_size = sizes_seen.pop() if len(sizes_seen) == 1 else self.chunk_size
            if verified and verified[-1].size < chunk_size:
                verified = verified[:-1]  # a short tail: uploaded again, fuller, at its key
            if not verified:
                return None
            layout |= _fixed_from(fd, verified, layout)
        now = time.time()
        record = StreamRecord(
            stream_id=keys.stream_id, rel_path=rel_path, dev=st.st_dev, ino=st.st_ino,
            chunk_size=chunk_size, started_at=now, size=verified[-1].end, mtime_ns=0,
            extra={"recovered_at": now, **layout})
        return Found(record, verified, finished=False)

    def _match_finished(self, document: dict[str, Any], keys: StreamKeys, rel_path: str,
                        st: os.stat_result) -> Found | None:
        if document.get("source_path") != key_text(rel_path) or \
                document.get("status") != "complete":
            return None  # another path's, or a lineage that ended early
        try:
            chunks = [ChunkRecord(int(c["index"]), int(c["offset"]), int(c["size"]),
                                  str(c["xxh3_128"]),
                                  _timestamp(c.get("uploaded_at"), time.time()))
                      for c in document["chunks"]]
            chunk_size = int(document.get("chunk_size") or self.chunk_size)
        except (KeyError, TypeError, ValueError):
            return None  # not a metadata.json this service wrote
        total = sum(c.size for c in chunks)
        if total == 0 and st.st_size > 0:
            return None  # an empty recording's: says nothing of these bytes
        layout = _layout(str(c.get("key", "")) for c in document["chunks"])
        with self._opened(rel_path, st) as fd:
            before = os.fstat(fd).st_ctime_ns
            for chunk in chunks:
                if chunk.end > st.st_size or \
                        self.source.hash_range(fd, chunk.offset, chunk.size) != chunk.xxh3_128:
                    return None
                self.pulse()
            after = os.fstat(fd)
            layout |= _fixed_from(fd, chunks, layout)
        now = time.time()
        unchanged = after.st_size == total and after.st_ctime_ns == before
        record = StreamRecord(
            stream_id=keys.stream_id, rel_path=rel_path, dev=st.st_dev, ino=st.st_ino,
            chunk_size=chunk_size, started_at=_timestamp(document.get("started_at"), now),
            # an unchanged file is known unchanged; a grown one is reopened
            size=total, mtime_ns=after.st_mtime_ns if unchanged else 0,
            status=StreamStatus.COMPLETE,
            completed_at=_timestamp(document.get("completed_at"), now),
            reopen_count=int(document.get("reopen_count") or 0),
            chunks_reuploaded=int(document.get("chunks_reuploaded") or 0),
            extra={"recovered_at": now, **layout})
        # verified as completion verifies: local retention may remove it
        record = record.with_extra(verified_ctime_ns=before if unchanged else None)
        return Found(record, chunks, finished=True)

    @contextmanager
    def _opened(self, rel_path: str, st: os.stat_result) -> Iterator[int]:
        probe = StreamRecord(stream_id="-", rel_path=rel_path, dev=st.st_dev, ino=st.st_ino,
                             chunk_size=self.chunk_size, started_at=0.0)
        try:
            with self.source.opened(probe) as (fd, _):
                yield fd
        except SourceChanged as exc:
            raise SourceError(f"the file changed while it was looked up: {exc}") from exc


def _layout(chunk_keys: Iterable[str]) -> dict[str, Any]:
    """A stream whose chunk keys end in ``.m4s`` had fragment-aligned chunks and a live
    playlist (worker/live.py): its record says so again."""
    return {"layout": "fmp4"} if any(k.endswith(FRAGMENT_SUFFIX) for k in chunk_keys) else {}


def _fixed_from(fd: int, chunks: list[ChunkRecord], layout: dict[str, Any]) -> dict[str, int]:
    """Where an ``fmp4`` stream's chunks stopped ending on fragments (fragments too
    large for a chunk, worker/live.py): the first chunk from whose start the boundary
    walk finds no fragment boundary in time, as it found none when the chunk was cut.
    Only a chunk that ends neither where a ``moof`` begins nor at the end of the file
    is walked (a tail cut at the end of the file then, followed now by an ``mfra``, is
    not fixed), with its own size as the chunk size: the first fixed chunk is exactly
    the size the stream had then, whatever ``--chunk-size`` says now. The record must
    say where the fixed chunks start, or the live playlist would walk them as
    fragments and stop for good."""
    if not layout:
        return {}
    size = os.fstat(fd).st_size
    read = file_reader(fd)
    for chunk in chunks:
        if chunk.end >= size or read(chunk.end, 8)[4:8] == b"moof":
            continue
        try:
            next_boundary(read, chunk.offset, chunk.offset, size, chunk.size,
                          aligned_chunk_limit(chunk.size))
        except NotMP4:
            return {"fixed_from": chunk.index}
    return {}
