"""Runs the real ``processor`` as a process group and checks what lands in S3.

The processor talks to S3 through a ``RecordingProxy`` so tests can count the
requests the server received; the S3 server is moto's (or ``TEST_S3_*``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import xxhash

from tests.support.proxy import RecordingProxy
from tests.support.s3server import S3Endpoint

PROCESSOR = Path(sys.executable).with_name("processor")


def processor_command() -> list[str]:
    """The installed console script, as users run it."""
    if PROCESSOR.exists():
        return [str(PROCESSOR)]
    return [sys.executable, "-m", "supervisor.cli"]


@dataclass
class Processor:
    """One service instance: a working dir with ``in/`` and ``state/``, its logs."""

    workdir: Path
    endpoint: S3Endpoint           # what the processor is told (usually the proxy)
    bucket: str
    workers: int = 2
    stream_timeout: float = 2.0
    drain_timeout: float = 10.0
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    runs: int = 0

    @property
    def watch_dir(self) -> Path:
        return self.workdir / "in"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def log_path(self, run: int | None = None) -> Path:
        return self.workdir / f"run-{self.runs if run is None else run}.log"

    def start(self, *, workers: int | None = None, extra: list[str] | None = None) -> None:
        self.watch_dir.mkdir(parents=True, exist_ok=True)
        if workers is not None:
            self.workers = workers
        self.runs += 1
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("PROCESSOR_", "AWS_"))}
        env.update(self.endpoint.env())
        argv = processor_command() + [
            "--watch-dir", str(self.watch_dir), "--state-dir", str(self.state_dir),
            "--s3-endpoint", self.endpoint.url, "--s3-bucket", self.bucket,
            "--workers", str(self.workers), "--chunk-size", "5MiB",
            "--stream-timeout", str(self.stream_timeout),
            "--drain-timeout", str(self.drain_timeout), "--metrics-port", "0",
            *self.extra, *(extra or [])]
        out = open(self.log_path(), "wb")
        self.proc = subprocess.Popen(argv, cwd=self.workdir, env=env, stdout=out,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        out.close()

    # logs
    def events(self, run: int | None = None) -> list[dict[str, Any]]:
        path = self.log_path(run)
        if not path.exists():
            return []
        found = []
        for line in path.read_text(errors="replace").splitlines():
            try:
                found.append(json.loads(line))
            except ValueError:
                found.append({"event": "<non-json>", "line": line})
        return found

    def all_events(self) -> list[dict[str, Any]]:
        return [e for run in range(1, self.runs + 1) for e in self.events(run)]

    def wait_for_event(self, name: str, predicate: Callable[[dict[str, Any]], bool] = bool,
                       timeout: float = 60.0, count: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            matches = [e for e in self.events() if e.get("event") == name and predicate(e)]
            if len(matches) >= count:
                return matches
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"processor exited ({self.proc.returncode}) waiting for "
                                     f"{name}:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count}x {name} within {timeout}s:\n{self.tail()}")
            time.sleep(0.1)

    def tail(self, lines: int = 40) -> str:
        path = self.log_path()
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # signals
    def signal(self, signum: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, signum)

    def kill9(self) -> None:
        """``kill -9`` of the whole process group: supervisor and every worker."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        _wait_group_gone(self.proc.pid)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        """Tear down after a test, whatever state it is in."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=self.drain_timeout + 5)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)


def wait_until(condition: Callable[[], Any], timeout: float, what: str,
               tail: Callable[[], str] = lambda: "", every: float = 0.25) -> Any:
    """Poll ``condition`` until it returns something truthy (returned), or fail after
    ``timeout`` seconds naming ``what`` and showing ``tail()`` (e.g. the service's log)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n{tail()}")
        time.sleep(every)


def _wait_group_gone(pgid: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"process group {pgid} still alive")


# what landed in S3
def list_keys(client: Any, bucket: str, prefix: str = "") -> list[str]:
    """Every key under ``prefix``; none while the processor has not created the bucket
    yet (tests poll from the moment it starts)."""
    keys: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket,
                                                                      Prefix=prefix):
            keys += [o["Key"] for o in page.get("Contents", [])]
    except client.exceptions.NoSuchBucket:
        return []
    return keys


def read_object(client: Any, bucket: str, key: str) -> bytes:
    return client.get_object(Bucket=bucket, Key=key)["Body"].read()


def metadata_documents(client: Any, bucket: str) -> Iterator[dict[str, Any]]:
    for key in list_keys(client, bucket):
        if key.endswith("/metadata.json"):
            yield json.loads(read_object(client, bucket, key))


def wait_for_metadata(client: Any, bucket: str, source_path: str, timeout: float = 90.0,
                      predicate: Callable[[dict[str, Any]], bool] = bool,
                      processor: Processor | None = None) -> dict[str, Any]:
    """The metadata.json of ``source_path`` once it exists and satisfies ``predicate``."""
    deadline = time.monotonic() + timeout
    while True:
        docs = [d for d in metadata_documents(client, bucket)
                if d["source_path"] == source_path and predicate(d)]
        if docs:
            return docs[-1]
        if time.monotonic() > deadline:
            tail = processor.tail() if processor else ""
            raise AssertionError(f"no metadata.json for {source_path} in {timeout}s\n{tail}")
        if processor is not None and processor.proc is not None and \
                processor.proc.poll() is not None:
            raise AssertionError(f"processor exited ({processor.proc.returncode}):\n"
                                 f"{processor.tail()}")
        time.sleep(0.25)


def _is_rfc3339_utc(text: str) -> bool:
    return text.endswith("Z") and datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ") is not None


def check_stream(client: Any, bucket: str, doc: dict[str, Any], source: bytes,
                 *, prefix: str = "streams") -> None:
    """Every invariant of contract §3 for one finished stream whose file holds ``source``."""
    assert doc["schema_version"] == 1
    assert doc["status"] == "complete", doc.get("status")
    assert doc["total_size_bytes"] == len(source)
    stream_prefix = doc["object_key"].rsplit("/", 1)[0]
    rel_dir = os.path.dirname(doc["source_path"])
    expected_prefix = "/".join(p for p in (prefix, rel_dir, doc["stream_id"]) if p)
    assert stream_prefix == expected_prefix
    assert doc["object_key"] == f"{expected_prefix}/{os.path.basename(doc['source_path'])}"
    offset = 0
    for i, chunk in enumerate(doc["chunks"]):
        assert chunk["index"] == i
        assert chunk["offset"] == offset
        assert chunk["key"] == f"{expected_prefix}/chunks/{i:06d}"
        part = source[offset:offset + chunk["size"]]
        assert len(part) == chunk["size"]
        if i < len(doc["chunks"]) - 1:
            assert chunk["size"] == doc["chunk_size"]
        assert chunk["xxh3_128"] == xxhash.xxh3_128_hexdigest(part)
        assert read_object(client, bucket, chunk["key"]) == part, f"chunk {i} differs"
        assert _is_rfc3339_utc(chunk["uploaded_at"])
        offset += chunk["size"]
    assert offset == len(source)
    assert read_object(client, bucket, doc["object_key"]) == source
    for name in ("started_at", "last_write_at", "completed_at"):
        assert _is_rfc3339_utc(doc[name]), name
    assert doc["stream_duration_seconds"] >= 0
    assert set(doc["media"]) == {"fragmented", "video_codec", "width", "height"}


def chunk_puts(proxy: RecordingProxy, bucket: str, doc: dict[str, Any]) -> dict[int, int]:
    """How many PUTs the server received for each chunk key of ``doc``'s stream."""
    prefix = f"/{bucket}/{doc['object_key'].rsplit('/', 1)[0]}/chunks/"
    counts: dict[int, int] = {}
    for record in proxy.requests():
        if record.method == "PUT" and record.path.startswith(prefix) and not record.query:
            index = int(record.path.rsplit("/", 1)[1])
            counts[index] = counts.get(index, 0) + 1
    return counts
