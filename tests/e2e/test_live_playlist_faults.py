"""The live playlist (contract §6) when S3 refuses it and when the file goes away:
a refused playlist PUT never holds back the chunks and is tried again on its own; a
file deleted while recording keeps a playlist that ends, moved into the assembled
object, and after a reopen only the segments its kept chunks still hold."""

from __future__ import annotations

from typing import Any

import pytest

from tests.support.bucket import check_stream, list_keys, top_level_boxes, wait_for_metadata
from tests.support.hls import check_ranges, decode, fetch_playlist, read_range
from tests.support.proxy import Faults, RecordingProxy
from tests.support.videos import make_video, start_live_writer

pytestmark = pytest.mark.timeout(240)


def test_a_failing_playlist_put_never_holds_back_the_chunks(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    """Every live playlist PUT fails (500) while the file records: its chunks go
    up all the same (``playlist_write_failed`` is logged), and once the refusals end the
    completion writes the final playlist."""
    proxy.set_faults(Faults(error_share=1.0, error_status=500,
                            match=lambda h: h.method == "PUT" and
                            h.path.endswith("playlist.m3u8")))
    processor = make_processor(workers=1, stream_timeout=3.0)
    processor.start()
    path = processor.watch_dir / "cam.mp4"
    writer = start_live_writer(path, 14.0, bitrate_mbps=12.0)
    try:
        processor.wait_for_event("playlist_write_failed", timeout=60)
        processor.wait_for_event("chunk_uploaded", count=2, timeout=60)
        _, err = writer.communicate(timeout=60)
        assert writer.returncode == 0, err
    finally:
        if writer.poll() is None:
            writer.kill()
    proxy.clear_faults()
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor, timeout=120)
    check_stream(client, bucket, doc, path.read_bytes())
    final = fetch_playlist(client, bucket, doc["playlist_key"])
    assert final is not None and final.ended


def test_a_refused_playlist_is_written_again_without_waiting_for_a_chunk(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    """Every playlist PUT refused (503) while the full chunks of a finished file go up:
    once S3 takes them again, the live playlist lists those chunks on the S3 backoff
    schedule, with no further chunk to commit and the recording not yet complete."""
    proxy.set_faults(Faults(error_share=1.0, error_status=503,
                            match=lambda h: h.method == "PUT" and
                            h.path.endswith("playlist.m3u8")))
    processor = make_processor(workers=1, stream_timeout=120.0)   # not complete here
    processor.start()
    path = make_video(processor.watch_dir / "cam.mp4", 12.0, fragmented=True)
    full = _full_chunks(path.read_bytes())
    processor.wait_for_event("chunk_uploaded", count=full, timeout=60)
    processor.wait_for_event("playlist_write_failed", timeout=60)
    proxy.clear_faults()
    (written,) = processor.wait_for_event("playlist_written",
                                          lambda e: e["chunks"] == full, timeout=60)
    live = fetch_playlist(client, bucket, f"{_prefix(written)}/playlist.m3u8")
    assert live is not None and not live.ended and len(live.segments) == written["segments"]
    check_ranges(client, bucket, live)
    assert not [e for e in processor.events() if e.get("event") == "stream_completed"]


def _full_chunks(data: bytes, chunk_size: int = 5 << 20) -> int:
    """How many chunks a finished fragmented file has before its tail: each ends on the
    first moof at least ``chunk_size`` into it (contract §2)."""
    moofs = [o for o, kind in top_level_boxes(data) if kind == b"moof"]
    full, start = 0, 0
    while (end := next((o for o in moofs if o >= start + chunk_size), None)) is not None:
        full, start = full + 1, end
    return full


def test_a_file_deleted_while_recording_keeps_a_playlist_that_ends(
        make_processor: Any, client: Any, bucket: str) -> None:
    """The file is deleted before completion (``source_deleted``): there are no final
    bytes, so the last live playlist is moved into the assembled object, range for
    range, with ENDLIST, and plays with the chunks deleted (``--no-keep-chunks``)."""
    processor = make_processor(workers=1, stream_timeout=60.0, extra=["--no-keep-chunks"])
    processor.start()
    path = make_video(processor.watch_dir / "cam.mp4", 12.0, fragmented=True, audio=True)
    full = _full_chunks(path.read_bytes())
    assert full >= 2
    (written,) = processor.wait_for_event("playlist_written",
                                          lambda e: e["chunks"] == full, timeout=60)
    live = fetch_playlist(client, bucket, f"{_prefix(written)}/playlist.m3u8")
    assert live is not None and len(live.segments) == written["segments"]
    path.unlink()
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    assert doc["status"] == "source_deleted"
    final = fetch_playlist(client, bucket, doc["playlist_key"])
    assert final is not None and final.ended and not live.ended
    offsets = {c["key"]: c["offset"] for c in doc["chunks"]}
    # the same segments, in the same order, moved to their places in the object
    assert [(d, r.size) for d, r in final.segments][:len(live.segments)] == \
        [(d, r.size) for d, r in live.segments]
    assert [r.offset for _, r in final.segments][:len(live.segments)] == \
        [offsets[r.key] + r.offset for _, r in live.segments]
    assert {r.key for _, r in [(0.0, final.init), *final.segments]} == {doc["object_key"]}
    assert not list_keys(client, bucket, f"{_prefix(written)}/chunks/")   # deleted
    check_ranges(client, bucket, final)
    init = read_range(client, bucket, final.init)
    for _, r in final.segments:
        assert decode(init, read_range(client, bucket, r))[0] > 0


def _prefix(event: dict[str, Any]) -> str:
    return f"streams/{event['stream_id']}"


def test_an_ended_reopened_stream_trims_the_earlier_final_playlist(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    """Completed, grown (the reopen drops the short last chunk), its live playlist PUT
    refused, then deleted: what S3 holds is the first completion's final playlist, whose
    last segments lie in the dropped chunk. The ended playlist keeps only the segments
    the kept chunks hold, so every range lies inside the object assembled from them."""
    processor = make_processor(workers=1, stream_timeout=3.0)
    processor.start()
    path = make_video(processor.watch_dir / "cam.mp4", 10.0, fragmented=True)
    first = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    assert first["chunks"][-1]["size"] < first["chunk_size"]   # a short last chunk
    earlier = fetch_playlist(client, bucket, first["playlist_key"])
    assert earlier is not None and earlier.ended
    proxy.set_faults(Faults(error_share=1.0, error_status=503,
                            match=lambda h: h.method == "PUT" and
                            h.path.endswith("playlist.m3u8")))
    data = path.read_bytes()
    last = [o for o, kind in top_level_boxes(data) if kind == b"moof"][-1]
    with open(path, "ab") as f:
        f.write(data[last:])
    processor.wait_for_event("playlist_write_failed", timeout=60)
    path.unlink()
    proxy.clear_faults()
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor,
                            predicate=lambda d: d["status"] == "source_deleted")
    assert doc["total_size_bytes"] < first["total_size_bytes"]
    final = fetch_playlist(client, bucket, doc["playlist_key"])
    assert final is not None and final.ended and final.segments
    check_ranges(client, bucket, final)
    # the earlier segments the kept chunks hold, in their places; none past them
    kept = doc["total_size_bytes"]
    assert final.segments == [(d, r) for d, r in earlier.segments if r.offset + r.size <= kept]
    assert len(final.segments) < len(earlier.segments)
