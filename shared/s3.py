"""The S3 client and the boundary where its errors become a few named kinds.

Retry policy lives with the callers (``worker.backoff``); this module only says
whether a failure is worth retrying soon (TRANSIENT), slowly (PERMANENT: access
denied, no such bucket: an operator must act), or means "not there" (NOT_FOUND),
and names the two answers a caller must react to beyond retrying (``Cause``): the
bucket is gone, or a multipart upload is gone. Callers test these kinds, never the
text of an error.
botocore's own retries are off so that every attempt passes through our loop,
which backs off, counts, and stops when the worker drains.
"""

from __future__ import annotations

import enum
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, SSLError

from shared.settings import Settings

__all__ = ["ErrorKind", "Cause", "StorageError", "classify", "cause_of", "make_client",
           "error_code", "describe"]

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0

_NOT_FOUND = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}
_TRANSIENT_4XX = {
    "RequestTimeout", "RequestTimeTooSkewed", "SlowDown", "Throttling", "ThrottlingException",
    "TooManyRequests", "RequestLimitExceeded", "BadDigest", "InvalidDigest",
    "XAmzContentChecksumMismatch", "IncompleteBody", "OperationAborted",
}


class ErrorKind(enum.Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    NOT_FOUND = "not_found"


class Cause(enum.Enum):
    """What a failure means beyond its kind, where a caller acts on it."""

    OTHER = "other"
    BUCKET_MISSING = "bucket_missing"  # check (and create) the bucket again
    UPLOAD_LOST = "upload_lost"        # the multipart upload is gone: start a new one


# by code prefix: "InvalidPartOrder" means the recorded parts no longer hold too
_CAUSES = (("NoSuchBucket", Cause.BUCKET_MISSING), ("NoSuchUpload", Cause.UPLOAD_LOST),
           ("InvalidPart", Cause.UPLOAD_LOST))


class StorageError(Exception):
    """An S3 call failed; ``kind`` says how to react and ``cause`` what it means, where
    that matters. The message never holds secrets."""

    def __init__(self, operation: str, kind: ErrorKind, detail: str,
                 cause: Cause = Cause.OTHER) -> None:
        super().__init__(f"{operation}: {detail}")
        self.operation = operation
        self.kind = kind
        self.detail = detail
        self.cause = cause


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def classify(exc: BaseException) -> ErrorKind:
    """Map a botocore exception onto an ErrorKind."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in _NOT_FOUND or status == 404 and code != "NoSuchBucket":
            return ErrorKind.NOT_FOUND
        if status == 501 or code == "NotImplemented":  # this server will not do it
            return ErrorKind.PERMANENT
        if status >= 500 or status == 429 or code in _TRANSIENT_4XX:
            return ErrorKind.TRANSIENT
        return ErrorKind.PERMANENT
    if isinstance(exc, NoCredentialsError):
        return ErrorKind.PERMANENT
    if isinstance(exc, (BotoCoreError, OSError)):
        return ErrorKind.TRANSIENT
    return ErrorKind.PERMANENT


def cause_of(exc: BaseException) -> Cause:
    """The ``Cause`` of a botocore exception (``OTHER`` for all but a few codes)."""
    if isinstance(exc, ClientError):
        code = error_code(exc)
        for prefix, cause in _CAUSES:
            if code.startswith(prefix):
                return cause
    return Cause.OTHER


def describe(exc: BaseException) -> str:
    """A short, secret-free description for logs and errors."""
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return f"{error_code(exc) or 'error'} (HTTP {status})"
    if isinstance(exc, SSLError) and "CERTIFICATE_VERIFY_FAILED" in str(exc):
        # a private CA not handed to boto3: say where it goes
        return (f"{type(exc).__name__}: {exc} (for an endpoint signed by a private CA, "
                "set AWS_CA_BUNDLE to the CA's PEM file)")
    return f"{type(exc).__name__}: {exc}"


def make_client(settings: Settings, *, read_timeout: float = READ_TIMEOUT) -> Any:
    """One boto3 S3 client. Credentials come from boto3's standard chain only."""
    config = Config(
        region_name=settings.s3_region,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=read_timeout,
        retries={"total_max_attempts": 1},
        tcp_keepalive=True,
        max_pool_connections=10,  # part copies run 8 at a time
        s3={"addressing_style": "path" if settings.s3_endpoint else "auto",
            # Bodies carry our own checksum header (signed), so SigV4 need not hash
            # every byte with SHA-256 too: ~0.8 CPU-s per GiB saved over plain http.
            # (botocore already skips it over https when a checksum is present.)
            "payload_signing_enabled": False},
        # We send our own CRC32 for chunk bodies; no second checksum pass by botocore.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    return session.client("s3", endpoint_url=settings.s3_endpoint, config=config)
