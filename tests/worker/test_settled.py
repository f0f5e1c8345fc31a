"""Which chunks completion may skip re-reading (worker/settled.py), and that it re-reads
every chunk whose file moved on.

The proof itself is tested on real files and a written mount table. The completion
tests drive a real tracker and uploader in-process against the test S3 server, with
real files and LevelDB; only the clock and the mount table are chosen by the test,
because a file's ctime cannot be set back (waiting a minute per test is not an
option) and the filesystem type of pytest's tmp_path depends on the machine.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from shared import metrics
from tests.support.s3server import S3Endpoint, unique_bucket_name
from tests.worker.inprocess import InProcessWorkers, run_until
from worker.settled import FileState, SettledFiles, filesystem_types, settle_seconds
from worker.storage import Storage
from worker.tracker import StreamTracker

CHUNK = 5 << 20
MOUNTINFO = """\
22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
25 24 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683584k
40 27 0:45 / /mnt/cams rw,relatime shared:7 master:2 - nfs4 srv:/cams rw,vers=4.2
not a mount line
41 27 8:17 / /data rw,noatime - xfs /dev/sdb1 rw
"""


# --- the proof ------------------------------------------------------------------------
def test_mount_table_maps_devices_to_filesystem_types(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(MOUNTINFO)
    types = filesystem_types(table)
    assert types[os.makedev(254, 0)] == "ext4"
    assert types[os.makedev(0, 45)] == "nfs4"  # optional fields before "-" are skipped
    assert types[os.makedev(8, 17)] == "xfs"
    assert types[os.makedev(0, 23)] == "tmpfs"
    assert len(types) == 5  # the line it cannot parse is left out
    assert filesystem_types(tmp_path / "missing") == {}


def test_settle_time_covers_the_kernels_writeback_delay(tmp_path: Path) -> None:
    (tmp_path / "dirty_expire_centisecs").write_text("3000\n")
    (tmp_path / "dirty_writeback_centisecs").write_text("500\n")
    assert settle_seconds(tmp_path) == 60.0
    (tmp_path / "dirty_expire_centisecs").write_text("12000\n")
    assert settle_seconds(tmp_path) == 150.0
    assert settle_seconds(tmp_path / "absent") == 60.0


def _settled_files(dev: int, fstype: str, *, ahead: float) -> SettledFiles:
    """The proof as it would be given ``ahead`` seconds from now, ``dev`` of ``fstype``."""
    return SettledFiles(settle=60.0, clock=lambda: time.time() + ahead,
                        mounts=lambda: {dev: fstype})


def _as_if(tmp_path: Path, fstype: str, *, ahead: float) -> SettledFiles:
    """As ``ahead`` seconds from now, with the tests' files on ``fstype``."""
    return _settled_files(os.stat(tmp_path).st_dev, fstype, ahead=ahead)


@pytest.mark.parametrize("fstype", ["ext4", "xfs", "btrfs", "overlay"])
def test_a_file_untouched_for_the_settle_time_on_a_local_filesystem_has_a_proof(
        tmp_path: Path, fstype: str) -> None:
    path = tmp_path / "cam.mp4"
    path.write_bytes(b"x" * 1000)
    st = os.stat(path)
    assert _settled_files(st.st_dev, fstype, ahead=61).proof(st) == FileState.of(st)


@pytest.mark.parametrize("fstype", ["nfs4", "nfs", "cifs", "smb3", "fuse.sshfs", "tmpfs"])
def test_no_proof_where_timestamps_cannot_be_trusted(tmp_path: Path, fstype: str) -> None:
    path = tmp_path / "cam.mp4"
    path.write_bytes(b"x" * 1000)
    st = os.stat(path)
    assert _settled_files(st.st_dev, fstype, ahead=3600).proof(st) is None
    assert _settled_files(st.st_dev + 1, "ext4", ahead=3600).proof(st) is None  # unknown


def test_no_proof_for_a_file_changed_recently(tmp_path: Path) -> None:
    path = tmp_path / "cam.mp4"
    path.write_bytes(b"x" * 1000)
    st = os.stat(path)
    assert _settled_files(st.st_dev, "ext4", ahead=59).proof(st) is None


def test_a_write_changes_the_state_the_proof_names(tmp_path: Path) -> None:
    path = tmp_path / "cam.mp4"
    path.write_bytes(b"x" * 1000)
    before = FileState.of(os.stat(path))
    time.sleep(0.02)
    with open(path, "r+b") as f:  # same size, and mtime put back: only ctime tells
        f.write(b"y")
    os.utime(path, ns=(before.mtime_ns, before.mtime_ns))
    after = FileState.of(os.stat(path))
    assert (after.size, after.mtime_ns) == (before.size, before.mtime_ns)
    assert after != before


def test_the_real_mount_table_is_read() -> None:
    """On Linux the running process sees at least its root filesystem."""
    root = os.stat("/").st_dev
    assert root in filesystem_types()


# --- completion ---------------------------------------------------------------------
@pytest.fixture
def environment(tmp_path: Path, s3: S3Endpoint,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Any]]:
    """Builds an in-process tracker + uploader on real files, LevelDB and S3."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    workers = InProcessWorkers(tmp_path, s3, unique_bucket_name("settled"), CHUNK)

    def build(settled: SettledFiles,
              stream_timeout: float = 0.3) -> tuple[StreamTracker, Storage, Path]:
        tracker, storage = workers.build(stream_timeout=stream_timeout, settled=settled)
        return tracker, storage, workers.watch

    yield build
    workers.close()


def _complete(tracker: StreamTracker, name: str, logs: list[dict[str, Any]]) -> dict[str, Any]:
    tracker.touch(name)
    run_until(tracker, lambda: any(e["event"] == "stream_completed" for e in logs))
    (completed,) = [e for e in logs if e["event"] == "stream_completed"]
    return completed


def _final_bytes(storage: Storage, completed: dict[str, Any], name: str) -> bytes:
    prefix = f"streams/{completed['stream_id']}"
    body = storage.client.get_object(Bucket=storage.bucket, Key=f"{prefix}/{name}")["Body"]
    return bytes(body.read())


def _write(watch: Path, name: str, size: int) -> bytes:
    data = os.urandom(size)
    (watch / name).write_bytes(data)
    return data


@pytest.mark.parametrize(("case", "expected"), [
    # settled before its chunks were read, unchanged since: its state is checked, not
    # its bytes, and the final object is still the file
    ("settled, ext4", {"read": 0, "settled": 3}),
    # the real clock and settle time: a file written a moment ago has no proof
    ("just written, ext4", {"read": 3, "settled": 0}),
    # settled, but on a filesystem whose timestamps are not this kernel's
    ("settled, nfs4", {"read": 3, "settled": 0}),
])
def test_how_completion_verifies_an_unchanged_file(
        environment: Callable[..., Any], tmp_path: Path, case: str,
        expected: dict[str, int]) -> None:
    dev = os.stat(tmp_path).st_dev
    settled = {"settled, ext4": _as_if(tmp_path, "ext4", ahead=3600),
               "just written, ext4": SettledFiles(mounts=lambda: {dev: "ext4"}),
               "settled, nfs4": _as_if(tmp_path, "nfs4", ahead=3600)}[case]
    tracker, storage, watch = environment(settled)
    data = _write(watch, "cam.mp4", 2 * CHUNK + 12345)
    counted = {by: metrics.CHUNKS_VERIFIED.labels(by=by)._value.get() for by in expected}
    with capture_logs() as logs:
        completed = _complete(tracker, "cam.mp4", logs)
    assert completed["chunks_verified"] == expected
    assert {by: metrics.CHUNKS_VERIFIED.labels(by=by)._value.get() - counted[by]
            for by in expected} == expected
    assert _final_bytes(storage, completed, "cam.mp4") == data


def test_a_settled_file_written_after_its_chunks_were_read_is_read_again(
        environment: Callable[..., Any], tmp_path: Path) -> None:
    """The proof names the file's state before each read: an in-place write after the
    upload (same size, as an MP4 muxer patching its header) moves ctime, so every chunk
    read before it is read again, and the changed one is uploaded again."""
    # the patch must land after both chunks are read and before completion begins: a
    # 0.3 s timeout let a loaded machine start the completion in the step that
    # committed the second chunk, and the test then waited for a count it had passed
    tracker, storage, watch = environment(_as_if(tmp_path, "ext4", ahead=3600),
                                          stream_timeout=3.0)
    data = bytearray(_write(watch, "cam.mp4", 2 * CHUNK + 12345))
    with capture_logs() as logs:
        tracker.touch("cam.mp4")
        run_until(tracker, lambda: sum(e["event"] == "chunk_uploaded" for e in logs) == 2)
        time.sleep(0.05)
        with open(watch / "cam.mp4", "r+b") as f:
            f.seek(100)
            f.write(b"patched header")
        data[100:114] = b"patched header"
        completed = _complete(tracker, "cam.mp4", logs)
    assert completed["chunks_verified"] == {"read": 2, "settled": 1}  # the tail: read last
    assert [e["index"] for e in logs if e["event"] == "chunk_changed_on_disk"] == [0]
    assert completed["chunks_reuploaded"] == 1
    assert _final_bytes(storage, completed, "cam.mp4") == bytes(data)
