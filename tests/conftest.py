"""Session-wide fixtures: one S3 server for the run (moto, or ``TEST_S3_*``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.proxy import RecordingProxy
from tests.support.s3server import S3Endpoint, s3_endpoint, unique_bucket_name


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Endpoint]:
    """The S3 server: ``TEST_S3_ENDPOINT`` (e.g. MinIO) if set, else moto on loopback."""
    with s3_endpoint() as endpoint:
        yield endpoint


@pytest.fixture
def bucket() -> str:
    """A fresh bucket name; the processor creates it (--create-bucket is on)."""
    return unique_bucket_name("e2e")


@pytest.fixture
def proxy(s3: S3Endpoint) -> Iterator[RecordingProxy]:
    """A recording proxy in front of the S3 server, to count what the server received."""
    with RecordingProxy(s3.url) as p:
        yield p
        assert not p.errors, p.errors


@pytest.fixture
def client(s3: S3Endpoint) -> Any:
    """A direct boto3 client (not through the proxy) for checking results."""
    return s3.client()


@pytest.fixture
def make_processor(tmp_path: Path, s3: S3Endpoint, proxy: RecordingProxy,
                   bucket: str) -> Iterator[Any]:
    """Build processors talking through the proxy; each is stopped after the test."""
    from tests.e2e.harness import Processor

    made: list[Processor] = []

    def build(**kwargs: Any) -> Processor:
        processor = Processor(workdir=tmp_path, endpoint=s3.with_url(proxy.url),
                              bucket=bucket, **kwargs)
        made.append(processor)
        return processor

    yield build
    for processor in made:
        processor.stop()
