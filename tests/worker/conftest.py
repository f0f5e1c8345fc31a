"""Clients for the in-process worker tests that talk to the test S3 server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.s3 import make_client
from shared.settings import Settings
from tests.support.s3server import S3Endpoint


@pytest.fixture(scope="module")
def worker_client(s3: S3Endpoint) -> Iterator[Any]:
    """The worker's own client (retries off), credentials from the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in s3.env().items():
            patch.setenv(name, value)
        yield make_client(Settings(watch_dir=Path("."), s3_endpoint=s3.url,
                                   s3_region=s3.region))


@pytest.fixture(scope="module")
def plain(s3: S3Endpoint) -> Any:
    """A plain boto3 client for checking results and acting behind the worker's back."""
    return s3.client()
