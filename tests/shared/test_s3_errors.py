"""Tests for shared.s3.classify/describe with real botocore exceptions."""

from __future__ import annotations

import pytest
from botocore.exceptions import (
    ClientError,
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)

from shared.s3 import ErrorKind, classify, describe

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
URL = "http://s3.example:9000"


def _client_error(code: str, status: int, message: str = "msg") -> ClientError:
    response = {"Error": {"Code": code, "Message": message},
                "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")  # type: ignore[arg-type]


@pytest.mark.parametrize(("code", "status"), [
    ("InternalError", 500), ("ServiceUnavailable", 503), ("", 503), ("SlowDown", 503),
    ("RequestTimeout", 400), ("BadDigest", 400), ("TooManyRequests", 429),
])
def test_transient_client_errors(code: str, status: int) -> None:
    """5xx, throttling, timeouts and digest mismatches are TRANSIENT."""
    assert classify(_client_error(code, status)) is ErrorKind.TRANSIENT


@pytest.mark.parametrize(("code", "status"), [
    ("AccessDenied", 403), ("NoSuchBucket", 404), ("InvalidAccessKeyId", 403),
    ("SignatureDoesNotMatch", 403), ("NotImplemented", 501), ("", 501),
])
def test_permanent_client_errors(code: str, status: int) -> None:
    """Access, credential and missing-bucket errors are PERMANENT."""
    assert classify(_client_error(code, status)) is ErrorKind.PERMANENT


@pytest.mark.parametrize(("code", "status"), [("NoSuchKey", 404), ("404", 404), ("", 404),
                                              ("NoSuchUpload", 404)])
def test_not_found_client_errors(code: str, status: int) -> None:
    """Missing keys and bare 404s are NOT_FOUND."""
    assert classify(_client_error(code, status)) is ErrorKind.NOT_FOUND


@pytest.mark.parametrize("exc", [
    EndpointConnectionError(endpoint_url=URL), ReadTimeoutError(endpoint_url=URL),
    ConnectionClosedError(endpoint_url=URL), ConnectTimeoutError(endpoint_url=URL),
    ConnectionResetError(104, "reset"),
], ids=lambda e: type(e).__name__)
def test_connection_errors_are_transient(exc: Exception) -> None:
    """Connection failures and timeouts are TRANSIENT."""
    assert classify(exc) is ErrorKind.TRANSIENT


def test_no_credentials_is_permanent() -> None:
    """Missing credentials are PERMANENT."""
    assert classify(NoCredentialsError()) is ErrorKind.PERMANENT


def test_unrelated_exception_is_permanent() -> None:
    """An exception from outside botocore is not retried soon."""
    assert classify(ValueError("x")) is ErrorKind.PERMANENT


def test_describe_client_error_omits_message() -> None:
    """describe() gives code and status but never the response's message text."""
    text = describe(_client_error("SignatureDoesNotMatch", 403, f"secret key {SECRET} mismatch"))
    assert text == "SignatureDoesNotMatch (HTTP 403)"
    assert SECRET not in text


def test_describe_connection_error() -> None:
    """describe() names a connection failure's type and endpoint."""
    text = describe(EndpointConnectionError(endpoint_url=URL))
    assert text.startswith("EndpointConnectionError: ") and URL in text
