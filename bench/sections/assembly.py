"""What the S3 server alone takes to assemble a stream, measured by plain boto3.

The processor assembles each finished stream on the server (multipart upload,
one ``UploadPartCopy`` per chunk, then ``CompleteMultipartUpload``). How long the
server takes for that is not the service's own cost, so the bench times the same
requests made one after another by a bare boto3 client on the same bucket, right
after the processor's run: the bulk report shows the part-copy assembly, the live
section's finalization target names the complete request.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def _copied_upload(s3: Any, bucket: str, key: str,
                   chunk_keys: list[str]) -> tuple[str, list[dict[str, Any]]]:
    """A multipart upload of ``key`` whose parts are copies of ``chunk_keys``, one
    after another, by plain boto3: its id and parts, ready to complete."""
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    parts = []
    for n, ck in enumerate(chunk_keys, start=1):
        r = s3.upload_part_copy(Bucket=bucket, Key=key, UploadId=upload, PartNumber=n,
                                CopySource={"Bucket": bucket, "Key": ck})
        parts.append({"PartNumber": n, "ETag": r["CopyPartResult"]["ETag"]})
    return upload, parts


def _complete(s3: Any, bucket: str, key: str, upload: str,
              parts: list[dict[str, Any]]) -> None:
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload,
                                 MultipartUpload={"Parts": parts})


def assembly_baseline(s3: Any, bucket: str, chunk_keys: list[str]) -> float:
    """Seconds the server takes for a whole multipart part-copy assembly of
    ``chunk_keys`` (copies one after another, then complete), by plain boto3."""
    started = time.perf_counter()
    key = "bench-assembly-baseline"
    _complete(s3, bucket, key, *_copied_upload(s3, bucket, key, chunk_keys))
    return time.perf_counter() - started


def complete_baseline(s3: Any, bucket: str, chunk_keys: list[str], at_once: int) -> float:
    """Seconds the server takes for ``CompleteMultipartUpload`` of a part-copy upload of
    ``chunk_keys``, ``at_once`` such uploads completed together by plain boto3 (the
    parts are copied first, untimed): the part of finalization that is the server's
    when every part was copied while recording."""
    keys = [f"bench-complete-baseline-{i}" for i in range(at_once)]
    uploads = {key: _copied_upload(s3, bucket, key, chunk_keys) for key in keys}
    started = time.perf_counter()
    with ThreadPoolExecutor(at_once) as pool:
        list(pool.map(lambda key: _complete(s3, bucket, key, *uploads[key]), keys))
    return time.perf_counter() - started
