"""End to end: chunks of a file that had settled are verified by its state, not re-read,
and a write after their read still sends every chunk back to be read (worker/settled.py).

A file's ctime cannot be set back, so the watch dir is a real ext4 filesystem (a loop-
mounted image, as root) whose files were written with old timestamps by debugfs before
it was mounted. Skipped where no loop device can be mounted.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import check_stream, wait_for_metadata
from tests.support.videos import make_video

pytestmark = pytest.mark.timeout(240)

OLD = "20200101000000"  # debugfs time format: the files were last changed in 2020


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise AssertionError(f"{argv[0]} failed: {done.stderr.strip()}")


@pytest.fixture
def old_ext4(tmp_path: Path) -> Iterator[Callable[[Path, dict[str, bytes]], None]]:
    """Mounts, at a given directory, an ext4 image holding ``files`` with 2020 times."""
    if os.geteuid() != 0 or not all(shutil.which(t) for t in ("mkfs.ext4", "debugfs")):
        pytest.skip("needs root, mkfs.ext4 and debugfs (e2fsprogs) to build an ext4 image")
    mounted: list[Path] = []

    def mount(at: Path, files: dict[str, bytes]) -> None:
        image = tmp_path / "watch.img"
        with open(image, "wb") as f:
            f.truncate(sum(len(d) for d in files.values()) * 2 + (32 << 20))
        _run(["mkfs.ext4", "-q", "-F", str(image)])
        for name, data in files.items():
            source = tmp_path / f"source-{name}"
            source.write_bytes(data)
            _run(["debugfs", "-w", "-R", f"write {source} {name}", str(image)])
            for time_field in ("atime", "mtime", "ctime"):
                _run(["debugfs", "-w", "-R", f"set_inode_field {name} {time_field} {OLD}",
                      str(image)])
        at.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-o", "loop", str(image), str(at)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot loop-mount an ext4 image here: {done.stderr.strip()}")
        mounted.append(at)
        ctime = os.stat(at / next(iter(files))).st_ctime
        assert ctime < 1_600_000_000, "debugfs did not set the ctime"

    yield mount
    for at in mounted:
        subprocess.run(["umount", str(at)], capture_output=True)


def _completed(processor: Any) -> dict[str, Any]:
    (event,) = processor.wait_for_event("stream_completed")
    return event


def test_a_settled_file_is_verified_without_a_second_read(
        make_processor: Any, client: Any, bucket: str, old_ext4: Callable[..., None],
        tmp_path: Path) -> None:
    """A finished recording last changed years ago: its chunks go up once, completion
    reads none of them again, and every object still holds exactly the file's bytes."""
    data = make_video(tmp_path / "made.mp4", 8).read_bytes()  # 2 full 5 MiB chunks + tail
    processor = make_processor()
    old_ext4(processor.watch_dir, {"cam.mp4": data})
    processor.start()
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, data)
    assert doc["media_duration_seconds"] == pytest.approx(8.0, abs=0.1)
    assert _completed(processor)["chunks_verified"] == {"read": 0, "settled": 3}


def test_without_trusting_settled_files_every_chunk_is_read_again(
        make_processor: Any, client: Any, bucket: str, old_ext4: Callable[..., None],
        tmp_path: Path) -> None:
    """``--no-trust-settled`` (the contract's letter): the same old file, every chunk read
    again at completion."""
    data = make_video(tmp_path / "made.mp4", 8).read_bytes()
    processor = make_processor(extra=["--no-trust-settled"])
    old_ext4(processor.watch_dir, {"cam.mp4": data})
    processor.start()
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, data)
    assert _completed(processor)["chunks_verified"] == {"read": 3, "settled": 0}


def test_a_settled_file_written_after_its_first_chunk_is_read_again(
        make_processor: Any, client: Any, bucket: str, old_ext4: Callable[..., None],
        tmp_path: Path) -> None:
    """The service is frozen (SIGSTOP) right after chunk 0 of a settled file is uploaded,
    and chunk 0 is patched in place with its size and mtime kept, as only ctime can tell.
    Completion reads every chunk again and uploads chunk 0 again: the final object is the
    patched file, in the same stream (no reopen)."""
    data = bytearray(make_video(tmp_path / "made.mp4", 10, size="1280x720",
                                bitrate_mbps=40).read_bytes())
    assert len(data) > 6 * (5 << 20), len(data)
    processor = make_processor()
    old_ext4(processor.watch_dir, {"cam.mp4": bytes(data)})
    path = processor.watch_dir / "cam.mp4"
    processor.start()
    processor.wait_for_event("chunk_uploaded", lambda e: e["index"] == 0)
    assert processor.proc is not None
    os.killpg(processor.proc.pid, signal.SIGSTOP)
    try:
        before = os.stat(path)
        patch = b"patched-header"
        with open(path, "r+b") as f:
            f.seek(100)
            f.write(patch)
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        data[100:100 + len(patch)] = patch
    finally:
        os.killpg(processor.proc.pid, signal.SIGCONT)
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, bytes(data))
    completed = _completed(processor)
    assert completed["chunks_verified"] == {"read": len(doc["chunks"]), "settled": 0}
    assert doc["chunks_reuploaded"] == 1 and doc["reopen_count"] == 0
    changed = [e["index"] for e in processor.events() if e["event"] == "chunk_changed_on_disk"]
    assert changed == [0]
