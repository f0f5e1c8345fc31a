"""Tests for shared.paths: which files are streams, on a real directory tree."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.paths import relative_stream_path, scan_streams

EXTS = ("mp4", "mov")


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.mark.parametrize("name", ["a.mp4", "a.MP4", "b.Mov", "a.b.mp4", "ü n'i.mp4"])
def test_matching_extensions_any_case(tmp_path: Path, name: str) -> None:
    """Matching extensions are accepted whatever their case, with the name unchanged."""
    assert relative_stream_path(tmp_path, tmp_path / name, EXTS, True) == name


def test_nested_path_uses_slashes(tmp_path: Path) -> None:
    """A nested file's relative path uses '/' separators."""
    assert relative_stream_path(tmp_path, tmp_path / "a" / "b" / "c.mp4", EXTS, True) == "a/b/c.mp4"


@pytest.mark.parametrize("rel", [".a.mp4", ".hidden/a.mp4", "x/.cache/y/a.mp4"])
def test_hidden_files_and_dirs_ignored(tmp_path: Path, rel: str) -> None:
    """Hidden files and anything inside a hidden directory are not streams."""
    assert relative_stream_path(tmp_path, tmp_path / rel, EXTS, True) is None


@pytest.mark.parametrize("name", ["a.mkv", "a.mp4.part", "mp4", "a", "a."])
def test_other_extensions_ignored(tmp_path: Path, name: str) -> None:
    """Other extensions and names without one are not streams."""
    assert relative_stream_path(tmp_path, tmp_path / name, EXTS, True) is None


@pytest.mark.parametrize("target", ["../out.mp4", "../in2/a.mp4", "/elsewhere/a.mp4", "."])
def test_outside_watch_dir_ignored(tmp_path: Path, target: str) -> None:
    """Paths outside the watch dir, or the watch dir itself, give None."""
    watch = tmp_path / "in"
    assert relative_stream_path(watch, os.path.normpath(watch / target), EXTS, True) is None


def test_non_recursive_only_top_level(tmp_path: Path) -> None:
    """With recursive=False only top-level files qualify."""
    assert relative_stream_path(tmp_path, tmp_path / "a.mp4", EXTS, False) == "a.mp4"
    assert relative_stream_path(tmp_path, tmp_path / "d" / "a.mp4", EXTS, False) is None


def test_scan_finds_nested_and_skips_hidden(tmp_path: Path) -> None:
    """scan_streams lists nested streams and skips hidden dirs, hidden files and other types."""
    for rel in ["a.mp4", "d/b.MOV", "d/e/c.mp4", ".h/x.mp4", "d/.h/y.mp4", "d/.z.mp4",
                "d/n.txt"]:
        _touch(tmp_path / rel)
    assert sorted(scan_streams(tmp_path, EXTS, True)) == ["a.mp4", "d/b.MOV", "d/e/c.mp4"]


def test_scan_non_recursive(tmp_path: Path) -> None:
    """scan_streams with recursive=False lists only top-level streams."""
    for rel in ["a.mp4", "d/b.mp4"]:
        _touch(tmp_path / rel)
    assert list(scan_streams(tmp_path, EXTS, False)) == ["a.mp4"]


def test_scan_does_not_follow_symlinked_dir(tmp_path: Path) -> None:
    """Files reached only through a symlinked directory are not listed."""
    _touch(tmp_path / "outside" / "o.mp4")
    watch = tmp_path / "in"
    _touch(watch / "a.mp4")
    (watch / "link").symlink_to(tmp_path / "outside", target_is_directory=True)
    assert list(scan_streams(watch, EXTS, True)) == ["a.mp4"]


def test_scan_skips_symlink_to_file(tmp_path: Path) -> None:
    """A symlink to a file outside the watch dir is not a stream: nothing outside is read."""
    _touch(tmp_path / "outside" / "o.mp4")
    watch = tmp_path / "in"
    _touch(watch / "a.mp4")
    (watch / "link.mp4").symlink_to(tmp_path / "outside" / "o.mp4")
    assert sorted(scan_streams(watch, EXTS, True)) == ["a.mp4"]
