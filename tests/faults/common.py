"""Shared pieces of the fault scenarios: the mode, the end check, the accounting of
chunk PUTs at the server, and small bounded waits.

Every scenario ends with :func:`end_check`: each source's final object and chunks
byte-identical to the file, ``metadata.json`` complete, exactly one stream per
source (no duplicate lineage), no multipart upload left in the bucket, and the
chunk PUTs the server received beyond one per key, counted from the proxy's
records (requests the proxy answered itself or held in a stall never reached the
server and are not records).
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.bucket import check_stream, list_keys, wait_for_metadata
from tests.support.proxy import RecordingProxy, RequestHead
from tests.support.puts import chunk_key, chunk_put_counts
from tests.support.runner import Processor
from tests.support.scale import FULL, pick  # noqa: F401  (the fault suite's own names)


def seeded(name: str) -> tuple[int, random.Random]:
    """The scenario's seed (``FAULTS_SEED`` or fresh), printed so a run can be replayed."""
    seed = int(os.environ.get("FAULTS_SEED") or random.SystemRandom().randrange(1, 2**31))
    print(f"[{name}] seed={seed} (replay with FAULTS_SEED={seed})")
    return seed, random.Random(seed)


@dataclass
class Row:
    """One line of the reliability table (docs/RELIABILITY.md)."""

    scenario: str
    mode: str
    injected: str = ""
    times: int = 0
    streams: int = 0
    bytes_verified: int = 0
    extra_puts: int = 0           # chunk PUTs beyond one per key that reached the server
    extra_complete_puts: int = 0  # of those, with the whole body forwarded
    allowed_extra: int = 0
    reuploads_changed_on_disk: int = 0
    losses: int = 0
    recover_seconds: float | None = None
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    outcome: str = ""
    seed: int | None = None

    def line(self) -> str:
        rec = "-" if self.recover_seconds is None else f"{self.recover_seconds:.1f}s"
        return (f"{self.scenario} [{self.mode}] {self.outcome}: {self.injected} x{self.times}; "
                f"{self.streams} streams, {self.bytes_verified} bytes verified; extra PUTs "
                f"{self.extra_puts} (complete {self.extra_complete_puts}, allowed "
                f"{self.allowed_extra}, changed-on-disk {self.reuploads_changed_on_disk}); "
                f"losses {self.losses}; recover {rec}; {self.seconds:.0f}s; seed {self.seed}; "
                f"{self.notes}")


def is_chunk_put(head: RequestHead) -> bool:
    """A proxy fault filter: a chunk PUT (not a part copy, whose query names the part)."""
    return head.method == "PUT" and "/chunks/" in head.path and not head.query


# -- what the log says about chunks ------------------------------------------------
def logged(events: Iterable[dict[str, Any]], name: str) -> Counter[tuple[str, int]]:
    """(stream_id, index) -> how many ``name`` events (chunk_uploaded, chunk_changed_on_disk)."""
    return Counter((e["stream_id"], int(e["index"])) for e in events
                   if e.get("event") == name and "index" in e)


class KillLedger:
    """Which chunk uploads each kill interrupted.

    A chunk PUT is *in flight* at a kill when the proxy had its request head
    before the kill and the processor had not yet logged its outcome
    (``chunk_uploaded``, written after the checkpoint commit): S3 may or may not
    have it, and the checkpoint does not record it. Per the contract only such a
    chunk may be sent again, once per kill that caught it."""

    def __init__(self, proxy: RecordingProxy, bucket: str) -> None:
        self.proxy, self.bucket = proxy, bucket
        self.kills = 0
        self.in_flight: Counter[tuple[str, int]] = Counter()  # key -> kills that caught it
        self.kills_in_flight = 0
        self.uploads_in_flight = 0
        self.last_kill = 0.0

    def kill(self, do_kill: Callable[[], None], events: Callable[[], list[dict[str, Any]]],
             since: float | None = None) -> set[tuple[str, int]]:
        """Kill, then compare the chunk PUTs of the run just ended (``events``: its
        log) with the uploads it logged."""
        do_kill()
        at = time.monotonic()
        time.sleep(0.3)  # let the proxy see the dead connections
        uploaded = logged(events(), "chunk_uploaded")
        started: Counter[tuple[str, int]] = Counter()
        for record in self.proxy.requests():
            key = chunk_key(record, self.bucket)
            if key is not None and (self.last_kill if since is None else since) \
                    < record.started_at <= at:
                started[key] += 1
        self.last_kill = at
        caught = {key for key, n in started.items() if n > uploaded.get(key, 0)}
        self.kills += 1
        self.kills_in_flight += bool(caught)
        self.uploads_in_flight += len(caught)
        self.in_flight.update(caught)
        return caught


# -- the end check ------------------------------------------------------------------
def end_check(row: Row, processor: Processor, client: Any, bucket: str, proxy: RecordingProxy,
              sources: dict[str, Path], *, timeout: float = 180.0,
              ledger: KillLedger | None = None, extra_allowed: int | None = None) -> None:
    """Everything finished and nothing lost, duplicated or left over; fills ``row``.

    ``ledger``: extra chunk PUTs per key must not exceed the kills that caught that
    key in flight. Else ``extra_allowed`` (default 0) bounds the extra *complete*
    chunk PUTs (a body the server received whole), beyond re-uploads of chunks that
    changed on disk (``chunk_changed_on_disk``)."""
    docs = {}
    deadline = time.monotonic() + timeout
    for rel in sources:
        docs[rel] = wait_for_metadata(client, bucket, rel, processor=processor,
                                      timeout=max(5.0, deadline - time.monotonic()))
    events = processor.all_events()
    changed = logged(events, "chunk_changed_on_disk")
    # a short tail whose file moved on after a completion began (a writer stalled past
    # the stream timeout, as on a loaded machine) is replaced at its key by a fuller one
    changed.update(logged(events, "short_chunk_replaced"))
    all_puts = chunk_put_counts(proxy, bucket)
    complete_puts = chunk_put_counts(proxy, bucket, complete_only=True)
    prefixes = set()
    for rel, path in sources.items():
        doc, data = docs[rel], path.read_bytes()
        check_stream(client, bucket, doc, data)
        row.bytes_verified += 2 * len(data)  # the chunks and the final object
        prefixes.add(doc["object_key"].rsplit("/", 1)[0] + "/")
        for chunk in doc["chunks"]:
            key = (doc["stream_id"], chunk["index"])
            assert complete_puts[key] >= 1, f"chunk {key} never reached the server whole"
            legit = 1 + changed[key]
            row.extra_puts += max(0, all_puts[key] - legit)
            row.extra_complete_puts += max(0, complete_puts[key] - legit)
            row.reuploads_changed_on_disk += changed[key]
            if ledger is not None:
                assert all_puts[key] - legit <= ledger.in_flight[key], (
                    f"chunk {key}: {all_puts[key]} PUTs, {changed[key]} re-uploads of changed "
                    f"bytes, but only {ledger.in_flight[key]} kills caught it in flight")
    row.streams = len(sources)
    # one lineage per source: nothing under streams/ but the expected stream prefixes
    strays = [k for k in list_keys(client, bucket, "streams/")
              if not any(k.startswith(p) for p in prefixes)]
    assert strays == [], f"objects of unexpected streams (duplicate lineage?): {strays[:5]}"
    uploads = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    assert uploads == [], f"orphaned multipart uploads: {uploads}"
    groups = [k for k in list_keys(client, bucket, "streams/") if "/groups/" in k]
    assert groups == [], f"intermediate objects of a two-level assembly left: {groups[:5]}"
    if ledger is not None:
        row.allowed_extra = ledger.uploads_in_flight
        row.notes.update(kills_in_flight=ledger.kills_in_flight,
                         uploads_in_flight=ledger.uploads_in_flight)
    else:
        row.allowed_extra = extra_allowed or 0
        assert row.extra_complete_puts <= row.allowed_extra, (
            f"{row.extra_complete_puts} chunk bodies reached the server more than once")
    row.losses = 0


# -- small bounded helpers ----------------------------------------------------------
def stop_writers(writers: Iterable[Any]) -> None:
    for w in writers:
        if w.poll() is None:
            w.kill()
        w.wait(timeout=10)


def finish_writers(writers: Iterable[Any], timeout: float) -> None:
    for w in writers:
        _, err = w.communicate(timeout=timeout)
        assert w.returncode == 0, err
