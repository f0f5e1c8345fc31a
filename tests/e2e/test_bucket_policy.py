"""Bucket policies (contract §9) against a real S3 server: every object the processor
writes carries the encryption, storage class and tags asked for, and every request
on an SSE-C object carries its key, counted at the recording proxy (where
CompleteMultipartUpload and the part copies' source keys are easy to miss).

moto stores SSE-S3, SSE-KMS, storage classes and tags, but does not enforce SSE-C:
it serves an SSE-C object to a GET without the key. So the proxy's count of the key
headers is the proof on moto, and the GET without the key is checked to fail only on
a server that enforces SSE-C (radosgw under ``make test-rgw``, AWS, MinIO). radosgw
16 (Pacific) in turn ignores SSE-S3, and stores the tags of a multipart upload in a
form it cannot read back (GetObjectTagging answers an empty 200): what a
server does not keep is probed first (``_server_keeps``), and then only the headers
the processor sent are checked for it (the README's table lists these gaps).
"""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import check_stream, list_keys, wait_for_metadata
from tests.support.http import http_get
from tests.support.proxy import RecordingProxy
from tests.support.s3server import free_port, unique_bucket_name
from tests.support.secrets import SSE_C_TEST_KEY, sse_c_forms
from tests.support.videos import make_not_mp4, make_video

pytestmark = pytest.mark.timeout(180)

# a key the server knows: moto takes any id; radosgw's testing backend has one
KMS_KEY = os.environ.get("TEST_S3_KMS_KEY_ID") or "alias/video-stream-processor-test"
TAGS = {"camera": "front door", "site": "lab"}
TAG_OPTION = "camera=front door,site=lab"
CUSTOMER = {"SSECustomerAlgorithm": "AES256", "SSECustomerKey": SSE_C_TEST_KEY}
KEY_MD5 = base64.b64encode(hashlib.md5(SSE_C_TEST_KEY).digest()).decode()


def _record_three_kinds(watch_dir: Path) -> dict[str, bytes]:
    """A real 3-chunk MP4 (with ``--max-parts 2``: groups, each a multipart upload of
    part copies, copied into the final upload), a one-chunk file (one CopyObject) and
    an empty one (one empty PUT): every way an object is made."""
    make_video(watch_dir / "long.mp4", 8, seed=7)
    make_not_mp4(watch_dir / "short.mp4", 700_000)
    (watch_dir / "empty.mp4").write_bytes(b"")
    return {p.name: p.read_bytes() for p in watch_dir.iterdir()}


def _finish(processor: Any, client: Any, bucket: str, sources: dict[str, bytes],
            read_args: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    docs = [wait_for_metadata(client, bucket, name, processor=processor, read_args=read_args)
            for name in sources]
    for doc in docs:
        if doc["total_size_bytes"]:
            check_stream(client, bucket, doc, sources[doc["source_path"]],
                         read_args=read_args)
    assert sum(len(d["chunks"]) for d in docs) >= 4, "expected a multi-chunk stream"
    return docs


def _server_keeps(client: Any) -> dict[str, bool]:
    """Whether this server reports SSE-S3 on HEAD, and keeps the tags given when a
    multipart upload is created."""
    probe_bucket = unique_bucket_name("policy-probe")
    client.create_bucket(Bucket=probe_bucket)
    try:
        client.put_object(Bucket=probe_bucket, Key="sse", Body=b"x", ServerSideEncryption="AES256")
        sse_s3 = client.head_object(Bucket=probe_bucket, Key="sse").get(
            "ServerSideEncryption") == "AES256"
        upload = client.create_multipart_upload(Bucket=probe_bucket, Key="mp",
                                                Tagging="probe=1")["UploadId"]
        etag = client.upload_part(Bucket=probe_bucket, Key="mp", UploadId=upload,
                                  PartNumber=1, Body=b"y")["ETag"]
        client.complete_multipart_upload(Bucket=probe_bucket, Key="mp", UploadId=upload,
                                         MultipartUpload={"Parts": [{"PartNumber": 1,
                                                                     "ETag": etag}]})
        tags = client.get_object_tagging(Bucket=probe_bucket, Key="mp").get("TagSet", [])
        return {"sse_s3": sse_s3, "multipart_tags": tags == [{"Key": "probe", "Value": "1"}]}
    finally:
        for key in ("sse", "mp"):
            client.delete_object(Bucket=probe_bucket, Key=key)
        client.delete_bucket(Bucket=probe_bucket)


def _tags(client: Any, bucket: str, key: str) -> dict[str, str]:
    tags = client.get_object_tagging(Bucket=bucket, Key=key).get("TagSet", [])
    return {t["Key"]: t["Value"] for t in tags}


@pytest.mark.parametrize("sse", [None, "AES256", "aws:kms"])
def test_every_object_carries_encryption_class_and_tags(make_processor: Any, client: Any,
                                                        bucket: str, sse: str | None,
                                                        proxy: RecordingProxy) -> None:
    """Without encryption, the one-chunk file is a CopyObject: its tags are replaced."""
    extra = ["--storage-class", "STANDARD_IA", "--object-tags", TAG_OPTION, "--max-parts", "2"]
    extra += ["--sse", sse] if sse else []
    if sse == "aws:kms":
        extra += ["--sse-kms-key-id", KMS_KEY]
    keeps = _server_keeps(client)
    processor = make_processor(workers=2, stream_timeout=1.0, extra=extra)
    processor.start()
    sources = _record_three_kinds(processor.watch_dir)
    docs = _finish(processor, client, bucket, sources)
    multipart = {d["object_key"] for d in docs
                 if d["assembly"]["method"] == "multipart_copy"}
    keys = list_keys(client, bucket)
    kinds = {"chunks/" in k or k.endswith(("metadata.json", ".mp4")) for k in keys}
    assert kinds == {True} and len(keys) >= 3 + 1 + 3 + 3, keys
    for key in keys:
        head = client.head_object(Bucket=bucket, Key=key)
        if sse == "aws:kms" or sse == "AES256" and keeps["sse_s3"]:
            assert head.get("ServerSideEncryption") == sse, (key, head)
        if sse == "aws:kms":
            assert str(head.get("SSEKMSKeyId", "")).endswith(KMS_KEY), (key, head)
        assert head.get("StorageClass") == "STANDARD_IA", (key, head)
        if key not in multipart or keeps["multipart_tags"]:
            assert _tags(client, bucket, key) == TAGS, key
    # the group objects are gone by now: their creation carried the same headers
    creates = [r for r in _object_requests(proxy, bucket)  # PUT, CopyObject, create
               if (r.method == "PUT" and "partNumber" not in r.query) or "uploads" in r.query]
    assert any("/groups/" in r.path for r in creates), "no group was made"
    copies = [r for r in creates if "x-amz-copy-source" in r.headers]
    assert bool(copies) == (sse is None), "CopyObject for the one-chunk file, unencrypted"
    for request in creates:
        headers = request.headers
        assert headers.get("x-amz-server-side-encryption") == sse, request.path
        if "x-amz-copy-source" in headers:
            assert headers.get("x-amz-tagging-directive") == "REPLACE", request.path
        assert headers.get("x-amz-storage-class") == "STANDARD_IA", request.path
        assert headers.get("x-amz-tagging") == "camera=front%20door&site=lab", request.path
    started, = processor.wait_for_event("supervisor_started")
    assert (started["encryption"], started["storage_class"]) == (sse, "STANDARD_IA")


def _object_requests(proxy: RecordingProxy, bucket: str) -> list[Any]:
    """Requests on one object (not on the bucket), other than deletes and aborts,
    which S3 defines without SSE-C headers."""
    return [r for r in proxy.requests()
            if r.path.strip("/").startswith(bucket + "/") and r.method != "DELETE"
            and not (r.method == "GET" and "uploads" in r.query)]


def _enforces_sse_c(client: Any) -> bool:
    """Whether this server refuses an SSE-C object to a GET without its key."""
    probe_bucket = unique_bucket_name("ssec-probe")
    client.create_bucket(Bucket=probe_bucket)
    client.put_object(Bucket=probe_bucket, Key="probe", Body=b"x", **CUSTOMER)
    try:
        client.get_object(Bucket=probe_bucket, Key="probe")["Body"].read()
        return False
    except client.exceptions.ClientError:
        return True
    finally:
        client.delete_object(Bucket=probe_bucket, Key="probe")
        client.delete_bucket(Bucket=probe_bucket)


def test_sse_c_key_goes_with_every_request_and_never_leaks(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy,
        tmp_path: Path) -> None:
    key_file = tmp_path / "sse-c.key"
    key_file.write_bytes(SSE_C_TEST_KEY)
    port = free_port()
    processor = make_processor(workers=2, stream_timeout=1.0, extra=[
        "--sse-c-key-file", str(key_file), "--storage-class", "STANDARD_IA",
        "--object-tags", TAG_OPTION, "--metrics-port", str(port),
        "--metrics-host", "127.0.0.1", "--log-level", "debug", "--max-parts", "2"])
    processor.start()
    sources = _record_three_kinds(processor.watch_dir)
    docs = _finish(processor, client, bucket, sources, read_args=CUSTOMER)

    requests = _object_requests(proxy, bucket)
    seen: set[str] = set()
    for request in requests:
        headers = request.headers
        what = f"{request.method} {request.path} {sorted(request.query)}"
        assert headers.get("x-amz-server-side-encryption-customer-algorithm") == "AES256", what
        assert headers.get("x-amz-server-side-encryption-customer-key-md5") == KEY_MD5, what
        if "x-amz-copy-source" in headers:
            assert headers.get(
                "x-amz-copy-source-server-side-encryption-customer-key-md5") == KEY_MD5, what
        seen.add("part copy" if "x-amz-copy-source" in headers and "partNumber" in request.query
                 else "copy" if "x-amz-copy-source" in headers
                 else "create" if "uploads" in request.query
                 else "complete" if request.method == "POST" and "uploadId" in request.query
                 else request.method)
    # (an encrypted one-chunk file is assembled by a part copy too: see completion.py)
    assert {"PUT", "HEAD", "create", "part copy", "complete"} <= seen, seen
    assert any("/groups/" in r.path for r in requests), "no group was made"

    keeps = _server_keeps(client)
    multipart = {d["object_key"] for d in docs
                 if d["assembly"]["method"] == "multipart_copy"}
    for key in list_keys(client, bucket):
        head = client.head_object(Bucket=bucket, Key=key, **CUSTOMER)
        assert head.get("StorageClass") == "STANDARD_IA", key
        if key not in multipart or keeps["multipart_tags"]:
            assert _tags(client, bucket, key) == TAGS, key
    final = next(d for d in docs if d["source_path"] == "long.mp4")["object_key"]
    if _enforces_sse_c(client):
        with pytest.raises(client.exceptions.ClientError):
            client.get_object(Bucket=bucket, Key=final)

    # the key, in any form, is in no log line, metric, metadata.json or state file
    status, metrics_text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200
    artefacts = {"log": processor.log_path().read_bytes(), "metrics": metrics_text.encode()}
    for doc_key in (k for k in list_keys(client, bucket) if k.endswith("metadata.json")):
        artefacts[doc_key] = client.get_object(Bucket=bucket, Key=doc_key,
                                               **CUSTOMER)["Body"].read()
    for path in processor.state_dir.rglob("*"):
        if path.is_file():
            artefacts[str(path)] = path.read_bytes()
    for name, data in artefacts.items():
        for form in sse_c_forms(SSE_C_TEST_KEY):
            assert form not in data, f"the SSE-C key leaked into {name}"
    assert processor.wait_for_event("supervisor_started")[0]["encryption"] == "SSE-C"


def test_sse_c_key_file_of_wrong_size_is_a_clear_exit(make_processor: Any,
                                                       tmp_path: Path) -> None:
    key_file = tmp_path / "short.key"
    key_file.write_bytes(os.urandom(16))
    processor = make_processor(workers=1, extra=["--sse-c-key-file", str(key_file)])
    processor.start()
    assert processor.proc is not None and processor.proc.wait(timeout=30) == 2
    output = processor.log_path().read_text()
    assert output.startswith("processor: error: --sse-c-key-file:"), output
    assert "holds 16 bytes" in output and len(output.strip().splitlines()) == 1, output
