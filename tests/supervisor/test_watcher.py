"""The inotify watcher the supervisor's main loop reads: real inotify on real
directories, read the way the loop reads it (wait for the descriptor, then ``read``)."""

from __future__ import annotations

import os
import select
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from supervisor.events import DirectoryChanged, PathChanged
from supervisor.watcher import Change, InotifyWatcher

MAX_QUEUED = Path("/proc/sys/fs/inotify/max_queued_events")


@pytest.fixture
def watch(tmp_path: Path) -> Path:
    root = tmp_path / "in"
    root.mkdir()
    return root


@pytest.fixture
def watcher(watch: Path) -> Iterator[InotifyWatcher]:
    w = InotifyWatcher(watch, recursive=True)
    yield w
    w.close()


def collect(w: InotifyWatcher, done: Callable[[list[Change]], bool] = lambda c: False,
            timeout: float = 1.0) -> list[Change]:
    """Everything the watcher reports until ``done`` holds or ``timeout`` passes."""
    changes: list[Change] = []
    deadline = time.monotonic() + timeout
    while not done(changes):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        ready, _, _ = select.select([w.fileno()], [], [], left)
        if ready:
            changes += w.read()
    return changes


def paths(changes: list[Change]) -> list[str]:
    """The paths reported, each once, in the order first seen."""
    return list(dict.fromkeys(c.path for c in changes if isinstance(c, PathChanged)))


def dirs(changes: list[Change]) -> list[str]:
    return [c.path for c in changes if isinstance(c, DirectoryChanged)]


def test_a_file_written_renamed_and_deleted_is_reported_and_reads_are_not(
        watcher: InotifyWatcher, watch: Path) -> None:
    part, final = watch / "cam.mp4.part", watch / "cam.mp4"
    with open(part, "wb") as f:
        f.write(b"x" * 100)
        f.flush()
    os.rename(part, final)
    changes = collect(watcher, lambda c: str(final) in paths(c))
    seen = paths(changes)
    assert seen[0] == str(part) and str(final) in seen  # created, written, closed, moved
    assert set(seen) == {str(part), str(final)}
    assert all(isinstance(c, PathChanged) and abs(c.seen_at - time.time()) < 5 for c in changes)

    final.read_bytes()  # what workers do all day: must not wake the loop
    assert collect(watcher, timeout=0.3) == []

    final.unlink()
    assert paths(collect(watcher, lambda c: bool(c))) == [str(final)]


def test_a_tree_created_at_once_is_watched_whole_and_rescanned(
        watcher: InotifyWatcher, watch: Path) -> None:
    """mkdir -p and a file written before the watcher could watch the new directories:
    the top one is reported for a scan, and every level is watched from then on."""
    deep = watch / "site" / "cam" / "2026"
    deep.mkdir(parents=True)
    (deep / "early.mp4").write_bytes(b"x")
    changes = collect(watcher, lambda c: bool(dirs(c)))
    assert dirs(changes) == [str(watch / "site")]
    assert set(watcher.watched()) >= {str(watch), str(watch / "site"), str(watch / "site/cam"),
                                       str(deep)}

    (deep / "late.mp4").write_bytes(b"x")
    assert str(deep / "late.mp4") in paths(collect(watcher, lambda c: bool(paths(c))))


def test_hidden_directories_are_not_watched_until_renamed_visible(
        watcher: InotifyWatcher, watch: Path) -> None:
    hidden = watch / ".staging"
    hidden.mkdir()
    (hidden / "a.mp4").write_bytes(b"x")
    assert collect(watcher, timeout=0.3) == []  # neither the dir nor its file
    assert str(hidden) not in watcher.watched()

    os.rename(hidden, watch / "ready")
    assert dirs(collect(watcher, lambda c: bool(dirs(c)))) == [str(watch / "ready")]
    (watch / "ready" / "a.mp4").write_bytes(b"y")
    assert paths(collect(watcher, lambda c: bool(paths(c)))) == [str(watch / "ready/a.mp4")]


def test_a_directory_moved_away_is_no_longer_watched_and_is_again_when_back(
        watcher: InotifyWatcher, watch: Path, tmp_path: Path) -> None:
    (watch / "cam" / "day").mkdir(parents=True)
    collect(watcher, lambda c: bool(dirs(c)))
    aside = tmp_path / "aside"
    os.rename(watch / "cam", aside)
    collect(watcher, timeout=0.3)
    assert watcher.watched() == [str(watch)]
    (aside / "day" / "x.mp4").write_bytes(b"x")
    assert collect(watcher, timeout=0.3) == []  # a path under the watch dir would be a lie

    os.rename(aside, watch / "back")
    assert dirs(collect(watcher, lambda c: bool(dirs(c)))) == [str(watch / "back")]
    (watch / "back" / "day" / "x.mp4").write_bytes(b"y")
    assert paths(collect(watcher, lambda c: bool(paths(c)))) == [str(watch / "back/day/x.mp4")]


def test_a_directory_renamed_inside_the_tree_reports_its_new_paths(
        watcher: InotifyWatcher, watch: Path) -> None:
    (watch / "old" / "sub").mkdir(parents=True)
    collect(watcher, lambda c: bool(dirs(c)))
    os.rename(watch / "old", watch / "new")
    assert dirs(collect(watcher, lambda c: bool(dirs(c)))) == [str(watch / "new")]
    (watch / "new" / "sub" / "x.mp4").write_bytes(b"x")
    assert paths(collect(watcher, lambda c: bool(paths(c)))) == [str(watch / "new/sub/x.mp4")]
    assert not any(d.startswith(str(watch / "old")) for d in watcher.watched())


def test_without_recursion_only_the_top_directory_is_watched(watch: Path) -> None:
    (watch / "before").mkdir()
    w = InotifyWatcher(watch, recursive=False)
    try:
        assert w.watched() == [str(watch)]
        (watch / "after").mkdir()
        (watch / "after" / "x.mp4").write_bytes(b"x")
        (watch / "before" / "y.mp4").write_bytes(b"x")
        assert collect(w, timeout=0.3) == []
        (watch / "top.mp4").write_bytes(b"x")
        assert paths(collect(w, lambda c: bool(c))) == [str(watch / "top.mp4")]
    finally:
        w.close()


def test_a_watch_dir_deleted_and_made_again_is_watched_again(
        watcher: InotifyWatcher, watch: Path) -> None:
    watch.rmdir()
    collect(watcher, timeout=0.3)
    assert watcher.recover() == []  # not there yet
    watch.mkdir()
    assert watcher.recover() == [DirectoryChanged(str(watch))]
    assert watcher.recover() == []
    (watch / "x.mp4").write_bytes(b"x")
    assert paths(collect(watcher, lambda c: bool(c))) == [str(watch / "x.mp4")]


def test_a_watch_dir_replaced_while_a_recorder_holds_a_file_in_it_is_watched_anew(
        watcher: InotifyWatcher, watch: Path) -> None:
    """The kernel keeps a deleted directory (and its watch) while a file in it is open,
    so no IN_IGNORED tells: the new directory is found by its inode."""
    with open(watch / "recording.mp4", "wb") as recording:
        recording.write(b"x")
        recording.flush()
        collect(watcher, timeout=0.2)
        for path in watch.iterdir():
            path.unlink()
        watch.rmdir()
        watch.mkdir()
        collect(watcher, timeout=0.2)
        assert watcher.recover() == [DirectoryChanged(str(watch))]
        (watch / "new.mp4").write_bytes(b"x")
        recording.write(b"y")  # into the deleted directory: not a path in the watch dir
        recording.flush()
        assert paths(collect(watcher, timeout=0.5)) == [str(watch / "new.mp4")]
    assert collect(watcher, timeout=0.3) == []  # its late IN_IGNORED changes nothing
    assert watcher.watched() == [str(watch)]


def test_a_rotated_watch_dir_is_followed_by_name_not_by_inode(
        watcher: InotifyWatcher, watch: Path, tmp_path: Path) -> None:
    """``mv in in.old; mkdir in``: the old directory's events would otherwise be
    reported as paths in the new one."""
    old = tmp_path / "in.old"
    os.rename(watch, old)
    watch.mkdir()
    collect(watcher, timeout=0.2)
    assert watcher.recover() == [DirectoryChanged(str(watch))]
    (old / "late.mp4").write_bytes(b"x")
    (watch / "new.mp4").write_bytes(b"x")
    assert paths(collect(watcher, timeout=0.5)) == [str(watch / "new.mp4")]


def test_a_directory_renamed_over_another_keeps_its_watch_until_moved_away(
        watcher: InotifyWatcher, watch: Path, tmp_path: Path) -> None:
    """``mv -T a b`` over an empty ``b``: b's late IN_IGNORED must not drop the
    watch that now has its path, or moving b away would leave it reporting."""
    (watch / "a").mkdir()
    (watch / "b").mkdir()
    collect(watcher, timeout=0.2)
    os.rename(watch / "a", watch / "b")
    collect(watcher, timeout=0.3)
    assert watcher.watched() == [str(watch), str(watch / "b")]
    os.rename(watch / "b", tmp_path / "outside")
    collect(watcher, timeout=0.2)
    (tmp_path / "outside" / "x.mp4").write_bytes(b"x")
    assert collect(watcher, timeout=0.3) == []
    assert watcher.watched() == [str(watch)]


def _small_queue_watcher(watch: Path) -> InotifyWatcher:
    """The kernel's queue limit is read when an inotify instance is made: lowered for
    that moment only, it gives this watcher a 16-event queue to overflow for real."""
    if not os.access(MAX_QUEUED, os.W_OK):
        pytest.skip("needs root to lower fs.inotify.max_queued_events")
    saved = MAX_QUEUED.read_text()
    MAX_QUEUED.write_text("16\n")
    try:
        return InotifyWatcher(watch, recursive=True)
    finally:
        MAX_QUEUED.write_text(saved)


def _overflow(watch: Path) -> None:
    """40 new files: 120 events, none equal to the one before (which the kernel merges)."""
    for i in range(40):
        (watch / f"busy{i}.mp4").write_bytes(b"x")


@pytest.mark.serial  # lowers a system-wide limit for a moment
def test_a_directory_moved_away_during_an_overflow_is_no_longer_watched(
        watch: Path, tmp_path: Path) -> None:
    (watch / "sub").mkdir()
    w = _small_queue_watcher(watch)
    try:
        _overflow(watch)
        os.rename(watch / "sub", tmp_path / "outside")  # its IN_MOVED_FROM is lost
        assert dirs(collect(w, lambda c: bool(dirs(c)))) == [str(watch)]
        assert w.watched() == [str(watch)]
        (tmp_path / "outside" / "x.mp4").write_bytes(b"x")
        assert paths(collect(w, timeout=0.3)) == []
    finally:
        w.close()


@pytest.mark.serial  # lowers a system-wide limit for a moment
def test_a_queue_overflow_rescans_the_whole_watch_dir(watch: Path) -> None:
    (watch / "sub").mkdir()
    w = _small_queue_watcher(watch)
    try:
        _overflow(watch)
        changes = collect(w, lambda c: bool(dirs(c)))
        assert dirs(changes) == [str(watch)]
        assert str(watch / "sub") in w.watched()
        (watch / "sub" / "after.mp4").write_bytes(b"x")
        later = collect(w, lambda c: str(watch / "sub/after.mp4") in paths(c))
        assert str(watch / "sub/after.mp4") in paths(later)
    finally:
        w.close()


def test_a_missing_watch_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="cannot watch the watch dir"):
        InotifyWatcher(tmp_path / "absent", recursive=True)
