"""What landed in S3: listing, reading, waiting for a stream's metadata.json, and
checking a finished stream against every invariant of the contract (section 3).

Why a module of its own: every suite that runs the real processor ends by checking
the bucket, and the checks must be the same everywhere (they were in the runner's
module, imported from there by suites that did not run the processor themselves).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import xxhash

from tests.support.runner import Processor

__all__ = ["check_stream", "top_level_boxes", "list_keys", "metadata_documents", "read_object",
           "wait_for_metadata"]


def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key under ``prefix``; none while the processor has not created the bucket
    yet (tests poll from the moment it starts)."""
    keys: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
    except client.exceptions.NoSuchBucket:
        return []
    return keys


def read_object(client: Any, bucket: str, key: str, **read_args: Any) -> bytes:
    """The object's bytes; ``read_args`` carry an SSE-C key where objects need one."""
    return client.get_object(Bucket=bucket, Key=key, **read_args)["Body"].read()


def metadata_documents(client: Any, bucket: str,
                       read_args: dict[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    for key in list_keys(client, bucket):
        if key.endswith("/metadata.json"):
            yield json.loads(read_object(client, bucket, key, **(read_args or {})))


def wait_for_metadata(client: Any, bucket: str, source_path: str, timeout: float = 90.0,
                      predicate: Callable[[dict[str, Any]], bool] = bool,
                      processor: Processor | None = None,
                      read_args: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata.json of ``source_path`` once it exists and satisfies ``predicate``;
    fails at once if ``processor`` exits meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        docs = [d for d in metadata_documents(client, bucket, read_args)
                if d["source_path"] == source_path and predicate(d)]
        if docs:
            return docs[-1]
        if time.monotonic() > deadline:
            tail = processor.tail() if processor else ""
            raise AssertionError(f"no metadata.json for {source_path} in {timeout}s\n{tail}")
        if processor is not None and processor.proc is not None and \
                processor.proc.poll() is not None:
            raise AssertionError(f"processor exited ({processor.proc.returncode}):\n"
                                 f"{processor.tail()}")
        time.sleep(0.25)


def _is_rfc3339_utc(text: str) -> bool:
    return text.endswith("Z") and datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ") is not None


def top_level_boxes(data: bytes) -> list[tuple[int, bytes]]:
    """(offset, type) of an MP4's top-level boxes, walked by their sizes (the test's
    own walk, independent of worker/fmp4.py)."""
    boxes, pos = [], 0
    while pos + 8 <= len(data):
        size, kind = int.from_bytes(data[pos:pos + 4], "big"), data[pos + 4:pos + 8]
        if size == 1:
            size = int.from_bytes(data[pos + 8:pos + 16], "big")
        elif size == 0:
            size = len(data) - pos
        if size < 8:
            break
        boxes.append((pos, kind))
        pos += size
    return boxes


def check_stream(client: Any, bucket: str, doc: dict[str, Any], source: bytes,
                 *, prefix: str = "streams", read_args: dict[str, Any] | None = None) -> None:
    """Every invariant of contract §3 for one finished stream whose file holds ``source``."""
    assert doc["schema_version"] == 1
    assert doc["status"] == "complete", doc.get("status")
    assert doc["total_size_bytes"] == len(source)
    stream_prefix = doc["object_key"].rsplit("/", 1)[0]
    rel_dir = os.path.dirname(doc["source_path"])
    expected_prefix = "/".join(p for p in (prefix, rel_dir, doc["stream_id"]) if p)
    assert stream_prefix == expected_prefix
    assert doc["object_key"] == f"{expected_prefix}/{os.path.basename(doc['source_path'])}"
    offset = 0
    fragmented = "playlist_key" in doc  # chunks end on fragments (contract §2, §6)
    moofs = {o for o, kind in top_level_boxes(source) if kind == b"moof"} if fragmented else set()
    for i, chunk in enumerate(doc["chunks"]):
        assert chunk["index"] == i
        assert chunk["offset"] == offset
        assert chunk["key"] == f"{expected_prefix}/chunks/{i:06d}" + (".m4s" if fragmented else "")
        part = source[offset:offset + chunk["size"]]
        assert len(part) == chunk["size"]
        if i < len(doc["chunks"]) - 1 and fragmented:
            # ends where the first moof at least chunk_size into it begins
            end = offset + chunk["size"]
            assert end in moofs, f"chunk {i} does not end where a moof begins"
            assert not [o for o in moofs if offset + doc["chunk_size"] <= o < end], \
                f"chunk {i} runs past the first moof it could have ended on"
        elif i < len(doc["chunks"]) - 1:
            assert chunk["size"] == doc["chunk_size"]
        assert chunk["xxh3_128"] == xxhash.xxh3_128_hexdigest(part)
        assert read_object(client, bucket, chunk["key"], **(read_args or {})) == part, \
            f"chunk {i} differs"
        assert _is_rfc3339_utc(chunk["uploaded_at"])
        offset += chunk["size"]
    assert offset == len(source)
    assert read_object(client, bucket, doc["object_key"], **(read_args or {})) == source
    for name in ("started_at", "last_write_at", "completed_at"):
        assert _is_rfc3339_utc(doc[name]), name
    assert doc["stream_duration_seconds"] >= 0
    assert set(doc["media"]) == {"fragmented", "video_codec", "width", "height"}
