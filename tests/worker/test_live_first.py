"""Live streams before backlog on one worker (contract §8), in-process: the real tracker,
files, LevelDB and the test S3 server. The one stand-in holds backlog chunk PUTs at the
storage until the test lets them go, so that "a live chunk does not wait behind a
backlog body on its own worker" is observed, not timed."""

from __future__ import annotations

import os
import threading
import time
from typing import Any

from structlog.testing import capture_logs

from tests.worker.inprocess import InProcessWorkers, run_until
from worker import report

CHUNK = 5 << 20


def uploaded(logs: list[dict[str, Any]], stream_id: str) -> list[int]:
    return [e["index"] for e in logs
            if e["event"] == "chunk_uploaded" and e["stream_id"] == stream_id]


def test_a_live_chunk_goes_while_a_backlog_body_is_held_and_both_finish(
        workers: InProcessWorkers) -> None:
    tracker, storage = workers.build(stream_timeout=3.0)
    old = workers.watch / "old.mp4"
    old.write_bytes(os.urandom(2 * CHUNK))
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))          # complete on disk when first seen
    camera = workers.watch / "camera.mp4"
    put = storage.put_chunk
    held = threading.Event()
    release = threading.Event()
    classes: list[tuple[str, bool, bool]] = []   # (key, live, on the loop's thread)

    def holding_put(key: str, data: Any, digest: str, live: bool = True) -> None:
        classes.append((key, live, threading.current_thread() is threading.main_thread()))
        if not live:
            held.set()
            assert release.wait(30)
        put(key, data, digest, live)

    storage.put_chunk = holding_put  # type: ignore[method-assign]
    with capture_logs() as logs:
        tracker.touch("old.mp4")
        run_until(tracker, held.is_set)          # a backlog body is on its way, and held
        camera.write_bytes(os.urandom(CHUNK + 1000))  # written just now: live
        tracker.touch("camera.mp4")

        def ids() -> dict[str, str]:
            return {e["rel_path"]: e["stream_id"] for e in logs
                    if e["event"] == "stream_detected"}

        run_until(tracker, lambda: uploaded(logs, ids().get("camera.mp4", "")) == [0])
        assert uploaded(logs, ids()["old.mp4"]) == []  # still held: the live chunk went first
        progress = {p.rel_path: p.priority for p in report.progress(tracker, 10)}
        assert progress == {"old.mp4": "backlog", "camera.mp4": "live"}
        assert report.backlog_bytes(tracker) == 2 * CHUNK
        assert report.lag_bytes(tracker) == 2 * CHUNK + 1000
        release.set()
        run_until(tracker, lambda: sum(e["event"] == "stream_completed" for e in logs) == 2)
    names = ids()
    assert uploaded(logs, names["old.mp4"]) == [0, 1]
    live_puts = [(live, on_loop) for key, live, on_loop in classes if names["camera.mp4"] in key]
    backlog_puts = [(live, on_loop) for key, live, on_loop in classes if names["old.mp4"] in key]
    assert live_puts[0] == (True, True)                       # its full chunk, from the loop
    assert backlog_puts == [(False, False), (False, False)]   # from the lane, as backlog


def test_a_failed_backlog_put_on_the_lane_backs_off_and_is_sent_again(
        workers: InProcessWorkers) -> None:
    from shared.s3 import ErrorKind, StorageError

    tracker, storage = workers.build(stream_timeout=1.0)
    old = workers.watch / "old.mp4"
    data = os.urandom(CHUNK + 10)
    old.write_bytes(data)
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    put = storage.put_chunk
    failures = [StorageError("put_chunk", ErrorKind.TRANSIENT, "injected")]

    def failing_once(key: str, body: Any, digest: str, live: bool = True) -> None:
        if failures and not live:
            raise failures.pop()
        put(key, body, digest, live)

    storage.put_chunk = failing_once  # type: ignore[method-assign]
    with capture_logs() as logs:
        tracker.touch("old.mp4")
        run_until(tracker, lambda: any(e["event"] == "stream_completed" for e in logs))
    assert any(e["event"] == "s3_retry" and e["operation"] == "put_chunk" for e in logs)
    assert [e["index"] for e in logs if e["event"] == "chunk_uploaded"] == [0, 1]
    assert not tracker.wal.pending()
