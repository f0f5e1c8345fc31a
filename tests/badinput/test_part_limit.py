"""A recording of more chunks than one multipart upload may have parts (S3: 10,000).

10,001 chunks of 5 MiB is 49 GiB, so the real processes are given a lower limit
with ``--max-parts`` (a parameter of the service, passed to every worker in its
settings). Past it, assembly goes in two levels (groups of ``LIMIT`` chunks, at most
``LIMIT`` groups: tests/e2e/test_two_level.py tries it at length). Past that too, the
README's promise under test: such a file keeps its chunks and gets a metadata.json
with ``object_key: null``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.badinput.support import Service, service
from tests.support.bucket import check_stream, read_object, wait_for_metadata
from tests.support.runner import wait_until
from tests.support.s3server import S3Endpoint

pytestmark = pytest.mark.timeout(240)

CHUNK = 5 << 20
LIMIT = 2


def test_the_default_limit_is_s3s() -> None:
    """What the option lowers: S3's own limit by default."""
    from shared.settings import S3_MAX_PARTS, Settings

    assert S3_MAX_PARTS == 10_000
    assert Settings(watch_dir=Path(".")).max_parts == S3_MAX_PARTS


@contextlib.contextmanager
def limited(workdir: Path, s3: S3Endpoint, extra: list[str] | None = None) -> Iterator[Service]:
    """A processor told that S3 allows ``LIMIT`` parts per upload."""
    with service(workdir, s3, workers=1,
                 extra=["--max-parts", str(LIMIT), *(extra or [])]) as svc:
        yield svc


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint) -> Iterator[Service]:
    with limited(tmp_path_factory.mktemp("parts"), s3) as running:
        yield running


def write(svc: Service, name: str, size: int) -> bytes:
    data = os.urandom(size)
    (svc.watch_dir / name).write_bytes(data)
    return data


def test_file_at_the_part_limit_is_assembled(svc: Service) -> None:
    data = write(svc, "at-limit.mp4", LIMIT * CHUNK)
    doc = wait_for_metadata(svc.client, svc.bucket, "at-limit.mp4", processor=svc.processor)
    check_stream(svc.client, svc.bucket, doc, data)
    assert len(doc["chunks"]) == LIMIT


def test_file_past_the_part_limit_is_assembled_in_two_levels(svc: Service) -> None:
    data = write(svc, "grouped.mp4", LIMIT * CHUNK + 1000)
    doc = wait_for_metadata(svc.client, svc.bucket, "grouped.mp4", processor=svc.processor)
    check_stream(svc.client, svc.bucket, doc, data)
    assert doc["assembly"] == {"method": "multipart_copy", "levels": 2, "parts": 2,
                               "chunks_per_group": LIMIT}


def test_file_beyond_the_part_limit_keeps_its_chunks_and_says_so(svc: Service) -> None:
    data = write(svc, "beyond.mp4", LIMIT * LIMIT * CHUNK + 1000)
    doc = wait_for_metadata(svc.client, svc.bucket, "beyond.mp4", processor=svc.processor)
    assert doc["status"] == "complete" and doc["object_key"] is None
    assert len(doc["chunks"]) == LIMIT * LIMIT + 1 and doc["total_size_bytes"] == len(data)
    assert doc["assembly"] is None
    for c in doc["chunks"]:  # every byte is in S3, in the chunks metadata lists
        assert read_object(svc.client, svc.bucket, c["key"]) == \
            data[c["offset"]:c["offset"] + c["size"]]
    prefix = doc["chunks"][0]["key"].rsplit("/chunks/", 1)[0]
    assert f"{prefix}/beyond.mp4" not in svc.object_keys()  # no half-assembled object
    assert not [k for k in svc.object_keys() if k.startswith(f"{prefix}/groups/")]
    assert not svc.client.list_multipart_uploads(Bucket=svc.bucket).get("Uploads")
    (event,) = svc.events("assembly_impossible", stream_id=doc["stream_id"])
    assert event["chunks"] == LIMIT * LIMIT + 1 and event["max_parts"] == LIMIT
    assert event["reason"] == "more groups than --max-parts"
    assert not svc.events("stream_failed")


def test_file_beyond_the_part_limit_keeps_its_chunks_without_keep_chunks(
        tmp_path: Path, s3: S3Endpoint) -> None:
    with limited(tmp_path, s3, extra=["--no-keep-chunks"]) as svc:
        data = write(svc, "beyond.mp4", LIMIT * LIMIT * CHUNK + 1000)
        doc = wait_for_metadata(svc.client, svc.bucket, "beyond.mp4", processor=svc.processor)
        assert doc["object_key"] is None
        wait_until(lambda: svc.events("stream_completed"), 30, "stream_completed")
        for c in doc["chunks"]:
            assert c["key"] in svc.object_keys(), f"{c['key']} deleted: its bytes are gone"
            assert read_object(svc.client, svc.bucket, c["key"]) == \
                data[c["offset"]:c["offset"] + c["size"]]
