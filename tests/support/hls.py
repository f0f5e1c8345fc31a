"""Reading an HLS media playlist the way a player does, for the live playback tests
(contract §6): the tags this service writes, segments resolved against the playlist's
own key, and the bytes each byte range names, fetched from S3."""

from __future__ import annotations

import io
import json
import posixpath
import re
import subprocess
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from tests.support.videos import ffmpeg_exe

__all__ = ["Playlist", "parse_playlist", "fetch_playlist", "read_range", "check_ranges", "decode",
           "play_with_ffmpeg", "public_read"]


@dataclass(frozen=True)
class Range:
    key: str
    offset: int
    size: int


@dataclass
class Playlist:
    text: str
    version: int
    target: int
    kind: str
    init: Range
    segments: list[tuple[float, Range]]
    ended: bool

    @property
    def duration(self) -> float:
        return sum(d for d, _ in self.segments)


def _range(spec: str) -> tuple[int, int]:
    size, _, offset = spec.partition("@")
    return int(offset), int(size)


def parse_playlist(text: str, key: str) -> Playlist:
    """Parse ``text`` (the object at ``key``); URIs resolve against ``key``'s folder.
    Fails on a tag this service does not write, or a segment without a byte range."""
    lines = [line for line in text.splitlines() if line]
    assert lines[0] == "#EXTM3U", lines[:1]
    base = posixpath.dirname(key)
    version = target = 0
    kind, init, ended = "", None, False
    segments: list[tuple[float, Range]] = []
    duration: float | None = None
    byterange: tuple[int, int] | None = None
    for line in lines[1:]:
        if line.startswith("#EXT-X-VERSION:"):
            version = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-TARGETDURATION:"):
            target = int(line.split(":", 1)[1])
        elif line.startswith("#EXT-X-PLAYLIST-TYPE:"):
            kind = line.split(":", 1)[1]
        elif line.startswith("#EXT-X-MAP:"):
            attrs = dict(re.findall(r'([A-Z-]+)="([^"]*)"', line))
            offset, size = _range(attrs["BYTERANGE"])
            init = Range(posixpath.join(base, unquote(attrs["URI"])), offset, size)
        elif line.startswith("#EXTINF:"):
            duration = float(line.split(":", 1)[1].rstrip(","))
        elif line.startswith("#EXT-X-BYTERANGE:"):
            byterange = _range(line.split(":", 1)[1])
        elif line == "#EXT-X-ENDLIST":
            ended = True
        elif line.startswith("#EXT-X-MEDIA-SEQUENCE:"):
            assert line.endswith(":0")
        elif line.startswith("#"):
            raise AssertionError(f"unexpected tag {line!r}")
        else:
            assert duration is not None and byterange is not None, line
            uri, _, query = line.partition("?")
            assert query == f"segment={len(segments)}", line  # a distinct URL per segment
            segments.append((duration, Range(posixpath.join(base, unquote(uri)), *byterange)))
            duration = byterange = None
    assert init is not None, "no #EXT-X-MAP"
    return Playlist(text, version, target, kind, init, segments, ended)


def fetch_playlist(client: Any, bucket: str, key: str) -> Playlist | None:
    """The playlist at ``key``, parsed; None while there is none."""
    try:
        text = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    except client.exceptions.NoSuchKey:
        return None
    return parse_playlist(text, key)


def read_range(client: Any, bucket: str, r: Range) -> bytes:
    body = client.get_object(Bucket=bucket, Key=r.key,
                             Range=f"bytes={r.offset}-{r.offset + r.size - 1}")["Body"].read()
    assert len(body) == r.size, (r, len(body))
    return bytes(body)


def check_ranges(client: Any, bucket: str, playlist: Playlist) -> None:
    """Every byte range lies inside one object and starts with a moof; the init section
    starts with ftyp and holds the moov, with mvex."""
    sizes: dict[str, int] = {}
    for _, r in [(0.0, playlist.init), *playlist.segments]:
        if r.key not in sizes:
            sizes[r.key] = client.head_object(Bucket=bucket, Key=r.key)["ContentLength"]
        assert r.offset >= 0 and r.size > 0 and r.offset + r.size <= sizes[r.key], r
    init = read_range(client, bucket, playlist.init)
    assert init[4:8] == b"ftyp" and b"moov" in init and b"mvex" in init
    for _, r in playlist.segments:
        head = client.get_object(Bucket=bucket, Key=r.key,
                                 Range=f"bytes={r.offset}-{r.offset + 7}")["Body"].read()
        assert head[4:8] == b"moof", r


def decode(init: bytes, segment: bytes) -> tuple[int, int]:
    """(video frames, audio frames) PyAV decodes from init + one segment; raises on an
    error."""
    import av

    counts = [0, 0]
    with av.open(io.BytesIO(init + segment), "r", format="mp4") as container:
        for frame in container.decode(*container.streams):
            counts[0 if frame.__class__.__name__ == "VideoFrame" else 1] += 1
    return counts[0], counts[1]


def play_with_ffmpeg(url: str, timeout: float = 120) -> int:
    """Video frames the bundled ffmpeg decodes from ``url`` with its default options
    (``ffmpeg -i URL -f null -``), from its final progress report. Frames, not its
    ``out_time``: that is the last timestamp, which for a live playlist joined past its
    start counts the segments the player skipped."""
    proc = subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", url,
                           "-progress", "pipe:1", "-nostats", "-f", "null", "-"],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    frames = re.findall(r"^frame=(\d+)$", proc.stdout, re.MULTILINE)
    assert frames, proc.stdout[-500:]
    return int(frames[-1])


def public_read(client: Any, bucket: str) -> None:
    """Let anonymous players GET the bucket's objects (a player without credentials,
    as behind a CDN or a public-read prefix)."""
    client.put_bucket_policy(Bucket=bucket, Policy=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
                       "Resource": f"arn:aws:s3:::{bucket}/*"}]}))
