"""Tests for shared.keys: the S3 object layout and stream ids."""

from __future__ import annotations

import re

import pytest

from shared.keys import MAX_KEY_BYTES, MAX_STEM_CHARS, StreamKeys, new_stream_id


def test_layout_with_rel_dir() -> None:
    """Chunk, final object and metadata keys follow <prefix>/<rel dir>/<id>/…."""
    keys = StreamKeys("streams", "site/a/cam1.mp4", "cam1-0a1b2c3d")
    assert keys.prefix == "streams/site/a/cam1-0a1b2c3d"
    assert keys.chunk(3) == "streams/site/a/cam1-0a1b2c3d/chunks/000003"
    assert keys.chunks_prefix == "streams/site/a/cam1-0a1b2c3d/chunks/"
    assert keys.final_object == "streams/site/a/cam1-0a1b2c3d/cam1.mp4"
    assert keys.metadata == "streams/site/a/cam1-0a1b2c3d/metadata.json"


def test_top_level_file_has_no_rel_dir() -> None:
    """A file at the top of the watch dir has no directory part."""
    keys = StreamKeys("streams", "cam1.mp4", "cam1-0a1b2c3d")
    assert keys.chunk(0) == "streams/cam1-0a1b2c3d/chunks/000000"
    assert keys.final_object == "streams/cam1-0a1b2c3d/cam1.mp4"


def test_empty_prefix() -> None:
    """An empty s3 prefix gives keys without a leading slash."""
    keys = StreamKeys("", "d/cam1.mp4", "cam1-0a1b2c3d")
    assert keys.metadata == "d/cam1-0a1b2c3d/metadata.json"


def test_prefix_with_surrounding_slashes() -> None:
    """Slashes around the prefix do not produce empty key segments."""
    keys = StreamKeys("/a/b/", "cam1.mp4", "cam1-0a1b2c3d")
    assert keys.chunk(12) == "a/b/cam1-0a1b2c3d/chunks/000012"


def test_chunk_index_wider_than_six_digits() -> None:
    """Indexes past 999999 keep all their digits; negative ones are refused."""
    keys = StreamKeys("p", "x.mp4", "x-0a1b2c3d")
    assert keys.chunk(1234567) == "p/x-0a1b2c3d/chunks/1234567"
    with pytest.raises(ValueError):
        keys.chunk(-1)


def test_odd_characters_preserved() -> None:
    """Unicode, spaces and quotes in names appear unchanged in the keys."""
    keys = StreamKeys("streams", "Ördner 1/it's \"cam\" ☃.mp4", "sid-0a1b2c3d")
    assert keys.final_object == "streams/Ördner 1/sid-0a1b2c3d/it's \"cam\" ☃.mp4"


def test_stream_id_format_and_uniqueness() -> None:
    """Ids are <stem>-<8 hex> and differ between calls for the same path."""
    ids = {new_stream_id("site/cam 1.mp4") for _ in range(50)}
    assert len(ids) == 50
    assert all(re.fullmatch(r"cam 1-[0-9a-f]{8}", i) for i in ids)


def test_stream_id_truncates_long_stem() -> None:
    """A long stem is cut to MAX_STEM_CHARS characters."""
    sid = new_stream_id("d/" + "é" * 300 + ".mp4")
    assert re.fullmatch("é" * MAX_STEM_CHARS + r"-[0-9a-f]{8}", sid)


def test_stream_id_with_several_dots() -> None:
    """Only the last extension is removed from the stem."""
    assert re.fullmatch(r"cam\.2024\.01-[0-9a-f]{8}", new_stream_id("cam.2024.01.mp4"))


def test_chunk_index_parsing() -> None:
    """chunk_index reads chunk keys and gives None for anything else."""
    keys = StreamKeys("p", "d/x.mp4", "x-0a1b2c3d")
    assert StreamKeys.chunk_index(keys.chunk(3)) == 3
    assert StreamKeys.chunk_index(keys.chunk(1234567)) == 1234567
    assert StreamKeys.chunk_index(keys.metadata) is None
    assert StreamKeys.chunk_index(keys.final_object) is None
    assert StreamKeys.chunk_index("p/x/chunks/12") is None
    assert StreamKeys.chunk_index("p/x/chunks/000003.tmp") is None


@pytest.mark.parametrize("rel_path", ["..", "../x.mp4", "a/../../x.mp4", "/etc/x.mp4", "", "."])
def test_rejected_rel_paths(rel_path: str) -> None:
    """Paths that are empty, absolute or climb out of the watch dir are refused."""
    with pytest.raises(ValueError):
        StreamKeys("streams", rel_path, "x-0a1b2c3d")


@pytest.mark.parametrize("rel_path", ["./x.mp4", "a//x.mp4", "a/./x.mp4"])
def test_rejected_non_normal_rel_paths(rel_path: str) -> None:
    """Paths with '.' or empty components are refused, as the check intends."""
    with pytest.raises(ValueError):
        StreamKeys("streams", rel_path, "x-0a1b2c3d")


@pytest.mark.parametrize("rel_path", ["x.mp4", "a/b/c.mp4", "..x.mp4", "a/..b/c.mp4", "☃/ü.mp4"])
@pytest.mark.parametrize("prefix", ["streams", "/s/t/", ""])
def test_every_key_stays_under_prefix(prefix: str, rel_path: str) -> None:
    """Every key begins with the normalised prefix and contains no '..' segment."""
    keys = StreamKeys(prefix, rel_path, "x-0a1b2c3d")
    head = prefix.strip("/") + "/" if prefix.strip("/") else ""
    for key in (keys.chunk(0), keys.final_object, keys.metadata, keys.chunks_prefix):
        assert key.startswith(head + keys.prefix[len(head):])
        assert key.startswith(head)
        assert ".." not in key.split("/") and "" not in key.split("/")[:-1]
        assert not key.startswith("/")


def test_longest_key_bytes_counts_utf8_of_the_longest_key() -> None:
    """A long file name makes the final object the longest key; a short one leaves the
    chunk keys with the live playlist's ``.m4s`` (17 characters after the prefix) the
    longest, since a stream takes that suffix after its keys were checked; multi-byte
    characters count as their UTF-8 bytes."""
    long_name = StreamKeys("streams", "d/" + "n" * 200 + ".mp4", "n-0a1b2c3d")
    assert long_name.longest_key_bytes == len(long_name.final_object) == \
        len("streams/d/n-0a1b2c3d/") + 204
    short = StreamKeys("streams", "d/a.mp4", "a-0a1b2c3d")
    fragmented = StreamKeys("streams", "d/a.mp4", "a-0a1b2c3d", chunk_suffix=".m4s")
    assert short.longest_key_bytes == len(fragmented.chunk(0)) == len(short.metadata) + 4
    wide = StreamKeys("", "é/a.mp4", "a-0a1b2c3d")
    assert wide.longest_key_bytes == 31 == len("é/a-0a1b2c3d/chunks/000000.m4s") + 1


def test_fragment_chunk_keys_end_in_m4s_and_parse_back() -> None:
    keys = StreamKeys("streams", "cam.mp4", "cam-0a1b2c3d", chunk_suffix=".m4s")
    assert keys.chunk(3) == "streams/cam-0a1b2c3d/chunks/000003.m4s"
    assert StreamKeys.chunk_index(keys.chunk(3)) == 3
    assert StreamKeys.chunk_index("streams/cam-0a1b2c3d/chunks/000003.mp4") is None
    assert keys.playlist == "streams/cam-0a1b2c3d/playlist.m3u8"


def test_a_path_at_exactly_the_limit_fits() -> None:
    """The boundary: keys of exactly MAX_KEY_BYTES are allowed, one byte more is not."""
    stream_id = "x-0a1b2c3d"
    overhead = len(f"streams//{stream_id}/chunks/000000.m4s")  # the longest short key
    rel_dir = "/".join(["d" * 200] * 4)
    rel_dir += "/" + "e" * (MAX_KEY_BYTES - overhead - len(rel_dir) - 1)
    fits = StreamKeys("streams", rel_dir + "/x.mp4", stream_id)
    assert fits.longest_key_bytes == MAX_KEY_BYTES
    assert StreamKeys("streams", rel_dir + "e/x.mp4", stream_id).longest_key_bytes == \
        MAX_KEY_BYTES + 1
