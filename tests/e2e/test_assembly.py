"""Copy-as-you-go assembly (worker/multipart.py), seen from S3: the final object's
multipart upload fills up while the file is still being written, survives the
loss of that upload, and recopies a chunk whose bytes changed after its copy."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import check_stream, list_keys, wait_for_metadata
from tests.support.proxy import RecordingProxy
from tests.support.runner import wait_until

pytestmark = pytest.mark.timeout(180)

CHUNK = 5 << 20  # the harness runs the processor with --chunk-size 5MiB


def _uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    try:
        return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
    except client.exceptions.NoSuchBucket:
        return []


def _parts(client: Any, bucket: str) -> set[int]:
    """Part numbers of the one open multipart upload; empty while there is none."""
    uploads = _uploads(client, bucket)
    if len(uploads) != 1:
        return set()
    listing = client.list_parts(Bucket=bucket, Key=uploads[0]["Key"],
                                UploadId=uploads[0]["UploadId"])
    return {p["PartNumber"] for p in listing.get("Parts", [])}


def _part_copies(proxy: RecordingProxy) -> Counter[int]:
    """How many part copies the server received, per part number."""
    return Counter(int(r.query["partNumber"]) for r in proxy.requests()
                   if r.method == "PUT" and "partNumber" in r.query
                   and "x-amz-copy-source" in r.headers)


class Recording:
    """A file kept growing by a few bytes now and then, so the stream stays open
    for as long as a test looks at it."""

    def __init__(self, path: Path, data: bytes) -> None:
        self.path = path
        self.data = data
        self.written = 0

    def write_to(self, end: int) -> None:
        with open(self.path, "ab") as f:
            f.write(self.data[self.written:end])
        self.written = end

    def keep_alive_until(self, condition: Any, what: str, tail: Any) -> Any:
        def alive() -> Any:
            self.write_to(self.written + 1)
            return condition()
        return wait_until(alive, 60, what, tail, every=0.5)


def _recording(make_processor: Any, size: int) -> tuple[Any, Recording]:
    """A one-worker processor, started, and ``size`` random bytes to record into
    ``cam.mp4`` (nothing written yet)."""
    processor = make_processor(workers=1, stream_timeout=3.0)
    processor.start()
    processor.wait_for_event("worker_started")
    return processor, Recording(processor.watch_dir / "cam.mp4", os.urandom(size))


def test_parts_are_copied_while_the_file_is_recorded(make_processor: Any, client: Any,
                                                     bucket: str, proxy: RecordingProxy) -> None:
    processor, rec = _recording(make_processor, 3 * CHUNK + 300_000)
    data = rec.data
    rec.write_to(3 * CHUNK + 100)
    rec.keep_alive_until(lambda: _parts(client, bucket) == {1, 2, 3},
                         "parts 1-3 copied while the file grows", processor.tail)
    assert not [k for k in list_keys(client, bucket) if k.endswith("metadata.json")]
    rec.write_to(len(data))
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, data)
    # every part was copied once: completion itself copied only the tail
    assert _part_copies(proxy) == {1: 1, 2: 1, 3: 1, 4: 1}
    assert _uploads(client, bucket) == []


def test_an_upload_lost_in_s3_is_replaced(make_processor: Any, client: Any, bucket: str,
                                          proxy: RecordingProxy) -> None:
    """A bucket lifecycle rule (AbortIncompleteMultipartUpload) may abort the upload a
    long recording is being copied into: the next copy notices and starts a new one."""
    processor, rec = _recording(make_processor, 3 * CHUNK + 300_000)
    data = rec.data
    rec.write_to(2 * CHUNK + 100)
    rec.keep_alive_until(lambda: _parts(client, bucket) == {1, 2}, "parts 1-2 copied",
                         processor.tail)
    (upload,) = _uploads(client, bucket)
    client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    rec.write_to(len(data))
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, data)
    lost = [e for e in processor.events() if e.get("event") == "multipart_lost"]
    assert lost, processor.tail()  # S3 says NoSuchUpload; moto a 500, then list_parts 404
    assert _uploads(client, bucket) == []
    assert proxy.count("POST", f"/{bucket}/", query_has="uploads") == 2


def test_a_chunk_changed_after_its_copy_is_copied_again(make_processor: Any, client: Any,
                                                        bucket: str,
                                                        proxy: RecordingProxy) -> None:
    """MP4 muxers patch the header at the start of the file when they finish: chunk 0
    is uploaded again by verification, and its part copied again before completion."""
    processor, rec = _recording(make_processor, 2 * CHUNK + 200_000)
    data = bytearray(rec.data)
    rec.write_to(2 * CHUNK + 100)
    rec.keep_alive_until(lambda: _parts(client, bucket) == {1, 2}, "parts 1-2 copied",
                         processor.tail)
    rec.write_to(len(data))
    patch = b"moov-patched"
    with open(rec.path, "r+b") as f:
        f.seek(4)
        f.write(patch)
    data[4:4 + len(patch)] = patch
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, bytes(data))
    assert doc["chunks_reuploaded"] == 1
    assert _part_copies(proxy) == {1: 2, 2: 1, 3: 1}


def test_an_unrecorded_upload_is_aborted_before_a_new_one_opens(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    """An upload S3 has for the final object but no checkpoint or log intent names (a
    crash right after it was created, with the log's tail then damaged) is aborted
    when the stream opens its own, so nothing is left to be billed."""
    processor, rec = _recording(make_processor, 2 * CHUNK + 100_000)
    data = rec.data
    rec.write_to(100_000)  # less than a chunk: no upload opened yet
    (detected,) = processor.wait_for_event("stream_detected")
    key = f"{detected['object_prefix']}/cam.mp4"
    stray = client.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    rec.write_to(len(data))
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, data)
    aborted = [e for e in processor.events() if e.get("event") == "multipart_aborted"]
    assert aborted and aborted[0]["uploads"] == 1, processor.tail()
    assert _uploads(client, bucket) == []
    assert stray not in {u["UploadId"] for u in _uploads(client, bucket)}


def test_an_upload_gone_when_completing_is_replaced_even_if_s3_answers_500(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    """The upload is aborted just before its CompleteMultipartUpload, and the server
    answers that (and every later complete of it) with a 500, as Ceph RGW does ("this
    multipart completion is already in progress") where AWS says NoSuchUpload: the
    worker asks S3 whether the upload still exists and starts a new one."""
    processor, rec = _recording(make_processor, 2 * CHUNK + 300_000)
    rec.write_to(2 * CHUNK + 100)
    rec.keep_alive_until(lambda: _parts(client, bucket) == {1, 2}, "parts 1-2 copied",
                         processor.tail)
    (upload,) = _uploads(client, bucket)
    gone = upload["UploadId"]

    def completes_gone_upload(head: Any) -> bool:
        if head.method != "POST" or head.query.get("uploadId") != gone:
            return False
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=gone)
        except client.exceptions.NoSuchUpload:
            pass  # aborted by an earlier attempt
        return True

    proxy.set_faults(match=completes_gone_upload, error_share=1.0, error_status=500)
    rec.write_to(len(rec.data))
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, rec.data)
    lost = [e for e in processor.events() if e.get("event") == "multipart_lost"]
    assert [e["upload_id"] for e in lost] == [gone], processor.tail()
    assert _uploads(client, bucket) == []
