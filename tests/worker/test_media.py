"""Tests for worker.media.probe_media on real videos made by the bundled ffmpeg."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from worker.media import MediaInfo, probe_media

imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")

TOLERANCE = 0.1
LIVE_MOVFLAGS = "frag_keyframe+empty_moov+default_base_moof"


def _make_video(
    out: Path,
    seconds: float,
    *,
    codec: str = "libx264",
    size: str = "320x240",
    fragmented: bool = False,
    realtime: bool = False,
) -> Path:
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-nostdin", "-loglevel", "error"]
    if realtime:
        cmd.append("-re")
    cmd += ["-f", "lavfi", "-i", f"testsrc2=size={size}:rate=25", "-t", str(seconds)]
    cmd += ["-c:v", codec, "-pix_fmt", "yuv420p", "-g", "25"]
    if codec == "libx264":
        cmd += ["-preset", "ultrafast", "-sc_threshold", "0"]
    if fragmented:
        cmd += ["-movflags", LIVE_MOVFLAGS]
    cmd.append(str(out))
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    return out


def _moof_offsets(data: bytes) -> list[int]:
    """Offsets of the top-level moof boxes, found by walking the box headers."""
    offsets, pos = [], 0
    while pos + 8 <= len(data):
        size = int.from_bytes(data[pos : pos + 4], "big")
        if data[pos + 4 : pos + 8] == b"moof":
            offsets.append(pos)
        if size < 8:
            break
        pos += size
    return offsets


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("videos")
    return {
        "regular": _make_video(d / "regular.mp4", 3),
        "fragmented": _make_video(d / "fragmented.mp4", 3, fragmented=True),
        "live": _make_video(d / "live.mp4", 2, fragmented=True, realtime=True),
        "mpeg4": _make_video(d / "mpeg4.mp4", 2, codec="mpeg4", size="176x144"),
    }


# --- good files -------------------------------------------------------------


def test_regular_mp4_duration(videos: dict[str, Path]) -> None:
    """A regular MP4 (moov at the end) reports its duration from the moov box."""
    info = probe_media(videos["regular"])
    assert info.error is None
    assert info.duration_seconds == pytest.approx(3.0, abs=TOLERANCE)


def test_regular_mp4_not_fragmented(videos: dict[str, Path]) -> None:
    """A regular MP4 is reported as not fragmented."""
    assert probe_media(videos["regular"]).fragmented is False


def test_regular_mp4_video_fields(videos: dict[str, Path]) -> None:
    """The H.264 codec name and frame size are read from the video stream."""
    info = probe_media(videos["regular"])
    assert (info.video_codec, info.width, info.height) == ("h264", 320, 240)


def test_fragmented_mp4_duration(videos: dict[str, Path]) -> None:
    """A fragmented MP4 with an empty moov still reports its full duration."""
    info = probe_media(videos["fragmented"])
    assert info.error is None
    assert info.duration_seconds == pytest.approx(3.0, abs=TOLERANCE)


def test_fragmented_mp4_is_fragmented(videos: dict[str, Path]) -> None:
    """A file with top-level moof boxes is reported as fragmented."""
    assert probe_media(videos["fragmented"]).fragmented is True


def test_live_written_fragmented_mp4(videos: dict[str, Path]) -> None:
    """A fragmented MP4 written in real time (-re) reports its 2 s duration."""
    info = probe_media(videos["live"])
    assert info.error is None
    assert info.fragmented is True
    assert info.duration_seconds == pytest.approx(2.0, abs=TOLERANCE)


def test_mpeg4_codec(videos: dict[str, Path]) -> None:
    """A non-H.264 (MPEG-4 Part 2) video reports its own codec, size and duration."""
    info = probe_media(videos["mpeg4"])
    assert (info.video_codec, info.width, info.height) == ("mpeg4", 176, 144)
    assert info.duration_seconds == pytest.approx(2.0, abs=TOLERANCE)


def test_accepts_str_path(videos: dict[str, Path]) -> None:
    """probe_media accepts a plain string path as well as a PathLike."""
    info = probe_media(str(videos["regular"]))
    assert info.duration_seconds == pytest.approx(3.0, abs=TOLERANCE)


def test_media_dict(videos: dict[str, Path]) -> None:
    """media_dict returns exactly the metadata.json media fields."""
    assert probe_media(videos["fragmented"]).media_dict() == {
        "fragmented": True,
        "video_codec": "h264",
        "width": 320,
        "height": 240,
    }


def test_media_info_is_frozen(videos: dict[str, Path]) -> None:
    """MediaInfo is immutable."""
    info = probe_media(videos["regular"])
    with pytest.raises(AttributeError):
        info.width = 1  # type: ignore[misc]


# --- fragmented files cut while being written ---------------------------------


def test_fragmented_cut_at_fragment_boundary(videos: dict[str, Path], tmp_path: Path) -> None:
    """A fragmented MP4 cut after its second 1 s fragment reports 2 s."""
    data = videos["fragmented"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: _moof_offsets(data)[2]])
    info = probe_media(cut)
    assert info.fragmented is True
    assert info.duration_seconds == pytest.approx(2.0, abs=TOLERANCE)


def test_fragmented_cut_inside_last_fragment(videos: dict[str, Path], tmp_path: Path) -> None:
    """A fragment cut short counts only the samples present, not what its moof declares."""
    data = videos["fragmented"].read_bytes()
    third = _moof_offsets(data)[2]
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: third + (len(data) - third) // 2])
    info = probe_media(cut)
    assert info.error is None and info.duration_seconds is not None
    assert 2.0 - TOLERANCE <= info.duration_seconds < 3.0 - TOLERANCE


def test_fragmented_cut_after_moof_header(videos: dict[str, Path], tmp_path: Path) -> None:
    """A trailing moof whose mdat was not written yet adds no duration."""
    data = videos["fragmented"].read_bytes()
    third = _moof_offsets(data)[2]
    moof_size = int.from_bytes(data[third : third + 4], "big")
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: third + moof_size])
    assert probe_media(cut).duration_seconds == pytest.approx(2.0, abs=TOLERANCE)


def test_fragmented_header_only(videos: dict[str, Path], tmp_path: Path) -> None:
    """A live file holding only ftyp+moov has no duration and says why."""
    data = videos["fragmented"].read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: _moof_offsets(data)[0]])
    info = probe_media(cut)
    assert info.duration_seconds is None
    assert info.fragmented is True
    assert info.error == "no media samples in MP4"


# --- bad input ----------------------------------------------------------------


def _assert_failed(info: MediaInfo, error_prefix: str) -> None:
    assert info.duration_seconds is None
    assert info.error is not None and info.error.startswith(error_prefix), info.error


def test_zero_byte_file(tmp_path: Path) -> None:
    """A zero-byte file is reported as empty, not raised."""
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    info = probe_media(path)
    _assert_failed(info, "empty file")
    assert info.fragmented is None


def test_random_bytes(tmp_path: Path) -> None:
    """Random bytes named .mp4 are reported as not an MP4."""
    path = tmp_path / "random.mp4"
    path.write_bytes(os.urandom(64 * 1024))
    info = probe_media(path)
    _assert_failed(info, "not an MP4")
    assert info.fragmented is None


def test_text_file(tmp_path: Path) -> None:
    """A text file is reported as not an MP4."""
    path = tmp_path / "notes.mp4"
    path.write_text("this is a text file, not a video\n" * 20)
    _assert_failed(probe_media(path), "not an MP4")


def test_truncated_regular_mp4(videos: dict[str, Path], tmp_path: Path) -> None:
    """A regular MP4 cut in half (moov at the end missing) is reported as truncated."""
    data = videos["regular"].read_bytes()
    path = tmp_path / "half.mp4"
    path.write_bytes(data[: len(data) // 2])
    info = probe_media(path)
    _assert_failed(info, "truncated MP4: moov box missing")
    assert info.fragmented is False


def test_missing_file(tmp_path: Path) -> None:
    """A missing path is reported as file not found."""
    _assert_failed(probe_media(tmp_path / "nope.mp4"), "file not found")


def test_directory(tmp_path: Path) -> None:
    """A directory is reported as not a regular file."""
    _assert_failed(probe_media(tmp_path), "not a regular file")


def test_box_size_beyond_end_of_file(tmp_path: Path) -> None:
    """A box claiming more bytes than the file has ends the walk without raising."""
    path = tmp_path / "big_box.mp4"
    ftyp = (16).to_bytes(4, "big") + b"ftypisom" + b"\0\0\0\0"
    huge_mdat = (1).to_bytes(4, "big") + b"mdat" + (2**62).to_bytes(8, "big")
    path.write_bytes(ftyp + huge_mdat + b"\0" * 100)
    _assert_failed(probe_media(path), "truncated MP4: moov box missing")


def test_invalid_box_header_after_ftyp(tmp_path: Path) -> None:
    """Garbage after a valid ftyp is reported as a corrupt MP4."""
    path = tmp_path / "garbage.mp4"
    ftyp = (16).to_bytes(4, "big") + b"ftypisom" + b"\0\0\0\0"
    path.write_bytes(ftyp + (3).to_bytes(4, "big") + b"\x01\x02\x03\x04" + b"\xff" * 100)
    _assert_failed(probe_media(path), "corrupt MP4: invalid box header")


def test_bad_input_writes_nothing_to_stderr(
    videos: dict[str, Path], tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """FFmpeg's own logging stays silent while probing broken files."""
    data = videos["fragmented"].read_bytes()
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(data[:1000] + os.urandom(len(data) - 1000))
    probe_media(broken)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(videos["regular"].read_bytes()[:5000])
    probe_media(truncated)
    assert capfd.readouterr().err == ""
