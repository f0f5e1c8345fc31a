"""Chunk upload and reconciliation: the S3 side of a stream's chunks.

Each chunk PUT is bracketed by the write-ahead log: intent, the call, the commit to
the stream (LevelDB), then the done mark. After a crash, ``reconcile`` settles each
intent left pending with what S3 holds. Failures raise ``StorageError``,
``SourceError`` or ``SourceChanged``; the tracker backs off and calls again, so every
method here may be re-run from the start after a failure or a crash.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import xxhash

from shared import metrics
from shared.state.records import ChunkRecord
from shared.state.wal import Intent, WriteAheadLog
from shared.timefmt import now
from worker.planning import ChunkSpan
from worker.settled import FileState, SettledFiles
from worker.source import SourceFiles
from worker.storage import Storage
from worker.stream import Stream

__all__ = ["Uploader", "PreparedChunk"]


@dataclass(frozen=True)
class PreparedChunk:
    """A chunk read and its intent logged, ready to be sent."""

    span: ChunkSpan
    data: bytes | bytearray | memoryview   # valid until its source reads again
    digest: str
    key: str
    proof: FileState | None  # the settled-file proof, judged when the read began
    intent: Intent


class Uploader:
    """Uploads one worker's chunks, one blocking call at a time."""

    def __init__(self, source: SourceFiles, wal: WriteAheadLog, storage: Storage, log: Any,
                 settled: SettledFiles) -> None:
        self.source = source
        self.wal = wal
        self.storage = storage
        self.log = log
        self.settled = settled

    def upload_chunk(self, stream: Stream, span: ChunkSpan, live: bool = True) -> None:
        """Upload chunk ``span.index`` (new, or a replacement of one whose bytes changed)."""
        prepared = self.prepare(stream, span, self.source)
        self.commit(stream, prepared, self.send(prepared, live))

    def prepare(self, stream: Stream, span: ChunkSpan, source: SourceFiles) -> PreparedChunk:
        """Read the chunk (into ``source``'s buffer) and log the intent: the part of an
        upload that touches the file and the state, on the loop's thread."""
        record = stream.record
        stream.make_durable()  # the key below names the stream
        data, before = source.read_chunk(record, span)
        digest = xxhash.xxh3_128_hexdigest(data)
        key = stream.keys.chunk(span.index)
        # A new chunk's intent is not fsynced: a killed worker still finds it and settles
        # the chunk with a HEAD; after a power loss that drops it, the chunk in flight is
        # sent again (same key, same bytes), which the contract allows. Its record (below)
        # is synced. One fsync less per chunk, on the path to the chunk being visible.
        # A re-upload's intent is: its record already names other bytes, and if the file
        # is gone after the loss, only the intent can tell that S3 holds the new ones.
        intent = self.wal.begin("put_chunk", stream_id=record.stream_id, index=span.index,
                                durable=span.index < len(stream.chunks),
                                rel_path=record.rel_path, offset=span.offset, size=span.size,
                                xxh3_128=digest, key=key)
        # judged now, not at the commit: the chunk may wait on the lane or the cap
        return PreparedChunk(span, data, digest, key, self.settled.proof(before), intent)

    def send(self, prepared: PreparedChunk, live: bool) -> float:
        """The PUT alone; its seconds. Safe on another thread (the backlog lane)."""
        started = time.monotonic()
        self.storage.put_chunk(prepared.key, prepared.data, prepared.digest, live)
        return time.monotonic() - started

    def commit(self, stream: Stream, prepared: PreparedChunk, elapsed: float) -> None:
        """Record a chunk S3 acknowledged, on the loop's thread."""
        span, digest = prepared.span, prepared.digest
        stream.commit_chunk(ChunkRecord(span.index, span.offset, span.size, digest, now()))
        self.wal.done(prepared.intent)
        if prepared.proof is not None:
            stream.settled[span.index] = (prepared.proof, digest)
        else:
            stream.settled.pop(span.index, None)
        metrics.CHUNKS_UPLOADED.inc()
        metrics.UPLOADED_BYTES.inc(span.size)
        metrics.CHUNK_UPLOAD_SECONDS.observe(elapsed)
        self.log.info("chunk_uploaded", stream_id=stream.stream_id, index=span.index,
                      offset=span.offset, size=span.size, seconds=round(elapsed, 4))

    def reconcile(self, stream: Stream | None, intent: Intent) -> None:
        """Settle an intent found pending after a crash with what S3 holds. ``stream`` is
        the intent's unfinished stream, or None when it has none any more."""
        if intent.op == "put_chunk" and stream is not None:
            index, size = int(intent.fields["index"]), int(intent.fields["size"])
            digest = str(intent.fields["xxh3_128"])
            landed = self.storage.chunk_hash(str(intent.fields["key"])) == (size, digest)
            chunks = stream.chunks
            recorded = index < len(chunks) and chunks[index].xxh3_128 == digest
            if landed and not recorded and index <= len(chunks):
                stream.commit_chunk(ChunkRecord(index, int(intent.fields["offset"]), size,
                                                digest, now()))
                self.log.info("chunk_recovered", stream_id=stream.stream_id, index=index)
        elif intent.op in ("open_upload", "assemble"):
            # an upload opened but never recorded, or left by an older version: abort
            # it; the one the stream record holds is resumed
            keep = stream.upload_id if stream is not None else None
            aborted = self.storage.abort_uploads(str(intent.fields["key"]), keep=keep)
            if aborted:
                self.log.info("multipart_aborted", stream_id=intent.stream_id, uploads=aborted)
        self.wal.done(intent)
