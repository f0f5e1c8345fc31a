"""Local retention at its limits: a full filesystem (``--min-free`` on a small tmpfs),
a lease the kernel refuses, and a crash at its worst moment (``kill -9`` at random
moments is a fault scenario: tests/faults/test_retention_crash.py).

The tmpfs and the unprivileged run need root (mount, setpriv): elsewhere they skip
and say so.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.badinput.support import (
    NOBODY_UID,
    NOGROUP_GID,
    Service,
    service,
    unprivileged_command,
)
from tests.support.bucket import check_stream, metadata_documents
from tests.support.s3server import S3Endpoint

pytestmark = pytest.mark.timeout(300)

MiB = 1 << 20


def removals(svc: Service) -> list[dict[str, Any]]:
    return [e for e in svc.processor.all_events() if e.get("event") == "source_removed"]


def free_bytes(path: Path) -> int:
    fs = os.statvfs(path)
    return fs.f_bavail * fs.f_frsize


@contextlib.contextmanager
def tmpfs(path: Path, size_mib: int) -> Iterator[None]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root: --min-free on a full filesystem untested")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
                   check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_min_free_removes_oldest_safe_files_first(tmp_path: Path, s3: S3Endpoint) -> None:
    """A 32 MiB tmpfs and ``--min-free 16MiB``. Three finished 6 MiB files, then one held
    open by its writer and growing: each time free space drops under 20 MiB the oldest
    finished file goes, until only the open one is left, which is never removed while
    its writer holds it (``nothing_safe``); once it is closed it goes too."""
    with tmpfs(tmp_path / "in", 32), \
            service(tmp_path, s3, stream_timeout=1.0, extra=["--min-free", "16MiB"]) as svc:
        watch = svc.watch_dir
        threshold = 16 * MiB

        def complete(name: str) -> None:
            svc.processor.wait_for_event("stream_completed", lambda e: e["rel_path"] == name)

        def gone(name: str) -> None:
            svc.processor.wait_for_event("source_removed", lambda e: e["rel_path"] == name)

        for i in range(1, 4):
            (watch / f"f{i}.mp4").write_bytes(os.urandom(6 * MiB))
            complete(f"f{i}.mp4")
        gone("f1.mp4")  # 18 MiB used: 14 free
        assert [(watch / f"f{i}.mp4").exists() for i in range(1, 4)] == [False, True, True]
        with open(watch / "open.mp4", "wb") as writer:
            for chunk_mib, expect_gone in ((5, "f2.mp4"), (6, "f3.mp4")):
                writer.write(os.urandom(chunk_mib * MiB))
                writer.flush()
                gone(expect_gone)
            writer.write(os.urandom(6 * MiB))  # 17 MiB open: 15 free, nothing safe
            writer.flush()
            svc.processor.wait_for_event("retention_blocked",
                                         lambda e: e["reason"] == "nothing_safe")
            assert (watch / "open.mp4").stat().st_size == 17 * MiB
            assert free_bytes(watch) < threshold
        gone("open.mp4")
        events = removals(svc)
        assert [e["rel_path"] for e in events] == [f"f{i}.mp4" for i in range(1, 4)] + \
            ["open.mp4"]
        assert {e["reason"] for e in events} == {"min_free"}
        assert free_bytes(watch) >= threshold
        for event in events:
            (doc,) = [d for d in metadata_documents(svc.client, svc.bucket)
                      if d["stream_id"] == event["stream_id"]]
            assert doc["total_size_bytes"] == event["size"]
        values = svc.metrics()
        assert values["processor_min_free_bytes"] == threshold
        assert values['processor_source_files_removed_total{reason="min_free"}'] == 4


@pytest.fixture
def as_nobody(tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint) -> Iterator[Service]:
    """The processor as ``nobody``, in a watch dir it may write (the pytest temp dir is
    root-only, hence /tmp)."""
    argv = unprivileged_command()
    if argv is None:
        pytest.skip("cannot run the processor as nobody here (needs root, setpriv, the "
                    "nobody user and an interpreter nobody can execute): a refused lease "
                    "is untested")
    workdir = Path(tempfile.mkdtemp(prefix="vsp-retention-", dir="/tmp"))
    try:
        workdir.chmod(0o755)
        (workdir / "in").mkdir(mode=0o777)
        (workdir / "in").chmod(0o777)
        (workdir / "state").mkdir()
        os.chown(workdir / "state", NOBODY_UID, NOGROUP_GID)
        with service(workdir, s3, workers=1, argv=argv,
                     extra=["--delete-after", "0s"]) as svc:
            yield svc
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def test_a_refused_lease_keeps_the_file(as_nobody: Service) -> None:
    """Without ownership or CAP_LEASE the kernel refuses the lease: the file stays and
    the reason is logged once; a file the processor's user owns is removed."""
    svc = as_nobody
    theirs, ours = svc.watch_dir / "root-owned.mp4", svc.watch_dir / "nobody-owned.mp4"
    theirs.write_bytes(os.urandom(100_000))
    (event,) = svc.processor.wait_for_event(
        "retention_blocked", lambda e: e.get("rel_path") == "root-owned.mp4")
    assert event["reason"] == "lease_not_permitted"
    ours.write_bytes(os.urandom(100_000))
    os.chown(ours, NOBODY_UID, NOGROUP_GID)
    svc.processor.wait_for_event("source_removed", lambda e: e["rel_path"] == "nobody-owned.mp4")
    assert theirs.exists() and not ours.exists()
    assert len(svc.events("retention_blocked", rel_path="root-owned.mp4")) == 1


@contextlib.contextmanager
def ext4(path: Path, image: Path) -> Iterator[None]:
    """A 64 MiB ext4 at ``path`` (loop mount), which hands a freed inode to the next
    file created, as the recorders' disks do."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("a loop-mounted ext4 needs root and e2fsprogs: the reused-inode "
                    "recovery is covered by tests/worker/test_removal.py only")
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["truncate", "-s", "64M", str(image)], check=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    subprocess.run(["mount", "-o", "loop", str(image), str(path)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_a_crash_mid_removal_never_lets_a_new_file_overwrite_the_old_recording(
        tmp_path: Path, s3: S3Endpoint) -> None:
    """The worst moment for a crash: the file unlinked, the removal not yet recorded
    (the state is rewritten to exactly that after a kill -9), and the recorder's next
    file at the same name on the freed inode. The restart must take it for a new
    recording: the removed one's object in S3 stays as it was."""
    from shared.state.layout import StateDir
    from shared.state.store import CheckpointStore
    from shared.state.wal import WriteAheadLog
    from tests.support.bucket import read_object
    from worker.removal import hidden_name

    with ext4(tmp_path / "in", tmp_path / "disk.img"), \
            service(tmp_path, s3, workers=1, extra=["--delete-after", "0s"]) as svc:
        path, old = svc.watch_dir / "b.mp4", os.urandom(300_000)
        path.write_bytes(old)
        inode = path.stat().st_ino
        (event,) = svc.processor.wait_for_event("source_removed",
                                                lambda e: e["rel_path"] == "b.mp4")
        stream_id = event["stream_id"]
        (doc,) = [d for d in metadata_documents(svc.client, svc.bucket)
                  if d["stream_id"] == stream_id]
        svc.processor.kill9()
        directory = StateDir(svc.processor.state_dir).worker(0)
        store, wal = CheckpointStore(directory), WriteAheadLog(directory)
        record = store.stream(stream_id)
        assert record is not None and record.source_removed == "delete_after"
        store.save_stream(record.with_extra(source_removed=None, source_removed_at=None))
        wal.begin("remove", stream_id=stream_id, index=-1, rel_path="b.mp4",
                  reason="delete_after", hidden=hidden_name(stream_id))
        store.close()
        wal.close()
        new = os.urandom(500_000)
        path.write_bytes(new)
        assert path.stat().st_ino == inode  # the hard case: the freed inode, reused
        svc.processor.start()
        (again,) = svc.processor.wait_for_event(
            "source_removed", lambda e: e["rel_path"] == "b.mp4" and not e.get("recovered"),
            timeout=90)
        assert again["stream_id"] != stream_id and again["size"] == len(new)
        assert read_object(svc.client, svc.bucket, doc["object_key"]) == old
        (new_doc,) = [d for d in metadata_documents(svc.client, svc.bucket)
                      if d["stream_id"] == again["stream_id"]]
        check_stream(svc.client, svc.bucket, new_doc, new)
        assert not [e for e in svc.processor.events() if e.get("event") == "stream_reopened"]
