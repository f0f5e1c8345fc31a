"""The generated MP4s are real, big enough, and have the requested duration.

Notes for whoever reads durations (PyAV 18, ffmpeg 7+/9 muxer):

* ``av.open(p).duration / 1e6`` is set for BOTH regular and fragmented files
  (for fragmented files the demuxer sums the fragments), so it is the value
  checked here.  ``stream.duration * stream.time_base`` agrees.
* ``stream.frames`` is 0 for fragmented files (no sample table in the moov):
  don't use it.  A robust fallback if ``duration`` is ever None is the
  maximum ``packet.pts + packet.duration`` over ``container.demux(stream)``
  times ``stream.time_base`` (see :func:`last_packet_end`).
* A regular (moov-at-end) file cannot be opened at all while it is still
  being written (``av.error.InvalidDataError``).  A growing fragmented file
  can, and its duration counts every fragment whose moof is on disk even if
  that fragment's mdat is still truncated (seen with the live writer: size
  2 MiB, duration 1.0 s, but only 23 of the 25 packets readable).  The file
  grows in bursts about once per second, not at box boundaries, and a
  finished fragmented file ends with an ``mfra`` box.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import av
import pytest

from .videos import ffmpeg_command, make_not_mp4, make_video, start_live_writer

MiB = 1024 * 1024


def top_level_boxes(path: Path) -> list[str]:
    """Types of the top-level ISO-BMFF boxes, in file order."""
    boxes, data = [], path.read_bytes()
    pos = 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8].decode("latin-1")
        if size == 1:
            size = int.from_bytes(data[pos + 8 : pos + 16], "big")
        assert size >= 8, f"bad box size at {pos}"
        boxes.append(kind)
        pos += size
    assert pos == len(data), "trailing garbage after the last box"
    return boxes


def container_seconds(path: Path) -> float:
    with av.open(str(path)) as c:
        assert c.duration is not None
        assert c.streams.video[0].codec_context.name == "h264"
        return c.duration / 1e6


def last_packet_end(path: Path) -> float:
    """Duration from the packets themselves (works when c.duration is None)."""
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        end = max(p.pts + (p.duration or 0) for p in c.demux(s) if p.pts is not None)
        assert s.time_base is not None
        return float(end * s.time_base)


def test_regular_video_is_big_with_moov_at_end(tmp_path: Path) -> None:
    path = make_video(tmp_path / "cam.mp4", 8)
    assert path.stat().st_size > 10 * MiB
    boxes = top_level_boxes(path)
    assert boxes[0] == "ftyp" and "moof" not in boxes
    assert boxes.index("mdat") < boxes.index("moov"), boxes  # no faststart
    assert container_seconds(path) == pytest.approx(8, abs=0.1)
    assert last_packet_end(path) == pytest.approx(8, abs=0.1)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 200


def test_fragmented_video_layout_and_duration(tmp_path: Path) -> None:
    path = make_video(tmp_path / "frag.mp4", 3.3, fragmented=True, fps=30)
    # one fragment per second; ffmpeg appends an mfra index on a clean finish
    assert top_level_boxes(path) == ["ftyp", "moov"] + ["moof", "mdat"] * 4 + ["mfra"]
    assert container_seconds(path) == pytest.approx(3.3, abs=0.1)
    assert last_packet_end(path) == pytest.approx(3.3, abs=0.1)
    with av.open(str(path)) as c:
        assert c.streams.video[0].frames == 0  # see module docstring


def test_size_tracks_bitrate(tmp_path: Path) -> None:
    small = make_video(tmp_path / "a.mp4", 2, bitrate_mbps=2).stat().st_size
    large = make_video(tmp_path / "b.mp4", 2, bitrate_mbps=8).stat().st_size
    assert 0.45 * MiB < small < 0.8 * MiB  # (2 s + 0.4 s) * 2 Mbit/s ~ 0.6 MB
    assert 2.0 * MiB < large < 2.8 * MiB  # (2 s + 0.4 s) * 8 Mbit/s ~ 2.4 MB


def test_seed_controls_content(tmp_path: Path) -> None:
    a = make_video(tmp_path / "a.mp4", 0.5, seed=7).read_bytes()
    b = make_video(tmp_path / "b.mp4", 0.5, seed=7).read_bytes()
    c = make_video(tmp_path / "c.mp4", 0.5).read_bytes()
    assert a == b != c
    assert "-movflags" not in ffmpeg_command("x.mp4", 1)
    assert "-re" in ffmpeg_command("x.mp4", 1, realtime=True)


@pytest.mark.parametrize("fragmented", [True, False])
def test_live_writer_grows_file_then_finishes(tmp_path: Path, fragmented: bool) -> None:
    path = tmp_path / "live.mp4"
    proc = start_live_writer(path, 2.0, fragmented=fragmented)
    sizes: set[int] = set()
    try:
        while proc.poll() is None:
            if path.exists():
                sizes.add(path.stat().st_size)
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    final = path.stat().st_size
    # it was observed mid-write: holding video data (not just the 28-byte
    # ftyp) but not complete yet
    assert any(MiB < s < final for s in sizes), sorted(sizes)
    assert container_seconds(path) == pytest.approx(2.0, abs=0.1)
    assert top_level_boxes(path)[-1] == ("mfra" if fragmented else "moov")


def test_make_not_mp4(tmp_path: Path) -> None:
    path = make_not_mp4(tmp_path / "fake.mp4", 3 * MiB + 5)
    assert path.stat().st_size == 3 * MiB + 5
    assert len(set(path.read_bytes()[:4096])) > 200  # random, not zeros
    # FFmpeg probes the bytes against every format it knows, and random bytes now and
    # then pass for one (CI once got a container whose metadata was not UTF-8, which
    # PyAV fails to decode): what must never come out is a video stream
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, UnicodeDecodeError):
        pass  # the usual answer: InvalidDataError
    else:
        with container:
            assert not container.streams.video
    assert os.path.getsize(make_not_mp4(tmp_path / "empty.mp4", 0)) == 0
