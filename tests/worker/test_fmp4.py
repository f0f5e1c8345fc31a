"""Box walking (worker/fmp4.py): property tests on generated box sequences, and real
files from the bundled ffmpeg (fragmented with audio and video, fragments by duration
that do not start on keyframes, a regular MP4, files cut mid-header)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.videos import make_video
from worker.fmp4 import (
    NotMP4,
    classify,
    fragments_in,
    next_boundary,
    read_box,
    read_movie,
)

LIMIT = 1 << 40


# -- building boxes -------------------------------------------------------------------
def box(kind: bytes, body: bytes, *, large: bool = False) -> bytes:
    if large:
        return struct.pack(">I4sQ", 1, kind, 16 + len(body)) + body
    return struct.pack(">I4s", 8 + len(body), kind) + body


def full(version: int, flags: int, body: bytes) -> bytes:
    return bytes([version]) + flags.to_bytes(3, "big") + body


def moov(fragmented: bool, timescale: int = 1000) -> bytes:
    tkhd = box(b"tkhd", full(0, 3, struct.pack(">III", 0, 0, 1) + bytes(68)))
    mdhd = box(b"mdhd", full(0, 0, struct.pack(">IIII", 0, 0, timescale, 0) + bytes(4)))
    hdlr = box(b"hdlr", full(0, 0, struct.pack(">I4s", 0, b"vide") + bytes(13)))
    trak = box(b"trak", tkhd + box(b"mdia", mdhd + hdlr))
    mvex = box(b"mvex", box(b"trex", full(0, 0, struct.pack(">IIIII", 1, 1, 40, 0, 0x10000))))
    return box(b"moov", box(b"mvhd", bytes(100)) + trak + (mvex if fragmented else b""))


def moof(base: int, durations: list[int], first_sync: bool, tfdt_v1: bool = False) -> bytes:
    tfhd = box(b"tfhd", full(0, 0x20000, struct.pack(">I", 1)))
    tfdt = box(b"tfdt", full(1, 0, struct.pack(">Q", base)) if tfdt_v1
               else full(0, 0, struct.pack(">I", base)))
    flags = 0x02000000 if first_sync else 0x01010000
    trun = box(b"trun", full(0, 0x1 | 0x4 | 0x100, struct.pack(">IiI", len(durations), 0, flags)
                             + b"".join(struct.pack(">I", d) for d in durations)))
    mfhd = box(b"mfhd", full(0, 0, struct.pack(">I", 1)))
    return box(b"moof", mfhd + box(b"traf", tfhd + tfdt + trun))


fragment_spec = st.tuples(st.integers(0, 3000),                    # mdat payload bytes
                          st.lists(st.integers(1, 100), min_size=1, max_size=5),  # durations
                          st.booleans(), st.booleans(), st.booleans())  # sync, 64-bit, free after


@st.composite
def files(draw: st.DrawFn) -> tuple[bytes, list[int], list[tuple[float, bool]]]:
    """A fragmented MP4: (bytes, moof offsets, (duration, sync) per fragment)."""
    data = box(b"ftyp", b"isom" + bytes(4) + b"isomiso6") + moov(True)
    offsets, timing, base = [], [], 0
    for size, durations, sync, large, free in draw(st.lists(fragment_spec, min_size=1,
                                                            max_size=12)):
        offsets.append(len(data))
        data += moof(base, durations, sync, tfdt_v1=large)
        data += box(b"mdat", bytes(size), large=large)
        if free:
            data += box(b"free", bytes(7))
        timing.append((sum(durations) / 1000, sync))
        base += sum(durations)
    return data, offsets, timing


def reader(data: bytes):  # type: ignore[no-untyped-def]
    return lambda offset, size: data[offset:offset + size]


# -- properties ---------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(files())
def test_a_fragmented_file_is_recognised_with_its_first_fragment(generated: tuple) -> None:
    data, offsets, _ = generated
    assert classify(reader(data), len(data)) == ("fmp4", offsets[0])


@settings(max_examples=200, deadline=None)
@given(files(), st.integers(200, 6000), st.data())
def test_boundaries_are_the_first_moof_past_chunk_size(generated: tuple, chunk: int,
                                                        draw: st.DataObject) -> None:
    """On the whole file, each chunk ends at the first moof at least ``chunk`` bytes
    after its start; on any prefix (a file still being written, a header cut at its
    end) the answer is either "not yet" or that same boundary, never another."""
    data, offsets, _ = generated
    cut = draw.draw(st.integers(0, len(data)))
    start, expected_chunks = 0, []
    while True:
        later = [o for o in offsets if o - start >= chunk]
        if not later:
            break
        expected_chunks.append(later[0])
        start = later[0]
    start, found = 0, []
    while True:
        boundary, _ = next_boundary(reader(data), start, start, len(data), chunk, LIMIT)
        if boundary is None:
            break
        found.append(boundary)
        partial, _ = next_boundary(reader(data[:cut]), start, start, cut, chunk, LIMIT)
        assert partial in (None, boundary)
        start = boundary
    assert found == expected_chunks


@settings(max_examples=200, deadline=None)
@given(files(), st.data())
def test_resuming_a_walk_gives_the_same_boundary(generated: tuple, draw: st.DataObject) -> None:
    """The walk resumes where it stopped on a shorter file (as a growing file is
    walked, step by step) and ends where a walk of the whole file ends."""
    data, _, _ = generated
    chunk = draw.draw(st.integers(100, 4000))
    whole, _ = next_boundary(reader(data), 0, 0, len(data), chunk, LIMIT)
    resume = 0
    for size in sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=6))):
        boundary, resume = next_boundary(reader(data[:size]), 0, resume, size, chunk, LIMIT)
        assert boundary in (None, whole)
    boundary, _ = next_boundary(reader(data), 0, resume, len(data), chunk, LIMIT)
    assert boundary == whole


@settings(max_examples=200, deadline=None)
@given(files())
def test_fragments_carry_their_moof_timing(generated: tuple) -> None:
    data, offsets, timing = generated
    _, movie = read_movie(reader(data), len(data))
    fragments = fragments_in(reader(data), offsets[0], len(data), movie)
    assert [f.offset for f in fragments] == offsets
    assert [(round(f.duration, 6), f.sync) for f in fragments] == \
        [(round(d, 6), s) for d, s in timing]
    ends = [f.offset + f.size for f in fragments]
    assert ends[:-1] == offsets[1:] and ends[-1] == len(data)


def test_an_mp4_whose_mdat_comes_first_or_without_mvex_is_fixed() -> None:
    ftyp = box(b"ftyp", b"isom" + bytes(8))
    regular = ftyp + box(b"mdat", bytes(100)) + moov(False)
    assert classify(reader(regular), len(regular)) == ("fixed", 0)
    no_mvex = ftyp + moov(False) + moof(0, [40], True) + box(b"mdat", bytes(10))
    assert classify(reader(no_mvex), len(no_mvex)) == ("fixed", 0)
    growing = ftyp + struct.pack(">I4s", 0, b"mdat") + bytes(50)   # size 0: to the end
    assert classify(reader(growing), len(growing)) == ("fixed", 0)
    not_mp4 = b"\x1aE\xdf\xa3" + bytes(60)   # a Matroska header
    assert classify(reader(not_mp4), len(not_mp4)) == ("fixed", 0)


def test_a_cut_header_is_not_on_disk_yet() -> None:
    head = box(b"ftyp", b"isom" + bytes(8)) + moov(True)
    data = head + moof(0, [40], True)
    for cut in (0, 7, 20, 60, len(head) + 7):   # in ftyp, in moov, in the moof header
        assert classify(reader(data[:cut]), cut) == (None, 0), cut
    assert classify(reader(data[:len(head) + 8]), len(head) + 8) == ("fmp4", len(head))
    large = box(b"mdat", bytes(10), large=True)
    assert read_box(reader(large[:12]), 0, 12) is None   # the 64-bit size is cut
    assert read_box(reader(large), 0, len(large)).size == 26


def test_no_boundary_within_the_limit_is_said() -> None:
    data = box(b"ftyp", b"isom" + bytes(8)) + moov(True) + moof(0, [40], True) + \
        box(b"mdat", bytes(5000)) + moof(40, [40], True) + box(b"mdat", bytes(10))
    first = classify(reader(data), len(data))[1]
    with pytest.raises(NotMP4):
        next_boundary(reader(data), first, first, len(data), 100, 2000)
    with pytest.raises(NotMP4):
        read_box(reader(struct.pack(">I4s", 4, b"free")), 0, 8)


# -- real files -------------------------------------------------------------------------
def _walk(path: Path) -> tuple[bytes, int, list]:  # type: ignore[type-arg]
    data = path.read_bytes()
    kind, first = classify(reader(data), len(data))
    assert kind == "fmp4"
    _, movie = read_movie(reader(data), len(data))
    return data, first, fragments_in(reader(data), first, len(data), movie)


def test_ffmpeg_fragmented_audio_and_video(tmp_path: Path) -> None:
    """Durations come from the video track: their sum is the video's length."""
    path = make_video(tmp_path / "av.mp4", 6.0, fragmented=True, audio=True)
    _, first, fragments = _walk(path)
    assert len(fragments) == 6 and all(f.sync for f in fragments)
    assert abs(sum(f.duration for f in fragments) - 6.0) < 0.05
    starts = [f.start for f in fragments]
    assert starts == sorted(starts) and starts[0] == 0.0


def test_ffmpeg_fragments_by_duration_without_keyframes_at_their_start(tmp_path: Path) -> None:
    path = make_video(tmp_path / "fd.mp4", 6.0, gop=50, frag_duration=0.5)
    _, _, fragments = _walk(path)
    assert len(fragments) >= 10
    synced = [f for f in fragments if f.sync]
    assert 0 < len(synced) < len(fragments)   # a keyframe every 2 s, fragments of 0.5 s
    assert abs(sum(f.duration for f in fragments) - 6.0) < 0.05


def test_ffmpeg_regular_mp4_is_fixed(tmp_path: Path) -> None:
    path = make_video(tmp_path / "r.mp4", 2.0)
    data = path.read_bytes()
    assert classify(reader(data), len(data)) == ("fixed", 0)


def test_a_real_file_cut_anywhere_gives_a_boundary_or_not_yet(tmp_path: Path) -> None:
    path = make_video(tmp_path / "c.mp4", 6.0, fragmented=True, bitrate_mbps=2.0)
    data, first, fragments = _walk(path)
    whole, _ = next_boundary(reader(data), 0, 0, len(data), 300_000, LIMIT)
    assert whole in [f.offset for f in fragments]
    for cut in range(whole - 20, whole + 20):   # around the boundary's header
        boundary, _ = next_boundary(reader(data[:cut]), 0, 0, cut, 300_000, LIMIT)
        assert boundary == (whole if cut >= whole + 8 else None), cut


def test_a_damaged_moof_is_a_fragment_of_unknown_length() -> None:
    """A trun shorter than its flags say: no struct.error escapes (a worker would retry
    the stream forever); the fragment is listed with no duration and no sync."""
    head = box(b"ftyp", b"isom" + bytes(8)) + moov(True)
    tfhd = box(b"tfhd", full(0, 0x8, struct.pack(">I", 1)))   # says a duration follows
    damaged = box(b"moof", box(b"traf", tfhd))
    data = head + damaged + box(b"mdat", bytes(10))
    _, movie = read_movie(reader(data), len(data))
    (fragment,) = fragments_in(reader(data), len(head), len(data), movie)
    assert (fragment.duration, fragment.sync) == (0.0, False)


def test_malformed_boxes_never_raise_or_hang() -> None:
    """From a review: a box running to the end of the file past the chunk limit ends
    the alignment (no chunk could ever end); a moov whose child's 64-bit size is cut
    is not trusted; a trun of 4 billion samples without per-sample fields is summed,
    not walked."""
    head = box(b"ftyp", b"isom" + bytes(8)) + moov(True)
    to_eof = head + moof(0, [40], True) + struct.pack(">I4s", 0, b"mdat") + bytes(5000)
    first = classify(reader(to_eof), len(to_eof))[1]
    with pytest.raises(NotMP4):
        next_boundary(reader(to_eof), first, first, len(to_eof), 100, 2000)
    assert next_boundary(reader(to_eof), first, first, len(to_eof), 100, 10_000)[0] is None
    cut_child = box(b"ftyp", b"isom" + bytes(8)) + box(b"moov", struct.pack(">I4s", 1, b"trak")
                                                         + bytes(4)) + moof(0, [40], True)
    assert classify(reader(cut_child), len(cut_child)) == ("fixed", 0)
    tfhd = box(b"tfhd", full(0, 0x20000, struct.pack(">I", 1)))
    trun = box(b"trun", full(0, 0, struct.pack(">I", 0xFFFFFFFF)))   # no fields per sample
    data = head + box(b"moof", box(b"traf", tfhd + trun)) + box(b"mdat", bytes(4))
    _, movie = read_movie(reader(data), len(data))
    (fragment,) = fragments_in(reader(data), len(head), len(data), movie)
    assert fragment.duration == 0xFFFFFFFF * 40 / 1000   # trex's default duration
