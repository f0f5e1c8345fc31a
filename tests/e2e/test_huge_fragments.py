"""A fragmented MP4 whose fragments outgrow a chunk (contract §2, §6): a camera that
sends a keyframe each second for a while and then none for 16 s writes one fragment
of ~25 MB, more than twice the 5 MiB chunk. The chunks end on fragments while they
can; from the first one that cannot, the rest of the stream is fixed-size
(``live_playlist_stopped``), the playlist lists the aligned part, and the assembled
object is the file. The record keeps where the fixed chunks start, and recovery from
the bucket after the state dir is lost finds it again from the file's own boxes."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from shared.state.layout import StateDir
from shared.state.store import CheckpointStore
from tests.support.bucket import top_level_boxes, wait_for_metadata
from tests.support.hls import Playlist, check_ranges, parse_playlist
from tests.support.videos import make_video

pytestmark = pytest.mark.timeout(240)

CHUNK = 5 << 20
ALIGNED_SECONDS = 8.0   # a keyframe, so a fragment, each second until then; then none


def _recording(tmp_path: Path, watch_dir: Path) -> Path:
    """24 s at 12 Mbit/s (~36 MB): 1 s fragments for 8 s, then one of 16 s. Written
    beside the watched folder and moved in whole, so no pause of ffmpeg's is taken for
    the end of the recording."""
    made = make_video(tmp_path / "huge.mp4", 24.0, fragmented=True, gop=1000,
                      keyframes_until=ALIGNED_SECONDS, seed=23)
    return Path(shutil.move(made, watch_dir / "huge.mp4"))


def _check(client: Any, bucket: str, doc: dict[str, Any], data: bytes,
           fixed_from: int) -> Playlist:
    """The chunks before ``fixed_from`` end where a moof begins, those after it are
    exactly the chunk size, every key is ``.m4s``, the object is the file, and the
    final playlist lists whole fragments of the aligned chunks only."""
    moofs = {o for o, kind in top_level_boxes(data) if kind == b"moof"}
    chunks = doc["chunks"]
    assert all(c["key"].endswith(".m4s") for c in chunks)
    assert all(c["offset"] + c["size"] in moofs for c in chunks[:fixed_from])
    assert all(c["size"] == CHUNK for c in chunks[fixed_from:-1])
    assert chunks[fixed_from - 1]["offset"] + chunks[fixed_from - 1]["size"] in moofs
    assert client.get_object(Bucket=bucket, Key=doc["object_key"])["Body"].read() == data
    text = client.get_object(Bucket=bucket, Key=doc["playlist_key"])["Body"].read().decode()
    playlist = parse_playlist(text, doc["playlist_key"])
    assert playlist.ended
    check_ranges(client, bucket, playlist)
    aligned_end = chunks[fixed_from]["offset"]
    assert {r.key for _, r in playlist.segments} == {doc["object_key"]}
    assert sum(r.size for _, r in playlist.segments) == aligned_end - playlist.init.size
    listed = sum(1 for o in moofs if o < aligned_end)   # 1 s fragments
    assert abs(playlist.duration - listed) <= 0.05, (playlist.duration, listed)
    return playlist


def _records(state_dir: Path) -> list[Any]:
    """Every stream record in the (stopped) service's checkpoints."""
    records = []
    for directory in StateDir(state_dir).slots().values():
        if directory.has_checkpoints():
            store = CheckpointStore(directory, create=False)
            try:
                records += list(store.streams())
            finally:
                store.close()
    return records


def test_fragments_larger_than_a_chunk_make_the_rest_fixed(
        make_processor: Any, client: Any, bucket: str, tmp_path: Path) -> None:
    processor = make_processor(workers=1, stream_timeout=1.0)
    processor.start()
    path = _recording(tmp_path, processor.watch_dir)
    doc = wait_for_metadata(client, bucket, "huge.mp4", processor=processor)
    (stopped,) = processor.wait_for_event("live_playlist_stopped")
    assert stopped["stream_id"] == doc["stream_id"]
    fixed_from = stopped["from_chunk"]
    assert 1 <= fixed_from < len(doc["chunks"]) - 1
    _check(client, bucket, doc, path.read_bytes(), fixed_from)
    processor.stop()
    (record,) = _records(processor.state_dir)
    assert record.extra["fixed_from"] == fixed_from

    # the state dir lost: the finished stream is found again, with where its fixed
    # chunks start (a reopen would write its playlist from the aligned ones)
    shutil.rmtree(processor.state_dir)
    processor.start()
    (recovered,) = processor.wait_for_event("stream_recovered", timeout=60)
    assert recovered["finished"] and recovered["stream_id"] == doc["stream_id"]
    processor.stop()
    (record,) = _records(processor.state_dir)
    assert record.extra["fixed_from"] == fixed_from and record.extra["layout"] == "fmp4"


def test_a_lost_state_dir_keeps_where_the_fixed_chunks_start(
        make_processor: Any, client: Any, bucket: str, tmp_path: Path) -> None:
    """Killed with every full chunk uploaded, aligned and fixed, and the state dir
    deleted: the stream is recovered from the bucket and completes with its playlist
    (before the record kept ``fixed_from`` through recovery, the playlist walked the
    fixed chunks as fragments and the stream completed without one)."""
    processor = make_processor(workers=1, stream_timeout=120.0)  # not finished yet
    processor.start()
    path = _recording(tmp_path, processor.watch_dir)
    full = (path.stat().st_size - CHUNK) // CHUNK   # full chunks: all but the tail
    (stopped,) = processor.wait_for_event("live_playlist_stopped")
    uploaded = processor.wait_for_event("chunk_uploaded", count=full, timeout=120)
    processor.kill9()
    shutil.rmtree(processor.state_dir)

    processor.stream_timeout = 1.0
    processor.start()
    (recovered,) = processor.wait_for_event("stream_recovered", timeout=60)
    assert recovered["stream_id"] == stopped["stream_id"] and not recovered["finished"]
    assert recovered["chunks"] >= len(uploaded) - 1
    doc = wait_for_metadata(client, bucket, "huge.mp4", processor=processor)
    assert doc["stream_id"] == stopped["stream_id"]
    _check(client, bucket, doc, path.read_bytes(), stopped["from_chunk"])
    assert not [e for e in processor.events() if e.get("event") == "playlist_skipped"]
