"""Local retention (contract §7): a source file is removed only once it is provably in
S3, and nothing else ever is.

Real processes, real files, a real S3 server behind the recording proxy. Every wait
is for a positive marker: the removal's own event, or, for a file that must stay,
the ``retention_blocked`` event that says why it stays.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.badinput.support import Service, service
from tests.support.bucket import check_stream, metadata_documents
from tests.support.http import http_get
from tests.support.runner import processor_command, wait_until
from tests.support.s3server import S3Endpoint
from tests.support.videos import make_video

pytestmark = pytest.mark.timeout(240)

MiB = 1 << 20


def doc_of(svc: Service, stream_id: str) -> dict[str, Any]:
    (doc,) = [d for d in metadata_documents(svc.client, svc.bucket)
              if d["stream_id"] == stream_id]
    return doc


def removed(svc: Service, rel: str, count: int = 1, timeout: float = 60) -> list[dict[str, Any]]:
    return svc.processor.wait_for_event("source_removed", lambda e: e["rel_path"] == rel,
                                        timeout=timeout, count=count)


def blocked(svc: Service, rel: str, reason: str, timeout: float = 60) -> dict[str, Any]:
    return svc.processor.wait_for_event(
        "retention_blocked", lambda e: e.get("rel_path") == rel and e["reason"] == reason,
        timeout=timeout)[0]


def event_index(svc: Service, name: str, stream_id: str) -> int:
    events = svc.processor.events()
    return next(i for i, e in enumerate(events)
                if e.get("event") == name and e.get("stream_id") == stream_id)


def inspect(svc: Service) -> list[dict[str, Any]]:
    out = subprocess.run([*processor_command(), "inspect", "--json", "--state-dir",
                          str(svc.processor.state_dir)], capture_output=True, check=True)
    return [s for w in json.loads(out.stdout)["workers"] for s in w["streams"]]


@pytest.fixture
def delete_at_once(tmp_path: Path, s3: S3Endpoint) -> Iterator[Service]:
    with service(tmp_path, s3, stream_timeout=1.0, extra=["--delete-after", "0s"]) as svc:
        yield svc


def test_finished_files_are_removed_only_once_safely_in_s3(
        delete_at_once: Service, tmp_path: Path) -> None:
    svc = delete_at_once
    files = {"cam/a.mp4": os.urandom(12 * MiB), "b.mp4": os.urandom(300_000),
             "video.mp4": make_video(tmp_path / "v.mp4", 3.0).read_bytes()}
    for rel, data in files.items():
        (svc.watch_dir / rel).parent.mkdir(parents=True, exist_ok=True)
        (svc.watch_dir / rel).write_bytes(data)
    for rel, data in files.items():
        (event,) = removed(svc, rel)
        assert event["reason"] == "delete_after" and event["size"] == len(data)
        assert not (svc.watch_dir / rel).exists()
        doc = doc_of(svc, event["stream_id"])
        check_stream(svc.client, svc.bucket, doc, data)  # byte-identical, metadata in S3
        # removed after the completion that wrote metadata.json, never before
        assert event_index(svc, "stream_completed", event["stream_id"]) < \
            event_index(svc, "source_removed", event["stream_id"])
    assert svc.events("supervisor_started")[0]["retention"] == "delete_after=0s"
    values = svc.metrics()
    assert values['processor_source_files_removed_total{reason="delete_after"}'] == 3
    assert values['processor_source_bytes_removed_total{reason="delete_after"}'] == \
        sum(map(len, files.values()))
    assert values["processor_watch_dir_free_bytes"] > 0

    def streams_lists_all() -> list[dict[str, Any]] | None:
        status, body = http_get(f"http://127.0.0.1:{svc.metrics_port}/streams")
        shown = json.loads(body)["recent_removals"] if status == 200 else []
        return shown if {r["rel_path"] for r in shown} == set(files) else None

    shown = wait_until(streams_lists_all, 10, "/streams lists the removals",
                       svc.processor.tail)
    assert {r["reason"] for r in shown} == {"delete_after"}

    # a new file at a removed file's path is a new stream (even on a reused inode), and
    # the first recording's objects in S3 stay as they were
    first = doc_of(svc, removed(svc, "b.mp4")[0]["stream_id"])
    again = os.urandom(200_000)
    (svc.watch_dir / "b.mp4").write_bytes(again)
    second = removed(svc, "b.mp4", count=2)[1]
    assert second["stream_id"] != first["stream_id"]
    check_stream(svc.client, svc.bucket, doc_of(svc, second["stream_id"]), again)
    check_stream(svc.client, svc.bucket, first, files["b.mp4"])
    svc.processor.stop()
    records = {s["stream_id"]: s for s in inspect(svc)}
    assert records[second["stream_id"]]["source_removed"] == "delete_after"


WRITER = """
import os, sys
with open(sys.argv[1], "wb") as f:
    f.write(os.urandom(12 << 20)); f.flush()
    print("written", flush=True)
    sys.stdin.readline()          # idle, the file held open for writing
    f.write(os.urandom(1 << 20))
"""


def test_a_file_held_open_by_its_writer_is_kept_until_closed(delete_at_once: Service) -> None:
    svc = delete_at_once
    path = svc.watch_dir / "held.mp4"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "written\n"
        completed = svc.processor.wait_for_event("stream_completed",
                                                 lambda e: e["rel_path"] == "held.mp4")[0]
        event = blocked(svc, "held.mp4", "open_for_writing")
        assert event["stream_id"] == completed["stream_id"]
        assert path.stat().st_size == 12 * MiB
        assert writer.stdin is not None
        writer.stdin.write("go\n")
        writer.stdin.close()
        assert writer.wait(timeout=30) == 0
    finally:
        writer.kill()
    data_len = 13 * MiB
    svc.processor.wait_for_event("stream_reopened", lambda e: e["rel_path"] == "held.mp4")
    (gone,) = removed(svc, "held.mp4")
    assert gone["stream_id"] == completed["stream_id"] and gone["size"] == data_len
    assert not path.exists()
    doc = doc_of(svc, gone["stream_id"])
    assert doc["total_size_bytes"] == data_len and doc["reopen_count"] == 1


def test_changed_replaced_and_symlinked_files_are_never_removed(
        tmp_path: Path, s3: S3Endpoint) -> None:
    """``--delete-after 6s`` (a margin for a loaded machine): in that window one file's
    mode changes (ctime only: the stream is not reopened, so only retention's own
    check can catch it), one's mtime is set (it is reopened and verified again:
    removed only after that second completion) and another is replaced by a new
    inode. A symlink is never a stream."""
    outside = tmp_path / "outside.mp4"
    outside.write_bytes(b"x" * 1000)
    with service(tmp_path, s3, stream_timeout=1.0, extra=["--delete-after", "6s"]) as svc:
        os.symlink(outside, svc.watch_dir / "link.mp4")
        chmod, replace, plain, touched = (
            svc.watch_dir / n for n in ("chmod.mp4", "replace.mp4", "plain.mp4", "touched.mp4"))
        for path in (chmod, replace, plain, touched):
            path.write_bytes(os.urandom(100_000))
        for path in (chmod, replace, touched):
            name = path.name
            svc.processor.wait_for_event("stream_completed",
                                         lambda e: bool(e["rel_path"] == name))  # noqa: B023
        os.chmod(chmod, 0o600)
        os.utime(touched, (1_600_000_000, 1_600_000_000))
        fresh = os.urandom(50_000)
        (svc.watch_dir / "new.tmp").write_bytes(fresh)
        os.rename(svc.watch_dir / "new.tmp", replace)
        removed(svc, "plain.mp4")  # the window has passed for all three
        blocked(svc, "chmod.mp4", "changed_since_completion")
        assert chmod.exists()
        # the replacement is a stream of its own, removed after its own completion
        (event,) = removed(svc, "replace.mp4")
        first = [e for e in svc.processor.events()
                 if e.get("event") == "stream_detected" and e["rel_path"] == "replace.mp4"][0]
        assert event["stream_id"] != first["stream_id"] and event["size"] == len(fresh)
        assert outside.exists() and (svc.watch_dir / "link.mp4").is_symlink()
        (gone,) = removed(svc, "touched.mp4")
        names = [e["event"] for e in svc.processor.events()
                 if e.get("stream_id") == gone["stream_id"]]
        assert names.count("stream_completed") == 2
        assert names.index("stream_reopened") < names.index("source_removed")
        assert names.index("source_removed") > len(names) - 1 - names[::-1].index(
            "stream_completed")
        assert not [e for e in svc.processor.events() if e.get("event") == "source_removed"
                    and e["rel_path"] in ("chmod.mp4", "link.mp4")]
        assert not [e for e in svc.processor.events() if e.get("event") == "source_removed"
                    and e["stream_id"] == first["stream_id"]]


def test_dry_run_removes_nothing_and_says_what_it_would(tmp_path: Path, s3: S3Endpoint) -> None:
    with service(tmp_path, s3, stream_timeout=1.0,
                 extra=["--delete-after", "0s", "--delete-dry-run"]) as svc:
        data = os.urandom(200_000)
        (svc.watch_dir / "keep.mp4").write_bytes(data)
        (event,) = svc.processor.wait_for_event("source_would_remove",
                                                lambda e: e["rel_path"] == "keep.mp4")
        assert event["reason"] == "delete_after" and event["size"] == len(data)
        assert (svc.watch_dir / "keep.mp4").read_bytes() == data
        assert not svc.events("source_removed")
        assert svc.metrics()['processor_source_files_removed_total{reason="delete_after"}'] == 0


def test_files_not_safe_yet_stay_whatever_min_free_says(tmp_path: Path, s3: S3Endpoint) -> None:
    """``--min-free 99%`` wants everything gone. A file whose chunks S3 refuses, and a
    file still growing, stay; a finished one goes; once S3 takes the refused file's
    chunks and the growing one stops, both go too."""
    with service(tmp_path, s3, extra=["--min-free", "99%"]) as svc:
        svc.proxy.set_faults(error_share=1.0, error_status=500,
                             match=lambda head: "refused" in head.path)
        refused, growing, done = (svc.watch_dir / n for n in ("refused.mp4", "growing.mp4",
                                                              "done.mp4"))
        refused.write_bytes(os.urandom(6 * MiB))
        done.write_bytes(os.urandom(100_000))
        with open(growing, "wb") as f:
            (gone,) = removed(svc, "done.mp4")
            assert gone["reason"] == "min_free"
            f.write(os.urandom(100_000))
            f.flush()
            svc.processor.wait_for_event("retention_blocked",
                                         lambda e: e["reason"] == "nothing_safe")
            for _ in range(3):  # it keeps growing past a blocked check
                f.write(os.urandom(100_000))
                f.flush()
                svc.processor.wait_for_event("s3_retry",
                                             lambda e: "refused" in str(e.get("stream_id")))
            assert refused.exists() and growing.exists()
            assert svc.metrics()["processor_lag_bytes"] > 0
        svc.proxy.clear_faults()
        removed(svc, "refused.mp4", timeout=90)
        removed(svc, "growing.mp4")


def test_watch_dir_must_be_writable_for_removal(tmp_path: Path) -> None:
    """A read-only mount with removal on is a configuration error (exit 2, one line);
    a dry run on it is fine to start."""
    watch = tmp_path / "in"
    watch.mkdir()
    argv = [*processor_command(), "--watch-dir", str(watch), "--state-dir",
            str(tmp_path / "state"), "--delete-after", "1h"]
    if os.geteuid() == 0:  # root passes mode checks: a read-only bind mount, as Compose has
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                f'mount --bind -o ro "{watch}" "{watch}" && exec "$@"', "sh", *argv]
    else:
        watch.chmod(0o555)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--delete-after" in lines[0] and "not writable" in lines[0]
