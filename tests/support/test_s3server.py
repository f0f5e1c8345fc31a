"""The S3 endpoint helpers work against a real moto server process."""

from __future__ import annotations

import re

import pytest
from botocore.exceptions import ClientError

from .s3server import (
    MOTO_SECRET_KEY,
    S3Endpoint,
    _answers_http,
    endpoint_from_env,
    moto_server,
    unique_bucket_name,
)


def test_moto_server_serves_s3_and_stops_at_exit() -> None:
    with moto_server() as ep:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", ep.url)
        assert ep.secret_key == MOTO_SECRET_KEY and ep.region == "us-east-1"
        s3 = ep.client()
        bucket = unique_bucket_name()
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="a/b.mp4", Body=b"payload")
        assert s3.get_object(Bucket=bucket, Key="a/b.mp4")["Body"].read() == b"payload"
        # path-style addressing: the bucket is in the path, not the host name
        assert s3.meta.config.s3["addressing_style"] == "path"
        with pytest.raises(ClientError) as err:  # like AWS, moto wants >= 3 chars
            s3.create_bucket(Bucket="ab")
        assert err.value.response["Error"]["Code"] == "InvalidBucketName"
    assert not _answers_http(ep.url), "moto server still running after the context exited"


def test_env_contains_only_credentials_and_region() -> None:
    ep = S3Endpoint("http://127.0.0.1:1", "AK", "SK", "eu-west-3")
    assert ep.env() == {
        "AWS_ACCESS_KEY_ID": "AK",
        "AWS_SECRET_ACCESS_KEY": "SK",
        "AWS_DEFAULT_REGION": "eu-west-3",
    }
    assert ep.with_url("http://127.0.0.1:2") == S3Endpoint(
        "http://127.0.0.1:2", "AK", "SK", "eu-west-3"
    )


def test_endpoint_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "TEST_S3_ENDPOINT",
        "TEST_S3_ACCESS_KEY",
        "TEST_S3_SECRET_KEY",
        "TEST_S3_REGION",
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
    ):
        monkeypatch.delenv(var, raising=False)
    assert endpoint_from_env() is None

    monkeypatch.setenv("TEST_S3_ENDPOINT", "http://minio:9000/")
    with pytest.raises(RuntimeError, match="credentials"):
        endpoint_from_env()

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "fallback-ak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "fallback-sk")
    assert endpoint_from_env() == S3Endpoint(
        "http://minio:9000", "fallback-ak", "fallback-sk", "us-east-1"
    )

    monkeypatch.setenv("TEST_S3_ACCESS_KEY", "minio-ak")
    monkeypatch.setenv("TEST_S3_SECRET_KEY", "minio-sk")
    monkeypatch.setenv("TEST_S3_REGION", "eu-central-1")
    assert endpoint_from_env() == S3Endpoint(
        "http://minio:9000", "minio-ak", "minio-sk", "eu-central-1"
    )


def test_unique_bucket_names_are_valid_and_distinct() -> None:
    names = {unique_bucket_name() for _ in range(100)} | {unique_bucket_name("My_Prefix.X")}
    assert len(names) == 101
    for name in names:
        assert re.fullmatch(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]", name), name
    assert unique_bucket_name("My_Prefix.X").startswith("myprefixx-")


def test_shared_endpoint_fixture_is_usable(endpoint: S3Endpoint) -> None:
    s3 = endpoint.client()
    bucket = unique_bucket_name("fixture")
    s3.create_bucket(Bucket=bucket)
    assert bucket in [b["Name"] for b in s3.list_buckets()["Buckets"]]
