"""Two-level assembly seen from S3 (contract §9): a recording past ``--max-parts``
chunks is assembled from groups, byte-identical, with nothing left under
``P/groups/``; and a reopen copies at most the last group again (counted at the
server): the other groups are copied from the final object's own byte ranges."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tests.support.bucket import check_stream, list_keys, wait_for_metadata
from tests.support.proxy import RecordingProxy

pytestmark = pytest.mark.timeout(180)

CHUNK = 5 << 20
MAX_PARTS = 4


def _copies(proxy: RecordingProxy, into: str) -> list[Any]:
    """Part copies the server received whose destination path contains ``into``."""
    return [r for r in proxy.requests() if r.method == "PUT" and "partNumber" in r.query
            and "x-amz-copy-source" in r.headers and into in r.path]


def test_reopen_of_a_grouped_stream_copies_only_its_last_group_again(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    processor = make_processor(workers=1, stream_timeout=1.5,
                               extra=["--max-parts", str(MAX_PARTS)])
    processor.start()
    path = processor.watch_dir / "cam.mp4"
    data = os.urandom(10 * CHUNK + 1000)  # 11 chunks: groups of 4, 4 and 3
    path.write_bytes(data)
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, data)
    assert doc["assembly"] == {"method": "multipart_copy", "levels": 2, "parts": 3,
                               "chunks_per_group": MAX_PARTS}
    prefix = doc["object_key"].rsplit("/", 1)[0]
    assert not [k for k in list_keys(client, bucket) if "/groups/" in k]
    assert len(_copies(proxy, "/groups/")) == 11  # every chunk into its group, once

    proxy.clear()
    more = os.urandom(2 << 20)
    with open(path, "ab") as f:
        f.write(more)
    data += more
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor,
                            predicate=lambda d: d["reopen_count"] == 1)
    check_stream(client, bucket, doc, data)
    into_groups = _copies(proxy, "/groups/")
    # chunk 10 (the old tail) is replaced by a fuller one: only group 2 is built again
    assert sorted(r.query["partNumber"] for r in into_groups) == ["1", "2", "3"]
    assert {r.path.rsplit("/", 1)[1] for r in into_groups} == {"000002"}
    into_final = _copies(proxy, doc["object_key"])
    ranged = [r for r in into_final if "x-amz-copy-source-range" in r.headers]
    assert len(into_final) == 3 and len(ranged) == 2  # groups 0 and 1: from the object
    assert not [k for k in list_keys(client, bucket) if k.startswith(f"{prefix}/groups/")]
    assert not client.list_multipart_uploads(Bucket=bucket).get("Uploads")
