"""Session-wide fixtures: one S3 server for the run (moto, or ``TEST_S3_*``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.proxy import RecordingProxy
from tests.support.s3server import S3Endpoint, s3_endpoint, unique_bucket_name

# `make test-unit` (`pytest -m unit`): the in-process tests, which start no
# `processor`, marked here by where they live rather than one by one, so a new test
# in these places is a unit test without anyone remembering to say so. A test there
# that is too slow for the under-a-minute budget opts out with `@pytest.mark.slow`,
# or with a line in _NOT_UNIT (a file, or file::test) where its file cannot be edited.
_TESTS = Path(__file__).resolve().parent
_UNIT_DIRS = ("shared", "worker", "supervisor")
_UNIT_FILES = ("support/test_proxy.py", "support/test_s3server.py")
_NOT_UNIT = (  # each waits out real timeouts or backoffs: 2-4.5 s
    "supervisor/test_arbiter.py::test_a_worker_without_heartbeats_is_terminated_killed_and_replaced",
    "supervisor/test_arbiter.py::test_state_write_failures_are_retried_with_backoff_not_given_up",
    "supervisor/test_arbiter.py::test_a_worker_that_dies_is_restarted_in_its_slot_and_told_its_files",
    "supervisor/test_arbiter.py::test_state_unavailable_again_and_again_gives_up",
    "worker/test_prober.py::test_hanging_helper_times_out_and_is_killed",
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        try:
            where = item.path.resolve().relative_to(_TESTS).as_posix()
        except ValueError:
            continue
        if not (where.split("/", 1)[0] in _UNIT_DIRS or where in _UNIT_FILES):
            continue
        test = f"{where}::{getattr(item, 'originalname', item.name)}"
        if where in _NOT_UNIT or test in _NOT_UNIT or item.get_closest_marker("slow"):
            continue
        item.add_marker(pytest.mark.unit)


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
    from tests.support.runner import Processor

    made: list[Processor] = []

    def build(**kwargs: Any) -> Processor:
        processor = Processor(workdir=tmp_path, endpoint=s3.with_url(proxy.url),
                              bucket=bucket, **kwargs)
        made.append(processor)
        return processor

    yield build
    for processor in made:
        processor.stop()
