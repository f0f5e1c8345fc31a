"""Fragmented MP4, read from box headers: is a file fragmented, where do its fragments
begin, and how long is each (contract §2 chunk boundaries, §6 live playlists).

A fragmented MP4 is ``ftyp``, a ``moov`` holding ``mvex``, then ``moof``+``mdat``
pairs. Only box headers are read to walk the file (8 or 16 bytes each: an ``mdat``'s
header gives its end, so its payload is never read), plus the small ``moov`` and each
``moof``, whose timing (``tfdt``, ``trun``, ``tfhd`` and ``trex`` defaults, the track
timescale from ``mdhd``) gives a fragment's duration and whether it starts on a sync
sample. Everything reads through ``read_at(offset, size)``, which may return less at
the current end of a growing file: a header cut there is "not on disk yet", not an
error.

Why by hand, when PyAV is already a dependency: FFmpeg's demuxer wants a whole file
and reads payloads; the walk here runs on every loop step of a live stream and must
touch only headers, and stop cleanly where the writer has got to.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Box", "Movie", "Fragment", "NotMP4", "file_reader", "read_box", "classify",
           "read_movie",
           "next_boundary", "fragments_in", "parse_movie", "payload"]

ReadAt = Callable[[int, int], bytes]

_TOP_LEVEL = {b"ftyp", b"styp", b"moov", b"moof", b"mdat", b"free", b"skip", b"wide",
              b"sidx", b"prft", b"emsg", b"mfra", b"uuid", b"meta", b"pdin", b"ssix"}


class NotMP4(ValueError):
    """The bytes are not a sequence of MP4 boxes."""


@dataclass(frozen=True)
class Box:
    type: bytes
    offset: int
    header: int            # 8, 16 (64-bit size)
    size: int | None       # None: "to the end of the file" (size field 0), still growing

    @property
    def end(self) -> int | None:
        return None if self.size is None else self.offset + self.size


def file_reader(fd: int) -> ReadAt:
    """``read_at`` over an open file: ``os.pread``, so walks never move its offset."""
    return lambda offset, size: os.pread(fd, size, offset)


def read_box(read_at: ReadAt, offset: int, file_size: int) -> Box | None:
    """The box whose header starts at ``offset``; None when the header is not all on
    disk yet. Raises NotMP4 for a header no MP4 writer makes."""
    head = read_at(offset, 16) if file_size - offset >= 8 else b""
    if len(head) < 8:
        return None
    size, kind = struct.unpack(">I4s", head[:8])
    if not all(32 < c < 127 for c in kind):
        raise NotMP4(f"not a box type at {offset}: {kind!r}")
    if size == 1:
        if len(head) < 16:
            return None
        (size,) = struct.unpack(">Q", head[8:16])
        if size < 16:
            raise NotMP4(f"64-bit box size {size} at {offset}")
        return Box(kind, offset, 16, size)
    if size == 0:
        return Box(kind, offset, 8, None)
    if size < 8:
        raise NotMP4(f"box size {size} at {offset}")
    return Box(kind, offset, 8, size)


def payload(read_at: ReadAt, box: Box) -> bytes:
    """A whole box's payload (``moov``, ``moof``: small ones), read at once."""
    assert box.size is not None, "a box still growing has no payload yet"
    return read_at(box.offset + box.header, box.size - box.header)


def _children(data: bytes, start: int = 0) -> list[tuple[bytes, bytes]]:
    """(type, payload) of the boxes packed in ``data`` (a box's payload, in memory)."""
    out, pos = [], start
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        header = 8
        if size == 1:
            if pos + 16 > len(data):
                break
            (size,) = struct.unpack(">Q", data[pos + 8:pos + 16])
            header = 16
        elif size == 0:
            size = len(data) - pos
        if size < header or pos + size > len(data):
            break
        out.append((kind, data[pos + header:pos + size]))
        pos += size
    return out


def _child(data: bytes, kind: bytes) -> bytes | None:
    return next((payload for k, payload in _children(data) if k == kind), None)


@dataclass
class Track:
    timescale: int = 1
    handler: bytes = b""
    default_duration: int = 0   # trex
    default_flags: int = 0      # trex


@dataclass
class Movie:
    """What the ``moov`` says: its tracks, and whether it announces fragments."""

    tracks: dict[int, Track] = field(default_factory=dict)
    fragmented: bool = False

    @property
    def timing_track(self) -> int | None:
        """The track whose fragments give durations: the video track if there is one."""
        for track_id, track in self.tracks.items():
            if track.handler == b"vide":
                return track_id
        return min(self.tracks) if self.tracks else None


def parse_movie(moov: bytes) -> Movie:
    """The tracks (timescale, handler, ``trex`` defaults) of a ``moov`` payload."""
    movie = Movie()
    for kind, payload in _children(moov):
        if kind == b"trak":
            tkhd = _child(payload, b"tkhd") or b""
            mdia = _child(payload, b"mdia") or b""
            mdhd = _child(mdia, b"mdhd") or b""
            hdlr = _child(mdia, b"hdlr") or b""
            if len(tkhd) < 24 or len(mdhd) < 24:
                continue
            track_id = struct.unpack(">I", tkhd[20:24] if tkhd[0] == 1 else tkhd[12:16])[0]
            timescale = struct.unpack(">I", mdhd[20:24] if mdhd[0] == 1 else mdhd[12:16])[0]
            track = movie.tracks.setdefault(track_id, Track())
            track.timescale = timescale or 1
            track.handler = hdlr[8:12]
        elif kind == b"mvex":
            movie.fragmented = True
            for sub, body in _children(payload):
                if sub == b"trex" and len(body) >= 24:
                    track_id, _, duration, _, flags = struct.unpack(">IIIII", body[4:24])
                    track = movie.tracks.setdefault(track_id, Track())
                    track.default_duration, track.default_flags = duration, flags
    return movie


def classify(read_at: ReadAt, file_size: int) -> tuple[str | None, int]:
    """("fmp4", where the first fragment begins) for a fragmented MP4; ("fixed", 0) for
    anything else (a regular MP4, whose ``mdat`` comes before its ``moov``, or not MP4);
    (None, 0) while the boxes that decide are not all on disk yet."""
    kind, first, _ = _scan(read_at, file_size)
    return kind, first


def read_movie(read_at: ReadAt, file_size: int) -> tuple[int, Movie]:
    """(where the first fragment begins, the ``moov``) of a fragmented MP4; NotMP4 for
    anything else, or while the boxes that decide are not all on disk."""
    kind, first, movie = _scan(read_at, file_size)
    if kind != "fmp4" or movie is None:
        raise NotMP4("not (or not yet) a fragmented MP4")
    return first, movie


def _scan(read_at: ReadAt, file_size: int) -> tuple[str | None, int, Movie | None]:
    """The top-level walk behind ``classify`` and ``read_movie``, up to the first moof."""
    pos, moov = 0, None
    try:
        while True:
            box = read_box(read_at, pos, file_size)
            if box is None:
                return None, 0, None
            if box.type not in _TOP_LEVEL:
                return "fixed", 0, None
            if box.type == b"moof":
                return ("fmp4", box.offset, moov) if moov is not None and moov.fragmented \
                    else ("fixed", 0, None)
            if box.type == b"mdat" or box.end is None:
                return "fixed", 0, None
            if box.type == b"moov":
                if box.end > file_size:
                    return None, 0, None
                moov = parse_movie(payload(read_at, box))
                if not moov.fragmented:
                    return "fixed", 0, None
            pos = box.end
    except (NotMP4, struct.error):   # a moov shorter than its fields: not one to trust
        return "fixed", 0, None


def next_boundary(read_at: ReadAt, start: int, scan_from: int, file_size: int,
                  chunk_size: int, limit: int) -> tuple[int | None, int]:
    """Where the chunk starting at ``start`` ends: the first top-level ``moof`` that
    begins at least ``chunk_size`` bytes after ``start``. Returns (that offset or None
    while its header is not on disk, where to resume the walk next time). ``scan_from``
    is a box boundary at or after ``start`` (the last call's resume point). Raises
    NotMP4 when no boundary can come within ``limit`` bytes of ``start``."""
    pos = scan_from
    while True:
        box = read_box(read_at, pos, file_size)
        if box is None:
            return None, pos
        if box.offset - start > limit:
            raise NotMP4(f"no fragment boundary within {limit} bytes of {start}")
        if box.type == b"moof" and box.offset - start >= chunk_size:
            return box.offset, pos
        if box.end is None:   # runs to the end of the file: no boundary while it grows
            if file_size - start > limit:
                raise NotMP4(f"a box at {box.offset} runs past the chunk limit")
            return None, pos
        if box.end - start > limit and box.type != b"moof":
            raise NotMP4(f"a box of {box.size} bytes at {box.offset} passes the chunk limit")
        pos = box.end


@dataclass(frozen=True)
class Fragment:
    offset: int      # where its moof begins
    size: int        # to the next moof, or the end of what follows it
    duration: float  # seconds, of the timing track
    start: float     # seconds: tfdt of the timing track
    sync: bool       # its first sample of the timing track is a sync sample


def _fragment_timing(moof: bytes, movie: Movie) -> tuple[float, float, bool] | None:
    """(duration, start, sync) of the timing track's run in this ``moof``; None when it
    has none, or when its boxes are shorter than their flags say (a damaged moof is a
    fragment of unknown length, not a failed stream)."""
    try:
        return _timing(moof, movie)
    except struct.error:
        return None


def _timing(moof: bytes, movie: Movie) -> tuple[float, float, bool] | None:
    wanted = movie.timing_track
    for kind, traf in _children(moof):
        if kind != b"traf":
            continue
        tfhd = _child(traf, b"tfhd") or b""
        if len(tfhd) < 8:
            continue
        flags = int.from_bytes(tfhd[1:4], "big")
        (track_id,) = struct.unpack(">I", tfhd[4:8])
        if wanted is not None and track_id != wanted:
            continue
        track = movie.tracks.get(track_id, Track())
        pos = 8 + (8 if flags & 0x1 else 0) + (4 if flags & 0x2 else 0)
        default_duration, default_flags = track.default_duration, track.default_flags
        if flags & 0x8:
            (default_duration,) = struct.unpack(">I", tfhd[pos:pos + 4])
            pos += 4
        pos += 4 if flags & 0x10 else 0
        if flags & 0x20:
            (default_flags,) = struct.unpack(">I", tfhd[pos:pos + 4])
        tfdt = _child(traf, b"tfdt") or b""
        base = 0
        if len(tfdt) >= 8:
            base = struct.unpack(">Q", tfdt[4:12])[0] if tfdt[0] == 1 and len(tfdt) >= 12 \
                else struct.unpack(">I", tfdt[4:8])[0]
        total, first_flags = 0, None
        for sub, trun in _children(traf):
            if sub != b"trun" or len(trun) < 8:
                continue
            tflags = int.from_bytes(trun[1:4], "big")
            (count,) = struct.unpack(">I", trun[4:8])
            pos = 8 + (4 if tflags & 0x1 else 0)
            first = None
            if tflags & 0x4:
                (first,) = struct.unpack(">I", trun[pos:pos + 4])
                pos += 4
            fields = [bit for bit in (0x100, 0x200, 0x400, 0x800) if tflags & bit]
            step = 4 * len(fields)
            if not step:   # no per-sample fields: every sample takes the defaults
                total += count * default_duration
                first_flags = first_flags if first_flags is not None else \
                    (first if first is not None else default_flags)
                continue
            for i in range(count):
                row = trun[pos + i * step:pos + (i + 1) * step]
                if len(row) < step:
                    break
                values = dict(zip(fields, struct.unpack(f">{len(fields)}I", row), strict=True))
                total += values.get(0x100, default_duration)
                if first_flags is None:
                    first_flags = first if first is not None else values.get(0x400, default_flags)
        scale = track.timescale or 1
        sync = first_flags is not None and not (first_flags >> 16) & 1
        return total / scale, base / scale, sync
    return None


def fragments_in(read_at: ReadAt, start: int, end: int, movie: Movie) -> list[Fragment]:
    """The fragments whose ``moof`` begins in [start, end) (a chunk, or the whole file),
    each reaching to the next ``moof`` or to the end of the boxes after it (an ``mfra``
    index at the end of a file is left out)."""
    found: list[tuple[int, float, float, bool]] = []
    ends: list[int] = []
    pos = start
    while pos < end:
        box = read_box(read_at, pos, end)
        if box is None or box.end is None or box.end > end:
            break
        if box.type == b"moof":
            timing = _fragment_timing(payload(read_at, box), movie)
            duration, begin, sync = timing or (0.0, 0.0, False)
            found.append((box.offset, duration, begin, sync))
            ends.append(box.end)
        elif found and box.type != b"mfra":
            ends[-1] = box.end
        pos = box.end
    return [Fragment(offset, ends[i] - offset, duration, begin, sync)
            for i, (offset, duration, begin, sync) in enumerate(found)]
