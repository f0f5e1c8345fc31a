"""``worker.recovery.BucketRecovery`` against the real test S3 server and real files:
when a file is looked up, which of the listed streams is its own, and what is kept
of an unfinished one. The whole service is exercised in tests/e2e/test_recovery.py."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import structlog
import xxhash

from shared.keys import StreamKeys
from shared.s3 import ErrorKind, StorageError
from shared.settings import Settings
from tests.support.bucket import top_level_boxes
from tests.support.s3server import unique_bucket_name
from tests.support.videos import make_video
from worker.recovery import STARTUP_WINDOW, BucketRecovery
from worker.source import SourceFiles
from worker.storage import Storage

CHUNK = 5 << 20


def _recovery(tmp_path: Path, storage: Storage, *, born_at: float = 1e12) -> BucketRecovery:
    settings = Settings(watch_dir=tmp_path, chunk_size=CHUNK)
    return BucketRecovery(settings, storage, SourceFiles(tmp_path), structlog.get_logger(),
                          lambda: None, born_at=born_at)


def _upload(storage: Storage, rel_path: str, stream_id: str, data: bytes,
            chunks: int | None = None) -> None:
    """The chunks of ``data`` under ``stream_id`` (the first ``chunks`` of them)."""
    keys = StreamKeys("streams", rel_path, stream_id)
    pieces = [data[i:i + CHUNK] for i in range(0, len(data), CHUNK)][:chunks]
    for index, piece in enumerate(pieces):
        storage.put_chunk(keys.chunk(index), piece, xxhash.xxh3_128_hexdigest(piece))


def _storage(worker_client: Any, plain: Any) -> Storage:
    bucket = unique_bucket_name("recovery")
    plain.create_bucket(Bucket=bucket)
    return Storage(worker_client, bucket)


def test_which_files_are_looked_up(tmp_path: Path, worker_client: Any, plain: Any) -> None:
    storage = _storage(worker_client, plain)
    path = tmp_path / "a.mp4"
    path.write_bytes(b"x")
    now = time.time()
    os.utime(path, (now, now))
    st = os.stat(path)
    # older than the state dir: always; newer: only in the state dir's first minute
    assert _recovery(tmp_path, storage, born_at=now + 1).applies(st)
    assert _recovery(tmp_path, storage, born_at=now - 1).applies(st)
    assert not _recovery(tmp_path, storage, born_at=now - STARTUP_WINDOW - 1).applies(st)
    assert not _recovery(tmp_path, storage, born_at=0.0).applies(st)  # an older state dir


def test_only_this_paths_matching_stream_is_found(tmp_path: Path, worker_client: Any,
                                                  plain: Any) -> None:
    storage = _storage(worker_client, plain)
    data = os.urandom(2 * CHUNK + 100)
    (tmp_path / "cam.mp4").write_bytes(data)
    (tmp_path / "cam-2.mp4").write_bytes(data)
    _upload(storage, "cam-2.mp4", "cam-2-0badf00d", data)   # another file, same stem start
    _upload(storage, "cam.mp4", "cam-11111111", os.urandom(2 * CHUNK))  # other bytes
    _upload(storage, "cam.mp4", "cam-22222222", data, chunks=2)  # this file's, unfinished
    recovery = _recovery(tmp_path, storage)
    found = recovery.find("cam.mp4", os.stat(tmp_path / "cam.mp4"))
    assert found is not None and found.record.stream_id == "cam-22222222"
    assert not found.finished and [c.size for c in found.chunks] == [CHUNK, CHUNK]
    assert found.record.size == 2 * CHUNK and found.record.recovered_at


def test_an_unfinished_streams_short_tail_is_not_kept(tmp_path: Path, worker_client: Any,
                                                      plain: Any) -> None:
    """A tail uploaded by a completion cut short is replaced by a fuller chunk."""
    storage = _storage(worker_client, plain)
    data = os.urandom(CHUNK + 1000)
    (tmp_path / "cam.mp4").write_bytes(data)
    _upload(storage, "cam.mp4", "cam-33333333", data)
    found = _recovery(tmp_path, storage).find("cam.mp4", os.stat(tmp_path / "cam.mp4"))
    assert found is not None and [c.size for c in found.chunks] == [CHUNK]


def _upload_fragmented(storage: Storage, rel_path: str, stream_id: str, data: bytes,
                       ends: list[int]) -> None:
    """``data`` as fragment-aligned chunks ending at ``ends`` (keys ``.m4s``)."""
    keys = StreamKeys("streams", rel_path, stream_id, chunk_suffix=".m4s")
    for index, (start, end) in enumerate(zip([0, *ends], ends, strict=False)):
        piece = data[start:end]
        storage.put_chunk(keys.chunk(index), piece, xxhash.xxh3_128_hexdigest(piece))


def test_where_fixed_chunks_start_is_found_from_the_files_boxes(
        tmp_path: Path, worker_client: Any, plain: Any) -> None:
    """Fragment-aligned chunks end where a moof begins; the first that does not, and
    whose start gives no fragment boundary in time, is where the fixed chunks start. A
    chunk that ended at the end of the file then, followed now by ffmpeg's ``mfra``
    trailer, is not fixed (review finding: it was, and the playlist lost it)."""
    storage = _storage(worker_client, plain)
    made = make_video(tmp_path / "src.mp4", 10.0, fragmented=True, seed=4)
    data = made.read_bytes()
    boxes = top_level_boxes(data)
    moofs = [o for o, kind in boxes if kind == b"moof"]
    (mfra,) = [o for o, kind in boxes if kind == b"mfra"]
    first = next(o for o in moofs if o >= CHUNK)
    (tmp_path / "cam.mp4").write_bytes(data)
    _upload_fragmented(storage, "cam.mp4", "cam-44444444", data, [first, mfra])
    found = _recovery(tmp_path, storage).find("cam.mp4", os.stat(tmp_path / "cam.mp4"))
    assert found is not None and [c.end for c in found.chunks] == [first, mfra]
    assert found.record.extra["layout"] == "fmp4" and "fixed_from" not in found.record.extra

    # fragments too large: one of 16 s after 8 s of 1 s ones (tests/e2e/test_huge_fragments)
    huge = make_video(tmp_path / "huge-src.mp4", 20.0, fragmented=True, gop=1000,
                      keyframes_until=8.0, seed=5).read_bytes()
    assert _fixed_chunks_found(tmp_path, storage, "huge", huge, CHUNK) == 1

    # cut with 8 MiB chunks, recovered with --chunk-size 5 MiB: from the first fixed
    # chunk's start a moof lies between 5 and 8 MiB, so the walk must use the size the
    # chunk was cut with (review finding: it took the setting, and chunk 2)
    later = make_video(tmp_path / "later-src.mp4", 24.0, fragmented=True, gop=1000,
                       keyframes_until=12.0, seed=6).read_bytes()
    first = next(o for o, kind in top_level_boxes(later) if kind == b"moof" and o >= 8 << 20)
    assert [o for o, kind in top_level_boxes(later)
            if kind == b"moof" and first + CHUNK <= o < first + (8 << 20)]
    assert _fixed_chunks_found(tmp_path, storage, "later", later, 8 << 20) == 1


def _fixed_chunks_found(tmp_path: Path, storage: Storage, name: str, data: bytes,
                        cut: int) -> int:
    """``data`` as ``name.mp4``, cut as live.py cuts fragments too large for a chunk of
    ``cut`` bytes (one aligned chunk, then two fixed ones), then recovered: its
    ``fixed_from``."""
    first = next(o for o, kind in top_level_boxes(data) if kind == b"moof" and o >= cut)
    assert first + 2 * cut < len(data)
    (tmp_path / f"{name}.mp4").write_bytes(data)
    _upload_fragmented(storage, f"{name}.mp4", f"{name}-55555555", data,
                       [first, first + cut, first + 2 * cut])
    found = _recovery(tmp_path, storage).find(f"{name}.mp4", os.stat(tmp_path / f"{name}.mp4"))
    assert found is not None and len(found.chunks) == 3
    return int(found.record.extra["fixed_from"])


def test_a_lookup_s3_cannot_answer_waits_and_is_asked_again(
        tmp_path: Path, worker_client: Any, plain: Any) -> None:
    storage = _storage(worker_client, plain)
    (tmp_path / "cam.mp4").write_bytes(b"x")
    recovery = _recovery(tmp_path, storage)
    answers: list[Any] = [StorageError("list_objects", ErrorKind.TRANSIENT, "down")]

    def flaky(prefix: str) -> list[str]:
        if answers:
            raise answers.pop()
        return []
    storage.prefixes_under = flaky  # type: ignore[method-assign]
    started: list[str] = []
    recovery.wait("cam.mp4")
    assert recovery.step(0.0, lambda p: False, lambda f: None,
                         lambda p, st: started.append(p))
    assert started == [] and recovery.pending["cam.mp4"] > 0.0  # no stream for want of S3
    assert recovery.step(recovery.pending["cam.mp4"], lambda p: False, lambda f: None,
                         lambda p, st: started.append(p))
    assert started == ["cam.mp4"] and not recovery.pending
    recovery.wait("cam.mp4")  # a path that has a stream meanwhile is dropped, not started
    assert not recovery.step(1e9, lambda p: True, lambda f: None,
                             lambda p, st: started.append(p))
    assert started == ["cam.mp4"] and not recovery.pending
