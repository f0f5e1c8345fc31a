"""2,000 small recordings (400 in `make test`) appearing at once (a camera fleet
reconnecting, a restore): every one gets its metadata.json and a byte-identical final
object."""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.badinput.support import Service, service
from tests.support.bucket import check_stream, read_object
from tests.support.runner import wait_until
from tests.support.s3server import S3Endpoint
from tests.support.scale import pick

pytestmark = pytest.mark.timeout(420)

COUNT = pick(400, 2000)  # make test: 400; make test-full: 2,000


def size_of(i: int) -> int:
    return (i % 5) * 997  # 0 .. 3988 bytes: a fifth of them are empty


@pytest.fixture(scope="module")
def svc(tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint) -> Iterator[Service]:
    with service(tmp_path_factory.mktemp("many"), s3, workers=4) as running:
        yield running


def listing(svc: Service) -> dict[str, dict[str, object]]:
    objects: dict[str, dict[str, object]] = {}
    for page in svc.client.get_paginator("list_objects_v2").paginate(Bucket=svc.bucket):
        for obj in page.get("Contents", []):
            objects[obj["Key"]] = obj
    return objects


def test_two_thousand_files_at_once(svc: Service, record_property: Callable[[str, object], None],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    staging = svc.processor.workdir / "staging"
    staging.mkdir()
    contents: dict[str, bytes] = {}
    for i in range(COUNT):
        name = f"cam{i:04d}.mp4"
        contents[name] = os.urandom(size_of(i))
        (staging / name).write_bytes(contents[name])
    started = time.monotonic()
    os.rename(staging, svc.watch_dir / "fleet")  # all of them appear in one step

    def all_listed() -> dict[str, dict[str, object]] | None:
        assert svc.processor.proc is not None and svc.processor.proc.poll() is None, \
            svc.processor.tail()
        found = listing(svc)
        done = sum(1 for k in found if k.endswith("/metadata.json"))
        return found if done >= COUNT else None

    objects: dict[str, dict[str, object]] = wait_until(
        all_listed, 360, f"{COUNT} metadata.json", svc.processor.tail, every=2)
    elapsed = time.monotonic() - started
    record_property(f"seconds_for_{COUNT}_files", round(elapsed, 1))
    with capsys.disabled():
        print(f"\n[many files] {COUNT} files -> {COUNT} metadata.json in {elapsed:.1f} s")

    metadata = sorted(k for k in objects if k.endswith("/metadata.json"))
    assert len(metadata) == COUNT
    finals: dict[str, str] = {}
    for key in objects:
        # streams/fleet/cam0001-1a2b3c4d/cam0001.mp4
        parts = key.split("/")
        if len(parts) == 4 and parts[3].endswith(".mp4"):
            assert parts[:2] == ["streams", "fleet"] and parts[2].startswith(parts[3][:-4] + "-")
            assert parts[3] not in finals, f"two final objects for {parts[3]}"
            finals[parts[3]] = str(objects[key]["ETag"]).strip('"')
    assert set(finals) == set(contents)
    for name, data in contents.items():  # single-part objects: the ETag is the MD5
        assert finals[name] == hashlib.md5(data).hexdigest(), name
    for key in metadata[::97]:  # and every invariant, on a sample
        doc = json.loads(read_object(svc.client, svc.bucket, key))
        check_stream(svc.client, svc.bucket, doc, contents[Path(doc["source_path"]).name])
    detected = svc.events("stream_detected")
    assert len(detected) == COUNT and len({e["rel_path"] for e in detected}) == COUNT
    assert not svc.events("stream_failed") and not svc.events("worker_restarted")
    values = svc.metrics()
    assert values['processor_streams_completed_total{status="complete"}'] == COUNT
    # refreshed with the heartbeat, once a second, so it may trail the last metadata.json
    wait_until(lambda: svc.metrics()["processor_active_streams"] == 0, 15,
               "processor_active_streams back to 0", svc.processor.tail)
