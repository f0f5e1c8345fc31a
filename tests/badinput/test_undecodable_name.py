"""A file name that is not valid UTF-8 (e.g. Latin-1 camera firmware writing ``é`` as
the single byte 0xE9). Linux allows it; Python sees it with surrogate escapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.badinput.support import service
from tests.support.bucket import check_stream, metadata_documents, read_object
from tests.support.runner import wait_until
from tests.support.s3server import S3Endpoint

pytestmark = pytest.mark.timeout(180)

NAME = b"cam-\xe9t\xe9.mp4"  # "camété" in Latin-1


def test_non_utf8_name_ships_and_does_not_stall_its_worker(tmp_path: Path,
                                                           s3: S3Endpoint) -> None:
    """With one worker, the odd name and a normal file both complete, the worker never
    dies, and the odd file's bytes are in S3 under a key S3 accepts."""
    with service(tmp_path, s3, workers=1) as svc:
        odd = os.path.join(os.fsencode(svc.watch_dir), NAME)
        data = os.urandom(50_000)
        with open(odd, "wb") as f:
            f.write(data)
        normal = os.urandom(40_000)
        (svc.watch_dir / "normal.mp4").write_bytes(normal)

        def finished() -> bool:
            if svc.events("worker_exited") or svc.events("worker_restarted"):
                raise AssertionError("the worker died:\n" + svc.processor.tail(60))
            docs = list(metadata_documents(svc.client, svc.bucket))
            return len(docs) == 2

        wait_until(finished, 60, "both streams finished", svc.processor.tail)
        docs = {d["source_path"]: d for d in metadata_documents(svc.client, svc.bucket)}
        check_stream(svc.client, svc.bucket, docs["normal.mp4"], normal)
        (odd_doc,) = [d for p, d in docs.items() if p != "normal.mp4"]
        assert odd_doc["status"] == "complete"
        assert odd_doc["object_key"] is not None
        assert read_object(svc.client, svc.bucket, odd_doc["object_key"]) == data
        assert not svc.events("stream_failed")
