"""HTTPS to a private CA (contract §9): the pipeline runs against an https endpoint
whose certificate only ``AWS_CA_BUNDLE`` vouches for, and without that bundle the
processor says plainly that it cannot verify the certificate, and uploads nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import check_stream, list_keys, wait_for_metadata
from tests.support.s3server import S3Endpoint
from tests.support.secrets import SSE_C_TEST_KEY
from tests.support.tls import TestCA, TlsRelay
from tests.support.videos import make_video

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def https(tmp_path: Path, s3: S3Endpoint) -> Iterator[tuple[TlsRelay, TestCA]]:
    ca = TestCA(tmp_path / "tls")
    with TlsRelay(s3.url, ca) as relay:
        yield relay, ca


def test_pipeline_over_https_with_a_private_ca(https: tuple[TlsRelay, TestCA],
                                               make_processor: Any, client: Any,
                                               bucket: str, tmp_path: Path) -> None:
    """A real recording, with SSE-C (which needs https off this host), end to end."""
    relay, ca = https
    key_file = tmp_path / "sse-c.key"
    key_file.write_bytes(SSE_C_TEST_KEY)
    processor = make_processor(workers=2, stream_timeout=1.0,
                               extra=["--sse-c-key-file", str(key_file)],
                               env={"AWS_CA_BUNDLE": str(ca.ca_pem)})
    processor.endpoint = processor.endpoint.with_url(relay.url)
    processor.start()
    make_video(processor.watch_dir / "cam.mp4", 8, seed=3)
    source = (processor.watch_dir / "cam.mp4").read_bytes()
    read_args = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": SSE_C_TEST_KEY}
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor,
                            read_args=read_args)
    check_stream(client, bucket, doc, source, read_args=read_args)
    assert len(doc["chunks"]) >= 2 and relay.handshakes > 0
    assert relay.failed_handshakes == 0


def test_without_the_ca_bundle_the_error_names_the_certificate(
        https: tuple[TlsRelay, TestCA], make_processor: Any, client: Any,
        bucket: str) -> None:
    relay, _ = https
    processor = make_processor(workers=1)
    processor.endpoint = processor.endpoint.with_url(relay.url)
    processor.start()
    (processor.watch_dir / "cam.mp4").write_bytes(b"x" * 1000)
    event, = processor.wait_for_event("bucket_unavailable")
    assert "CERTIFICATE_VERIFY_FAILED" in event["error"], event
    assert "set AWS_CA_BUNDLE" in event["error"], event
    assert relay.failed_handshakes > 0 and relay.handshakes == 0
    assert list_keys(client, bucket) == []
