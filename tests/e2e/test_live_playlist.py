"""Live playback (contract §6), end to end: ffmpeg records a fragmented MP4 with audio
and video in real time; while it still writes, the playlist in S3 is checked range by
range, decoded segment by segment with PyAV, and played by the bundled ffmpeg over
HTTP from the S3 server, following it to the end. After completion the playlist names
the assembled object alone (the chunks are deleted) and still plays."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from tests.support.bucket import check_stream, list_keys, top_level_boxes, wait_for_metadata
from tests.support.hls import (
    Playlist,
    check_ranges,
    decode,
    fetch_playlist,
    play_with_ffmpeg,
    public_read,
    read_range,
)
from tests.support.metrics import scrape
from tests.support.proxy import RecordingProxy
from tests.support.runner import wait_until
from tests.support.s3server import free_port
from tests.support.videos import make_video, start_live_writer

pytestmark = pytest.mark.timeout(240)

SECONDS = 44.0
FPS = 25
GOP = 38  # frames: a keyframe, so a fragment, every 1.52 s


def test_a_live_recording_plays_from_s3_while_it_records(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy) -> None:
    processor = make_processor(workers=1, stream_timeout=3.0, extra=["--no-keep-chunks"])
    processor.start()
    path = processor.watch_dir / "cam.mp4"
    writer = start_live_writer(path, SECONDS, bitrate_mbps=6.0, audio=True, gop=GOP)
    player: dict[str, Any] = {}
    try:
        detected = processor.wait_for_event("stream_fragmented", timeout=60)[0]
        stream_id = detected["stream_id"]
        key = f"streams/{stream_id}/playlist.m3u8"
        live = wait_until(lambda: (p := fetch_playlist(client, bucket, key)) and
                          len(p.segments) >= 4 and p, 60, "4 segments in the live playlist",
                          processor.tail)
        assert writer.poll() is None, "the recording ended before the checks began"
        assert (live.version, live.kind, live.ended) == (7, "EVENT", False)
        assert live.target == max(int(d + 0.5) for d, _ in live.segments)
        # about 2-6 s: whole fragments (1.52 s here), cut where a chunk ends
        durations = [d for d, _ in live.segments]
        assert all(1.5 <= d <= 6.0 for d in durations), live.text
        assert sum(d >= 2.0 for d in durations) >= 0.75 * len(durations), live.text
        assert all(r.key.endswith(".m4s") for _, r in live.segments)
        check_ranges(client, bucket, live)   # (a)
        init = read_range(client, bucket, live.init)
        for _, r in live.segments:   # (b) init + each segment decodes on its own
            video, audio = decode(init, read_range(client, bucket, r))
            assert video > 0 and audio > 0, r
        assert writer.poll() is None, "the recording ended during the checks"
        # (c) the bundled ffmpeg plays it over plain HTTP from the S3 server, default
        # options: it starts near the live edge and follows the playlist to its end
        public_read(client, bucket)
        url = f"{proxy.url}/{bucket}/{key}"
        started = time.monotonic()

        def play() -> None:
            player["seconds"] = play_with_ffmpeg(url, timeout=SECONDS + 90) / FPS
        thread = threading.Thread(target=play)
        thread.start()
        _, err = writer.communicate(timeout=SECONDS + 60)
        assert writer.returncode == 0, err
        doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor, timeout=90)
        thread.join(timeout=90)
        assert "seconds" in player, "ffmpeg did not finish playing the live playlist"
    finally:
        if writer.poll() is None:
            writer.kill()
    data = path.read_bytes()
    assert client.get_object(Bucket=bucket, Key=doc["object_key"])["Body"].read() == data
    final = fetch_playlist(client, bucket, key)
    assert final is not None and final.ended and doc["playlist_key"] == key
    # the segments the player knew keep their place: same count so far, same durations
    assert [round(d, 6) for d, _ in final.segments[:len(live.segments)]] == \
        [round(d, 6) for d, _ in live.segments]
    assert abs(final.duration - doc["media_duration_seconds"]) <= 0.2, \
        (final.duration, doc["media_duration_seconds"])
    assert {r.key for _, r in final.segments} | {final.init.key} == {doc["object_key"]}
    # what ffmpeg decoded is the EXTINF sum from where it joined: its first media GET
    gets = [r for r in proxy.requests() if r.method == "GET" and "range" in r.headers
            and r.started_at >= started and r.path.endswith((".m4s", "cam.mp4"))]
    first = _absolute_offset(gets, doc, bucket, live)
    joined = next(i for i, (_, r) in enumerate(final.segments) if r.offset == first)
    expected = sum(d for d, _ in final.segments[joined:])
    assert abs(player["seconds"] - expected) <= 0.3, (
        player["seconds"], expected, joined, [(g.path, g.headers["range"]) for g in gets])
    # with the chunks deleted it plays from the assembled object alone
    assert not [k for k in list_keys(client, bucket) if "/chunks/" in k]
    assert abs(play_with_ffmpeg(url) / FPS - final.duration) <= 0.3


def _absolute_offset(gets: list[Any], doc: dict[str, Any], bucket: str,
                     live: Playlist) -> int:
    """The file offset of the first media segment the player fetched (not the init
    section, which it reads first)."""
    init_end = live.init.offset + live.init.size
    offsets = {c["key"]: c["offset"] for c in doc["chunks"]}
    for record in gets:
        key = record.path.removeprefix(f"/{bucket}/")
        start = int(record.headers["range"].removeprefix("bytes=").split("-")[0])
        base = offsets.get(key, 0)
        if base + start >= init_end or key not in offsets and start >= init_end:
            return base + start
    raise AssertionError("the player fetched no media segment")


def test_a_regular_mp4_gets_no_playlist_and_plain_chunk_keys(
        make_processor: Any, client: Any, bucket: str) -> None:
    processor = make_processor(workers=1, stream_timeout=1.0)
    processor.start()
    path = make_video(processor.watch_dir / "clip.mp4", 8.0)
    doc = wait_for_metadata(client, bucket, "clip.mp4", processor=processor)
    check_stream(client, bucket, doc, path.read_bytes())
    assert "playlist_key" not in doc
    assert not [k for k in list_keys(client, bucket) if k.endswith((".m3u8", ".m4s"))]


def test_a_fragmented_file_without_live_playlist_keeps_fixed_chunks(
        make_processor: Any, client: Any, bucket: str) -> None:
    processor = make_processor(workers=1, stream_timeout=1.0, extra=["--no-live-playlist"])
    processor.start()
    path = make_video(processor.watch_dir / "clip.mp4", 10.0, fragmented=True)
    doc = wait_for_metadata(client, bucket, "clip.mp4", processor=processor)
    check_stream(client, bucket, doc, path.read_bytes())
    assert "playlist_key" not in doc and not doc["chunks"][0]["key"].endswith(".m4s")


def test_a_finished_fragmented_file_gets_an_endlist_playlist(
        make_processor: Any, client: Any, bucket: str) -> None:
    """A file copied in whole: chunks end on fragments (checked against the file's own
    boxes by check_stream), and the playlist plays the assembled object."""
    port = free_port()
    processor = make_processor(workers=1, stream_timeout=1.0,
                               extra=["--metrics-port", str(port), "--metrics-host", "127.0.0.1"])
    processor.start()
    (processor.watch_dir / "sub").mkdir()
    path = make_video(processor.watch_dir / "sub" / "clip 1.mp4", 12.0, fragmented=True,
                      audio=True)
    doc = wait_for_metadata(client, bucket, "sub/clip 1.mp4", processor=processor)
    check_stream(client, bucket, doc, path.read_bytes())
    assert len(doc["chunks"]) >= 2
    final = fetch_playlist(client, bucket, doc["playlist_key"])
    assert final is not None and final.ended
    check_ranges(client, bucket, final)
    assert abs(final.duration - doc["media_duration_seconds"]) <= 0.2
    assert final.segments[0][1].key == doc["object_key"]
    # every write counted, the final one too, with the bytes of each
    written = [e for e in processor.events() if e.get("event") == "playlist_written"]
    assert written and all(e["bytes"] > 0 for e in written)
    values = wait_until(lambda: (m := scrape(f"http://127.0.0.1:{port}")[1])
                        ["processor_active_streams"] == 0 and m, 10, "the completion counted")
    assert values["processor_playlist_writes_total"] == len(written) + 1
    assert values["processor_playlist_bytes_total"] == \
        sum(e["bytes"] for e in written) + len(final.text.encode())


def test_processor_playlist_prints_presigned_urls(make_processor: Any, client: Any,
                                                  bucket: str, s3: Any) -> None:
    """``processor playlist STREAM_ID --presign 1h`` finds the stream (in a sub-folder)
    by its id and prints its playlist with a presigned, distinct URL per segment; a
    player without credentials fetches and decodes every range through them. An
    unknown id is a one-line error, exit 1."""
    import os
    import re
    import subprocess
    import urllib.request

    from tests.support.runner import processor_command

    processor = make_processor(workers=1, stream_timeout=1.0)
    processor.start()
    (processor.watch_dir / "site").mkdir()
    make_video(processor.watch_dir / "site" / "door.mp4", 12.0, fragmented=True, audio=True)
    doc = wait_for_metadata(client, bucket, "site/door.mp4", processor=processor)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROCESSOR_"))}
    env.update(s3.env())
    argv = [*processor_command(), "playlist", doc["stream_id"], "--presign", "1h",
            "--s3-endpoint", s3.url, "--s3-bucket", bucket]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    urls = [line for line in lines if line.startswith("http")]
    init_url = re.search(r'URI="([^"]+)"', out.stdout).group(1)
    assert len(urls) == len(set(urls)) >= 2 and all("X-Amz-Signature" in u for u in urls)
    ranges = [tuple(map(int, line.split(":")[1].split("@"))) for line in lines
              if line.startswith("#EXT-X-BYTERANGE:")]

    def fetch(url: str, size: int, offset: int) -> bytes:
        request = urllib.request.Request(
            url, headers={"Range": f"bytes={offset}-{offset + size - 1}"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return bytes(response.read())
    init_size = int(re.search(r'BYTERANGE="(\d+)@0"', out.stdout).group(1))
    init = fetch(init_url, init_size, 0)
    for url, (size, offset) in zip(urls, ranges, strict=True):
        video, audio = decode(init, fetch(url, size, offset))
        assert video > 0 and audio > 0
    at = argv.index(doc["stream_id"])
    missing = subprocess.run([*argv[:at], "nope-00000000", *argv[at + 1:]], env=env,
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 1 and "no stream 'nope-00000000'" in missing.stderr


def test_a_reopened_stream_loses_endlist_and_grows_again(make_processor: Any, client: Any,
                                                         bucket: str) -> None:
    """A finished fragmented file that grows again (a fragment appended, as a recorder
    resuming the file would): the reopened stream's playlist loses ENDLIST while it
    records, and gets it back, longer, at the second completion."""
    processor = make_processor(workers=1, stream_timeout=2.0)
    processor.start()
    path = make_video(processor.watch_dir / "cam.mp4", 12.0, fragmented=True)
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    key = doc["playlist_key"]
    before = fetch_playlist(client, bucket, key)
    assert before is not None and before.ended
    data = path.read_bytes()
    boxes = [o for o, kind in top_level_boxes(data) if kind == b"moof"]
    last = data[boxes[-1]:]   # the last fragment (moof+mdat), and what followed it
    with open(path, "ab") as f:
        f.write(last)
    processor.wait_for_event("stream_reopened", timeout=60)
    grown = wait_until(lambda: (p := fetch_playlist(client, bucket, key)) and not p.ended and p,
                       30, "the reopened stream's live playlist, without ENDLIST",
                       processor.tail)
    assert grown.segments
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor,
                            predicate=lambda d: d["reopen_count"] == 1)
    after = fetch_playlist(client, bucket, key)
    assert after is not None and after.ended and after.duration > before.duration
    check_ranges(client, bucket, after)
