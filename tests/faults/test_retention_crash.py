"""Local retention under crashes: ``kill -9`` of the whole processor at seeded random
moments while files are written, grow and are removed (``--delete-after 0s``). The
end check is retention's own: every file written is byte-identical in S3 with its
metadata, whether it is still on disk or not; none is lost.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.badinput.support import service
from tests.faults.common import Row, pick, seeded
from tests.support.bucket import check_stream, metadata_documents
from tests.support.runner import wait_until
from tests.support.s3server import S3Endpoint

pytestmark = pytest.mark.timeout(400)

MiB = 1 << 20
KILLS = pick(3, 10)


def append(path: Path, data: bytes) -> bool:
    """Append ``data`` to ``path`` as a recorder reopening its file would (or create it,
    if retention removed it); True if it was a new file. Fails if the file was removed
    while this writer held it open: those bytes would be lost."""
    try:
        fd, new = os.open(path, os.O_WRONLY | os.O_APPEND), False
    except FileNotFoundError:
        fd, new = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), True
    try:
        os.write(fd, data)
        try:  # while held open for writing, the name must still lead to it
            named = os.lstat(path).st_ino
        except FileNotFoundError:
            named = None
        assert named == os.fstat(fd).st_ino, f"{path} removed while open for writing"
    finally:
        os.close(fd)
    return new


def test_kill9_with_retention_never_loses_a_file(tmp_path: Path, s3: S3Endpoint,
                                                reliability: Row) -> None:
    """``--delete-after 0s`` and ``kill -9`` of the whole group at seeded random moments
    (10 in ``make test-faults``, 3 in ``make test``)
    while files are written, grow (one is appended to across restarts, and comes back
    as a new file whenever it was removed meanwhile) and get removed. At the end every
    file is byte-identical in S3 with its metadata; none is lost."""
    seed, rng = seeded("retention_crash_loop")
    started = time.monotonic()
    reliability.seed, reliability.injected = seed, "kill -9 of the group, --delete-after 0s"
    written: dict[str, bytearray] = {}
    lineages: list[bytearray] = []  # growing.mp4, one entry per file that had the name
    kills = 0
    with service(tmp_path, s3, workers=1, stream_timeout=1.0,
                 extra=["--delete-after", "0s"]) as svc:
        watch = svc.watch_dir
        growing = watch / "growing.mp4"
        for cycle in range(KILLS):
            name = f"cam{cycle}.mp4"
            data = os.urandom(rng.randrange(1, 7 * MiB))
            (watch / name).write_bytes(data)
            written[name] = bytearray(data)
            if cycle < KILLS - 2:  # one file grows across most restarts, then stops
                more = os.urandom(rng.randrange(100_000, 2 * MiB))
                if append(growing, more):
                    lineages.append(bytearray())
                lineages[-1].extend(more)
            time.sleep(rng.uniform(0.3, 2.5))  # before, during or after its completion
            svc.processor.kill9()
            kills += 1
            svc.processor.start()
            svc.processor.wait_for_event("worker_started", count=svc.processor.workers,
                                         timeout=60)
        wait_until(lambda: not any((watch / n).exists() for n in [*written, "growing.mp4"]),
                   180, f"every file removed (seed {seed})", svc.processor.tail)
    assert kills == KILLS
    docs = list(metadata_documents(svc.client, svc.bucket))
    expected: list[tuple[str, bytearray]] = [
        *written.items(), *(("growing.mp4", data) for data in lineages)]
    for name, content in expected:
        matching = [d for d in docs if d["source_path"] == name
                    and d["total_size_bytes"] == len(content)]
        assert matching, f"{name} ({len(content)} bytes) removed but not in S3 (seed {seed})"
        check_stream(svc.client, svc.bucket, matching[-1], bytes(content))
    reliability.times, reliability.streams = kills, len(expected)
    reliability.bytes_verified = sum(len(content) for _, content in expected)
    reliability.seconds = time.monotonic() - started
    removed = [e for e in svc.processor.all_events() if e.get("event") == "source_removed"]
    reliability.notes.update(removed=len(removed), lineages_of_growing=len(lineages),
                             recovered=sum(1 for e in removed if e.get("recovered")))
    print(reliability.line())
