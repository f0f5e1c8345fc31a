"""``worker.removal`` and retention's crash recovery, on real files and real LevelDB.

The kernel's read lease is the real one: a descriptor this test process holds open
for writing is as much a writer as a recorder's.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

import worker.removal as removal
from shared.settings import Settings
from shared.state.layout import WorkerStateDir
from shared.state.records import StreamRecord, StreamStatus
from shared.state.store import CheckpointStore
from shared.state.wal import WriteAheadLog
from worker.removal import (
    LeaseRefused,
    NotTheVerifiedFile,
    Settled,
    hidden_name,
    remove_verified,
    settle,
)
from worker.retention import Retention
from worker.settled import FileState
from worker.stream import Stream

HIDDEN = hidden_name("cam-0001")


@pytest.fixture(autouse=True)
def sigio_ignored() -> Iterator[None]:
    """As in the worker: a broken lease signals its holder, which must not die of it."""
    previous = signal.signal(signal.SIGIO, signal.SIG_IGN)
    yield
    signal.signal(signal.SIGIO, previous)


def open_for_writing_elsewhere(path: Path) -> None:
    """Another process's non-blocking open for writing: refused while we hold the
    lease, but it starts the lease break, as a recorder's blocking open would."""
    code = ("import os, sys\ntry:\n    os.close(os.open(sys.argv[1], "
            "os.O_WRONLY | os.O_NONBLOCK))\nexcept BlockingIOError:\n    pass")
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, timeout=30)


@pytest.fixture
def watch(tmp_path: Path) -> Path:
    (tmp_path / "in" / "site").mkdir(parents=True)
    return tmp_path / "in"


def recorded(path: Path) -> FileState:
    return FileState.of(os.lstat(path))


def test_the_verified_file_is_removed_and_nothing_is_left(watch: Path) -> None:
    path = watch / "site" / "cam.mp4"
    path.write_bytes(b"x" * 1000)
    remove_verified(watch, "site/cam.mp4", recorded(path), HIDDEN)
    assert os.listdir(watch / "site") == []


def test_a_file_open_for_writing_is_kept(watch: Path) -> None:
    path = watch / "cam.mp4"
    path.write_bytes(b"x" * 1000)
    expected = recorded(path)
    with open(path, "ab"), pytest.raises(LeaseRefused) as refused:
        remove_verified(watch, "cam.mp4", expected, HIDDEN)
    assert refused.value.reason == "open_for_writing"
    assert sorted(os.listdir(watch)) == ["cam.mp4", "site"]
    remove_verified(watch, "cam.mp4", expected, HIDDEN)  # closed: now it may go
    assert not path.exists()


@pytest.mark.parametrize("change", ["append", "chmod", "replace"])
def test_a_file_not_in_its_verified_state_is_kept(watch: Path, change: str) -> None:
    path = watch / "cam.mp4"
    path.write_bytes(b"x" * 1000)
    expected = recorded(path)
    if change == "append":
        with open(path, "ab") as f:
            f.write(b"y")
    elif change == "chmod":
        path.chmod(0o600)  # ctime only
    else:
        (watch / "new").write_bytes(b"x" * 1000)
        os.rename(watch / "new", path)
    with pytest.raises(NotTheVerifiedFile):
        remove_verified(watch, "cam.mp4", expected, HIDDEN)
    assert path.read_bytes().startswith(b"x" * 1000)


def test_symlinks_are_never_followed_or_removed(watch: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "cam.mp4").write_bytes(b"secret")
    expected = recorded(outside / "cam.mp4")
    os.symlink(outside / "cam.mp4", watch / "link.mp4")
    with pytest.raises(NotTheVerifiedFile):
        remove_verified(watch, "link.mp4", expected, HIDDEN)
    os.symlink(outside, watch / "linkdir")
    with pytest.raises(FileNotFoundError):
        remove_verified(watch, "linkdir/cam.mp4", expected, HIDDEN)
    assert (outside / "cam.mp4").read_bytes() == b"secret"
    assert (watch / "link.mp4").is_symlink()


def test_a_writer_opening_the_file_during_removal_gets_it_back(
        watch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The race the hidden name is for: a writer opens the file by name just as it is
    renamed. The lease break is seen, the name given back, nothing removed."""
    path = watch / "cam.mp4"
    path.write_bytes(b"x" * 1000)
    real_rename = removal._rename

    def rename_then_writer_opens(parent: int, old: str, new: str) -> None:
        real_rename(parent, old, new)
        if new == HIDDEN:
            open_for_writing_elsewhere(watch / HIDDEN)

    monkeypatch.setattr(removal, "_rename", rename_then_writer_opens)
    with pytest.raises(LeaseRefused) as refused:
        remove_verified(watch, "cam.mp4", recorded(path), HIDDEN)
    assert refused.value.reason == "open_for_writing"
    assert sorted(os.listdir(watch)) == ["cam.mp4", "site"]
    assert path.read_bytes() == b"x" * 1000


def test_settle_after_a_crash_during_removal(watch: Path) -> None:
    """What a restart finds: the file untouched under its name (kept), left under the
    hidden name (removed now, under a lease), gone (removed)."""
    path = watch / "site" / "cam.mp4"
    path.write_bytes(b"x")
    expected = recorded(path)
    assert settle(watch, "site/cam.mp4", HIDDEN, expected) is Settled.KEPT
    os.rename(path, watch / "site" / HIDDEN)
    assert settle(watch, "site/cam.mp4", HIDDEN, expected) is Settled.REMOVED
    assert os.listdir(watch / "site") == []
    assert settle(watch, "site/cam.mp4", HIDDEN, expected) is Settled.REMOVED


def test_settle_gives_the_name_back_to_a_file_a_writer_holds(watch: Path) -> None:
    path = watch / "cam.mp4"
    path.write_bytes(b"x" * 100)
    expected = recorded(path)
    os.rename(path, watch / HIDDEN)
    with open(watch / HIDDEN, "ab"):
        assert settle(watch, "cam.mp4", HIDDEN, expected) is Settled.KEPT
    assert sorted(os.listdir(watch)) == ["cam.mp4", "site"]


def test_settle_never_takes_a_new_file_on_a_reused_inode_for_the_old_one(watch: Path) -> None:
    """The crash came after the unlink, and the recorder's next file got the freed
    inode (ext4 and tmpfs hand it out again at once): its ctime tells it apart."""
    path = watch / "cam.mp4"
    path.write_bytes(b"x" * 100)
    expected = recorded(path)
    path.unlink()
    path.write_bytes(b"x" * 100)
    os.utime(path, ns=(expected.mtime_ns, expected.mtime_ns))  # even the same mtime
    assert settle(watch, "cam.mp4", HIDDEN, expected) is Settled.REMOVED
    assert path.exists()  # not touched: it is a new stream's file


def _complete(store: CheckpointStore, path: Path, stream_id: str) -> StreamRecord:
    st = os.lstat(path)
    record = StreamRecord(stream_id=stream_id, rel_path=path.name, dev=st.st_dev,
                          ino=st.st_ino, chunk_size=5 << 20, started_at=1.0, size=st.st_size,
                          mtime_ns=st.st_mtime_ns, status=StreamStatus.COMPLETE,
                          completed_at=2.0).with_extra(verified_ctime_ns=st.st_ctime_ns)
    store.start_stream(record)
    return record


def test_recovery_records_a_removal_that_happened_and_forgets_one_that_did_not(
        watch: Path, tmp_path: Path) -> None:
    """Two ``remove`` intents left open by a crash: one file is gone (it was removed),
    the other is still there (the crash came before): the first is recorded as
    removed, the second stays a candidate, and both intents are settled."""
    directory = WorkerStateDir(tmp_path / "state")
    store, wal = CheckpointStore(directory), WriteAheadLog(directory)
    (watch / "gone.mp4").write_bytes(b"a" * 100)
    (watch / "kept.mp4").write_bytes(b"b" * 100)
    gone = _complete(store, watch / "gone.mp4", "gone-1")
    kept = _complete(store, watch / "kept.mp4", "kept-1")
    for record in (gone, kept):
        wal.begin("remove", stream_id=record.stream_id, index=-1, rel_path=record.rel_path,
                  reason="min_free", hidden=hidden_name(record.stream_id))
        Stream.source_removed(store, record, "min_free", 3.0)  # marked before the rename
    os.rename(watch / "gone.mp4", watch / hidden_name("gone-1"))  # the crash: not unlinked
    wal.close()
    wal = WriteAheadLog(directory)
    settings = Settings(watch_dir=watch, min_free=None, delete_after=0.0)
    retention = Retention(settings, store, wal, storage=None,  # type: ignore[arg-type]
                          log=structlog.get_logger())
    retention.recover()
    for record in store.streams():
        retention.consider(record)
    assert store.stream("gone-1").source_removed == "min_free"  # type: ignore[union-attr]
    assert store.stream("kept-1").source_removed is None  # type: ignore[union-attr]
    assert sorted(os.listdir(watch)) == ["kept.mp4", "site"]
    assert set(retention.candidates) == {"kept-1"}
    assert wal.pending() == []
    store.close()
    wal.close()


def test_candidates_are_offered_oldest_completion_first_after_a_reopen(
        watch: Path, tmp_path: Path) -> None:
    """A stream completed, reopened and completed again is offered once, at its new
    completion time (--min-free removes the oldest first)."""
    directory = WorkerStateDir(tmp_path / "state")
    store, wal = CheckpointStore(directory), WriteAheadLog(directory)
    settings = Settings(watch_dir=watch, min_free=None, delete_after=3600.0)
    retention = Retention(settings, store, wal, storage=None,  # type: ignore[arg-type]
                          log=structlog.get_logger())
    records = {}
    for name, completed_at in (("s", 100.0), ("old", 200.0), ("mid", 300.0)):
        (watch / f"{name}.mp4").write_bytes(b"x")
        records[name] = _complete(store, watch / f"{name}.mp4", name).evolve(
            completed_at=completed_at)
        retention.consider(records[name])
    retention.discard("s")                                  # reopened ...
    retention.consider(records["s"].evolve(completed_at=400.0))  # ... and complete again
    assert [r.stream_id for r in retention.removable(10)] == ["old", "mid", "s"]
    assert [r.completed_at for r in retention.removable(10)] == [200.0, 300.0, 400.0]
    store.close()
    wal.close()


def test_settle_gives_back_a_hidden_file_a_writer_appended_to(watch: Path) -> None:
    """Killed after the rename; a writer whose open waited on the lease appended to the
    hidden file: it goes back under its name (the stream reopens), never removed."""
    path = watch / "cam.mp4"
    path.write_bytes(b"x" * 100)
    expected = recorded(path)
    os.rename(path, watch / HIDDEN)
    with open(watch / HIDDEN, "ab") as f:
        f.write(b"new bytes")
    assert settle(watch, "cam.mp4", HIDDEN, expected) is Settled.KEPT
    assert path.read_bytes() == b"x" * 100 + b"new bytes"


def test_a_new_file_renamed_over_the_name_mid_removal_is_given_back(
        watch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The recorder renames a new file over the name just before the worker's rename:
    the hidden name then holds the new file, which must go back, not be unlinked."""
    path = watch / "cam.mp4"
    path.write_bytes(b"old" * 100)
    real_rename = removal._rename

    def recorder_renames_first(parent: int, old: str, new: str) -> None:
        if new == HIDDEN:
            (watch / "new.tmp").write_bytes(b"new recording")
            os.rename(watch / "new.tmp", path)
        real_rename(parent, old, new)

    monkeypatch.setattr(removal, "_rename", recorder_renames_first)
    with pytest.raises(NotTheVerifiedFile):
        remove_verified(watch, "cam.mp4", recorded(path), HIDDEN)
    assert path.read_bytes() == b"new recording"
    assert HIDDEN not in os.listdir(watch)


def test_names_that_are_not_utf8_are_removed_too(watch: Path) -> None:
    name = os.fsdecode(b"cam-\xff\xfe.mp4")
    path = watch / name
    path.write_bytes(b"x")
    remove_verified(watch, name, recorded(path), hidden_name(name))
    assert os.listdir(watch) == ["site"]
