"""Power cuts (contract §10): while three cameras record live, the power goes at
random moments. Each cut is a ``kill -9`` of the process group, then the state dir
loses every write and every directory change not yet made durable by an ``fsync``
(tests/support/powercut.py, a FUSE filesystem the state dir runs on), then a restart.

The end check is the crash loop's: every object byte-identical, no duplicate lineage,
no unfinished upload, and chunk PUTs beyond one per key only where a cut caught that
chunk in flight. Beyond it, a worker must never come back with an empty state: what
it had synced must survive the cut, without falling back to recovery from the bucket.
How often a stream came back under a new id (allowed while no S3 object names it) is
counted, not bounded.
"""

from __future__ import annotations

import time
from collections import defaultdict
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
from tests.support.powercut import PowerCutFS, unavailable
from tests.support.proxy import Faults
from tests.support.videos import start_live_writer

pytestmark = pytest.mark.timeout(pick(300, 900))

CUTS = pick(6, 22)
RECORD_SECONDS = pick(16.0, 75.0)
BITRATE = pick(12.0, 6.0)  # Mbit/s per camera


def test_power_cut_loop(make_processor: Any, client: Any, bucket: str, proxy: Any,
                        reliability: Row) -> None:
    reason = unavailable()
    if reason:
        pytest.skip(f"no power-cut filesystem here: {reason}")
    seed, rng = seeded("power-cut")
    reliability.seed = seed
    reliability.injected = "power cut: kill -9, unsynced state dropped (chunk acks held 0.7 s)"
    started = time.monotonic()
    # as in the crash loop: S3's answer to each chunk PUT is held, so cuts often land
    # between S3 storing a chunk and the worker recording it
    proxy.set_faults(Faults(response_delay=0.7, match=is_chunk_put))
    processor = make_processor(workers=2, stream_timeout=3.0)
    disk = PowerCutFS(processor.state_dir)
    names = [f"cam{i}.mp4" for i in range(3)]
    writers: list[Any] = []
    reverted, moments = [], []
    try:
        processor.start()
        writers = [start_live_writer(processor.watch_dir / n, RECORD_SECONDS,
                                     bitrate_mbps=BITRATE, seed=rng.randrange(2**31))
                   for n in names]
        ledger = KillLedger(proxy, bucket)
        processor.wait_for_event("stream_detected", timeout=60)

        def power_cut() -> None:
            processor.kill9()
            reverted.append(disk.cut())

        budget = RECORD_SECONDS * 1.2 / CUTS
        for _ in range(CUTS):
            moment = rng.uniform(0.2, max(0.5, budget))
            moments.append(round(moment, 2))
            time.sleep(moment)
            ledger.kill(power_cut, processor.events)
            processor.start()
        finish_writers(writers, timeout=RECORD_SECONDS + 120)
        recovered_from = time.monotonic()
        end_check(reliability, processor, client, bucket, proxy,
                  {n: processor.watch_dir / n for n in names}, timeout=pick(150, 300),
                  ledger=ledger)
        reliability.recover_seconds = time.monotonic() - recovered_from
    finally:
        stop_writers(writers)
        processor.stop()
        disk.close()
    events = processor.all_events()
    # every worker after the first run must find the state it had synced
    lost = [(run, e.get("slot")) for run in range(2, processor.runs + 1)
            for e in processor.events(run)
            if e.get("event") == "worker_started" and e.get("state_new")]
    assert lost == [], f"a worker's state did not survive a power cut (run, worker): {lost}"
    ids: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e.get("event") == "stream_detected":
            ids[e.get("rel_path", e.get("path", ""))].add(e["stream_id"])
    reliability.times = ledger.kills
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(
        moments=moments, runs=processor.runs,
        new_ids=sum(len(v) - 1 for v in ids.values()),
        reverted_files=sum(f for f, _ in reverted), reverted_dirs=sum(d for _, d in reverted),
        cuts_reverting=sum(f + d > 0 for f, d in reverted),
        chunks_recovered=sum(e.get("event") == "chunk_recovered" for e in events),
        streams_recovered=sum(e.get("event") == "stream_recovered" for e in events))
    # the cuts must have had something to drop, or they were only kills
    assert reliability.notes["cuts_reverting"] > 0, reverted
    print(reliability.line())
