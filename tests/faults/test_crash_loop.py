"""Scenario 1: ``kill -9`` of the whole process group, again and again, at random
moments while four cameras record live; a restart after each kill."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.common import (
    KillLedger,
    Row,
    end_check,
    finish_writers,
    is_chunk_put,
    pick,
    seeded,
    stop_writers,
)
from tests.support.proxy import Faults
from tests.support.runner import wait_until
from tests.support.videos import start_live_writer

pytestmark = pytest.mark.timeout(pick(200, 900))

KILLS = pick(3, 22)
RECORD_SECONDS = pick(14.0, 75.0)
BITRATE = pick(12.0, 6.0)  # Mbit/s: ~1.5 / 0.75 MB per second per camera


def test_kill9_crash_loop(make_processor: Any, client: Any, bucket: str, proxy: Any,
                          reliability: Row) -> None:
    seed, rng = seeded("crash-loop")
    reliability.seed = seed
    reliability.injected = "kill -9 of the process group (chunk PUT acks held 0.7 s)"
    started = time.monotonic()
    # S3's answer to each chunk PUT is held 0.7 s: the chunk is stored but the worker
    # does not know yet, the window recovery must handle; kills land in it often
    proxy.set_faults(Faults(response_delay=0.7, match=is_chunk_put))
    processor = make_processor(workers=2, stream_timeout=3.0)
    processor.start()
    names = [f"cam{i}.mp4" for i in range(4)]
    writers = [start_live_writer(processor.watch_dir / n, RECORD_SECONDS, bitrate_mbps=BITRATE,
                                 seed=rng.randrange(2**31)) for n in names]
    ledger = KillLedger(proxy, bucket)
    moments = []
    try:
        processor.wait_for_event("stream_detected", timeout=60)
        # spread the kills over the recording, each at a random moment of its run
        budget = RECORD_SECONDS * 1.2 / KILLS
        for _ in range(KILLS):
            moment = rng.uniform(0.3, max(0.6, budget))
            moments.append(round(moment, 2))
            time.sleep(moment)
            ledger.kill(processor.kill9, processor.events)
            processor.start()
        finish_writers(writers, timeout=RECORD_SECONDS + 120)
    finally:
        stop_writers(writers)
    recovered_from = time.monotonic()
    end_check(reliability, processor, client, bucket, proxy,
              {n: processor.watch_dir / n for n in names}, timeout=pick(150, 300), ledger=ledger)
    reliability.recover_seconds = time.monotonic() - recovered_from
    reliability.times = ledger.kills
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(moments=moments, runs=processor.runs,
                             chunks_recovered=sum(e.get("event") == "chunk_recovered"
                                                  for e in processor.all_events()),
                             multipart_aborted=sum(e.get("event") == "multipart_aborted"
                                                   for e in processor.all_events()),
                             acks_held=proxy.fault_counts().get("delayed_response", 0))
    print(reliability.line())


def test_kill9_during_assembly(make_processor: Any, client: Any, bucket: str, proxy: Any,
                               reliability: Row, tmp_path: Any) -> None:
    """kill -9 while chunks are being copied into the final object's multipart upload
    (part copies slowed to 1 s each so the kill lands inside it): the restart resumes
    the upload the checkpoint recorded, instead of opening (and paying for) another;
    the object is complete and nothing is left in the bucket."""
    from tests.support.videos import make_video

    seed, rng = seeded("assembly-kill")
    reliability.seed = seed
    reliability.injected = "kill -9 while parts are copied into the upload (copies +1 s)"
    started = time.monotonic()
    kills = pick(1, 3)
    proxy.set_faults(Faults(latency=1.0, match=lambda h: "partNumber" in h.query))
    processor = make_processor(workers=1, stream_timeout=2.0)
    processor.start()
    names = ["clip0.mp4"]
    # counted before the file is written: the processor copies parts while ffmpeg still
    # writes, and on a loaded machine most of them can be made before make_video returns
    seen = proxy.fault_counts().get("latency", 0)
    make_video(processor.watch_dir / names[0], 16.0, seed=rng.randrange(2**31))
    ledger = KillLedger(proxy, bucket)
    open_uploads = []
    for k in range(kills):
        if k:
            seen = proxy.fault_counts().get("latency", 0)
        # a part copy of this run is being held: the multipart upload exists in S3
        held = seen + rng.randrange(1, 3)
        wait_until(lambda h=held: proxy.fault_counts().get("latency", 0) > h, 90,
                   "a part copy held by the proxy", processor.tail, every=0.05)
        ledger.kill(processor.kill9, processor.events)
        open_uploads.append(len(client.list_multipart_uploads(Bucket=bucket)
                                .get("Uploads", [])))
        if k == kills - 1:
            proxy.clear_faults()
        processor.start()
    recovered_from = time.monotonic()
    end_check(reliability, processor, client, bucket, proxy,
              {n: processor.watch_dir / n for n in names}, ledger=ledger)
    assert all(open_uploads), "the kills did not land inside a multipart upload"
    # copies are only slowed after the upload is recorded, so no kill can fall between
    # opening it and recording it: every run after a kill must resume that one upload
    opened = proxy.count("POST", f"/{bucket}/", query_has="uploads")
    assert opened == 1, f"{opened} multipart uploads opened; the recorded one was not resumed"
    started_events = [e for e in processor.all_events() if e.get("event") == "multipart_started"]
    assert len(started_events) == 1, started_events
    reliability.times = kills
    reliability.recover_seconds = time.monotonic() - recovered_from
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(open_uploads_after_kill=open_uploads, uploads_opened=opened)
    print(reliability.line())


def test_kill9_and_restart_with_other_worker_counts(make_processor: Any, client: Any,
                                                    bucket: str, proxy: Any,
                                                    reliability: Row) -> None:
    """kill -9 at random moments, each restart with another ``--workers``: checkpoints
    and pending intents follow their paths to the new owners (supervisor/migration.py)."""
    seed, rng = seeded("rescale-crash")
    kills = pick(2, 8)
    seconds = pick(8.0, 40.0)
    reliability.seed = seed
    reliability.injected = "kill -9 of the group, restart with another --workers (1-4)"
    started = time.monotonic()
    processor = make_processor(workers=2, stream_timeout=3.0)
    processor.start()
    names = [f"cam{i}.mp4" for i in range(3)]
    writers = [start_live_writer(processor.watch_dir / n, seconds, seed=rng.randrange(2**31))
               for n in names]
    ledger = KillLedger(proxy, bucket)
    counts = [2]
    try:
        processor.wait_for_event("stream_detected", timeout=60)
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, seconds * 1.2 / kills))
            ledger.kill(processor.kill9, processor.events)
            counts.append(rng.choice([n for n in (1, 2, 3, 4) if n != counts[-1]]))
            processor.start(workers=counts[-1])
        finish_writers(writers, timeout=seconds + 120)
    finally:
        stop_writers(writers)
    recovered_from = time.monotonic()
    end_check(reliability, processor, client, bucket, proxy,
              {n: processor.watch_dir / n for n in names}, ledger=ledger)
    events = processor.all_events()
    assert not [e for e in events if e.get("event") == "state_unavailable"]
    reliability.times = kills
    reliability.recover_seconds = time.monotonic() - recovered_from
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(workers=counts, rebalanced=sum(
        e.get("event") == "checkpoints_rebalanced" for e in events))
    print(reliability.line())
