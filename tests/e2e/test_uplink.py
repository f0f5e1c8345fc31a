"""The uplink cap (contract §8), measured on the wire: real processes, a real S3 server,
and the recording proxy, which notes when each request body byte went through it.

Every rate here is what the proxy forwarded in a window, not what the service
believes it sent. Backlog files are random bytes written before the start with an
old mtime (complete on disk when first seen); the live stream is ffmpeg writing in
real time.
"""

from __future__ import annotations

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import check_stream, metadata_documents
from tests.support.proxy import RecordingProxy
from tests.support.runner import wait_until
from tests.support.scale import pick
from tests.support.videos import make_not_mp4, start_live_writer

# rates and latencies: measured alone, after the parallel part of `make test`
pytestmark = [pytest.mark.timeout(240), pytest.mark.serial]

MiB = 1 << 20
CHUNK = 5 * MiB  # the runner's --chunk-size


def backlog(watch: Path, count: int, size: int) -> dict[str, bytes]:
    """``count`` finished files of ``size`` bytes, last written an hour ago."""
    watch.mkdir(parents=True, exist_ok=True)
    files = {}
    hour_ago = time.time() - 3600
    for i in range(count):
        path = make_not_mp4(watch / f"old-{i}.mp4", size)
        os.utime(path, (hour_ago, hour_ago))
        files[path.name] = path.read_bytes()
    return files


def completed(processor: Any, count: int, timeout: float) -> list[dict[str, Any]]:
    return processor.wait_for_event("stream_completed", timeout=timeout, count=count)


def rates(proxy: RecordingProxy, start: float, end: float, window: float = 5.0) -> list[float]:
    """Bytes/s forwarded in each whole ``window`` from ``start`` to ``end``."""
    found = []
    while start + window <= end:
        found.append(proxy.body_bytes_between(start, start + window) / window)
        start += window
    return found


def check_all(client: Any, bucket: str, files: dict[str, bytes]) -> None:
    docs = {d["source_path"]: d for d in metadata_documents(client, bucket)}
    for name, data in files.items():
        check_stream(client, bucket, docs[name], data)


def test_a_cap_of_2mib_s_holds_over_every_5s_window_and_no_cap_is_3x_faster(
        make_processor: Any, proxy: RecordingProxy, client: Any, bucket: str,
        tmp_path: Path) -> None:
    """Four workers, eight finished 15 MiB files (four in ``make test``): at 2 MiB/s every
    5 s window after the first is within 10% of the cap; without the cap the same run is
    3x faster."""
    count = pick(4, 8)
    files = backlog(tmp_path / "in", count, 15 * MiB)
    free = make_processor(workers=4)
    started = time.monotonic()
    free.start()
    completed(free, count, timeout=120)
    uncapped = time.monotonic() - started
    free.stop()
    check_all(client, bucket, files)

    second = tmp_path / "capped"
    second.mkdir()
    (second / "in").mkdir()
    for name, data in files.items():
        (second / "in" / name).write_bytes(data)
    capped = make_processor(workers=4)
    capped.workdir = second
    capped.bucket = bucket + "-c"
    proxy.clear()
    started = time.monotonic()
    capped.start(extra=["--bwlimit", "2MiB/s"])
    completed(capped, count, timeout=150)
    took = time.monotonic() - started
    first = proxy.first_body_byte_at()
    assert first is not None
    last_body = max(r.answered_at or 0 for r in proxy.requests() if r.method == "PUT")
    windows = rates(proxy, first + 5, last_body - 1)
    print(f"capped {took:.1f} s, uncapped {uncapped:.1f} s; 5 s windows (MiB/s): "
          f"{[round(r / MiB, 3) for r in windows]}")
    assert len(windows) >= count, windows
    for rate in windows:
        assert abs(rate / (2 * MiB) - 1) <= 0.10, [round(r / MiB, 3) for r in windows]
    assert took >= 3 * uncapped, (took, uncapped)
    chunk_puts = [r for r in proxy.requests() if r.method == "PUT" and "/chunks/" in r.path]
    assert chunk_puts and not any("expect" in r.headers for r in chunk_puts)  # no 100-continue
    check_all(client, capped.bucket, files)


def test_a_timetable_entry_changes_the_rate_within_the_run(
        make_processor: Any, proxy: RecordingProxy, client: Any, bucket: str,
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The processor's local time is set (with TZ) so that a timetable entry starts 12 s
    into the run: 1 MiB/s before it, 4 MiB/s after it, measured at the proxy."""
    switch_in = 12.0
    utc_switch = datetime.now(UTC) + timedelta(seconds=switch_in)
    boundary = utc_switch.replace(second=0, microsecond=0) + timedelta(minutes=1)
    ahead = round((boundary - utc_switch).total_seconds())  # local = UTC + ahead
    minutes, seconds = divmod(ahead, 60)
    monkeypatch.setenv("TZ", f"TST-00:{minutes:02d}:{seconds:02d}")
    local_switch = boundary  # as the processor's local clock reads it
    before = local_switch - timedelta(minutes=1)
    table = f"{before:%H:%M},1MiB/s {local_switch:%H:%M},4MiB/s"
    files = backlog(tmp_path / "in", 4, 15 * MiB)
    switch_at = time.monotonic() + (utc_switch - datetime.now(UTC)).total_seconds()
    processor = make_processor(workers=2)
    processor.start(extra=["--bwlimit", table])
    wait_until(lambda: time.monotonic() > switch_at + 9, 60, "the switch", every=0.5)
    slow = proxy.body_bytes_between(switch_at - 8, switch_at - 1) / 7
    fast = proxy.body_bytes_between(switch_at + 2, switch_at + 9) / 7
    print(f"before the entry {slow / MiB:.3f} MiB/s, after it {fast / MiB:.3f} MiB/s")
    assert abs(slow / MiB - 1) <= 0.15, (slow / MiB, fast / MiB)
    assert abs(fast / (4 * MiB) - 1) <= 0.15, (slow / MiB, fast / MiB)
    changed = processor.wait_for_event("uplink_cap_changed")[0]
    assert changed["cap"] == "4MiB/s" and changed["was"] == "1MiB/s"
    completed(processor, 4, timeout=60)
    check_all(client, bucket, files)


def test_live_chunks_go_before_a_200mib_backlog(
        make_processor: Any, proxy: RecordingProxy, client: Any, bucket: str,
        tmp_path: Path) -> None:
    """200 MiB of finished files at start (80 MiB in ``make test``), a 4 MiB/s cap, ffmpeg
    recording at ~1 MiB/s: each live chunk is in S3 within chunk_size / cap + 3 s of its
    last byte on disk, and the backlog completes."""
    cap = 4 * MiB
    count = 8
    files = backlog(tmp_path / "in", count, pick(10, 25) * MiB)
    processor = make_processor(workers=4)
    processor.start(extra=["--bwlimit", "4MiB/s"])
    processor.wait_for_event("chunk_uploaded")  # the backlog is under way
    live = tmp_path / "in" / "live.mp4"
    sizes: list[tuple[float, int]] = []  # (when, the file's size then)
    # a fragmented recording, as by default: its chunks end on fragments, so a chunk's
    # last byte is on disk once the size passes where the chunk (as uploaded) ends
    writer = start_live_writer(live, pick(20, 45), bitrate_mbps=8.4)
    stop = threading.Event()

    def watch_size() -> None:
        while not stop.is_set():
            sizes.append((time.monotonic(), live.stat().st_size if live.exists() else 0))
            time.sleep(0.01)

    watcher = threading.Thread(target=watch_size, daemon=True)
    watcher.start()
    try:
        assert writer.wait(timeout=120) == 0
    finally:
        stop.set()
        watcher.join()
        writer.kill()
    detected = processor.wait_for_event("stream_detected", lambda e: e["rel_path"] == "live.mp4")
    stream_id = detected[0]["stream_id"]
    prefix = f"/{bucket}/{detected[0]['object_prefix']}/chunks/"
    completed(processor, count + 1, timeout=150)
    ends = {int(e["index"]): int(e["offset"]) + int(e["size"])
            for e in processor.all_events() if e.get("event") == "chunk_uploaded"
            and e.get("stream_id") == stream_id and int(e["size"]) >= CHUNK}
    crossed = {i: next(t for t, size in sizes if size >= end) for i, end in ends.items()
               if sizes and sizes[-1][1] >= end}
    visible: dict[int, float] = {}  # chunk index -> when S3 first answered its PUT
    for r in proxy.requests():
        if r.method == "PUT" and r.path.startswith(prefix) and r.status == 200:
            visible.setdefault(int(r.path.rsplit("/", 1)[1].removesuffix(".m4s")),
                               r.answered_at)
    bound = CHUNK / cap + 3
    delays = sorted(round(visible[i] - at, 2) for i, at in crossed.items() if i in visible)
    print(f"live chunk visible after its last byte (s): {delays}; bound {bound}")
    late = {i: round(visible[i] - at, 2) for i, at in crossed.items()
            if visible.get(i) is None or visible[i] - at > bound}
    assert len(crossed) >= pick(3, 6) and not late, (late, bound)
    check_all(client, bucket, files)


def test_a_kill_and_an_outage_under_the_cap_lose_nothing_and_the_cap_holds_after(
        make_processor: Any, proxy: RecordingProxy, client: Any, bucket: str,
        tmp_path: Path) -> None:
    """``kill -9`` mid-backlog and a restart, then S3 unreachable for a while, all under
    a 4 MiB/s cap: every file arrives whole, and after recovery the rate is back at the
    cap and never above it."""
    cap = 4 * MiB
    files = backlog(tmp_path / "in", 6, 14 * MiB)
    processor = make_processor(workers=2, extra=["--bwlimit", "4MiB/s"])
    processor.start()
    processor.wait_for_event("chunk_uploaded", count=3)
    processor.kill9()
    processor.start()
    processor.wait_for_event("chunk_uploaded")  # most of the backlog is still to come
    proxy.set_faults(refuse=True)
    processor.wait_for_event("s3_retry")
    proxy.clear_faults()
    processor.wait_for_event("s3_recovered")
    recovered = time.monotonic()
    wait_until(lambda: len(list(metadata_documents(client, bucket))) == len(files), 120,
               "every file completed", processor.tail, every=0.5)
    last_body = max(r.answered_at or 0 for r in proxy.requests()
                    if r.method == "PUT" and "/chunks/" in r.path)
    windows = rates(proxy, recovered + 2, last_body - 0.5, window=3.0)
    print(f"after recovery, 3 s windows (MiB/s): {[round(r / MiB, 3) for r in windows]}")
    assert windows, (recovered, last_body)
    shown = [round(r / MiB, 3) for r in windows]
    # never above the cap (no burst saved up through the kill and the outage), and back
    # at it after the outage. Not every window reaches it: when one worker is left
    # sending, the gap between its bodies (the next chunk read, hashed and logged)
    # leaves the link idle for a moment, whatever the cap.
    assert all(rate <= cap * 1.10 for rate in windows), shown
    assert max(windows) >= cap * 0.90, shown
    check_all(client, bucket, files)
