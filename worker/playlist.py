"""The HLS media playlist of a fragmented stream (contract §6), as text.

Segments are byte ranges of one object each (a chunk while recording, the assembled
object at the end), made of whole fragments: a segment starts a new one when it has
at least ``MIN_SEGMENT`` seconds and the next fragment begins on a sync sample, or when
the next fragment would take it past ``MAX_SEGMENT``; a short last segment of an object
joins the one before it when that stays within ``MAX_SEGMENT``. ``#EXTINF`` is the fragments'
own duration (``tfdt``/``trun`` in the track's timescale), never wall time.
``#EXT-X-TARGETDURATION`` is the longest ``#EXTINF`` rounded to the nearest integer
(RFC 8216 §4.3.3.1: every duration, rounded, must not exceed it).

Each segment's URI carries ``?segment=<its media sequence number>``, which S3 ignores.
FFmpeg's HLS demuxer (9.0, and so ffplay and mpv) reading over HTTP from a server that
accepts ranges decodes only the first of several contiguous byte-range segments that
share one URL: 50 of 300 frames here, against all 300 with the URLs made distinct or
with ``-http_seekable 0``. A distinct URL per segment costs nothing elsewhere (hls.js
and a CDN see one cacheable URL per segment).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from urllib.parse import quote

from worker.fmp4 import Fragment

__all__ = ["Segment", "segments_of", "render", "parse", "MIN_SEGMENT", "MAX_SEGMENT"]

MIN_SEGMENT = 2.0
MAX_SEGMENT = 6.0


@dataclass(frozen=True)
class Segment:
    uri: str         # relative to the playlist: "chunks/000003.m4s", or the file's name
    offset: int      # within that object
    size: int
    duration: float


def segments_of(fragments: list[Fragment], uri: str, base: int) -> list[Segment]:
    """``fragments`` (file offsets) grouped into segments of the object at ``uri``,
    which holds the file's bytes from ``base`` on."""
    groups: list[list[Fragment]] = []
    for fragment in fragments:
        if groups:
            length = sum(f.duration for f in groups[-1])
            if not ((length >= MIN_SEGMENT and fragment.sync)
                    or length + fragment.duration > MAX_SEGMENT):
                groups[-1].append(fragment)
                continue
        groups.append([fragment])
    if len(groups) >= 2 and sum(f.duration for f in groups[-1]) < MIN_SEGMENT and \
            sum(f.duration for f in groups[-2] + groups[-1]) <= MAX_SEGMENT:
        groups[-2:] = [groups[-2] + groups[-1]]   # no short segment before a chunk's end
    return [Segment(uri, group[0].offset - base,
                    group[-1].offset + group[-1].size - group[0].offset,
                    sum(f.duration for f in group)) for group in groups]


def _round(seconds: float) -> int:
    return math.floor(seconds + 0.5)


def object_uri(name: str) -> str:
    """A key's last part as a relative URI (spaces and other reserved bytes escaped)."""
    return quote(name, safe="-_.~")


def render(init_uri: str, init_size: int, segments: list[Segment], *, ended: bool) -> str:
    """The playlist: version 7, EVENT, the init section as ``#EXT-X-MAP``."""
    target = max([_round(s.duration) for s in segments] + [1])
    lines = ["#EXTM3U", "#EXT-X-VERSION:7", f"#EXT-X-TARGETDURATION:{target}",
             "#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-MEDIA-SEQUENCE:0",
             f'#EXT-X-MAP:URI="{init_uri}",BYTERANGE="{init_size}@0"']
    for number, segment in enumerate(segments):
        lines += [f"#EXTINF:{segment.duration:.6f},",
                  f"#EXT-X-BYTERANGE:{segment.size}@{segment.offset}",
                  f"{segment.uri}?segment={number}"]
    if ended:
        lines.append("#EXT-X-ENDLIST")
    return "\n".join(lines) + "\n"


_MAP = re.compile(r'#EXT-X-MAP:URI="([^"]+)",BYTERANGE="(\d+)@0"')
_RANGE = re.compile(r"#EXT-X-BYTERANGE:(\d+)@(\d+)")
_INF = re.compile(r"#EXTINF:(\d+(?:\.\d+)?),")


def parse(text: str) -> tuple[str, int, list[Segment]]:
    """The inverse of :func:`render`, for a playlist this service wrote: (init URI, init
    size, segments, their URIs without ``?segment=N``). Raises ValueError for any other
    text: it is rewritten only when it is read back exactly."""
    init: tuple[str, int] | None = None
    segments: list[Segment] = []
    duration: float | None = None
    byterange: tuple[int, int] | None = None
    for line in text.splitlines():
        if match := _MAP.fullmatch(line):
            init = match[1], int(match[2])
        elif match := _INF.fullmatch(line):
            duration = float(match[1])
        elif match := _RANGE.fullmatch(line):
            byterange = int(match[1]), int(match[2])
        elif line and not line.startswith("#"):
            if duration is None or byterange is None:
                raise ValueError(f"a segment URI without #EXTINF and #EXT-X-BYTERANGE: {line}")
            segments.append(Segment(line.partition("?")[0], byterange[1], byterange[0],
                                    duration))
            duration = byterange = None
    if init is None:
        raise ValueError("no #EXT-X-MAP")
    return init[0], init[1], segments
