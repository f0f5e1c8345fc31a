"""The playlist's text (worker/playlist.py): segments of whole fragments, 2-6 s where
the fragments allow, starting on sync samples; RFC 8216's target duration rounding; and
reading a playlist it wrote back (a stream that ended early moves its live one)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.fmp4 import Fragment
from worker.playlist import Segment, parse, render, segments_of


def frags(*spec: tuple[float, bool], start: int = 100, size: int = 10) -> list[Fragment]:
    out, t = [], 0.0
    for i, (duration, sync) in enumerate(spec):
        out.append(Fragment(start + i * size, size, duration, t, sync))
        t += duration
    return out


def test_segments_start_on_sync_fragments_and_keep_2_to_6_seconds() -> None:
    one_second = frags(*[(1.0, True)] * 7)
    assert [s.duration for s in segments_of(one_second, "c", 0)] == [2.0, 2.0, 3.0]
    # without a sync fragment a segment grows until 6 s, then is cut anyway
    sparse = frags((1.0, True), *[(1.0, False)] * 7, (1.0, True))
    assert [s.duration for s in segments_of(sparse, "c", 0)] == [6.0, 3.0]


def test_a_short_last_segment_joins_the_one_before() -> None:
    assert [s.duration for s in segments_of(frags((1.5, True), (1.5, True), (1.5, True)),
                                            "c", 0)] == [4.5]
    assert [s.duration for s in segments_of(frags((3.0, True), (3.0, True), (1.0, True)),
                                            "c", 0)] == [3.0, 4.0]
    assert [s.duration for s in segments_of(frags((5.0, True), (5.0, True), (1.5, True)),
                                            "c", 0)] == [5.0, 5.0, 1.5]


def test_segments_are_byte_ranges_of_their_object() -> None:
    segments = segments_of(frags(*[(1.0, True)] * 4, start=1000, size=50), "chunks/x.m4s",
                           base=900)
    assert [(s.offset, s.size) for s in segments] == [(100, 100), (200, 100)]
    assert all(s.uri == "chunks/x.m4s" for s in segments)


def test_render_rounds_the_target_duration_and_names_each_segment() -> None:
    text = render("chunks/000000.m4s", 1271, [Segment("chunks/000000.m4s", 1271, 10, 2.5),
                                               Segment("chunks/000001.m4s", 0, 20, 5.49)],
                  ended=False)
    assert text.splitlines() == [
        "#EXTM3U", "#EXT-X-VERSION:7", "#EXT-X-TARGETDURATION:5",
        "#EXT-X-PLAYLIST-TYPE:EVENT", "#EXT-X-MEDIA-SEQUENCE:0",
        '#EXT-X-MAP:URI="chunks/000000.m4s",BYTERANGE="1271@0"',
        "#EXTINF:2.500000,", "#EXT-X-BYTERANGE:10@1271", "chunks/000000.m4s?segment=0",
        "#EXTINF:5.490000,", "#EXT-X-BYTERANGE:20@0", "chunks/000001.m4s?segment=1"]
    ended = render("cam.mp4", 10, [Segment("cam.mp4", 10, 5, 2.5)], ended=True)
    assert ended.endswith("#EXT-X-ENDLIST\n") and "#EXT-X-TARGETDURATION:3" in ended


_segment = st.builds(Segment, st.sampled_from(["chunks/000000.m4s", "chunks/000012.m4s",
                                               "cam%201.mp4"]),
                     st.integers(0, 2**40), st.integers(1, 2**33),
                     st.integers(0, 10**8).map(lambda us: us / 1e6))


@given(st.integers(1, 10**6), st.lists(_segment, max_size=30), st.booleans())
def test_parse_reads_back_what_render_wrote(init_size: int, segments: list[Segment],
                                            ended: bool) -> None:
    text = render("chunks/000000.m4s", init_size, segments, ended=ended)
    assert parse(text) == ("chunks/000000.m4s", init_size, segments)


@pytest.mark.parametrize("text", [
    "",
    "#EXTM3U\n#EXTINF:2.0,\nchunks/000000.m4s\n",                  # no map, no range
    '#EXTM3U\n#EXT-X-MAP:URI="init.mp4"\n#EXTINF:2.0,\nseg.m4s\n',  # a whole-file map
    '#EXTM3U\n#EXT-X-MAP:URI="a",BYTERANGE="10@0"\nseg.m4s\n',      # no #EXTINF
])
def test_parse_refuses_text_it_did_not_write(text: str) -> None:
    with pytest.raises(ValueError):
        parse(text)
