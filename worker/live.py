"""Live playback (contract §6): fragment-aligned chunks and ``P/playlist.m3u8``.

A stream's layout is decided once, before its first chunk, from its first boxes
(worker/fmp4.py) and kept in its record (``extra["layout"]``): ``fmp4`` streams end
each chunk where the first ``moof`` at least ``chunk_size`` bytes into it begins, so
every chunk holds whole fragments and its key ends in ``.m4s``; anything else keeps
fixed chunks. A stream with chunks but no layout (made before this existed, or with
``--no-live-playlist``) is fixed. If a chunk could not end on a fragment within
``min(2 × chunk_size, 5 GiB)`` (a fragment that large), the rest of the stream is
fixed (``extra["fixed_from"]``): two-level assembly sizes its groups by that bound,
and the live playlist stops at the last aligned chunk.

The playlist is derived state: after a committed chunk (or a restart) it is rebuilt
from the chunks' own fragments and PUT whole, at most once per committed chunk. A
crash leaves the previous one, which names only committed chunks: still valid, so
nothing of it goes in the write-ahead log. At completion it is rebuilt from the final
bytes, against the assembled object, with ``#EXT-X-ENDLIST``; a stream whose file was
deleted or replaced while recording has no final bytes, and its last live playlist is
moved into the assembled object instead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from shared import metrics
from shared.s3 import ErrorKind, StorageError
from shared.settings import Settings
from shared.state.records import ChunkRecord
from worker.backoff import retry_delay
from worker.fmp4 import (
    Movie,
    NotMP4,
    classify,
    file_reader,
    fragments_in,
    next_boundary,
    read_movie,
)
from worker.planning import ChunkSpan, completion_spans
from worker.playlist import Segment, object_uri, parse, render, segments_of
from worker.source import SourceChanged, SourceFiles
from worker.storage import Storage
from worker.stream import Stream

__all__ = ["LivePlaylists"]


@dataclass
class _Live:
    """What memory keeps of one fmp4 stream: its movie, the boundary walk's resume
    point, each chunk's segments (keyed by the chunk as committed), what was written."""

    movie: Movie | None = None
    init_size: int = 0
    scan: tuple[int, int] = (0, 0)            # (chunk start, where the walk resumes)
    segments: dict[tuple[int, int, int, str], list[Segment]] = field(default_factory=dict)
    written: int = -1                         # chunks the last playlist PUT named
    failures: int = 0                         # refused playlist PUTs in a row
    retry_at: float = 0.0                     # monotonic: when a refused one is tried again


class LivePlaylists:
    def __init__(self, settings: Settings, source: SourceFiles, storage: Storage,
                 log: Any) -> None:
        self.enabled = settings.live_playlist
        self.source, self.storage, self.log = source, storage, log
        self._live: dict[str, _Live] = {}

    # -- chunk planning ------------------------------------------------------------
    def next_full_chunk(self, stream: Stream) -> ChunkSpan | None:
        """The next chunk to upload while recording, if all of it is on disk."""
        layout = self._layout(stream, final=False)
        if layout is None:
            return None                     # the boxes that decide are not on disk yet
        if not self._aligned(stream, len(stream.chunks)):
            return stream.next_full_chunk()
        index = len(stream.chunks)
        boundary = self._boundary(stream, index, stream.committed_bytes, stream.record.size)
        if boundary is None:  # not on disk yet; or no fragment boundary can come: fixed
            return None if self._aligned(stream, index) else stream.next_full_chunk()
        return ChunkSpan(index, stream.committed_bytes, boundary - stream.committed_bytes)

    def completion_spans(self, stream: Stream) -> list[ChunkSpan]:
        """Every chunk still to upload at completion: aligned ones, then the tail."""
        self._layout(stream, final=True)
        spans: list[ChunkSpan] = []
        index, offset, size = len(stream.chunks), stream.committed_bytes, stream.record.size
        while offset < size and self._aligned(stream, index):
            boundary = self._boundary(stream, index, offset, size)
            if boundary is None:
                if self._aligned(stream, index):   # the tail: the last fragments
                    return spans + [ChunkSpan(index, offset, size - offset)]
                break
            spans.append(ChunkSpan(index, offset, boundary - offset))
            index, offset = index + 1, boundary
        return spans + completion_spans(index, offset, size, stream.record.chunk_size)

    def _aligned(self, stream: Stream, index: int) -> bool:
        fixed_from = stream.record.extra.get("fixed_from")
        return stream.fragmented and (fixed_from is None or index < int(fixed_from))

    def _layout(self, stream: Stream, final: bool) -> str | None:
        layout = stream.record.extra.get("layout")
        if layout is not None or stream.chunks or not self.enabled:
            return layout or "fixed"
        with self.source.opened(stream.record) as (fd, _):
            decided, first = classify(file_reader(fd), stream.record.size)
        if decided is None and not final:
            return None
        stream.set_layout(decided or "fixed")
        if decided == "fmp4":
            self._live[stream.stream_id] = _Live(init_size=first)
            self.log.info("stream_fragmented", stream_id=stream.stream_id, init_bytes=first)
        return decided or "fixed"

    def _boundary(self, stream: Stream, index: int, start: int, size: int) -> int | None:
        """Where chunk ``index`` (from ``start``) ends, if that is on disk; None also
        when no fragment can end it in time, which makes the rest fixed."""
        live = self._live.setdefault(stream.stream_id, _Live())
        resume = live.scan[1] if live.scan[0] == start else start
        try:
            with self.source.opened(stream.record) as (fd, _):
                boundary, resume = next_boundary(file_reader(fd), start, resume, size,
                                                 stream.record.chunk_size,
                                                 stream.largest_chunk)
        except NotMP4 as exc:
            stream.fix_layout_from(index)
            self.log.warning("live_playlist_stopped", stream_id=stream.stream_id,
                             from_chunk=index, reason=str(exc))
            return None
        live.scan = (start, resume)
        return boundary

    # -- the playlist ----------------------------------------------------------------
    def refresh(self, stream: Stream) -> None:
        """PUT the live playlist if chunks were committed since the last one."""
        if not stream.fragmented or not stream.chunks:
            return
        live = self._live.setdefault(stream.stream_id, _Live())
        chunks = [c for c in stream.chunks if self._aligned(stream, c.index)]
        if live.written == len(chunks):   # fixed chunks after fixed_from add nothing
            return
        if time.monotonic() < live.retry_at:
            return
        try:
            with self.source.opened(stream.record) as (fd, _):
                read = file_reader(fd)
                if live.movie is None:
                    self._read_movie(live, read, stream.record.size)
                assert live.movie is not None
                segments = [s for c in chunks
                            for s in self._chunk_segments(live, read, stream, c)]
        except NotMP4 as exc:   # the file was rewritten under us: completion will judge
            self.log.warning("playlist_skipped", stream_id=stream.stream_id, reason=str(exc))
            live.written = len(chunks)
            return
        try:
            size = self._put(stream, render(_chunk_uri(stream, 0), live.init_size, segments,
                                            ended=False))
        except StorageError as exc:
            # never in the way of the chunks: tried again on the S3 backoff schedule, so
            # a player sees the chunks already up without waiting for the next one
            # (completion writes the final playlist, with the stream's own retries)
            live.failures += 1
            live.retry_at = time.monotonic() + retry_delay(exc.kind, live.failures)
            if live.failures <= 3 or live.failures % 10 == 0:
                self.log.warning("playlist_write_failed", stream_id=stream.stream_id,
                                 error=exc.detail, kind=exc.kind.value,
                                 attempt=live.failures)
            return
        live.written, live.failures = len(chunks), 0
        self.log.info("playlist_written", stream_id=stream.stream_id, chunks=len(chunks),
                      segments=len(segments), bytes=size)

    def finish(self, stream: Stream, object_key: str | None) -> str | None:
        """At completion: the playlist with ``#EXT-X-ENDLIST``, from the final bytes and
        against the assembled object (against the chunks if there is none); its key,
        or None for a stream with no playlist."""
        if not stream.fragmented or not stream.chunks:
            return None
        live = _Live()
        size = stream.record.size
        try:
            with self.source.opened(stream.record) as (fd, _):
                read = file_reader(fd)
                self._read_movie(live, read, size)
                assert live.movie is not None
                # the live playlist's segments, in the same places (a player following
                # it keeps its position), read again from the final bytes and named in
                # the assembled object when there is one
                final = _object_uri(object_key)
                init_uri = final or _chunk_uri(stream, 0)
                segments = [s for c in stream.chunks if self._aligned(stream, c.index)
                            for s in self._chunk_segments(live, read, stream, c, final)]
        except (NotMP4, SourceChanged) as exc:
            # rewritten in place as something else, or gone or grown since it was
            # verified and assembled: the object is complete, the stream completes
            # without a final playlist (a grown file is reopened and writes it again)
            self.log.warning("playlist_skipped", stream_id=stream.stream_id,
                             reason=str(exc))
            self._live.pop(stream.stream_id, None)
            return None
        key = self._put_final(stream, render(init_uri, live.init_size, segments, ended=True))
        if key is not None:
            self._live.pop(stream.stream_id, None)
        return key

    def end(self, stream: Stream, object_key: str | None) -> str | None:
        """A stream that ended early (its file deleted or replaced while recording):
        there are no final bytes to read again, so the last live playlist is read back,
        its segments moved into the assembled object (the same ranges, at their chunks'
        offsets), and written with ``#EXT-X-ENDLIST``. It keeps the segments that its
        committed chunks hold, up to the first that they do not (a dropped tail's, named
        by an earlier completion's playlist); its key is returned, or None when the
        stream has no playlist."""
        self._live.pop(stream.stream_id, None)
        if not stream.fragmented or not stream.chunks:
            return None
        try:
            text = self.storage.get_playlist(stream.keys.playlist)
            init_uri, init_size, listed = parse(text) if text is not None else ("", 0, [])
        except (StorageError, ValueError) as exc:
            if isinstance(exc, StorageError) and exc.kind is not ErrorKind.PERMANENT:
                raise   # completion is retried, with the stream's backoff
            self.log.warning("playlist_skipped", stream_id=stream.stream_id,
                             reason=f"the live playlist cannot be read back: {exc}")
            return None
        final = _object_uri(object_key)
        first = _chunk_uri(stream, 0)
        if init_uri not in (final, first) or init_size > stream.chunks[0].size:
            return None   # none written (or not this stream's): nothing to end
        aligned = {_chunk_uri(stream, c.index): c for c in stream.chunks
                   if self._aligned(stream, c.index)}
        segments: list[Segment] = []
        for listed_segment in listed:
            moved = _moved(listed_segment, final, aligned, stream.committed_bytes)
            if moved is None:
                break
            segments.append(moved)
        return self._put_final(stream, render(final or first, init_size, segments, ended=True))

    def forget(self, stream_id: str) -> None:
        self._live.pop(stream_id, None)

    def _read_movie(self, live: _Live, read: Any, size: int) -> None:
        live.init_size, live.movie = read_movie(read, size)

    def _chunk_segments(self, live: _Live, read: Any, stream: Stream, chunk: ChunkRecord,
                        final: str | None = None) -> list[Segment]:
        """Chunk ``chunk``'s segments, as byte ranges of the chunk object, or of the
        assembled object named ``final`` (the same segments: a segment never spans two
        chunks, so the playlist keeps its numbering when it moves to the final object)."""
        key = (chunk.index, chunk.offset, chunk.size, chunk.xxh3_128)
        if key not in live.segments:
            assert live.movie is not None
            fragments = fragments_in(read, max(chunk.offset, live.init_size), chunk.end,
                                     live.movie)
            live.segments[key] = segments_of(fragments, _chunk_uri(stream, chunk.index),
                                             chunk.offset)
        if final is None:
            return live.segments[key]
        return [Segment(final, s.offset + chunk.offset, s.size, s.duration)
                for s in live.segments[key]]

    def _put_final(self, stream: Stream, text: str) -> str | None:
        """The ``ENDLIST`` playlist PUT at completion: its key; None when S3 refuses it
        for good, and the stream completes without it. Anything else is raised: the
        completion is retried, with the stream's backoff."""
        try:
            self._put(stream, text)
        except StorageError as exc:
            if exc.kind is not ErrorKind.PERMANENT:
                raise
            self.log.warning("playlist_write_failed", stream_id=stream.stream_id,
                             error=exc.detail, kind=exc.kind.value)
            return None
        return stream.keys.playlist

    def _put(self, stream: Stream, text: str) -> int:
        body = text.encode()
        self.storage.put_playlist(stream.keys.playlist, body)
        metrics.PLAYLIST_WRITES.inc()
        metrics.PLAYLIST_BYTES.inc(len(body))
        return len(body)


def _chunk_uri(stream: Stream, index: int) -> str:
    """Chunk ``index``'s key relative to the playlist (both live under ``P``)."""
    return "chunks/" + object_uri(stream.keys.chunk(index).rsplit("/", 1)[1])


def _object_uri(object_key: str | None) -> str | None:
    """The assembled object's key relative to the playlist (both under ``P``), if any."""
    return object_uri(object_key.rsplit("/", 1)[1]) if object_key else None


def _moved(segment: Segment, final: str | None, aligned: dict[str, ChunkRecord],
           committed: int) -> Segment | None:
    """A read-back segment as a range of the assembled object ``final`` (of its chunk
    when there is none), or None when no committed aligned chunk holds it."""
    if segment.uri == final:   # put there by an earlier try, or an earlier completion
        return segment if segment.offset + segment.size <= committed else None
    chunk = aligned.get(segment.uri)
    if chunk is None or segment.offset + segment.size > chunk.size:
        return None
    if final is None:
        return segment
    return Segment(final, chunk.offset + segment.offset, segment.size, segment.duration)
