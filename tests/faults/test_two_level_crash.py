"""Two-level assembly under ``kill -9`` (contract §9): a live recording of 13 chunks
with ``--max-parts 4`` (so 4 groups of at most 4 chunks), killed again and again
while its chunks are copied into groups and its groups into the final object.

Every copy is held 0.25 s by the proxy, and each kill lands after a seeded 1-3
copies of the current run, so every kill falls inside a group build or the final
assembly (a build is 4 copies and the final assembly 4 more: no run can finish before
the kills are spent). After the last kill the restart finishes: the object is
byte-identical, no group object or unfinished upload is left, and chunk PUTs beyond
one per chunk are only those a kill caught in flight.
"""

from __future__ import annotations

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
from tests.support.bucket import wait_for_metadata
from tests.support.proxy import Faults, RequestHead
from tests.support.runner import wait_until
from tests.support.videos import start_live_writer

pytestmark = pytest.mark.timeout(pick(300, 600))

KILLS = pick(10, 20)
MAX_PARTS = 4
RECORD_SECONDS = 22.0  # at 24 Mbit/s: ~63 MiB, 13 chunks of 5 MiB (at most 16 fit)


def _is_copy(head: RequestHead) -> bool:
    return head.method == "PUT" and "partNumber" in head.query \
        and "x-amz-copy-source" in head.headers


def test_kill9_during_two_level_assembly(make_processor: Any, client: Any, bucket: str,
                                        proxy: Any, reliability: Row) -> None:
    seed, rng = seeded("two-level-kill")
    reliability.seed = seed
    reliability.injected = "kill -9 inside group builds and the final assembly (copies +0.25 s)"
    started = time.monotonic()
    proxy.set_faults(Faults(latency=0.25, match=_is_copy))
    processor = make_processor(workers=1, stream_timeout=3.0,
                               extra=["--max-parts", str(MAX_PARTS)])
    processor.start()
    path = processor.watch_dir / "cam.mp4"
    writer = start_live_writer(path, RECORD_SECONDS, bitrate_mbps=24.0,
                               seed=rng.randrange(2**31))
    ledger = KillLedger(proxy, bucket)
    held_at = []
    try:
        for _ in range(KILLS):
            seen = proxy.fault_counts().get("latency", 0)
            held = seen + rng.randrange(1, 4)
            held_at.append(held - seen)
            wait_until(lambda h=held: proxy.fault_counts().get("latency", 0) >= h, 120,
                       "a copy held by the proxy", processor.tail, every=0.05)
            ledger.kill(processor.kill9, processor.events)
            processor.start()
        proxy.clear_faults()
        finish_writers([writer], timeout=RECORD_SECONDS + 120)
    finally:
        stop_writers([writer])
    recovered_from = time.monotonic()
    end_check(reliability, processor, client, bucket, proxy, {"cam.mp4": path},
              timeout=pick(150, 300), ledger=ledger)
    doc = wait_for_metadata(client, bucket, "cam.mp4")
    chunks = len(doc["chunks"])
    assert 9 <= chunks <= MAX_PARTS * MAX_PARTS, chunks
    assert doc["assembly"] == {"method": "multipart_copy", "levels": 2,
                               "parts": -(-chunks // MAX_PARTS),
                               "chunks_per_group": MAX_PARTS}, doc["assembly"]
    events = processor.all_events()
    reliability.recover_seconds = time.monotonic() - recovered_from
    reliability.times = ledger.kills
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(chunks=chunks, copies_before_kill=held_at, runs=processor.runs,
                             copies=proxy.count("PUT", f"/{bucket}/", query_has="partNumber"),
                             groups_removed=sum(e.get("objects", 0) for e in events
                                                if e.get("event") == "groups_removed"))
    print(reliability.line())
