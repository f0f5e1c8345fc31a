"""Completion of a stream: tail, verify, probe, assemble, metadata.

Runs once the file has been idle for the stream timeout (or at once for a stream
whose file was deleted or replaced while recording, from what was uploaded). Each
step can fail and be retried from the start: ``SourceChanged`` sends the stream back
to being watched (the file moved on), a ``StorageError`` backs it off. Only the last
step changes the stream's state: ``metadata.json`` is written, then the stream is
complete.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from shared import metrics
from shared.s3 import ErrorKind, StorageError
from shared.settings import Settings
from shared.state.wal import WriteAheadLog
from shared.timefmt import now
from worker.groups import MAX_OBJECT_BYTES
from worker.liveness import Liveness
from worker.media import MediaInfo
from worker.metadata import build_metadata
from worker.multipart import FinalUpload
from worker.prober import Prober
from worker.settled import FileState
from worker.source import SourceFiles
from worker.storage import Storage
from worker.stream import Stream, StreamState
from worker.uploader import Uploader

if TYPE_CHECKING:  # worker/live.py imports the stream and the storage this uses
    from worker.live import LivePlaylists

__all__ = ["Finalizer"]


class _PhaseClock:
    """Seconds spent in each phase of a completion, for the ``stream_completed`` line."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.monotonic()

    def lap(self, phase: str) -> None:
        moment = time.monotonic()
        self.laps[phase] = round(moment - self._last, 4)
        self._last = moment


class Finalizer:
    """Completes one worker's streams."""

    def __init__(self, settings: Settings, source: SourceFiles, uploader: Uploader,
                 upload: FinalUpload, storage: Storage, wal: WriteAheadLog, prober: Prober,
                 log: Any, live: Liveness) -> None:
        self.keep_chunks = settings.keep_chunks
        self.playlists: LivePlaylists | None = None  # set by worker/wiring.py
        self.source = source
        self.uploader = uploader
        self.upload = upload
        self.storage = storage
        self.wal = wal
        self.prober = prober
        self.log = log
        self.live = live

    def finalize(self, stream: Stream) -> None:
        """Tail, verify, assemble, probe, write metadata.json; raises SourceChanged when
        the file moved on, which simply sends the stream back to being watched."""
        stream.make_durable()  # a stream with no chunk gets its first S3 object here
        clock = _PhaseClock()
        if stream.state is StreamState.RECORDING:
            before = self.source.check_unchanged(stream.record)
            spans = stream.completion_spans() if self.playlists is None else \
                self.playlists.completion_spans(stream)
            for span in spans:
                self.uploader.upload_chunk(stream, span)
                self.live.pulse()
            clock.lap("tail")
            verified = self._verify(stream)
            verified_ctime_ns = self.source.check_unchanged(stream.record).st_ctime_ns
            if verified_ctime_ns != before.st_ctime_ns:
                # changed during verification with size and mtime kept (`touch -r`, a
                # chmod): what was verified is unknown, so local retention never
                # removes this file (0), until a change reopens the stream
                verified_ctime_ns = 0
            clock.lap("verify")
            media = self._probe(stream)
            clock.lap("probe")
            status = "complete"
        else:
            end_reason = str(stream.record.end_reason)
            media = MediaInfo(None, None, None, None, None,
                              error=f"{end_reason.replace('_', ' ')} before completion")
            status = end_reason
            verified = {}
            verified_ctime_ns = 0
        object_key: str | None = stream.keys.final_object
        copied_late = 0
        if not self.upload.fits(stream):
            object_key = None
            self.upload.give_up(stream)
            self.log.error("assembly_impossible", stream_id=stream.stream_id,
                           chunks=len(stream.chunks), max_parts=self.upload.max_parts,
                           bytes=stream.committed_bytes,
                           reason="over S3's 5 TiB object limit"
                           if stream.committed_bytes > MAX_OBJECT_BYTES
                           else "more groups than --max-parts")
        else:
            copied_late = self._assemble(stream, clock)
        clock.lap("check")
        # from the verified file's final bytes; a stream that ended early: its live one
        playlist_key = None if self.playlists is None else \
            self.playlists.finish(stream, object_key) if status == "complete" else \
            self.playlists.end(stream, object_key)
        completed_at = now()
        document = build_metadata(stream.record, stream.chunks, stream.keys, media,
                                  status=status, completed_at=completed_at,
                                  object_key=object_key,
                                  assembly=self._assembly(stream, object_key))
        if playlist_key is not None:
            document["playlist_key"] = playlist_key
        self.storage.put_json(stream.keys.metadata, document)
        stream.complete(completed_at, verified_ctime_ns)
        clock.lap("metadata")
        if not self.keep_chunks and object_key is not None:  # else they are the data
            self.storage.delete_keys([stream.keys.chunk(c.index) for c in stream.chunks])
        self.upload.forget(stream.stream_id)
        record = stream.record
        metrics.STREAMS_COMPLETED.labels(status=status).inc()
        self.log.info("stream_completed", stream_id=record.stream_id, rel_path=record.rel_path,
                      status=status, total_size_bytes=document["total_size_bytes"],
                      chunks=len(stream.chunks), chunks_reuploaded=record.chunks_reuploaded,
                      media_duration_seconds=document["media_duration_seconds"],
                      media_error=document.get("media_error"), reopen_count=record.reopen_count,
                      parts_copied_at_completion=copied_late, chunks_verified=verified,
                      seconds=clock.laps)
        if document.get("media_error"):
            metrics.MEDIA_ERRORS.inc()

    def _probe(self, stream: Stream) -> MediaInfo:
        """Probe (in the helper process, worker/prober.py) through a descriptor opened
        beneath the watch dir, so PyAV reads exactly the verified file, nothing outside."""
        with self.source.opened(stream.record) as (fd, _):
            return self.prober.probe(fd)

    def _verify(self, stream: Stream) -> dict[str, int]:
        """Check every chunk against the file; re-upload those whose bytes changed since
        their upload (MP4 muxers patch headers after the fact). A chunk read from a file
        that had settled, and that is still in that state, is known unchanged without a
        read (worker/settled.py); every other chunk is read and hashed again. Returns how
        many chunks were checked each way."""
        counts = {"read": 0, "settled": 0}
        with self.source.opened(stream.record) as (fd, st):
            now_state = FileState.of(st)
            for chunk in list(stream.chunks):
                if stream.settled.get(chunk.index) == (now_state, chunk.xxh3_128):
                    counts["settled"] += 1
                    continue
                counts["read"] += 1
                if self.source.hash_range(fd, chunk.offset, chunk.size) != chunk.xxh3_128:
                    self.log.info("chunk_changed_on_disk", stream_id=stream.stream_id,
                                  index=chunk.index)
                    self.uploader.upload_chunk(stream, stream.span_of(chunk))
                    metrics.CHUNKS_REUPLOADED.inc()
                self.live.pulse()
        for by, count in counts.items():
            metrics.CHUNKS_VERIFIED.labels(by=by).inc(count)
        return counts

    def _assemble(self, stream: Stream, clock: _PhaseClock) -> int:
        """Complete the stream's multipart upload (copying the parts still missing), or
        for a stream of at most one chunk and no upload, one plain request. Returns how
        many part copies were left for now (the rest were made while recording)."""
        key = stream.keys.final_object
        copied = 0
        # one chunk: one CopyObject, unless encrypted (radosgw before Tentacle answers
        # CopyObject of an encrypted source with 501; UploadPartCopy works everywhere)
        if stream.upload_id is None and (not stream.chunks or len(stream.chunks) == 1
                                         and self.storage.policy.encryption is None):
            intent = self.wal.begin("assemble", stream_id=stream.stream_id, index=-1,
                                    rel_path=stream.rel_path, key=key)
            self.storage.abort_uploads(key)  # leftovers of an attempt cut short
            if stream.chunks:
                self.storage.copy_object(key, stream.keys.chunk(0))
            else:
                self.storage.put_empty(key)
            if stream.record.group_chunks is not None:
                # a two-level stream that ended with at most a chunk (it was uploaded
                # again after a reopen without kept chunks): no group is in this object
                self.upload.groups.sweep(stream)
                stream.save_groups(None, [])
        elif stream.record.group_chunks is not None and self.upload.groups.assembled(stream):
            # a crash after the last assembly, or a reopen that changed nothing: the
            # object is right; its intermediates may still need removing
            intent = self.wal.begin("assemble", stream_id=stream.stream_id, index=-1,
                                    rel_path=stream.rel_path, key=key)
            self.upload.abandon(stream)
        else:
            copied = self.upload.prepare(stream)
            clock.lap("copy")
            intent = self.wal.begin("assemble", stream_id=stream.stream_id, index=-1,
                                    rel_path=stream.rel_path, key=key)
            self.upload.complete(stream)
            clock.lap("complete")
        size = self.storage.object_size(key)
        if size != stream.committed_bytes:
            raise StorageError("assemble", ErrorKind.TRANSIENT,
                               f"assembled object has {size} bytes, expected "
                               f"{stream.committed_bytes}")
        if stream.record.group_chunks is not None:
            # the groups now live in the final object: record that, then remove them
            self.upload.groups.settle(stream)
            removed = self.upload.groups.sweep(stream)
            clock.lap("sweep")
            self.log.info("groups_removed", stream_id=stream.stream_id, objects=removed)
        self.wal.done(intent)
        return copied

    def _assembly(self, stream: Stream, object_key: str | None) -> dict[str, Any] | None:
        """How the final object was made, for metadata.json (contract §9)."""
        if object_key is None:
            return None
        chunks = len(stream.chunks)
        if stream.record.group_chunks is None:
            return {"method": "multipart_copy" if chunks > 1 or stream.upload_id
                    else "copy" if chunks else "empty", "levels": 1, "parts": chunks}
        return {"method": "multipart_copy", "levels": 2, "parts": self.upload.groups.count(stream),
                "chunks_per_group": stream.record.group_chunks}
