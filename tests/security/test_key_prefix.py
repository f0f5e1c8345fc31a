"""No object key escapes the configured prefix, whatever the file names."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tests.badinput.support import BUCKET_PREFIX, PREFIX, Service, service
from tests.support.bucket import check_stream, list_keys, metadata_documents
from tests.support.runner import wait_until
from tests.support.s3server import S3Endpoint

pytestmark = pytest.mark.timeout(180)

CUSTOM_PREFIX = "tenant-a/videos"

#: Names a hostile writer could try, relative to the watch dir. Each is a legal
#: (non-hidden) file, so each must be uploaded -- under the prefix.
ESCAPES = [
    "a..mp4",
    "-.mp4",
    "--.mp4",
    "-rf.mp4",
    "a\\..\\..\\..\\b.mp4",
    "%2e%2e%2f%2e%2e%2fesc.mp4",
    "a%2F..%2F..%2Fesc.mp4",
    "a\u2215..\u2215..\u2215esc.mp4",      # DIVISION SLASH looks like "/"
    "\uff0e\uff0e\uff0fesc.mp4",            # fullwidth "../"
    "~.mp4",
    "$(id).mp4",
    " .mp4",
    "-/--/-.mp4",                           # directories named - and --
    "%2e%2e/esc.mp4",                       # directory named %2e%2e
    "a../b/c...mp4",                        # directory named a..
]
#: Hidden by the contract (a part starts with "."): never streams.
HIDDEN = ["..esc.mp4", "...mp4", ".hidden/evil.mp4", "ok/.. evil.mp4", ".mp4",
          "a/..b/c.mp4"]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint) -> Iterator[Service]:
    with service(tmp_path_factory.mktemp("prefix"), s3, workers=2,
                 extra=["--s3-prefix", f"/{CUSTOM_PREFIX}/"]) as svc:
        for rel in ESCAPES + HIDDEN:
            path = svc.watch_dir / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(rel.encode() * 100)

        def all_done() -> bool:
            done = {d["source_path"] for d in metadata_documents(svc.client, svc.bucket)}
            return set(ESCAPES) <= done

        wait_until(all_done, 120, "metadata.json for every name", svc.processor.tail)
        yield svc


def assert_confined(keys: list[str], prefix: str) -> None:
    for key in keys:
        assert key.startswith(prefix + "/"), key
        parts = key.split("/")
        assert not [p for p in parts if p in ("", ".", "..")], key


def test_every_key_is_under_the_prefix(run: Service) -> None:
    keys = run.object_keys()
    assert keys
    assert_confined(keys, CUSTOM_PREFIX)


@pytest.mark.parametrize("rel", ESCAPES)
def test_escaping_name_is_uploaded_under_its_own_stream(run: Service, rel: str) -> None:
    (doc,) = [d for d in metadata_documents(run.client, run.bucket) if d["source_path"] == rel]
    check_stream(run.client, run.bucket, doc, rel.encode() * 100, prefix=CUSTOM_PREFIX)


def test_hidden_names_are_never_streams(run: Service) -> None:
    detected = {e["rel_path"] for e in run.events("stream_detected")}
    assert not detected & set(HIDDEN)
    assert detected == set(ESCAPES)


def test_no_key_of_any_bad_input_run_escapes_its_prefix(s3: S3Endpoint) -> None:
    """Every bucket the bad-input and security suites made in this session (each run
    with the default prefix, except this module's)."""
    client: Any = s3.client()
    buckets = [b["Name"] for b in client.list_buckets().get("Buckets", [])
               if b["Name"].startswith(BUCKET_PREFIX + "-")]
    assert buckets
    for bucket in buckets:
        keys = list_keys(client, bucket)
        prefix = CUSTOM_PREFIX if any(k.startswith(CUSTOM_PREFIX + "/") for k in keys) \
            else PREFIX
        assert_confined(keys, prefix)
    assert os.environ.get("PROCESSOR_S3_PREFIX") is None  # nothing overrode the default
