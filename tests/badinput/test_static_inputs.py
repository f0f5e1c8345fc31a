"""Bad input that sits still: odd files and odd names, dropped into the watch dir of
one running processor (inotify), each then checked on its own.

Every input must end in S3 byte-identical (or say in metadata/logs why not), with
a named log event, and none may make the processor read outside the watch dir.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.badinput.support import Service, service
from tests.support.bucket import check_stream, metadata_documents, read_object
from tests.support.markers import flush_worker
from tests.support.runner import wait_until
from tests.support.s3server import S3Endpoint
from tests.support.videos import make_not_mp4, make_video

pytestmark = pytest.mark.timeout(300)

ODD_NAMES = {
    "spaces": "with  spaces .mp4",
    "quotes": "q\"uo'te`s.mp4",
    "unicode": "カメラ-é-ß-🎥.mp4",
    "tab_cr": "tab\tand\rcr.mp4",
    "url_chars": "q?x=1&y=2#frag%2F%20+.mp4",
    "long": "L" * 240 + ".mp4",              # 244 bytes: near the 255-byte name limit
    "backslashes": "a\\..\\..\\escape.mp4",
    "dots": "a..b...mp4",
    "leading_dash": "-rf --help.mp4",
    "upper_ext": "UPPER.MP4",
}
# moto's Werkzeug router answers 404 to any key holding "\n" (AWS and MinIO accept
# it), so the newline name only runs against TEST_S3_ENDPOINT.
ON_MOTO = not os.environ.get("TEST_S3_ENDPOINT")
if not ON_MOTO:
    ODD_NAMES["newline"] = "new\nline.mp4"
DEEP = "/".join(f"level{i:02d}" for i in range(20)) + "/deep.mp4"
# a legal path (1,010 bytes) whose keys would pass S3's 1024-byte limit
TOO_LONG = "/".join(["d" * 250] * 4) + "/x.mp4"
SECRET_MARKER = b"OUTSIDE-THE-WATCH-DIR-" + os.urandom(16).hex().encode()


class Inputs:
    def __init__(self, svc: Service, outside: Path) -> None:
        self.svc = svc
        self.outside = outside
        self.sources: dict[str, bytes] = {}

    def add(self, rel: str, data: bytes) -> None:
        path = self.svc.watch_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.sources[rel] = data

    def doc(self, rel: str) -> dict[str, Any]:
        docs = [d for d in metadata_documents(self.svc.client, self.svc.bucket)
                if d["source_path"] == rel]
        assert len(docs) == 1, (rel, docs)
        return docs[0]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory, s3: S3Endpoint) -> Iterator[Inputs]:
    workdir = tmp_path_factory.mktemp("static")
    outside = workdir / "outside"
    outside.mkdir()
    (outside / "secret.mp4").write_bytes(SECRET_MARKER * 1000)
    (outside / "sub").mkdir()
    (outside / "sub" / "secret2.mp4").write_bytes(SECRET_MARKER * 1000)
    with service(workdir, s3, workers=2) as svc:
        inp = Inputs(svc, outside)
        watch = svc.watch_dir
        inp.add("empty.mp4", b"")
        inp.add("noise.mp4", make_not_mp4(workdir / "noise.bin", 300_000).read_bytes())
        video = make_video(workdir / "whole.mp4", 4.0).read_bytes()
        inp.add("half.mp4", video[: len(video) // 2])            # moov (at the end) cut off
        for name in ODD_NAMES.values():
            inp.add(name, os.urandom(20_000))
        inp.add(DEEP, os.urandom(30_000))
        too_long = watch / TOO_LONG  # not in inp.sources: it must not be uploaded
        too_long.parent.mkdir(parents=True)
        too_long.write_bytes(os.urandom(10_000))
        with open(too_long, "ab") as f:  # more events for the same path
            f.write(b"more")
        (watch / "dir.mp4").mkdir()                                # a directory named .mp4
        inp.add("box.mp4/inner.mp4", os.urandom(10_000))          # ... holding a stream
        os.symlink(outside / "secret.mp4", watch / "link.mp4")     # file symlink, outside
        os.symlink(outside, watch / "linkdir")                     # dir symlink, outside
        os.symlink(outside / "secret.mp4", watch / "linkdir.mp4")  # named like a stream
        os.symlink("/etc/passwd", watch / "passwd.mp4")
        # activity outside, reachable only through the symlinks
        with open(outside / "secret.mp4", "ab") as f:
            f.write(SECRET_MARKER)
        (outside / "fresh.mp4").write_bytes(SECRET_MARKER * 10)
        (outside / "sub" / "fresh2.mp4").write_bytes(SECRET_MARKER * 10)

        def all_done() -> bool:
            done = {d["source_path"] for d in metadata_documents(svc.client, svc.bucket)}
            return set(inp.sources) <= done

        wait_until(all_done, 180, "metadata.json for every input", svc.processor.tail)
        yield inp


def stream_events(inp: Inputs, rel: str) -> list[dict[str, Any]]:
    detected = inp.svc.events("stream_detected", rel_path=rel)
    ids = {e["stream_id"] for e in detected}
    return [e for e in inp.svc.processor.all_events() if e.get("stream_id") in ids]


def test_zero_byte_file_becomes_an_empty_complete_stream(inputs: Inputs) -> None:
    doc = inputs.doc("empty.mp4")
    check_stream(inputs.svc.client, inputs.svc.bucket, doc, b"")
    assert doc["chunks"] == [] and doc["total_size_bytes"] == 0
    assert doc["media_duration_seconds"] is None and doc["media_error"]
    names = {e["event"] for e in stream_events(inputs, "empty.mp4")}
    assert {"stream_detected", "stream_completed"} <= names


def test_file_that_is_not_mp4_is_uploaded_whole_with_media_error(inputs: Inputs) -> None:
    doc = inputs.doc("noise.mp4")
    check_stream(inputs.svc.client, inputs.svc.bucket, doc, inputs.sources["noise.mp4"])
    assert doc["media_duration_seconds"] is None
    assert isinstance(doc["media_error"], str) and doc["media_error"]
    assert doc["media"]["video_codec"] is None


def test_truncated_regular_mp4_is_uploaded_whole_with_media_error(inputs: Inputs) -> None:
    doc = inputs.doc("half.mp4")
    check_stream(inputs.svc.client, inputs.svc.bucket, doc, inputs.sources["half.mp4"])
    assert doc["media_duration_seconds"] is None
    assert isinstance(doc["media_error"], str) and doc["media_error"]


@pytest.mark.parametrize("rel", ["empty.mp4", "noise.mp4", "half.mp4"])
def test_unreadable_media_is_named_in_the_log(inputs: Inputs, rel: str) -> None:
    """An operator reading the log (not the bucket) learns that the file is not a
    readable MP4: some event of the stream carries the media error."""
    assert any(e.get("media_error") for e in stream_events(inputs, rel)), \
        [e for e in stream_events(inputs, rel) if e["event"] == "stream_completed"]


@pytest.mark.parametrize("kind", sorted(ODD_NAMES))
def test_odd_file_name_round_trips(inputs: Inputs, kind: str) -> None:
    """The name survives into source_path, the final object's key and the logs."""
    rel = ODD_NAMES[kind]
    doc = inputs.doc(rel)
    check_stream(inputs.svc.client, inputs.svc.bucket, doc, inputs.sources[rel])
    assert doc["object_key"].endswith("/" + rel)
    stem = rel.rsplit(".", 1)[0]
    assert doc["stream_id"].startswith(stem[:100] + "-")
    detected = inputs.svc.events("stream_detected", rel_path=rel)
    assert len(detected) == 1


def test_twenty_levels_deep(inputs: Inputs) -> None:
    doc = inputs.doc(DEEP)
    check_stream(inputs.svc.client, inputs.svc.bucket, doc, inputs.sources[DEEP])
    assert doc["object_key"].startswith("streams/" + DEEP.rsplit("/", 1)[0] + "/")


def test_path_too_long_for_an_s3_key_is_refused_once_with_a_clear_error(
        inputs: Inputs) -> None:
    """S3 rejects keys over 1024 bytes. Such a file gets one key_too_long error (not a
    permanent-error retry loop), a metric, no stream and no object; the file stays."""
    wait_until(lambda: inputs.svc.events("key_too_long"), 30, "key_too_long",
               inputs.svc.processor.tail)
    flush_worker(inputs.svc.processor, TOO_LONG)  # its later events (the append) handled too
    refused = inputs.svc.events("key_too_long")
    assert [e["rel_path"] for e in refused] == [TOO_LONG]
    assert refused[0]["key_bytes"] > refused[0]["limit"] == 1024
    assert refused[0]["level"] == "error"
    assert not inputs.svc.events("stream_detected", rel_path=TOO_LONG)
    assert not [k for k in inputs.svc.object_keys() if "d" * 250 in k]
    assert inputs.svc.metrics()["processor_files_refused_total"] == 1
    assert (inputs.svc.watch_dir / TOO_LONG).stat().st_size == 10_004


def test_directory_named_like_a_stream_is_not_one(inputs: Inputs) -> None:
    detected = {e["rel_path"] for e in inputs.svc.events("stream_detected")}
    assert "dir.mp4" not in detected and "box.mp4" not in detected
    doc = inputs.doc("box.mp4/inner.mp4")
    check_stream(inputs.svc.client, inputs.svc.bucket, doc, inputs.sources["box.mp4/inner.mp4"])
    assert not inputs.svc.events("stream_failed")


def test_symlinks_out_of_the_watch_dir_are_never_followed(inputs: Inputs) -> None:
    """No stream for a symlink or anything under a symlinked directory, and not one
    object in the bucket holds a byte pattern that exists only outside."""
    detected = {e["rel_path"] for e in inputs.svc.events("stream_detected")}
    assert not {p for p in detected if p.startswith("link") or p == "passwd.mp4"}, detected
    for key in inputs.svc.object_keys():
        body = read_object(inputs.svc.client, inputs.svc.bucket, key)
        assert SECRET_MARKER not in body, key
        assert b"root:x:0:0" not in body, key


def test_every_input_logged_once_and_no_internal_errors(inputs: Inputs) -> None:
    """One stream_detected per input, none failed, and /metrics counts them all (and,
    within a heartbeat, no stream as active)."""
    detected = [e["rel_path"] for e in inputs.svc.events("stream_detected")]
    for rel in inputs.sources:
        assert detected.count(rel) == 1, rel
    assert not inputs.svc.events("stream_failed")
    values = inputs.svc.metrics()
    assert values['processor_streams_completed_total{status="complete"}'] >= len(inputs.sources)
    # the gauge is refreshed with the heartbeat, once a second: a marker stream an
    # earlier test completed (flush_worker) may be counted for that long
    wait_until(lambda: inputs.svc.metrics()["processor_active_streams"] == 0, 15,
               "processor_active_streams back to 0", inputs.svc.processor.tail)
    for line in inputs.svc.metrics_text().splitlines():
        assert "level00" not in line and "secret" not in line  # no per-file labels


def test_logs_are_one_json_object_per_line(inputs: Inputs) -> None:
    """Names with newlines, quotes and unicode never break the log format."""
    text = inputs.svc.processor.log_path().read_text(errors="replace")
    for line in text.splitlines():
        assert isinstance(json.loads(line), dict), line
