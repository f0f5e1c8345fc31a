"""The processor never writes to, moves or deletes anything under the watch dir.

1. The watch dir is a read-only bind mount (as the Compose file mounts it): the
   processor runs in a private mount namespace (``unshare --mount``) where
   ``<workdir>/in`` is ``<workdir>/src`` mounted ``ro``; the tests write to ``src``.
   Every stream must still complete, with no error.
2. The watch dir is writable (root): nothing in it may change either, so a write
   the service would make when it can is caught too.

Both compare a full listing (type, mode, size, mtime, inode, owner, SHA-256)
before and after, with the processor stopped.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.badinput.support import Service, service, snapshot
from tests.support.bucket import check_stream, metadata_documents
from tests.support.runner import wait_until
from tests.support.s3server import S3Endpoint
from tests.support.videos import make_not_mp4, make_video

pytestmark = pytest.mark.timeout(240)

BIND_RO = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
           'mount --bind -o ro "$1" "$2" && shift 2 && exec "$@"', "sh"]


def populate(root: Path, video: bytes) -> dict[str, bytes]:
    files = {"cam.mp4": video, "site/cam2.mp4": video[: len(video) // 2],
             "empty.mp4": b"", "noise.mp4": os.urandom(6 << 20), "notes.txt": b"x" * 10}
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    os.symlink("cam.mp4", root / "alias.mp4")
    (root / "empty-dir.mp4").mkdir()
    return {k: v for k, v in files.items() if k.endswith(".mp4")}


def run_and_compare(svc: Service, source: Path, files: dict[str, bytes],
                    baseline: dict[str, tuple[object, ...]]) -> None:
    """Let every stream complete, add one more file live, stop, compare listings with
    ``baseline`` (taken before the processor started)."""
    def done(expected: dict[str, bytes]) -> bool:
        return set(expected) <= {d["source_path"]
                                 for d in metadata_documents(svc.client, svc.bucket)}

    wait_until(lambda: done(files), 120, "start-up files shipped", svc.processor.tail)
    late = make_not_mp4(source / "site" / "late.mp4", 300_000).read_bytes()
    files = {**files, "site/late.mp4": late}
    before = snapshot(source)
    assert set(before) - set(baseline) == {"site/late.mp4"}
    changed = {k for k in baseline if before[k] != baseline[k]}
    assert changed <= {"site"}, changed  # only the late file's own directory changed
    wait_until(lambda: done(files), 60, "late file shipped", svc.processor.tail)
    wait_until(lambda: svc.metrics().get("processor_active_streams") == 0, 30,
               "no active stream", svc.processor.tail)
    svc.processor.signal(signal.SIGTERM)
    assert svc.processor.wait(timeout=60) == 0
    after = snapshot(source)
    assert after == before, {k: (before.get(k), after.get(k))
                             for k in set(before) | set(after) if before.get(k) != after.get(k)}
    for doc in metadata_documents(svc.client, svc.bucket):
        check_stream(svc.client, svc.bucket, doc, files[doc["source_path"]])
    bad = [e for e in svc.processor.all_events()
           if e.get("level") in ("error", "critical") or e["event"] in (
               "source_unreadable", "stream_failed", "<non-json>")]
    assert not bad, bad
    assert "Read-only file system" not in svc.processor.log_path().read_text()


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return make_video(tmp_path_factory.mktemp("ro-video") / "v.mp4", 4.0).read_bytes()


def can_bind_mount(tmp: Path) -> bool:
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return False
    (tmp / "a").mkdir(parents=True)
    (tmp / "b").mkdir()
    probe = subprocess.run([*BIND_RO, str(tmp / "a"), str(tmp / "b"), "sh", "-c",
                            'touch "$0"/x 2>/dev/null && exit 1 || exit 0', str(tmp / "b")],
                           capture_output=True, timeout=60)
    return probe.returncode == 0 and not (tmp / "a" / "x").exists()


def test_read_only_bind_mounted_watch_dir(tmp_path: Path, s3: S3Endpoint,
                                          video: bytes) -> None:
    if not can_bind_mount(tmp_path / "probe"):
        pytest.skip("needs root and unshare to make a read-only bind mount")
    source = tmp_path / "src"
    source.mkdir()
    files = populate(source, video)
    (tmp_path / "in").mkdir()
    before = snapshot(source)
    with service(tmp_path, s3, workers=2,
                 prefix=[*BIND_RO, str(source), str(tmp_path / "in")]) as svc:
        mountinfo = Path(f"/proc/{svc.processor.proc.pid}/mountinfo").read_text()  # type: ignore
        (line,) = [m for m in mountinfo.splitlines() if f" {tmp_path / 'in'} " in m]
        assert " ro," in line or " ro " in line, line  # really read-only for it
        assert not os.listdir(tmp_path / "in")  # and invisible to everyone else
        run_and_compare(svc, source, files, before)


def test_writable_watch_dir_is_left_untouched(tmp_path: Path, s3: S3Endpoint,
                                              video: bytes) -> None:
    (tmp_path / "in").mkdir()
    files = populate(tmp_path / "in", video)
    before = snapshot(tmp_path / "in")
    with service(tmp_path, s3, workers=2) as svc:
        run_and_compare(svc, tmp_path / "in", files, before)
