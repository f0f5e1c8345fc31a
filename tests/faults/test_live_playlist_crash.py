"""Live playlists under ``kill -9`` (contract §6, §4): a fragmented recording with
audio and video is killed at random moments while its chunks go up. After each kill
the playlist in S3 is valid as it stands (every range inside one object, starting with
a moof); the restart keeps every chunk boundary committed before the kill; at the end
the playlist names the assembled object, with ENDLIST, and lasts as long as the media."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.faults.common import (
    KillLedger,
    Row,
    end_check,
    finish_writers,
    pick,
    seeded,
    stop_writers,
)
from tests.support.hls import check_ranges, parse_playlist
from tests.support.runner import wait_until
from tests.support.videos import start_live_writer

pytestmark = pytest.mark.timeout(pick(240, 600))

KILLS = pick(3, 10)
SECONDS = pick(24.0, 60.0)


def _valid(client: Any, bucket: str, key: str) -> int:
    """Segments in the playlist at ``key``, after checking each range against its
    object (tests/support/hls.py ``check_ranges``)."""
    text = client.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
    playlist = parse_playlist(text, key)
    check_ranges(client, bucket, playlist)
    return len(playlist.segments)


def test_kill9_while_a_live_playlist_grows(make_processor: Any, client: Any, bucket: str,
                                           proxy: Any, reliability: Row) -> None:
    seed, rng = seeded("live-playlist-kill")
    reliability.seed = seed
    reliability.injected = "kill -9 of the group while a fragmented recording's playlist grows"
    started = time.monotonic()
    processor = make_processor(workers=1, stream_timeout=3.0)
    processor.start()
    writer = start_live_writer(processor.watch_dir / "cam.mp4", SECONDS, bitrate_mbps=12.0,
                               audio=True, seed=rng.randrange(2**31))
    ledger = KillLedger(proxy, bucket)
    committed: dict[int, tuple[int, int]] = {}
    segments_seen = []
    try:
        stream_id = processor.wait_for_event("stream_fragmented", timeout=60)[0]["stream_id"]
        key = f"streams/{stream_id}/playlist.m3u8"
        for _ in range(KILLS):
            processor.wait_for_event("chunk_uploaded", timeout=60)
            time.sleep(rng.uniform(0.2, SECONDS / KILLS / 2))
            ledger.kill(processor.kill9, processor.events)
            committed.update({int(e["index"]): (int(e["offset"]), int(e["size"]))
                              for e in processor.all_events()
                              if e.get("event") == "chunk_uploaded"})
            # what a player fetches now, with the processor down, is a valid playlist
            segments_seen.append(wait_until(lambda: _valid(client, bucket, key), 30,
                                            "a playlist in S3", processor.tail))
            processor.start()
        finish_writers([writer], timeout=SECONDS + 120)
    finally:
        stop_writers([writer])
    end_check(reliability, processor, client, bucket, proxy,
              {"cam.mp4": processor.watch_dir / "cam.mp4"}, ledger=ledger)
    doc = client.get_object(Bucket=bucket, Key=f"streams/{stream_id}/metadata.json")
    doc = json.loads(doc["Body"].read())
    final = {c["index"]: (c["offset"], c["size"]) for c in doc["chunks"]}
    kept = {i: b for i, b in committed.items() if i < len(final) - 1}
    assert all(final[i] == b for i, b in kept.items()), (committed, final)
    text = client.get_object(Bucket=bucket, Key=doc["playlist_key"])["Body"].read().decode()
    playlist = parse_playlist(text, doc["playlist_key"])
    assert playlist.ended and {r.key for _, r in playlist.segments} == {doc["object_key"]}
    assert _valid(client, bucket, doc["playlist_key"]) >= max(segments_seen)
    assert abs(playlist.duration - doc["media_duration_seconds"]) <= 0.2
    reliability.times = ledger.kills
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(segments_after_each_kill=segments_seen,
                             boundaries_kept=len(kept))
    print(reliability.line())
