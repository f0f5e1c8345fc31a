"""The S3 operations a worker performs, each translated into ``StorageError`` on failure.

Blocking boto3 calls, one client per worker process. Chunk bodies carry a CRC32C
checksum header so S3 (and MinIO) reject a body corrupted in transit, and the
xxh3-128 of the bytes as user metadata so recovery can tell, with one HEAD,
whether an unrecorded upload landed whole. The bucket check lives here too: no
request is made before the bucket is known to exist, and an answer that it is gone
sends every stream back to waiting for it.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import crc32c
from botocore.exceptions import ClientError

from shared import metrics
from shared.object_policy import ObjectPolicy
from shared.s3 import Cause, ErrorKind, StorageError, cause_of, classify, describe, error_code
from shared.uplink import ThrottledBody, Uplink
from worker.backoff import retry_delay

__all__ = ["Storage", "UploadLost", "BucketCheck", "XXH_META"]

XXH_META = "xxh3-128"
T = TypeVar("T")


class UploadLost(StorageError):
    """The recorded multipart upload is gone or no longer holds the recorded parts
    (a bucket lifecycle rule aborted it, or an earlier attempt completed it just
    before a crash): the final object must be assembled in a new upload."""

    def __init__(self, operation: str, kind: ErrorKind, detail: str,
                 cause: Cause = Cause.UPLOAD_LOST) -> None:
        super().__init__(operation, kind, detail, cause)


def _crc32c_b64(data: bytes | bytearray | memoryview) -> str:
    """The CRC32C S3 expects in ``x-amz-checksum-crc32c``: hardware-accelerated (SSE4.2)
    in the crc32c package, 0.05 CPU-s per GiB here against 0.25 for zlib's CRC32."""
    return base64.b64encode(crc32c.crc32c(data).to_bytes(4, "big")).decode()


def _metering(on: bool) -> Callable[..., None]:
    def switch(request: Any, **_: Any) -> None:
        if isinstance(request.body, ThrottledBody):
            request.body.metered = on
    return switch


def _no_expect(request: Any, **_: Any) -> None:
    """botocore asks for ``Expect: 100-continue`` on every PutObject: one more round trip
    per chunk, playlist and metadata.json (on localhost moto, 10.8 against 6.8 ms of
    wall time per playlist PUT; a whole RTT on a real uplink), and up to a second behind
    a proxy that never answers 100. Every body here is in memory and at most one chunk,
    so a refusal costs at most that. Expect is not signed (SigV4 leaves it out)."""
    if "Expect" in request.headers:
        del request.headers["Expect"]


class Storage:
    """One bucket seen through one client."""

    def __init__(self, client: Any, bucket: str, uplink: Uplink | None = None,
                 stopping: Callable[[], bool] = lambda: False,
                 notify: Callable[[], None] | None = None,
                 policy: ObjectPolicy = ObjectPolicy()) -> None:
        self.client = client
        self.bucket = bucket
        self.policy = policy  # the arguments a bucket policy demands, by request kind
        self.uplink = uplink
        self.stopping = stopping
        self.notify = notify  # the loop's heartbeat, while its own body waits for tokens
        events = client.meta.events
        events.register_last("before-send.s3.PutObject", _no_expect, unique_id="no-expect")
        if uplink is not None:
            # a throttled body pays only for what goes on the wire (see ThrottledBody)
            events.register("before-sign.s3.PutObject", _metering(False))
            events.register("before-send.s3.PutObject", _metering(True))

    def _call(self, operation: str, fn: Callable[..., T], **kwargs: Any) -> T:
        try:
            result = fn(Bucket=self.bucket, **kwargs)
        except Exception as exc:  # translated at the boundary
            kind = classify(exc)
            metrics.S3_REQUESTS.labels(operation=operation, outcome=kind.value).inc()
            raise StorageError(operation, kind, describe(exc), cause_of(exc)) from exc
        metrics.S3_REQUESTS.labels(operation=operation, outcome="ok").inc()
        return result

    def ensure_bucket(self, create: bool) -> None:
        """Check the bucket exists; create it when allowed and missing."""
        try:
            self._call("head_bucket", self.client.head_bucket)
            return
        except StorageError as exc:
            if exc.kind is not ErrorKind.NOT_FOUND or not create:
                raise
        try:
            self.client.create_bucket(Bucket=self.bucket)
        except ClientError as exc:
            if error_code(exc) not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise StorageError("create_bucket", classify(exc), describe(exc),
                                   cause_of(exc)) from exc
        except Exception as exc:
            raise StorageError("create_bucket", classify(exc), describe(exc)) from exc

    def put_chunk(self, key: str, data: bytes | bytearray | memoryview, xxh3_128: str,
                  live: bool = True) -> None:
        """PUT a chunk body; under ``--bwlimit`` it is paid for as it is sent, with
        ``live`` chunks before backlog ones across all workers."""
        checksum = _crc32c_b64(data)
        if self.uplink is None:
            body = ThrottledBody(data, None, live) if isinstance(data, memoryview) else data
            self._call("put_chunk", self.client.put_object, Key=key, Body=body,
                       ChecksumCRC32C=checksum, Metadata={XXH_META: xxh3_128},
                       **self.policy.write())
            return
        capped = self.uplink.rate is not None
        on_loop = threading.current_thread() is threading.main_thread()
        body = ThrottledBody(data, self.uplink, live, self.stopping,
                             self.notify if on_loop else None)
        try:
            self._call("put_chunk", self.client.put_object, Key=key, Body=body,
                       ChecksumCRC32C=checksum, Metadata={XXH_META: xxh3_128},
                       **self.policy.write())
        finally:
            body.close()
            metrics.UPLINK_WAIT_SECONDS.labels(**{"class": "live" if live else "backlog"}
                                               ).observe(body.waited)
        if capped:
            metrics.UPLINK_CAPPED_BYTES.inc(len(data))

    def _head(self, operation: str, key: str) -> dict[str, Any] | None:
        """HEAD ``key``; None when it does not exist."""
        try:
            return self._call(operation, self.client.head_object, Key=key,
                              **self.policy.read())
        except StorageError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return None
            raise

    def chunk_hash(self, key: str) -> tuple[int, str] | None:
        """(size, xxh3-128) of a chunk object, or None when it does not exist."""
        head = self._head("head_chunk", key)
        if head is None:
            return None
        return int(head["ContentLength"]), str(head.get("Metadata", {}).get(XXH_META, ""))

    def abort_uploads(self, key: str, keep: str | None = None, *, under: bool = False) -> int:
        """Abort every unfinished multipart upload of exactly ``key`` (or, ``under``, of
        any key starting with it) except ``keep`` (the one a stream record holds);
        return how many were aborted."""
        listing = self._call("list_multipart_uploads", self.client.list_multipart_uploads,
                             Prefix=key)
        aborted = 0
        for upload in listing.get("Uploads", []):
            if (upload["Key"] != key and not under) or upload["UploadId"] == keep:
                continue
            self.abort_upload(upload["Key"], upload["UploadId"])
            aborted += 1
        return aborted

    # the final object: one multipart upload whose parts are copies of the chunks
    def create_upload(self, key: str) -> str:
        return str(self._call("create_multipart_upload", self.client.create_multipart_upload,
                              Key=key, **self.policy.write())["UploadId"])

    def _call_upload(self, operation: str, fn: Callable[..., T], **kwargs: Any) -> T:
        """``_call`` for a request into a recorded multipart upload: an answer saying the
        upload is gone is raised as ``UploadLost``."""
        try:
            return self._call(operation, fn, **kwargs)
        except StorageError as exc:
            if exc.cause is Cause.UPLOAD_LOST:
                raise UploadLost(exc.operation, ErrorKind.TRANSIENT, exc.detail) from exc
            raise

    def copy_part(self, key: str, upload_id: str, number: int, source_key: str,
                  source_range: tuple[int, int] | None = None) -> str:
        """Copy an object (a chunk, a group), or bytes ``[start, end)`` of one, into part
        ``number``; its ETag. Runs on copy threads."""
        extra = {} if source_range is None else {
            "CopySourceRange": f"bytes={source_range[0]}-{source_range[1] - 1}"}
        result = self._call_upload("upload_part_copy", self.client.upload_part_copy, Key=key,
                                   UploadId=upload_id, PartNumber=number,
                                   CopySource={"Bucket": self.bucket, "Key": source_key},
                                   **extra, **self.policy.part_copy())
        return str(result["CopyPartResult"]["ETag"])

    def complete_upload(self, key: str, upload_id: str, etags: Sequence[str]) -> None:
        """Complete with parts 1..n, whose ETags are ``etags`` in order."""
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, start=1)]
        self._call_upload("complete_multipart_upload", self.client.complete_multipart_upload,
                          Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts},
                          **self.policy.read())

    def upload_exists(self, key: str, upload_id: str) -> bool | None:
        """Whether the multipart upload is still open; None when S3 cannot say now.
        Asked after a part copy failed, because not every server answers a copy into
        an aborted upload with NoSuchUpload (moto answers 500)."""
        try:
            self._call("list_parts", self.client.list_parts, Key=key, UploadId=upload_id,
                       MaxParts=1, **self.policy.read())
        except StorageError as exc:
            if exc.kind is ErrorKind.NOT_FOUND or exc.cause is Cause.UPLOAD_LOST:
                return False
            return None
        return True

    def abort_upload(self, key: str, upload_id: str) -> None:
        try:
            self._call("abort_multipart_upload", self.client.abort_multipart_upload,
                       Key=key, UploadId=upload_id)
        except StorageError as exc:
            if exc.kind is not ErrorKind.NOT_FOUND:
                raise

    def put_empty(self, key: str) -> None:
        self._call("put_object", self.client.put_object, Key=key, Body=b"",
                   **self.policy.write())

    def copy_object(self, key: str, source_key: str) -> None:
        self._call("copy_object", self.client.copy_object, Key=key,
                   CopySource={"Bucket": self.bucket, "Key": source_key},
                   **self.policy.copy())

    def object_size(self, key: str) -> int | None:
        head = self._head("head_object", key)
        return None if head is None else int(head["ContentLength"])

    def put_json(self, key: str, document: dict[str, Any]) -> None:
        body = json.dumps(document, indent=2, ensure_ascii=False).encode()
        self._call("put_metadata", self.client.put_object, Key=key, Body=body,
                   ContentType="application/json", ChecksumCRC32C=_crc32c_b64(body),
                   **self.policy.write())

    def put_playlist(self, key: str, body: bytes) -> None:
        """An HLS playlist (contract §6): rewritten as the stream grows, so caches are
        told to ask again (``no-cache``), and typed as players expect."""
        self._call("put_playlist", self.client.put_object, Key=key, Body=body,
                   ContentType="application/vnd.apple.mpegurl", CacheControl="no-cache",
                   ChecksumCRC32C=_crc32c_b64(body), **self.policy.write())

    def prefixes_under(self, prefix: str) -> list[str]:
        """The "folders" (common prefixes up to the next ``/``) of keys starting with
        ``prefix``: one request per 1,000."""
        found: list[str] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("list_objects", self.client.list_objects_v2, Prefix=prefix,
                              Delimiter="/", **extra)
            found += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return found

    def _get(self, key: str) -> bytes | None:
        try:
            return bytes(self._call("get_object", self.client.get_object, Key=key,
                                    **self.policy.read())["Body"].read())
        except StorageError as exc:
            if exc.kind is ErrorKind.NOT_FOUND:
                return None
            raise

    def get_playlist(self, key: str) -> str | None:
        """A playlist this service wrote, or None when there is none (or it is not text)."""
        body = self._get(key)
        try:
            return None if body is None else body.decode()
        except UnicodeDecodeError:
            return None

    def get_json(self, key: str) -> dict[str, Any] | None:
        """A JSON object (metadata.json), or None when it does not exist."""
        body = self._get(key)
        if body is None:
            return None
        try:
            document = json.loads(body)
        except ValueError:
            return None
        return document if isinstance(document, dict) else None

    def sizes_under(self, prefix: str) -> dict[str, int]:
        """The size of every object under ``prefix``: one request per 1,000 keys."""
        sizes: dict[str, int] = {}
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call("list_objects", self.client.list_objects_v2, Prefix=prefix,
                              **extra)
            sizes.update({o["Key"]: int(o["Size"]) for o in page.get("Contents", [])})
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return sizes

    def delete_keys(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = [{"Key": k} for k in keys[start:start + 1000]]
            self._call("delete_objects", self.client.delete_objects,
                       Delete={"Objects": batch, "Quiet": True})


class BucketCheck:
    """Whether the bucket is known to exist: checked (and created when allowed) before
    the first request, with backoff while it cannot be, and again after any answer
    that it is gone."""

    def __init__(self, storage: Storage, create: bool, log: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.storage = storage
        self.create = create
        self.log = log
        self.clock = clock
        self.ready = False
        self.failures = 0
        self.retry_at = 0.0

    def saw(self, exc: StorageError) -> None:
        """Note a failed request: a missing bucket is checked again before the next."""
        if exc.cause is Cause.BUCKET_MISSING:
            self.ready = False

    def ensure(self) -> bool:
        """True when requests may go; else it is checked again after a backoff."""
        if self.ready:
            return True
        if self.clock() < self.retry_at:
            return False
        try:
            self.storage.ensure_bucket(self.create)
        except StorageError as exc:
            self.failures += 1
            self.retry_at = self.clock() + retry_delay(exc.kind, self.failures)
            metrics.record_s3_failure(exc.operation, exc.kind.value)
            if self.failures <= 3 or self.failures % 10 == 0:
                self.log.warning("bucket_unavailable", bucket=self.storage.bucket,
                                 error=exc.detail, attempt=self.failures)
            return False
        self.ready, self.failures = True, 0
        self.log.info("bucket_ready", bucket=self.storage.bucket)
        return True
