"""A completion cut short after its short tail chunk went up, while the file grows on.

Completion uploads the short last chunk, then checks that the file is unchanged. A
recorder that writes again then (a pause longer than the stream timeout) sends the
stream back to recording with that short chunk committed. Before the fix, the next
chunk started after it, or at ``index * chunk_size``, which left a gap in the object or
a part under S3's 5 MiB minimum, so the stream never completed. Now the short tail is
dropped and replaced by a fuller chunk at its key, as a reopen does.

Driven in-process (real tracker, files, LevelDB and the test S3 server). The one
stand-in is a wrapper around the uploader that appends to the file right after the
tail chunk is acknowledged: the moment cannot be hit reliably from outside.
"""

from __future__ import annotations

import os
from typing import Any

from structlog.testing import capture_logs

from tests.support.s3server import S3Endpoint
from tests.worker.inprocess import InProcessWorkers, run_until
from worker.planning import ChunkSpan
from worker.stream import Stream

CHUNK = 5 << 20


def test_a_file_that_grows_after_its_tail_went_up_is_assembled_whole(
        workers: InProcessWorkers, s3: S3Endpoint) -> None:
    tracker, storage = workers.build(stream_timeout=0.3)
    path = workers.watch / "cam.mp4"
    first = os.urandom(2 * CHUNK + (1 << 20))   # two full chunks and a 1 MiB tail
    more = os.urandom(CHUNK + (1 << 20))        # written once the tail is acknowledged
    path.write_bytes(first)
    upload = tracker.uploader.upload_chunk
    grown: list[int] = []

    def upload_then_grow(stream: Stream, span: ChunkSpan, live: bool = True) -> None:
        upload(stream, span, live)
        if span.size < CHUNK and not grown:
            with open(path, "ab") as f:
                f.write(more)
            grown.append(span.index)

    tracker.uploader.upload_chunk = upload_then_grow  # type: ignore[method-assign]
    with capture_logs() as logs:
        tracker.touch("cam.mp4")
        run_until(tracker, lambda: any(e["event"] == "stream_completed" for e in logs))
    assert grown == [2]
    events = [e["event"] for e in logs]
    assert "stream_changed_during_work" in events and "short_chunk_replaced" in events
    (done,) = [e for e in logs if e["event"] == "stream_completed"]
    assert done["total_size_bytes"] == len(first) + len(more)
    client: Any = s3.client()
    key = next(k["Key"] for k in client.list_objects_v2(Bucket=storage.bucket)["Contents"]
               if k["Key"].endswith("/cam.mp4"))
    body = client.get_object(Bucket=storage.bucket, Key=key)["Body"].read()
    assert body == first + more
    chunks = [c for c in tracker.store.chunks(done["stream_id"])]
    assert [c.offset for c in chunks] == [0, CHUNK, 2 * CHUNK, 3 * CHUNK]
    assert [c.size for c in chunks] == [CHUNK, CHUNK, CHUNK, 2 << 20]
