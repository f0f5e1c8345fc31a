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


_WRITER = """
import sys
from shared.state.layout import WorkerStateDir
from shared.state.store import CheckpointStore
from pathlib import Path
store = CheckpointStore(WorkerStateDir(Path(sys.argv[1])))
i = int(sys.argv[2])
while True:
    store.import_items([(b"k%08d" % i, bytes(65536))])  # a synced batch
    print(i, flush=True)
    i += 1
"""


def test_every_acknowledged_write_survives_cuts_across_log_files(disk: PowerCutFS) -> None:
    """Writes of 64 KiB fill LevelDB's 4 MiB memtable every 64 writes, each time moving
    to a new log file; a writer is ``kill -9``ed at a random moment, then the power is
    cut, eight times. Every write the store acknowledged is there after each cut
    (without the fsync of new log names, most runs lost the last few)."""
    import random
    import signal
    import subprocess
    import sys
    import time

    import plyvel

    directory = WorkerStateDir(disk.mountpoint / "state" / "worker-0")
    CheckpointStore(directory).close()
    rng = random.Random(7)
    acked, lost = -1, []
    for _ in range(8):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(directory.path),
                                   str(acked + 1)], stdout=subprocess.PIPE, text=True,
                                  cwd=Path(__file__).resolve().parents[2])
        assert writer.stdout is not None
        first = writer.stdout.readline()   # a positive marker: it is writing
        assert first, "the writer printed nothing"
        time.sleep(rng.uniform(0.3, 1.5))
        writer.send_signal(signal.SIGKILL)
        lines = [first, *writer.stdout.read().split()]
        writer.wait()
        acked = int(lines[-1])
        disk.cut()
        db = plyvel.DB(str(directory.checkpoints))
        try:
            missing = [i for i in range(acked + 1) if db.get(b"k%08d" % i) is None]
        finally:
            db.close()
        lost.append(len(missing))
    assert acked > 8 * 64, f"only {acked + 1} writes: too few to move to new log files"
    assert lost == [0] * 8, f"acknowledged writes lost, per cut: {lost}"


def test_what_a_killed_run_left_unsynced_is_made_durable_by_the_next(disk: PowerCutFS) -> None:
    """A run killed between a mkdir and its parent's fsync, or between renaming a new
    LevelDB into place and syncing that: the next run's open syncs both."""
    import os

    import plyvel

    from shared.state.durable import fsync_dir

    state = disk.mountpoint / "state"
    make_dirs(state)
    directory = WorkerStateDir(state / "worker-0")
    os.mkdir(directory.path)   # the killed run: no fsync of state/
    plyvel.DB(str(directory.checkpoints_staging), create_if_missing=True).close()
    fsync_dir(directory.checkpoints_staging)
    os.rename(directory.checkpoints_staging, directory.checkpoints)  # killed before the sync
    store = CheckpointStore(directory)   # the next run
    assert not store.fresh
    store.start_stream(StreamRecord(stream_id="s1", rel_path="cam.mp4", dev=1, ino=2,
                                    chunk_size=100, started_at=1.5), sync=True)
    store.close()
    disk.cut()
    reopened = CheckpointStore(directory)
    try:
        assert reopened.current_stream_id("cam.mp4") == "s1"
    finally:
        reopened.close()
