"""End to end: the real processor, real MP4s from ffmpeg, a real S3 server over HTTP."""

from __future__ import annotations

import shutil
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import check_stream, wait_for_metadata
from tests.support.markers import flush_worker
from tests.support.proxy import RecordingProxy
from tests.support.puts import chunk_puts, writes
from tests.support.videos import make_not_mp4, make_video, start_live_writer

pytestmark = pytest.mark.timeout(240)

LIVE_SECONDS = 8.0


@pytest.fixture(scope="module")
def finished_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A regular 8 s MP4 (~12 MB) made once, copied into watch dirs whole."""
    return make_video(tmp_path_factory.mktemp("videos") / "finished.mp4", LIVE_SECONDS)


def assert_one_put_per_chunk(proxy: RecordingProxy, bucket: str, doc: dict[str, Any],
                             extra_allowed: int = 0) -> None:
    """Every chunk key was PUT once, plus its re-uploads and at most ``extra_allowed``."""
    puts = chunk_puts(proxy, bucket, doc)
    assert sorted(puts) == list(range(len(doc["chunks"])))
    extra = sum(puts.values()) - len(doc["chunks"]) - doc["chunks_reuploaded"]
    assert 0 <= extra <= extra_allowed, (puts, doc["chunks_reuploaded"])


def test_three_streams_live_regular_and_copied(make_processor: Any, client: Any, bucket: str,
                                               proxy: RecordingProxy,
                                               finished_video: Path) -> None:
    """A live fragmented stream, a regular MP4 written in place and a copied file all
    end with chunks, final object and metadata meeting every invariant."""
    processor = make_processor(workers=2)
    processor.start()
    processor.wait_for_event("worker_started", count=2)
    live = start_live_writer(processor.watch_dir / "live.mp4", LIVE_SECONDS)
    (processor.watch_dir / "site-a").mkdir()
    make_video(processor.watch_dir / "site-a" / "regular.mp4", 6.0)  # written in place
    shutil.copy(finished_video, processor.watch_dir / "copied.mp4")
    live.communicate(timeout=60)
    assert live.returncode == 0

    expectations = {"live.mp4": (LIVE_SECONDS, True), "site-a/regular.mp4": (6.0, False),
                    "copied.mp4": (LIVE_SECONDS, False)}
    for rel, (seconds, fragmented) in expectations.items():
        doc = wait_for_metadata(client, bucket, rel, processor=processor)
        source = (processor.watch_dir / rel).read_bytes()
        check_stream(client, bucket, doc, source)
        assert doc["media_duration_seconds"] == pytest.approx(seconds, abs=0.5)
        assert doc["media"]["fragmented"] is fragmented
        assert doc["media"]["video_codec"] == "h264"
        assert (doc["media"]["width"], doc["media"]["height"]) == (640, 360)
        assert "media_error" not in doc
        assert_one_put_per_chunk(proxy, bucket, doc)
        assert len(doc["chunks"]) >= 2
    live_doc = wait_for_metadata(client, bucket, "live.mp4")
    assert live_doc["stream_duration_seconds"] > LIVE_SECONDS / 2  # it grew over wall time
    chunk_requests = [r for r in proxy.requests() if r.method == "PUT" and "/chunks/" in r.path]
    assert chunk_requests and all(r.crc32c_ok is True for r in chunk_requests)
    names = {e["event"] for e in processor.events()}
    assert {"worker_started", "stream_detected", "chunk_uploaded", "stream_completed",
            "supervisor_started"} <= names


def test_kill9_while_live_stream_uploads_then_resume(make_processor: Any, client: Any,
                                                     bucket: str, proxy: RecordingProxy) -> None:
    """kill -9 of every process mid-stream loses nothing and re-sends no committed chunk."""
    processor = make_processor(workers=2)
    processor.start()
    processor.wait_for_event("worker_started", count=2)
    live = start_live_writer(processor.watch_dir / "cam.mp4", 10.0)
    uploaded = processor.wait_for_event("chunk_uploaded", timeout=60)
    processor.kill9()
    committed_before = {e["index"] for e in processor.events() if e["event"] == "chunk_uploaded"}
    assert uploaded and committed_before
    time.sleep(1.0)  # the camera keeps writing while the service is down
    processor.start()
    live.communicate(timeout=60)
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, (processor.watch_dir / "cam.mp4").read_bytes())
    puts = chunk_puts(proxy, bucket, doc)
    reuploaded = {e["index"] for e in processor.all_events()
                  if e["event"] == "chunk_changed_on_disk"}
    for index in committed_before - reuploaded:
        assert puts[index] == 1, f"committed chunk {index} uploaded {puts[index]} times"
    assert_one_put_per_chunk(proxy, bucket, doc, extra_allowed=1)  # the one in flight
    assert len({e["stream_id"] for e in processor.all_events()
                if e["event"] == "stream_detected"}) == 1  # same stream after restart


def test_restart_with_other_worker_count_loses_and_repeats_nothing(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    """Streams checkpointed by 2 workers finish under 3 workers without re-uploads."""
    processor = make_processor(workers=2, stream_timeout=30.0)
    processor.start()
    names = [f"cam{i}.mp4" for i in range(6)]
    for i, name in enumerate(names):
        make_video(processor.watch_dir / name, 4.0, seed=i)
    processor.wait_for_event("chunk_uploaded", count=len(names), timeout=90)
    processor.signal(signal.SIGTERM)
    assert processor.wait(timeout=20) == 0
    first_run = {(e["stream_id"], e["index"]) for e in processor.events()
                 if e["event"] == "chunk_uploaded"}
    processor.stream_timeout = 1.0
    processor.start(workers=3)
    for name in names:
        doc = wait_for_metadata(client, bucket, name, processor=processor)
        check_stream(client, bucket, doc, (processor.watch_dir / name).read_bytes())
        assert_one_put_per_chunk(proxy, bucket, doc)
    moved = [e for e in processor.events() if e["event"] == "checkpoint_migrated"]
    assert moved, "no checkpoint had to move from 2 to 3 workers"
    second_run = {(e["stream_id"], e["index"]) for e in processor.events()
                  if e["event"] == "chunk_uploaded"}
    changed = {(e["stream_id"], e["index"]) for e in processor.events()
               if e["event"] == "chunk_changed_on_disk"}  # ffmpeg patched the header later
    assert not (first_run & second_run) - changed


def test_sigterm_during_upload_drains_and_next_start_finishes(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    """SIGTERM exits 0 within the drain timeout; the next start completes the stream."""
    processor = make_processor(workers=2, drain_timeout=8.0)
    processor.start()
    processor.wait_for_event("worker_started", count=2)
    live = start_live_writer(processor.watch_dir / "cam.mp4", 9.0)
    processor.wait_for_event("chunk_uploaded", timeout=60)
    started = time.monotonic()
    processor.signal(signal.SIGTERM)
    assert processor.wait(timeout=30) == 0
    assert time.monotonic() - started < 8.0
    events = {e["event"] for e in processor.events()}
    assert {"drain_started", "drain_finished", "worker_exited"} <= events
    live.communicate(timeout=60)
    processor.start()
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, (processor.watch_dir / "cam.mp4").read_bytes())
    assert_one_put_per_chunk(proxy, bucket, doc, extra_allowed=0)


def test_completed_file_that_grows_is_reopened(make_processor: Any, client: Any, bucket: str,
                                              proxy: RecordingProxy, finished_video: Path) -> None:
    """A completed file that grows again keeps its stream id and is re-finalized."""
    processor = make_processor(workers=1)
    processor.start()
    target = processor.watch_dir / "grows.mp4"
    shutil.copy(finished_video, target)
    first = wait_for_metadata(client, bucket, "grows.mp4", processor=processor)
    assert first["reopen_count"] == 0
    with open(target, "ab") as f:
        f.write(b"\x00" * (6 << 20) + b"appended")
    second = wait_for_metadata(client, bucket, "grows.mp4", processor=processor,
                               predicate=lambda d: d["reopen_count"] == 1)
    assert second["stream_id"] == first["stream_id"]
    check_stream(client, bucket, second, target.read_bytes())
    puts = chunk_puts(proxy, bucket, second)
    full_before = [c["index"] for c in first["chunks"] if c["size"] == first["chunk_size"]]
    assert all(puts[i] == 1 for i in full_before), puts  # full chunks never went up again
    assert puts[len(first["chunks"]) - 1] == 2            # the short tail was replaced
    assert any(e["event"] == "stream_reopened" for e in processor.events())


def test_non_mp4_is_uploaded_without_duration(make_processor: Any, client: Any,
                                             bucket: str) -> None:
    """Random bytes named .mp4 are uploaded whole, with a null duration and a media_error."""
    processor = make_processor(workers=1)
    processor.start()
    make_not_mp4(processor.watch_dir / "noise.mp4", (6 << 20) + 123)
    doc = wait_for_metadata(client, bucket, "noise.mp4", processor=processor)
    check_stream(client, bucket, doc, (processor.watch_dir / "noise.mp4").read_bytes())
    assert doc["media_duration_seconds"] is None
    assert isinstance(doc["media_error"], str) and doc["media_error"]


def test_file_deleted_before_completion_is_finalized_as_source_deleted(
        make_processor: Any, client: Any, bucket: str) -> None:
    """A file deleted while growing is finalized from its uploaded chunks."""
    processor = make_processor(workers=1, stream_timeout=30.0)
    processor.start()
    target = processor.watch_dir / "gone.mp4"
    data = make_not_mp4(processor.workdir / "src.bin", (5 << 20) + 1000).read_bytes()
    target.write_bytes(data)
    processor.wait_for_event("chunk_uploaded")
    target.unlink()
    doc = wait_for_metadata(client, bucket, "gone.mp4", processor=processor)
    assert doc["status"] == "source_deleted"
    assert doc["total_size_bytes"] == 5 << 20
    assert client.get_object(Bucket=bucket, Key=doc["object_key"])["Body"].read() == \
        data[:5 << 20]


def test_truncated_file_starts_a_new_stream(make_processor: Any, client: Any, bucket: str,
                                           finished_video: Path) -> None:
    """A completed file rewritten smaller gets a new stream id and its own objects."""
    processor = make_processor(workers=1)
    processor.start()
    target = processor.watch_dir / "cam.mp4"
    shutil.copy(finished_video, target)
    first = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    smaller = finished_video.read_bytes()[: 6 << 20]
    with open(target, "r+b") as f:  # same inode, fewer bytes
        f.truncate(len(smaller))
    second = wait_for_metadata(client, bucket, "cam.mp4", processor=processor,
                               predicate=lambda d: d["stream_id"] != first["stream_id"])
    check_stream(client, bucket, second, smaller)
    check_stream(client, bucket, first, finished_video.read_bytes())  # old lineage intact


def test_completed_files_are_not_uploaded_again_after_restart(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy,
        finished_video: Path) -> None:
    """A restart over finished, unchanged files sends no PUT at all: once the worker
    owning the file has handled the start-up scan's event for it (a marker file routed
    to the same worker has completed), it started no stream and sent nothing."""
    processor = make_processor(workers=2)
    processor.start()
    shutil.copy(finished_video, processor.watch_dir / "done.mp4")
    wait_for_metadata(client, bucket, "done.mp4", processor=processor)
    processor.signal(signal.SIGTERM)
    assert processor.wait(timeout=20) == 0
    proxy.clear()
    processor.start()
    processor.wait_for_event("supervisor_started")  # the start-up scan's events are sent
    marker = flush_worker(processor, "done.mp4")
    assert not [e for e in processor.events()
                if e["event"] == "stream_detected" and e["rel_path"] == "done.mp4"]
    assert writes(proxy, bucket, except_prefixes=[marker.object_prefix]) == []


def test_polling_observer_finds_new_files(make_processor: Any, client: Any, bucket: str,
                                          finished_video: Path) -> None:
    """With --poll, a file added after start-up is found and uploaded."""
    processor = make_processor(workers=1, extra=["--poll"])
    processor.start()
    processor.wait_for_event("worker_started")
    # the start-up scan is over (the observer's first snapshot was taken before it):
    # only the observer can report a file made now
    processor.wait_for_event("supervisor_started")
    (processor.watch_dir / "sub").mkdir()
    shutil.copy(finished_video, processor.watch_dir / "sub" / "polled.mp4")
    doc = wait_for_metadata(client, bucket, "sub/polled.mp4", processor=processor)
    check_stream(client, bucket, doc, finished_video.read_bytes())


def test_a_watch_dir_removed_and_made_again_is_watched_again(
        make_processor: Any, client: Any, bucket: str, finished_video: Path) -> None:
    """An operator's ``rm -rf`` and ``mkdir`` of the watch dir (or a remount) loses its
    inotify watch; the supervisor watches it again, and files put there are uploaded."""
    processor = make_processor(workers=1)
    processor.start()
    processor.wait_for_event("worker_started")
    shutil.rmtree(processor.watch_dir)
    processor.wait_for_event("watch_dir_lost", timeout=10)
    processor.watch_dir.mkdir()
    processor.wait_for_event("watch_dir_watched_again", timeout=10)
    # the rescan follows that line in the same loop turn: once a file made after the
    # line is detected (by the rescan or the watch), the rescan is over
    (processor.watch_dir / "first.mp4").write_bytes(b"first")
    processor.wait_for_event("stream_detected", lambda e: e["rel_path"] == "first.mp4")
    shutil.copy(finished_video, processor.watch_dir / "again.mp4")  # only the watch sees it
    doc = wait_for_metadata(client, bucket, "again.mp4", processor=processor)
    check_stream(client, bucket, doc, finished_video.read_bytes())
    check_stream(client, bucket, wait_for_metadata(client, bucket, "first.mp4"), b"first")
