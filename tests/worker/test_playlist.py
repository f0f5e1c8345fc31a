"""The playlist's text (worker/playlist.py): segments of whole fragments, 2-6 s where
the fragments allow, starting on sync samples; RFC 8216's target duration rounding."""

from __future__ import annotations

from worker.fmp4 import Fragment
from worker.playlist import Segment, render, segments_of


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
