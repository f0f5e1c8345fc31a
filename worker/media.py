"""Probe MP4 recordings for the ``media`` fields and duration in metadata.json.

The duration recorded in metadata.json comes from the file's own timing
(movie/track headers, fragment headers, packet timestamps), never from
wall-clock time or file size, so it stays right even when a recording was
uploaded slowly or copied later.

Cameras write two kinds of MP4:

* regular MP4 with the ``moov`` box at the end: the duration is in ``moov``,
  and a file cut before ``moov`` was written cannot be read at all;
* fragmented MP4 written live (``empty_moov``): ``moov`` holds no samples and
  no duration, the timing lives in the ``moof`` fragment headers.  FFmpeg
  usually recovers the total from the fragments when the input is seekable,
  but the header-based total over-counts when the last fragment is cut short,
  so in that case (and whenever no header duration exists) the packets are
  demuxed, without decoding, and their timestamps are used.

Fragmentation and "is this an MP4 at all" are decided by walking the
top-level ISO-BMFF box headers ourselves, reading headers only.

:func:`probe_media` never raises for bad input; it returns a
:class:`MediaInfo` whose ``error`` explains why the file could not be read.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, BinaryIO

if TYPE_CHECKING:
    import av


@cache
def _av() -> Any:
    """PyAV, imported on first probe: it costs ~17 MB and start-up time in every worker,
    and most of a worker's life is uploading, not probing."""
    import av
    import av.logging

    # PyAV installs a silent FFmpeg log callback by default; set it explicitly so
    # FFmpeg never writes to stderr and the service's JSON logs stay clean.
    av.logging.set_level(None)
    return av

__all__ = ["MediaInfo", "probe_media"]

# Types accepted as the first top-level box of an MP4 / ISO-BMFF file.
_FIRST_BOX_TYPES = frozenset(b"ftyp styp moov mdat free skip wide pdin uuid sidx moof".split())
# Upper bound on the number of box headers read (top level and inside moov);
# a multi-hour fragmented recording has a few hundred thousand at most.
_MAX_BOXES = 2_000_000
_MAX_MOOV_CHILDREN = 10_000
# Options for every stream's decoder while probing (``options``, not ``stream_options``,
# which PyAV refuses for formats that expose no streams before probing).
_NO_DECODE = {"skip_frame": "all"}


@dataclass(frozen=True)
class MediaInfo:
    """What :func:`probe_media` learned about one file."""

    duration_seconds: float | None
    fragmented: bool | None
    video_codec: str | None
    width: int | None
    height: int | None
    error: str | None

    def media_dict(self) -> dict:
        """The ``media`` object of metadata.json."""
        return {
            "fragmented": self.fragmented,
            "video_codec": self.video_codec,
            "width": self.width,
            "height": self.height,
        }


def _failed(error: str, fragmented: bool | None = None) -> MediaInfo:
    return MediaInfo(None, fragmented, None, None, None, error)


@dataclass
class _BoxScan:
    """Result of walking the top-level box headers."""

    is_mp4: bool = False
    has_moov: bool = False
    has_moof: bool = False
    has_mvex: bool = False
    # The last box runs past the end of the file, the file ends inside a box
    # header, or the last box is a moof whose mdat is missing.
    tail_incomplete: bool = False
    # Offset of an invalid box header after the first box, if any.
    invalid_at: int | None = None

    @property
    def fragmented(self) -> bool:
        return self.has_moof or self.has_mvex


def _is_box_type(btype: bytes) -> bool:
    return all(0x20 <= b <= 0x7E for b in btype)


def _read_box_header(fh: BinaryIO, offset: int, limit: int) -> tuple[bytes, int, int] | None:
    """Return (type, size, header_length) of the box at ``offset``.

    ``size`` is the declared size (possibly beyond ``limit``); size 0 means
    "to ``limit``".  Returns None when the header is cut off by ``limit`` or
    is malformed.
    """
    if limit - offset < 8:
        return None
    fh.seek(offset)
    header = fh.read(8)
    if len(header) < 8:
        return None
    size, btype = struct.unpack(">I4s", header)
    header_len = 8
    if size == 1:
        if limit - offset < 16:
            return None
        large = fh.read(8)
        if len(large) < 8:
            return None
        (size,) = struct.unpack(">Q", large)
        header_len = 16
        if size < 16:
            return None
    elif size == 0:
        size = limit - offset
    elif size < 8:
        return None
    if not _is_box_type(btype):
        return None
    return btype, size, header_len


def _moov_has_mvex(fh: BinaryIO, start: int, end: int) -> bool:
    offset = start
    for _ in range(_MAX_MOOV_CHILDREN):
        header = _read_box_header(fh, offset, end)
        if header is None:
            return False
        btype, size, _ = header
        if btype == b"mvex":
            return True
        offset += size
    return False


def _scan_boxes(fh: BinaryIO, file_size: int) -> _BoxScan:
    scan = _BoxScan()
    offset = 0
    last_type = b""
    for index in range(_MAX_BOXES):
        if offset >= file_size:
            break
        header = _read_box_header(fh, offset, file_size)
        if header is None:
            if index == 0:
                return scan  # not an MP4
            if file_size - offset < 16:
                scan.tail_incomplete = True  # file ends inside a box header
            else:
                scan.invalid_at = offset
            break
        btype, size, header_len = header
        if index == 0:
            if btype not in _FIRST_BOX_TYPES:
                return scan  # not an MP4
            scan.is_mp4 = True
        end = offset + size
        if btype == b"moov":
            scan.has_moov = True
            if _moov_has_mvex(fh, offset + header_len, min(end, file_size)):
                scan.has_mvex = True
        elif btype == b"moof":
            scan.has_moof = True
        last_type = btype
        if end > file_size:
            scan.tail_incomplete = True
            break
        offset = end
    if last_type == b"moof":
        scan.tail_incomplete = True
    return scan


def _demux_duration(container: av.container.InputContainer) -> float | None:
    """Span of packet timestamps, demuxing only (no decoding, flat memory)."""
    start: float | None = None
    end: float | None = None
    try:
        for packet in container.demux():
            ts = packet.pts if packet.pts is not None else packet.dts
            if ts is None or packet.time_base is None:
                continue  # flush packet at end of stream
            time_base = float(packet.time_base)
            packet_start = ts * time_base
            packet_end = (ts + (packet.duration or 0)) * time_base
            if start is None or packet_start < start:
                start = packet_start
            if end is None or packet_end > end:
                end = packet_end
    except (_av().FFmpegError, OSError):
        pass  # keep what was read before the damaged part
    if start is None or end is None:
        return None
    return max(end - start, 0.0)


def _header_duration(container: av.container.InputContainer) -> float | None:
    if container.duration and container.duration > 0:
        return float(container.duration / _av().time_base)
    durations = [
        float(stream.duration * stream.time_base)
        for stream in container.streams
        if stream.duration and stream.duration > 0 and stream.time_base
    ]
    return max(durations) if durations else None


def _probe_container(path: str, scan: _BoxScan) -> MediaInfo:
    fragmented = scan.fragmented
    try:
        # skip_frame=all: FFmpeg learns codec, size and duration from the headers and
        # decodes no picture while probing (a 720p keyframe cost ~12 of the ~20 ms)
        container = _av().open(path, mode="r", options=_NO_DECODE)
    except Exception as exc:  # noqa: BLE001 - FFmpeg errors, OSError, odd input
        return _failed(f"unreadable MP4: {_short(exc)}", fragmented)
    try:
        video_codec = width = height = None
        if container.streams.video:
            codec_context = container.streams.video[0].codec_context
            video_codec = codec_context.name or None
            width = codec_context.width or None
            height = codec_context.height or None
        duration = None
        if not (fragmented and scan.tail_incomplete):
            duration = _header_duration(container)
        if duration is None:
            duration = _demux_duration(container)
    except Exception as exc:  # noqa: BLE001 - a native decoder must not crash the service
        return _failed(f"unreadable MP4: {_short(exc)}", fragmented)
    finally:
        container.close()
    if duration is None:
        return MediaInfo(None, fragmented, video_codec, width, height, "no media samples in MP4")
    return MediaInfo(round(duration, 6), fragmented, video_codec, width, height, None)


def _short(exc: BaseException) -> str:
    if isinstance(exc, _av().FFmpegError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def probe_media(path: str | os.PathLike) -> MediaInfo:
    """Probe an MP4 file; never raises for missing, empty or broken files."""
    path = os.fspath(path)
    try:
        with open(path, "rb", buffering=0) as fh:
            file_size = os.fstat(fh.fileno()).st_size
            if file_size == 0:
                return _failed("empty file (0 bytes)")
            scan = _scan_boxes(fh, file_size)
    except FileNotFoundError:
        return _failed("file not found")
    except IsADirectoryError:
        return _failed("not a regular file")
    except OSError as exc:
        return _failed(f"cannot read file: {_short(exc)}")

    if not scan.is_mp4:
        return _failed("not an MP4: no ISO-BMFF box header")
    if not scan.has_moov:
        if scan.invalid_at is not None:
            return _failed(
                f"corrupt MP4: invalid box header at offset {scan.invalid_at}",
                scan.fragmented,
            )
        return _failed("truncated MP4: moov box missing", scan.fragmented)
    return _probe_container(path, scan)
