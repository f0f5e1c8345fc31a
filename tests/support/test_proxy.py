"""RecordingProxy relays real boto3 traffic unchanged and records it correctly."""

from __future__ import annotations

import base64
import http.client
import io
import os
import socket
import threading
import zlib
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import crc32c
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from .proxy import RecordingProxy, RequestHead
from .s3server import S3Endpoint, unique_bucket_name

MiB = 1024 * 1024
# What the uploader is expected to use: checksums only where we ask for them.
WHEN_REQUIRED = Config(
    request_checksum_calculation="when_required", response_checksum_validation="when_required"
)


def port_of(proxy: RecordingProxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


@pytest.fixture
def proxy(endpoint: S3Endpoint) -> Iterator[RecordingProxy]:
    with RecordingProxy(endpoint.url) as p:
        yield p
        assert p.errors == []
    # stop() closed every connection and joined every thread
    assert not [t for t in threading.enumerate() if t.name.startswith("recording-proxy")]


@pytest.fixture
def bucket(endpoint: S3Endpoint) -> str:
    name = unique_bucket_name("proxy")
    endpoint.client().create_bucket(Bucket=name)
    return name


def test_put_get_head_through_proxy(
    endpoint: S3Endpoint, proxy: RecordingProxy, bucket: str
) -> None:
    s3 = endpoint.with_url(proxy.url).client(WHEN_REQUIRED)
    big = os.urandom(6 * MiB)
    s3.put_object(Bucket=bucket, Key="big.mp4", Body=big, ChecksumCRC32=crc32_b64(big))
    s3.put_object(Bucket=bucket, Key="small.mp4", Body=b"no checksum")
    s3.put_object(
        Bucket=bucket, Key="stream.mp4", Body=io.BytesIO(b"x" * 1000)
    )  # Expect: 100-continue
    try:  # moto accepts a wrong CRC32 (it does not verify checksums!); MinIO rejects it
        s3.put_object(Bucket=bucket, Key="bad.mp4", Body=b"corrupt", ChecksumCRC32=crc32_b64(b"x"))
    except ClientError as exc:
        assert exc.response["Error"]["Code"] in (
            "BadDigest",
            "InvalidRequest",
            "XAmzContentChecksumMismatch",
        )
    assert s3.get_object(Bucket=bucket, Key="big.mp4")["Body"].read() == big
    assert s3.head_object(Bucket=bucket, Key="big.mp4")["ContentLength"] == len(big)
    with pytest.raises(ClientError):
        s3.head_object(Bucket=bucket, Key="missing.mp4")

    recs = proxy.requests()
    summary = [(r.method, r.path, r.body_size, r.status, r.crc32_ok) for r in recs]
    assert summary == [
        ("PUT", f"/{bucket}/big.mp4", 6 * MiB, 200, True),
        ("PUT", f"/{bucket}/small.mp4", 11, 200, None),
        ("PUT", f"/{bucket}/stream.mp4", 1000, 200, None),
        # the proxy is what tells us the bytes and the header disagree
        ("PUT", f"/{bucket}/bad.mp4", 7, recs[3].status, False),
        ("GET", f"/{bucket}/big.mp4", 0, 200, None),
        ("HEAD", f"/{bucket}/big.mp4", 0, 200, None),
        ("HEAD", f"/{bucket}/missing.mp4", 0, 404, None),
    ]
    assert recs[3].status is not None
    big_put = recs[0]
    # Over plain HTTP botocore sends a Content-Length body and the checksum header.
    assert big_put.headers["content-length"] == str(6 * MiB)
    assert big_put.headers["x-amz-checksum-crc32"] == crc32_b64(big)
    assert "aws-chunked" not in big_put.headers.get("content-encoding", "")
    assert big_put.headers["host"] == proxy.url.removeprefix("http://")  # Host relayed as signed
    assert recs[2].headers["expect"] == "100-continue"
    assert proxy.count("PUT") == 4 and proxy.count("HEAD") == 2
    assert proxy.count("GET", f"/{bucket}/big") == 1 and proxy.count("get", "/nope") == 0


def test_crc32c_header_is_checked_against_the_body(
    endpoint: S3Endpoint, proxy: RecordingProxy, bucket: str
) -> None:
    """A CRC32C header is verified like a CRC32 one: True when it matches, False when not."""
    s3 = endpoint.with_url(proxy.url).client(WHEN_REQUIRED)
    body = os.urandom(MiB)
    good = base64.b64encode(crc32c.crc32c(body).to_bytes(4, "big")).decode()
    s3.put_object(Bucket=bucket, Key="good", Body=body, ChecksumCRC32C=good)
    try:  # moto stores it anyway; MinIO rejects it
        s3.put_object(Bucket=bucket, Key="bad", Body=body[:-1] + b"x", ChecksumCRC32C=good)
    except ClientError:
        pass
    puts = {r.path.rsplit("/", 1)[1]: r for r in proxy.requests() if r.method == "PUT"}
    assert (puts["good"].crc32c_ok, puts["good"].crc32_ok) == (True, None)
    assert puts["bad"].crc32c_ok is False


def test_multipart_upload_counts(endpoint: S3Endpoint, proxy: RecordingProxy, bucket: str) -> None:
    s3 = endpoint.with_url(proxy.url).client(WHEN_REQUIRED)
    parts = [os.urandom(5 * MiB), os.urandom(MiB + 17)]
    mpu = s3.create_multipart_upload(Bucket=bucket, Key="cam/2024-01-01.mp4")
    etags = [
        s3.upload_part(
            Bucket=bucket,
            Key="cam/2024-01-01.mp4",
            UploadId=mpu["UploadId"],
            PartNumber=n,
            Body=data,
            ChecksumCRC32=crc32_b64(data),
        )["ETag"]
        for n, data in enumerate(parts, start=1)
    ]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key="cam/2024-01-01.mp4",
        UploadId=mpu["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in enumerate(etags, 1)]},
    )
    got = s3.get_object(Bucket=bucket, Key="cam/2024-01-01.mp4")["Body"].read()
    assert got == b"".join(parts)

    prefix = f"/{bucket}/cam/"
    assert proxy.count("POST", prefix, query_has="uploads") == 1
    assert proxy.count("PUT", prefix, query_has="partNumber") == 2
    assert proxy.count("POST", prefix, query_has="uploadId") == 1
    assert proxy.count("POST", prefix, query_lacks="uploads") == 1
    uploads = [r for r in proxy.requests() if "partNumber" in r.query]
    assert [
        (r.query["partNumber"], r.query["uploadId"], r.body_size, r.crc32_ok, r.status)
        for r in uploads
    ] == [("1", mpu["UploadId"], 5 * MiB, True, 200), ("2", mpu["UploadId"], MiB + 17, True, 200)]
    proxy.clear()
    assert proxy.requests() == [] and proxy.count("PUT") == 0


def test_path_is_percent_decoded(endpoint: S3Endpoint, proxy: RecordingProxy, bucket: str) -> None:
    s3 = endpoint.with_url(proxy.url).client(WHEN_REQUIRED)
    key = "front door/caméra ü 🎥 +1%.mp4"
    s3.put_object(Bucket=bucket, Key=key, Body=b"v")
    s3.list_objects_v2(Bucket=bucket, Prefix="front door/")
    put, listing = proxy.requests()
    assert put.path == f"/{bucket}/{key}" and put.query == {}
    assert listing.path == f"/{bucket}" and listing.query["prefix"] == "front door/"
    assert listing.query["list-type"] == "2"


# -- a keep-alive upstream --------------------------------------------------
# moto's Werkzeug server closes the connection after every response, so the
# keep-alive / pipelining / chunked paths are exercised against the stdlib
# HTTP/1.1 server, which keeps connections open.


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[tuple[str, str, bytes]] = []

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            out = b""
            while (size := int(self.rfile.readline().split(b";")[0], 16)) > 0:
                out += self.rfile.read(size + 2)[:-2]
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return out
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _reply(self) -> None:
        body = self._body()
        self.seen.append((self.command, self.path, body))
        if self.path == "/nocontent":
            self.send_response(204)
            self.end_headers()
        elif self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n")
        else:
            reply = b"echo:" + body
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(reply)

    do_GET = do_PUT = do_POST = do_HEAD = _reply


@pytest.fixture
def keepalive_upstream() -> Iterator[str]:
    _Handler.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_keepalive_chunked_head_204_on_one_connection(keepalive_upstream: str) -> None:
    data = os.urandom(100_000)
    with RecordingProxy(keepalive_upstream) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy), timeout=30)
        results = []
        for method, path, body, headers in [
            ("PUT", "/a", data, {"x-amz-checksum-crc32": crc32_b64(data)}),
            ("HEAD", "/a", None, {}),
            ("GET", "/nocontent", None, {}),
            ("GET", "/chunked", None, {}),
            # chunked request body (iterable body => Transfer-Encoding: chunked)
            (
                "POST",
                "/b?x=1&flag",
                iter([data[:10], data[10:]]),
                {"x-amz-checksum-crc32": "AAAAAA=="},
            ),
        ]:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            results.append((resp.status, resp.read()))
        conn.close()
        assert results == [
            (200, b"echo:" + data),
            (200, b""),
            (204, b""),
            (200, b"hello world"),
            (200, b"echo:" + data),
        ]
        assert proxy.connection_count == 1
        recs = proxy.requests()
        assert [(r.method, r.path, r.body_size, r.status, r.crc32_ok) for r in recs] == [
            ("PUT", "/a", len(data), 200, True),
            ("HEAD", "/a", 0, 200, None),
            ("GET", "/nocontent", 0, 204, None),
            ("GET", "/chunked", 0, 200, None),
            ("POST", "/b", len(data), 200, False),
        ]
        assert recs[4].query == {"x": "1", "flag": ""}
        assert proxy.errors == []
    assert [s[2] for s in _Handler.seen if s[0] != "GET"] == [data, b"", data]


def test_aws_chunked_body_with_trailer_checksum(keepalive_upstream: str) -> None:
    """botocore's own aws-chunked encoder (used over HTTPS) is decoded."""
    data = os.urandom(300_000)
    wire = AwsChunkedWrapper(
        io.BytesIO(data), checksum_cls=Crc32Checksum, checksum_name="x-amz-checksum-crc32"
    ).read()
    assert wire.endswith(f"x-amz-checksum-crc32:{crc32_b64(data)}\r\n\r\n".encode())
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Trailer": "x-amz-checksum-crc32",
        "X-Amz-Decoded-Content-Length": str(len(data)),
    }
    with RecordingProxy(keepalive_upstream) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy), timeout=30)
        conn.request("PUT", "/aws", body=iter([wire]), headers=headers)  # TE: chunked
        assert conn.getresponse().read() == b"echo:" + wire
        bad = wire.replace(crc32_b64(data).encode(), b"AAAAAA==")
        conn.request("PUT", "/aws", body=bad, headers=headers)  # Content-Length
        assert conn.getresponse().read() == b"echo:" + bad
        conn.close()
        assert [(r.body_size, r.crc32_ok) for r in proxy.requests()] == [
            (len(data), True),
            (len(data), False),
        ]
        assert proxy.errors == []


class _RawUpstream:
    """Accepts one connection, stores the first ``n`` bytes, answers 200."""

    def __init__(self, n: int) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received = b""
        self.thread = threading.Thread(target=self._run, args=(n,), daemon=True)
        self.thread.start()

    def _run(self, n: int) -> None:
        conn, _ = self.sock.accept()
        with conn:
            while len(self.received) < n and (chunk := conn.recv(65536)):
                self.received += chunk
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            conn.recv(1)  # wait for the client to go away
        self.sock.close()


def test_bytes_are_forwarded_unchanged_including_pipelining() -> None:
    first = (
        b"PUT /k%20x?partNumber=1 HTTP/1.1\r\nHost: signed.example:9000\r\n"
        b"X-Odd-CASE:   spaced  \r\nContent-Length: 3\r\n\r\nabc"
    )
    second = b"GET /z HTTP/1.1\r\nhost: other\r\n\r\n"
    upstream = _RawUpstream(len(first) + len(second))
    with RecordingProxy(upstream.url) as proxy:
        with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=30) as c:
            c.sendall(first + second)  # both at once: pipelined
            reply = b""
            while reply.count(b"ok") < 1:
                reply += c.recv(65536)
        upstream.thread.join(timeout=10)
        assert upstream.received == first + second
        assert reply == b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        recs = proxy.requests()
        assert recs[0].path == "/k x" and recs[0].query == {"partNumber": "1"}
        assert recs[0].headers["x-odd-case"] == "spaced" and recs[0].status == 200
        assert recs[1].method == "GET" and recs[1].status is None  # never answered
        assert proxy.errors == []


def test_before_forward_hook_sees_heads_and_can_drop(keepalive_upstream: str) -> None:
    heads: list[RequestHead] = []

    def hook(head: RequestHead) -> None:
        heads.append(head)
        if head.path == "/drop":
            raise ConnectionAbortedError("injected")

    with RecordingProxy(keepalive_upstream, on_request=hook) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy), timeout=30)
        conn.request("GET", "/ok?a=b")
        assert conn.getresponse().read() == b"echo:"
        conn.request("GET", "/drop")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()
        conn.close()
        assert [(h.connection_id, h.index_on_connection, h.path, h.query) for h in heads] == [
            (1, 0, "/ok", {"a": "b"}),
            (1, 1, "/drop", {}),
        ]
        assert [r.path for r in proxy.requests()] == ["/ok"]  # the dropped one never went out
        assert proxy.errors == []


# -- injected faults -----------------------------------------------------------
NO_RETRY = Config(
    request_checksum_calculation="when_required",
    response_checksum_validation="when_required",
    retries={"total_max_attempts": 1},
    connect_timeout=5,
    read_timeout=10,
)


def test_error_faults_answer_like_s3_without_forwarding(
    endpoint: S3Endpoint, proxy: RecordingProxy, bucket: str
) -> None:
    from .proxy import Faults

    s3 = endpoint.with_url(proxy.url).client(NO_RETRY)
    proxy.set_faults(Faults(error_share=1.0, error_status=503))
    with pytest.raises(ClientError) as caught:
        s3.put_object(Bucket=bucket, Key="k", Body=os.urandom(300_000))
    error = caught.value.response
    assert error["Error"]["Code"] == "SlowDown"
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 503
    proxy.set_faults(error_status=500)
    with pytest.raises(ClientError) as caught:
        s3.head_object(Bucket=bucket, Key="k")  # no body in a HEAD answer
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 500
    with pytest.raises(ClientError) as caught:
        s3.get_object(Bucket=bucket, Key="k")
    assert caught.value.response["Error"]["Code"] == "InternalError"
    assert proxy.requests() == []  # the server saw none of them
    assert [(f.kind, f.method, f.status) for f in proxy.injected()] == [
        ("error", "PUT", 503), ("error", "HEAD", 500), ("error", "GET", 500)]
    proxy.clear_faults()
    s3.put_object(Bucket=bucket, Key="k", Body=b"fine")
    assert [(r.method, r.status, r.complete) for r in proxy.requests()] == [("PUT", 200, True)]
    assert proxy.fault_counts() == {"error": 3}


def test_reset_mid_body_cuts_the_upload_and_the_server_keeps_nothing(
    endpoint: S3Endpoint, proxy: RecordingProxy, bucket: str
) -> None:
    from botocore.exceptions import BotoCoreError

    s3 = endpoint.with_url(proxy.url).client(NO_RETRY)
    body = os.urandom(2 * MiB)
    proxy.set_faults(reset_share=1.0)
    with pytest.raises((BotoCoreError, ConnectionError)):
        s3.put_object(Bucket=bucket, Key="cut", Body=body, ChecksumCRC32=crc32_b64(body))
    s3.list_objects_v2(Bucket=bucket)  # bodyless requests are never reset
    (put, listing) = proxy.requests()
    assert put.method == "PUT" and not put.complete and 0 < put.body_size < len(body)
    assert put.crc32_ok is None and put.answered_at is None
    assert listing.complete and listing.status == 200
    assert proxy.fault_counts() == {"reset": 1}
    with pytest.raises(ClientError):
        endpoint.client().head_object(Bucket=bucket, Key="cut")
    proxy.clear_faults()
    s3.put_object(Bucket=bucket, Key="cut", Body=body, ChecksumCRC32=crc32_b64(body))
    last = proxy.requests()[-1]
    assert last.complete and last.body_size == len(body) and last.crc32_ok is True
    assert last.answered_at is not None and last.answered_at >= last.started_at


def test_reset_first_resets_the_first_bodies_whatever_the_share_draws(
    endpoint: S3Endpoint, proxy: RecordingProxy, bucket: str
) -> None:
    from botocore.exceptions import BotoCoreError

    s3 = endpoint.with_url(proxy.url).client(NO_RETRY)
    body = os.urandom(64 * 1024)
    proxy.set_faults(reset_first=2)  # reset_share 0: only the forced ones
    s3.list_objects_v2(Bucket=bucket)  # bodyless: neither reset nor counted
    for key in ("a", "b"):
        with pytest.raises((BotoCoreError, ConnectionError)):
            s3.put_object(Bucket=bucket, Key=key, Body=body, ChecksumCRC32=crc32_b64(body))
    s3.put_object(Bucket=bucket, Key="c", Body=body, ChecksumCRC32=crc32_b64(body))
    assert proxy.fault_counts() == {"reset": 2}
    proxy.set_faults(reset_first=1)  # a new plan counts afresh
    with pytest.raises((BotoCoreError, ConnectionError)):
        s3.put_object(Bucket=bucket, Key="d", Body=body, ChecksumCRC32=crc32_b64(body))
    assert proxy.fault_counts() == {"reset": 3}
    with pytest.raises(ValueError, match="reset_first"):
        proxy.set_faults(reset_first=-1)


def test_refuse_stop_listening_and_resume(
    endpoint: S3Endpoint, proxy: RecordingProxy, bucket: str
) -> None:
    from botocore.exceptions import BotoCoreError

    s3 = endpoint.with_url(proxy.url).client(NO_RETRY)
    proxy.set_faults(refuse=True)
    with pytest.raises(BotoCoreError):
        s3.head_bucket(Bucket=bucket)
    assert proxy.fault_counts() == {"refused": 1} and proxy.requests() == []
    proxy.clear_faults()
    proxy.stop_listening()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=5).close()
    proxy.resume_listening()
    s3.head_bucket(Bucket=bucket)  # same URL again
    assert [r.method for r in proxy.requests()] == ["HEAD"]


def test_refuse_also_ends_a_connection_kept_alive(keepalive_upstream: str) -> None:
    """An outage does not spare connections opened before it: the next request on a
    kept-alive connection is dropped unforwarded (servers that keep connections alive,
    unlike moto, would otherwise go on answering through the "outage")."""
    with RecordingProxy(keepalive_upstream) as proxy:
        conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy), timeout=30)
        conn.request("GET", "/before")
        assert conn.getresponse().read() == b"echo:"
        proxy.set_faults(refuse=True)
        conn.request("GET", "/during")
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError)):
            conn.getresponse()
        conn.close()
        assert proxy.fault_counts() == {"refused": 1}
        assert [r.path for r in proxy.requests()] == ["/before"]
        assert proxy.errors == []
    assert [s[1] for s in _Handler.seen] == ["/before"]


def test_stall_holds_then_drops_without_forwarding(keepalive_upstream: str) -> None:
    with RecordingProxy(keepalive_upstream) as proxy:
        proxy.stall(1.0)
        with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=30) as c:
            c.sendall(b"GET /held HTTP/1.1\r\nHost: x\r\n\r\n")
            assert c.recv(100) == b""  # nothing came back; dropped when the stall ended
        assert proxy.requests() == [] and proxy.fault_counts() == {"stalled": 1}
        conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy), timeout=30)
        conn.request("GET", "/after")
        assert conn.getresponse().read() == b"echo:"
        conn.close()
        assert proxy.errors == []
    assert [s[1] for s in _Handler.seen] == ["/after"]


def test_shares_follow_the_seed_and_match_limits_them(keepalive_upstream: str) -> None:
    from .proxy import Faults

    def run(seed: int) -> list[int]:
        statuses = []
        with RecordingProxy(keepalive_upstream, seed=seed) as proxy:
            proxy.set_faults(Faults(error_share=0.5, latency=0.01,
                                    match=lambda h: h.path.startswith("/f")))
            for i in range(20):
                conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy), timeout=30)
                conn.request("GET", f"/f{i}")
                statuses.append(conn.getresponse().status)
                conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port_of(proxy), timeout=30)
            conn.request("GET", "/other")  # not matched: never faulted
            assert conn.getresponse().status == 200
            conn.close()
            counts = proxy.fault_counts()
            assert counts["latency"] == 20 and counts.get("error", 0) == statuses.count(503)
            assert len(proxy.requests()) == 21 - statuses.count(503)
            assert proxy.errors == []
        return statuses

    first = run(7)
    assert first == run(7) and 0 < first.count(503) < 20
    with pytest.raises(ValueError):
        Faults(error_share=1.5)


def test_response_delay_holds_the_answer_after_the_server_acted(
    endpoint: S3Endpoint, proxy: RecordingProxy, bucket: str
) -> None:
    from .proxy import Faults

    s3 = endpoint.with_url(proxy.url).client(NO_RETRY)
    proxy.set_faults(Faults(response_delay=1.0, match=lambda h: h.method == "PUT"))
    done = threading.Event()
    thread = threading.Thread(
        target=lambda: (s3.put_object(Bucket=bucket, Key="slow", Body=b"x"), done.set()))
    thread.start()
    direct = endpoint.client()
    stored = False
    for _ in range(200):  # stored by the server while the client still waits
        try:
            direct.head_object(Bucket=bucket, Key="slow")
            stored = True
            break
        except ClientError:
            threading.Event().wait(0.01)
    assert stored and not done.is_set()
    thread.join(timeout=30)
    assert done.is_set()
    (put,) = proxy.requests()
    assert put.complete and put.status == 200 and put.answered_at is not None
    assert put.answered_at - put.started_at >= 1.0
    assert proxy.fault_counts() == {"delayed_response": 1}


def test_an_answer_before_the_body_of_an_expect_request_ends_the_connection() -> None:
    """A server may refuse an ``Expect: 100-continue`` request from its head alone
    (radosgw answers a bad storage class with 400); the client then skips the body and
    may reuse the connection. The proxy cannot tell that next request from the body it
    still waits for, so it ends the connection after relaying the answer."""
    refused = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 3\r\n\r\nbad"
    listener = socket.create_server(("127.0.0.1", 0))
    received: list[bytes] = []

    def refuse_at_once() -> None:
        conn, _ = listener.accept()
        with conn:
            head = b""
            while b"\r\n\r\n" not in head and (chunk := conn.recv(65536)):
                head += chunk
            received.append(head)
            conn.sendall(refused)
            while chunk := conn.recv(65536):  # keep-alive: whatever follows
                received.append(chunk)
        listener.close()

    threading.Thread(target=refuse_at_once, daemon=True).start()
    with RecordingProxy(f"http://127.0.0.1:{listener.getsockname()[1]}") as proxy:
        with socket.create_connection(("127.0.0.1", port_of(proxy)), timeout=30) as c:
            c.sendall(b"PUT /k HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                      b"Content-Length: 300\r\n\r\n")
            reply = b""
            while not reply.endswith(b"bad"):
                reply += c.recv(65536)
            assert reply == refused
            c.sendall(b"GET /next HTTP/1.1\r\nHost: x\r\n\r\n")  # no body: reused
            assert c.recv(65536) == b""  # the proxy ended the connection
        assert proxy.errors == []
        assert [(r.method, r.status, r.complete) for r in proxy.requests()] == [
            ("PUT", 400, False)]
    assert b"GET /next" not in b"".join(received)
