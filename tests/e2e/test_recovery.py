"""Recovery from the bucket (contract §10): the state dir deleted between runs costs
no upload. Each file's stream is found again in S3 by its path and verified against
its bytes, keeping its ``stream_id``; a file that changed meanwhile becomes a new
stream or a reopen, never a corrupt one. Uploads are counted at the recording proxy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest

from tests.support.bucket import check_stream, list_keys, metadata_documents, wait_for_metadata
from tests.support.proxy import RecordingProxy
from tests.support.runner import processor_command
from tests.support.videos import make_not_mp4, make_video, start_live_writer

pytestmark = pytest.mark.timeout(240)

CHUNK = 5 << 20


def _chunk_puts(proxy: RecordingProxy) -> list[str]:
    return [r.path for r in proxy.requests() if r.method == "PUT" and "/chunks/" in r.path
            and "x-amz-copy-source" not in r.headers]


def _docs(client: Any, bucket: str) -> dict[str, dict[str, Any]]:
    return {d["source_path"]: d for d in metadata_documents(client, bucket)}


def test_a_lost_state_dir_costs_no_upload_and_keeps_every_stream_id(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    processor = make_processor(workers=2, stream_timeout=1.0)
    processor.start()
    make_video(processor.watch_dir / "cam.mp4", 8, seed=11)
    (processor.watch_dir / "site").mkdir()
    make_not_mp4(processor.watch_dir / "site" / "door.mp4", 3 * CHUNK + 5)
    (processor.watch_dir / "empty.mp4").write_bytes(b"")
    names = ["cam.mp4", "site/door.mp4", "empty.mp4"]
    before = {n: wait_for_metadata(client, bucket, n, processor=processor) for n in names}
    keys_before = set(list_keys(client, bucket))
    processor.stop()

    shutil.rmtree(processor.state_dir)  # a replaced disk, `docker compose down -v`
    proxy.clear()
    processor.start()
    found = processor.wait_for_event("stream_recovered", count=len(names))
    assert {e["stream_id"] for e in found} == {d["stream_id"] for d in before.values()}
    assert all(e["finished"] for e in found)
    processor.stop()
    assert _chunk_puts(proxy) == []  # not a byte uploaded again
    assert set(list_keys(client, bucket)) == keys_before  # no new stream, no new object
    assert not [e for e in processor.events() if e.get("event") == "stream_detected"]
    shown = subprocess.run(processor_command() + ["inspect", "--state-dir",
                                                  str(processor.state_dir), "--json"],
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert shown.count('"recovered_at": "') == len(names)


def test_a_live_recording_killed_then_state_lost_continues_its_stream(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    processor = make_processor(workers=1, stream_timeout=3.0)
    processor.start()
    path = processor.watch_dir / "live.mp4"
    writer = start_live_writer(path, 14.0, bitrate_mbps=12.0, seed=5)
    try:
        uploaded = processor.wait_for_event("chunk_uploaded", count=2, timeout=60)
        processor.kill9()
        shutil.rmtree(processor.state_dir)
        processor.start()
        (recovered,) = processor.wait_for_event("stream_recovered", timeout=60)
        assert recovered["stream_id"] == uploaded[0]["stream_id"]
        assert not recovered["finished"] and recovered["chunks"] >= 2
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
    finally:
        if writer.poll() is None:
            writer.kill()
    doc = wait_for_metadata(client, bucket, "live.mp4", processor=processor)
    assert doc["stream_id"] == uploaded[0]["stream_id"]
    check_stream(client, bucket, doc, path.read_bytes())
    puts = _chunk_puts(proxy)
    # each chunk once, but the one a kill may have caught in flight (and short tails
    # replaced by fuller chunks at their key, as in any live recording)
    repeated = {p for p in puts if puts.count(p) > 1}
    assert len(repeated) <= 1 + sum(1 for e in processor.all_events()
                                    if e.get("event") == "short_chunk_replaced"), repeated
    assert len(_docs(client, bucket)) == 1  # one stream, not two


def test_files_changed_while_the_state_was_gone_become_new_streams_or_reopens(
        make_processor: Any, client: Any, bucket: str) -> None:
    processor = make_processor(workers=1, stream_timeout=1.0)
    processor.start()
    changed = processor.watch_dir / "changed.mp4"
    grown = processor.watch_dir / "grown.mp4"
    changed.write_bytes(os.urandom(2 * CHUNK + 100))
    grown.write_bytes(os.urandom(2 * CHUNK + 100))
    before = {n: wait_for_metadata(client, bucket, n, processor=processor)
              for n in ("changed.mp4", "grown.mp4")}
    processor.stop()

    shutil.rmtree(processor.state_dir)
    with open(changed, "r+b") as f:  # same size, other bytes in its first chunk
        f.seek(1000)
        f.write(os.urandom(64))
    with open(grown, "ab") as f:
        f.write(os.urandom(CHUNK))
    processor.start()
    new = wait_for_metadata(client, bucket, "changed.mp4", processor=processor,
                            predicate=lambda d: d["stream_id"] != before["changed.mp4"][
                                "stream_id"])
    check_stream(client, bucket, new, changed.read_bytes())
    reopened = wait_for_metadata(client, bucket, "grown.mp4", processor=processor,
                                 predicate=lambda d: d["reopen_count"] == 1)
    assert reopened["stream_id"] == before["grown.mp4"]["stream_id"]
    check_stream(client, bucket, reopened, grown.read_bytes())
    (event,) = processor.wait_for_event("stream_recovered")
    assert event["stream_id"] == before["grown.mp4"]["stream_id"]


def test_without_recovery_a_lost_state_dir_uploads_again(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    """``--no-recover-from-bucket``: what the option saves, measured."""
    processor = make_processor(workers=1, stream_timeout=1.0,
                               extra=["--no-recover-from-bucket"])
    processor.start()
    data = os.urandom(CHUNK + 10)
    (processor.watch_dir / "a.mp4").write_bytes(data)
    first = wait_for_metadata(client, bucket, "a.mp4", processor=processor)
    processor.stop()
    shutil.rmtree(processor.state_dir)
    proxy.clear()
    processor.start()
    again = wait_for_metadata(client, bucket, "a.mp4", processor=processor,
                              predicate=lambda d: d["stream_id"] != first["stream_id"])
    check_stream(client, bucket, again, data)
    assert len(_chunk_puts(proxy)) == 2
