"""Fixtures for the tests of the test-support modules themselves."""

from __future__ import annotations

import pytest

from .s3server import S3Endpoint


@pytest.fixture(scope="session")
def endpoint(s3: S3Endpoint) -> S3Endpoint:
    """The session's S3 server (see tests/conftest.py): one server per run."""
    return s3
