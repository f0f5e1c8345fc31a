"""Scenarios 7 and 8: a torn or corrupt write-ahead log, and a full state disk."""

from __future__ import annotations

import errno
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.state.layout import StateDir
from shared.state.wal import read_records
from tests.faults.common import KillLedger, Row, end_check, pick, seeded
from tests.support.markers import flush_worker
from tests.support.puts import writes
from tests.support.runner import wait_until
from tests.support.videos import make_video

pytestmark = pytest.mark.timeout(pick(200, 400))


@pytest.fixture(scope="module")
def long_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~30 MiB: six 5 MiB chunks, so a kill lands between uploads."""
    return make_video(tmp_path_factory.mktemp("videos") / "long.mp4", 20.0, seed=11)


def record_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of each framed WAL record."""
    spans, pos = [], 0
    records, valid = read_records(data)
    assert valid == len(data), "the log was already bad before the test touched it"
    for _ in records:
        length = int.from_bytes(data[pos:pos + 4], "little")
        spans.append((pos, pos + 8 + length))
        pos += 8 + length
    return spans


@pytest.mark.parametrize("damage", ["torn", "flipped"])
def test_damaged_wal(damage: str, make_processor: Any, client: Any, bucket: str, proxy: Any,
                     reliability: Row, long_video: Path) -> None:
    """kill -9 mid-upload, then the log cut mid-record (torn) or one byte flipped in a
    random record: recovery cuts the bad tail, says so, reconciles, finishes."""
    seed, rng = seeded(f"wal-{damage}")
    reliability.seed, reliability.times = seed, 1
    started = time.monotonic()
    processor = make_processor(workers=1, stream_timeout=30.0)
    processor.start()
    names = ["cam0.mp4", "cam1.mp4"]
    for n in names:
        shutil.copy(long_video, processor.watch_dir / n)
    ledger = KillLedger(proxy, bucket)
    processor.wait_for_event("chunk_uploaded", count=rng.randint(2, 5), timeout=90)
    ledger.kill(processor.kill9, processor.events)
    wal = StateDir(processor.state_dir).worker(0).wal
    data = wal.read_bytes()
    spans = record_spans(data)
    if damage == "torn":
        start, end = spans[-1]
        cut = rng.randint(start + 1, end - 1)
        wal.write_bytes(data[:cut])
        expected = cut - start
        reliability.injected = "WAL cut in the middle of its last record"
    else:
        start, end = spans[rng.randrange(len(spans))]
        at = rng.randrange(start + 8, end)
        damaged = bytearray(data)
        damaged[at] ^= 1 << rng.randrange(8)
        wal.write_bytes(bytes(damaged))
        expected = len(data) - start
        reliability.injected = "one bit flipped in a random WAL record"
    processor.stream_timeout = 2.0
    processor.start()
    truncated = processor.wait_for_event("wal_tail_truncated", timeout=60)
    assert truncated[0]["bytes"] == expected
    recovered_at = time.monotonic()
    end_check(reliability, processor, client, bucket, proxy,
              {n: processor.watch_dir / n for n in names}, ledger=ledger)
    reliability.recover_seconds = time.monotonic() - recovered_at
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(wal_bytes=len(data), records=len(spans), truncated_bytes=expected,
                             chunk_recovered=sum(e.get("event") == "chunk_recovered"
                                                 for e in processor.all_events()))
    print(reliability.line())


# -- a full state disk ----------------------------------------------------------------
@pytest.fixture
def small_state_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs mounted as the processor's state dir (``tmp_path/state``)."""
    state = tmp_path / "state"
    state.mkdir()
    try:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs",
                               str(state)], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a tmpfs for the state dir: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the state dir (needs root): "
                    f"{done.stderr.decode(errors='replace').strip()}")
    try:
        yield state
    finally:
        for _ in range(50):  # the processor is stopped by make_processor's teardown first?
            if subprocess.run(["umount", str(state)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)


def fill(path: Path) -> int:
    """Write ``path`` until the filesystem is full; return the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        block = b"\0" * 65536
        for _ in range(10_000):
            try:
                written += f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        for _ in range(100):  # the last few bytes
            try:
                written += f.write(b"\0" * 512)
            except OSError:
                break
    return written


def test_state_disk_full(small_state_disk: Path, make_processor: Any, client: Any, bucket: str,
                         proxy: Any, reliability: Row, long_video: Path) -> None:
    """The state disk fills up mid-stream: a clear error, no corrupt checkpoint, and the
    service carries on once space returns (and a restart finds the checkpoints sound).

    Regression test: the worker used to keep writing through its LevelDB handle
    after ENOSPC; LevelDB's log was then misframed and every checkpoint committed
    afterwards was dropped on reopen (a clean restart re-uploaded acknowledged
    chunks). Fixed in 3913dd7: a failed state write ends the worker."""
    seed, rng = seeded("disk-full")
    reliability.seed, reliability.times = seed, 1
    reliability.injected = "state dir on a 4 MiB tmpfs filled up"
    started = time.monotonic()
    processor = make_processor(workers=1, stream_timeout=3.0)
    assert processor.state_dir == small_state_disk
    processor.start()
    shutil.copy(long_video, processor.watch_dir / "cam0.mp4")
    processor.wait_for_event("chunk_uploaded", timeout=90)
    filler = small_state_disk / "filler"
    fill(filler)
    full_at = time.monotonic()
    shutil.copy(long_video, processor.watch_dir / "cam1.mp4")  # a new stream meanwhile

    def no_space_logged() -> list[dict[str, Any]]:
        return [e for e in processor.events()
                if "No space left" in str(e) or "ENOSPC" in str(e)]

    errors = wait_until(no_space_logged, 60, "an error naming the full disk")
    reliability.notes.update(first_error=errors[0].get("event"),
                             error_text=str(errors[0].get("error", ""))[:100],
                             error_after_s=round(time.monotonic() - full_at, 1))
    assert processor.proc.poll() is None, processor.tail()
    time.sleep(rng.uniform(1.0, 3.0))
    filler.unlink()
    freed_at = time.monotonic()
    failed_attempts = len(no_space_logged())
    # each failed attempt may have had one chunk acknowledged by S3 but not recorded
    end_check(reliability, processor, client, bucket, proxy,
              {n: processor.watch_dir / n for n in ("cam0.mp4", "cam1.mp4")},
              timeout=pick(150, 200), extra_allowed=failed_attempts)
    reliability.recover_seconds = time.monotonic() - freed_at
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(failed_attempts=failed_attempts)
    print(reliability.line())
    # the checkpoint is sound: a clean restart resumes nothing and uploads nothing again,
    # once the worker has handled the start-up scan's events for both files (a marker
    # file, written after the scan, has completed: tests/support/markers.py)
    processor.stop()
    proxy.clear()
    processor.start()
    processor.wait_for_event("supervisor_started", timeout=60)
    marker = flush_worker(processor, "cam0.mp4")
    resumed = [e for e in processor.events() if e.get("event") == "worker_started"]
    puts_again = [r.path for r in writes(proxy, bucket, except_prefixes=[marker.object_prefix])]
    assert not [e for e in processor.events() if e.get("event") == "stream_detected"
                and e["rel_path"] in ("cam0.mp4", "cam1.mp4")], "a finished file came back"
    reliability.notes.update(resumed_after_restart=resumed[0]["resumed_streams"],
                             puts_after_clean_restart=len(puts_again))
    print(reliability.line())
    assert resumed[0]["resumed_streams"] == 0, "completed streams came back as active"
    assert puts_again == [], f"uploaded again after a clean restart: {puts_again}"
    assert not [e for e in processor.events()
                if e.get("event") in ("wal_tail_truncated", "state_unavailable")]
