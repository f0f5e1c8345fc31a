"""The power-cut filesystem drops exactly what a power cut would: unsynced data and
directory changes not made durable by an fsync of their directory; fsynced ones stay.
Each test runs real system calls on a real FUSE mount (root and /dev/fuse needed)."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .powercut import PowerCutFS, unavailable

_REASON = unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None,
                                reason=f"no power-cut filesystem here: {_REASON}")


@pytest.fixture(scope="module")
def disk(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PowerCutFS]:
    fs = PowerCutFS(tmp_path_factory.mktemp("powercut") / "mnt")
    yield fs
    fs.close()
    assert not os.path.ismount(fs.mountpoint)


@pytest.fixture
def root(disk: PowerCutFS, request: pytest.FixtureRequest) -> Path:
    """A directory of this test's own, already durable."""
    path = disk.mountpoint / request.node.name
    path.mkdir()
    sync_dir(disk.mountpoint)
    return path


def sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write(path: Path, data: bytes, *, sync: bool, append: bool = False) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
    fd = os.open(path, flags, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def test_unsynced_data_vanishes_and_synced_data_survives(disk: PowerCutFS, root: Path) -> None:
    write(root / "a", b"durable", sync=True)
    write(root / "b", b"never synced", sync=False)
    sync_dir(root)
    write(root / "a", b" and more", sync=False, append=True)
    assert (root / "a").read_bytes() == b"durable and more"   # visible before the cut
    assert disk.pending()[0] >= 2
    disk.cut()
    assert (root / "a").read_bytes() == b"durable"
    assert (root / "b").read_bytes() == b""   # its name was durable, its bytes were not
    assert disk.pending() == (0, 0)


def test_opening_with_o_trunc_empties_the_file(disk: PowerCutFS, root: Path) -> None:
    write(root / "f", b"hello world", sync=True)
    (root / "f").write_bytes(b"x")            # open(O_WRONLY | O_CREAT | O_TRUNC)
    assert (root / "f").read_bytes() == b"x"
    with pytest.raises(FileExistsError):
        os.open(root / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL)


def test_fdatasync_makes_data_durable(disk: PowerCutFS, root: Path) -> None:
    fd = os.open(root / "c", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 100_000)
    os.fdatasync(fd)
    os.pwrite(fd, b"y", 10)   # after the sync: lost
    os.close(fd)
    sync_dir(root)
    disk.cut()
    assert (root / "c").read_bytes() == b"x" * 100_000


def test_a_new_file_needs_its_directory_synced(disk: PowerCutFS, root: Path) -> None:
    write(root / "both", b"data", sync=True)
    sync_dir(root)
    write(root / "file-synced-only", b"data", sync=True)   # its entry is not durable
    disk.cut()
    assert sorted(os.listdir(root)) == ["both"]
    assert (root / "both").read_bytes() == b"data"


def test_unsynced_renames_and_unlinks_are_undone(disk: PowerCutFS, root: Path) -> None:
    write(root / "current", b"old", sync=True)
    write(root / "gone", b"kept", sync=True)
    sync_dir(root)
    # the write-then-rename pattern, without the directory sync after the rename
    write(root / "current.tmp", b"new", sync=True)
    os.replace(root / "current.tmp", root / "current")
    os.unlink(root / "gone")
    assert sorted(os.listdir(root)) == ["current"]
    disk.cut()
    assert sorted(os.listdir(root)) == ["current", "gone"]
    assert (root / "current").read_bytes() == b"old"
    assert (root / "gone").read_bytes() == b"kept"


def test_a_synced_rename_survives(disk: PowerCutFS, root: Path) -> None:
    write(root / "current", b"old", sync=True)
    sync_dir(root)
    write(root / "current.tmp", b"new", sync=True)
    os.replace(root / "current.tmp", root / "current")
    sync_dir(root)
    disk.cut()
    assert sorted(os.listdir(root)) == ["current"]
    assert (root / "current").read_bytes() == b"new"


def test_a_rename_across_directories_needs_both_synced(disk: PowerCutFS, root: Path) -> None:
    (root / "from").mkdir()
    (root / "to").mkdir()
    sync_dir(root)
    write(root / "from" / "f", b"moving", sync=True)
    sync_dir(root / "from")
    os.rename(root / "from" / "f", root / "to" / "f")
    sync_dir(root / "to")   # the new name is durable, the removal of the old one is not
    disk.cut()
    assert os.listdir(root / "from") == ["f"]
    assert os.listdir(root / "to") == ["f"]


def test_a_new_directory_and_its_contents_need_the_parent_synced(disk: PowerCutFS,
                                                                 root: Path) -> None:
    (root / "kept").mkdir()
    sync_dir(root)
    (root / "lost" / "deep").mkdir(parents=True)
    write(root / "lost" / "deep" / "f", b"data", sync=True)
    sync_dir(root / "lost" / "deep")
    sync_dir(root / "lost")   # but not root: "lost" itself is not durable
    disk.cut()
    assert sorted(os.listdir(root)) == ["kept"]


def test_an_open_file_does_not_outlive_the_cut(disk: PowerCutFS, root: Path) -> None:
    """A cut follows the death of every process; a handle kept open across one (which
    no real process could) is refused rather than served from the dropped state."""
    write(root / "f", b"data", sync=True)
    sync_dir(root)
    fd = os.open(root / "f", os.O_RDWR)
    try:
        disk.cut()
        with pytest.raises(OSError) as raised:
            os.write(fd, b"more")
        assert raised.value.errno == errno.EBADF
    finally:
        os.close(fd)
    assert (root / "f").read_bytes() == b"data"


def test_leveldb_synced_writes_survive_a_cut(disk: PowerCutFS, root: Path) -> None:
    """A real LevelDB in a killed process: every ``sync=True`` write is there after the
    cut (the database made the way shared/state/store.py makes it, in place)."""
    from shared.state.layout import WorkerStateDir
    from shared.state.store import CheckpointStore

    CheckpointStore(WorkerStateDir(root / "worker-0")).close()
    db_path = root / "worker-0" / "checkpoints.ldb"
    program = ("import os, sys, plyvel\n"
               "db = plyvel.DB(sys.argv[1])\n"
               "for i in range(int(sys.argv[2])):\n"
               "    db.put(b'k%06d' % i, b'v' * 200, sync=True)\n"
               "os._exit(0)\n")
    written = 0
    for run in range(4):
        written = 3000 * (run + 1)
        subprocess.run([sys.executable, "-c", program, str(db_path), str(written)],
                       check=True, cwd=Path(__file__).resolve().parents[2])
        disk.cut()
    import plyvel

    db = plyvel.DB(str(db_path))
    try:
        assert sum(1 for _ in db.iterator(include_value=False)) == written
    finally:
        db.close()
