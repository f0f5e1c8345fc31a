"""The state dir survives a power cut right after it is made: worker directories,
the ``born`` file and a new LevelDB are durable before anything is recorded in them.

Runs on the power-cut filesystem (tests/support/powercut.py): root and /dev/fuse."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.state.durable import make_dirs, write_file
from shared.state.layout import WorkerStateDir
from shared.state.records import StreamRecord
from shared.state.store import CheckpointStore
from tests.support.powercut import PowerCutFS, unavailable

_REASON = unavailable()
pytestmark = pytest.mark.skipif(_REASON is not None,
                                reason=f"no power-cut filesystem here: {_REASON}")


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[PowerCutFS]:
    fs = PowerCutFS(tmp_path / "mnt")
    yield fs
    fs.close()


def test_made_directories_and_written_files_survive(disk: PowerCutFS) -> None:
    make_dirs(disk.mountpoint / "state" / "worker-0" / "deep")
    write_file(disk.mountpoint / "state" / "note", "kept")
    disk.cut()
    assert (disk.mountpoint / "state" / "worker-0" / "deep").is_dir()
    assert (disk.mountpoint / "state" / "note").read_text() == "kept"


def test_a_new_store_survives_a_cut_with_what_it_synced(disk: PowerCutFS) -> None:
    """Cut right after the first open: with LevelDB 1.22 making its database in place,
    CURRENT then names a MANIFEST never synced, and the reopen fails with
    "Corruption: no meta-nextfile entry in descriptor"."""
    directory = WorkerStateDir(disk.mountpoint / "state" / "worker-0")
    store = CheckpointStore(directory)
    assert store.fresh
    record = StreamRecord(stream_id="s1", rel_path="cam.mp4", dev=1, ino=2, chunk_size=100,
                          started_at=1.5)
    store.start_stream(record, sync=True)
    born = store.born_at
    store.close()
    disk.cut()
    reopened = CheckpointStore(directory)
    try:
        assert not reopened.fresh
        assert reopened.current_stream_id("cam.mp4") == "s1"
        assert reopened.born_at == born > 0
    finally:
        reopened.close()
    assert not directory.checkpoints_staging.exists()
