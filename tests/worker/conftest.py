"""Clients for the in-process worker tests that talk to the test S3 server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.s3 import make_client
from shared.settings import Settings
from tests.support.s3server import S3Endpoint, unique_bucket_name
from tests.worker.inprocess import InProcessWorkers

IN_PROCESS_CHUNK = 5 << 20  # the chunk size of ``workers``: S3's smallest part


@pytest.fixture(scope="module")
def worker_client(s3: S3Endpoint) -> Iterator[Any]:
    """The worker's own client (retries off), credentials from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3.env().items():
            patch.setenv(name, value)
        yield make_client(Settings(watch_dir=Path("."), s3_endpoint=s3.url,
                                   s3_region=s3.region))


@pytest.fixture
def workers(tmp_path: Path, s3: S3Endpoint,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[InProcessWorkers]:
    """In-process workers on a fresh watch dir, state dir and bucket, with 5 MiB chunks,
    credentials in the environment; all closed after the test."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    made = InProcessWorkers(tmp_path, s3, unique_bucket_name("inproc"), IN_PROCESS_CHUNK)
    yield made
    made.close()


@pytest.fixture(scope="module")
def plain(s3: S3Endpoint) -> Any:
    """A plain boto3 client for checking results and acting behind the worker's back."""
    return s3.client()
