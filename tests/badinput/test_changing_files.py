"""Bad input that moves: files deleted, truncated or replaced while they stream, written
under a temporary name, or reached through a directory swapped for a symlink.
One processor serves the module; each test drives its own file."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.badinput.support import Service, appending, service
from tests.support.bucket import check_stream, metadata_documents, read_object, wait_for_metadata
from tests.support.runner import wait_until
from tests.support.s3server import S3Endpoint

pytestmark = pytest.mark.timeout(180)

CHUNK = 5 << 20


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint) -> Iterator[Service]:
    with service(tmp_path_factory.mktemp("changing"), s3, workers=2) as running:
        yield running


def exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (renameat2 RENAME_EXCHANGE), as an attacker would."""
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, rename_exchange = -100, 2
    if libc.renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange):
        errno = ctypes.get_errno()
        pytest.skip(f"renameat2(RENAME_EXCHANGE) unavailable: {os.strerror(errno)}")


def stream_id(svc: Service, rel: str, reason: str = "new") -> str:
    found = wait_until(lambda: svc.events("stream_detected", rel_path=rel, reason=reason), 60,
                       f"stream_detected {rel} ({reason})", svc.processor.tail)
    return str(found[-1]["stream_id"])


def chunk_uploaded(svc: Service, rel: str) -> bool:
    ids = {e["stream_id"] for e in svc.events("stream_detected", rel_path=rel)}
    return any(e.get("stream_id") in ids for e in svc.events("chunk_uploaded"))


def grow_until_a_chunk_is_up(svc: Service, rel: str) -> bytes:
    """Write ``rel`` steadily (never idle) until its first chunk is in S3."""
    return appending(svc.watch_dir / rel, lambda: chunk_uploaded(svc, rel),
                     step=1 << 20, pause=0.2)


def doc_of(svc: Service, sid: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for doc in metadata_documents(svc.client, svc.bucket):
            if doc["stream_id"] == sid:
                return doc
        return None
    return wait_until(find, 90, f"metadata.json of {sid}", svc.processor.tail)  # type: ignore


def check_partial(svc: Service, doc: dict[str, Any], written: bytes) -> None:
    """A stream ended early holds exactly a prefix of what was written: every chunk and
    the assembled object are those bytes, and metadata says how many there are."""
    total = doc["total_size_bytes"]
    assert total == sum(c["size"] for c in doc["chunks"]) and total >= CHUNK
    for c in doc["chunks"]:
        assert read_object(svc.client, svc.bucket, c["key"]) == \
            written[c["offset"]:c["offset"] + c["size"]]
    assert read_object(svc.client, svc.bucket, doc["object_key"]) == written[:total]
    assert doc["media_duration_seconds"] is None and doc["media_error"]


def test_file_deleted_while_streaming_is_finalized_as_source_deleted(svc: Service) -> None:
    written = grow_until_a_chunk_is_up(svc, "gone.mp4")
    sid = stream_id(svc, "gone.mp4")
    (svc.watch_dir / "gone.mp4").unlink()
    doc = doc_of(svc, sid)
    assert doc["status"] == "source_deleted"
    check_partial(svc, doc, written)
    (event,) = svc.events("stream_source_deleted", stream_id=sid)
    assert event["uploaded_bytes"] == doc["total_size_bytes"]  # the log says what was kept
    values = svc.metrics()
    assert values['processor_streams_completed_total{status="source_deleted"}'] >= 1


def test_file_truncated_while_streaming_starts_a_new_stream(svc: Service) -> None:
    written = grow_until_a_chunk_is_up(svc, "shrinks.mp4")
    old = stream_id(svc, "shrinks.mp4")
    with open(svc.watch_dir / "shrinks.mp4", "r+b") as f:  # same inode, fewer bytes
        f.truncate(1000)
    new = stream_id(svc, "shrinks.mp4", reason="shrank")
    assert new != old
    old_doc = doc_of(svc, old)
    assert old_doc["status"] == "source_replaced"
    check_partial(svc, old_doc, written)
    assert svc.events("stream_source_replaced", stream_id=old, reason="shrank")
    new_doc = doc_of(svc, new)
    check_stream(svc.client, svc.bucket, new_doc, written[:1000])
    assert svc.metrics()['processor_streams_completed_total{status="source_replaced"}'] >= 1


def test_file_replaced_by_atomic_rename_while_streaming(svc: Service) -> None:
    written = grow_until_a_chunk_is_up(svc, "swap.mp4")
    old = stream_id(svc, "swap.mp4")
    replacement = os.urandom(3 << 20)
    (svc.watch_dir / "swap.mp4.tmp").write_bytes(replacement)
    os.replace(svc.watch_dir / "swap.mp4.tmp", svc.watch_dir / "swap.mp4")
    new = stream_id(svc, "swap.mp4", reason="replaced")
    old_doc = doc_of(svc, old)
    assert old_doc["status"] == "source_replaced"
    check_partial(svc, old_doc, written)
    assert svc.events("stream_source_replaced", stream_id=old, reason="replaced")
    check_stream(svc.client, svc.bucket, doc_of(svc, new), replacement)
    assert not svc.events("stream_detected", rel_path="swap.mp4.tmp")


def test_completed_file_replaced_by_atomic_rename_is_a_new_stream(svc: Service) -> None:
    first = os.urandom(1 << 20)
    (svc.watch_dir / "redo.mp4").write_bytes(first)
    first_doc = wait_for_metadata(svc.client, svc.bucket, "redo.mp4", processor=svc.processor)
    second = os.urandom(2 << 20)
    (svc.watch_dir / ".redo.mp4.new").write_bytes(second)  # hidden: never a stream itself
    os.replace(svc.watch_dir / ".redo.mp4.new", svc.watch_dir / "redo.mp4")
    second_doc = wait_for_metadata(svc.client, svc.bucket, "redo.mp4", processor=svc.processor,
                                   predicate=lambda d: d["stream_id"] != first_doc["stream_id"])
    check_stream(svc.client, svc.bucket, second_doc, second)
    check_stream(svc.client, svc.bucket, first_doc, first)  # the old lineage is intact
    assert not [e for e in svc.events("stream_detected") if "new" in e["rel_path"]]


def test_part_file_renamed_to_mp4_is_one_stream(svc: Service) -> None:
    data = os.urandom(CHUNK + 12345)
    with open(svc.watch_dir / "clip.mp4.part", "wb") as f:
        f.write(data[:CHUNK])
        f.flush()
        f.write(data[CHUNK:])
    os.rename(svc.watch_dir / "clip.mp4.part", svc.watch_dir / "clip.mp4")
    doc = wait_for_metadata(svc.client, svc.bucket, "clip.mp4", processor=svc.processor)
    check_stream(svc.client, svc.bucket, doc, data)
    assert len(svc.events("stream_detected", rel_path="clip.mp4")) == 1
    assert not svc.events("stream_detected", rel_path="clip.mp4.part")


def test_directory_swapped_for_symlink_is_not_followed(svc: Service, tmp_path: Path) -> None:
    """cams/cam.mp4 is streaming when cams/ is renamed and replaced by a symlink to a
    directory outside that holds a cam.mp4 too: nothing of the outside file is read."""
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    marker = b"NOT-IN-THE-WATCH-DIR-" + os.urandom(8).hex().encode()
    (outside / "cam.mp4").write_bytes(marker * 50_000)            # ~1.5 MB
    (svc.watch_dir / "cams").mkdir()
    grow_until_a_chunk_is_up(svc, "cams/cam.mp4")
    sid = stream_id(svc, "cams/cam.mp4")
    os.symlink(outside, svc.watch_dir / "cams.new")
    exchange(svc.watch_dir / "cams", svc.watch_dir / "cams.new")  # atomic: no gap to see
    doc_of(svc, sid)  # the lineage ends (source deleted or replaced) ...
    wait_until(lambda: not svc.metrics().get("processor_active_streams"), 30,
               "no active stream", svc.processor.tail)
    detected = [e for e in svc.events("stream_detected") if e["rel_path"] == "cams/cam.mp4"]
    assert len(detected) == 1, detected  # ... and no stream starts through the symlink
    for key in svc.object_keys():
        assert marker not in read_object(svc.client, svc.bucket, key), key
