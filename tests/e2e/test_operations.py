"""Operating the service: worker restarts, supervisor death, HTTP endpoints, torn logs."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from shared.routing import worker_for
from shared.state.layout import StateDir
from tests.support.bucket import check_stream, wait_for_metadata
from tests.support.http import http_get, wait_status
from tests.support.metrics import scrape
from tests.support.runner import Processor, alive, wait_until, worker_pids
from tests.support.s3server import S3Endpoint, free_port, unique_bucket_name
from tests.support.videos import make_not_mp4, make_video, start_live_writer

pytestmark = pytest.mark.timeout(180)


def test_dead_worker_is_restarted_and_its_stream_finishes(make_processor: Any, client: Any,
                                                          bucket: str) -> None:
    """kill -9 of the worker uploading a stream: the supervisor restarts it in its slot."""
    processor = make_processor(workers=2)
    processor.start()
    processor.wait_for_event("worker_started", count=2)
    slot = worker_for("cam.mp4", 2)
    live = start_live_writer(processor.watch_dir / "cam.mp4", 8.0)
    processor.wait_for_event("chunk_uploaded", timeout=60)
    victim = worker_pids(processor)[slot]
    os.kill(victim, signal.SIGKILL)
    restarted = processor.wait_for_event("worker_restarted", lambda e: e["slot"] == slot)
    assert restarted[0]["pid"] != victim
    live.communicate(timeout=60)
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, (processor.watch_dir / "cam.mp4").read_bytes())
    assert processor.proc is not None and processor.proc.poll() is None


def test_workers_exit_when_the_supervisor_is_killed(make_processor: Any) -> None:
    """kill -9 of the supervisor alone: its workers notice and exit within seconds."""
    processor = make_processor(workers=3)
    processor.start()
    processor.wait_for_event("worker_started", count=3)
    pids = list(worker_pids(processor).values())
    assert len(pids) == 3 and all(alive(p) for p in pids)
    processor.signal(signal.SIGKILL)
    wait_until(lambda: not any(alive(p) for p in pids), 10,
               "orphaned workers still hold the LevelDB locks", every=0.1)


def test_health_ready_and_metrics_endpoints(make_processor: Any, client: Any, bucket: str,
                                            tmp_path: Path) -> None:
    """/healthz and /readyz answer 200, /metrics aggregates the workers' counters."""
    port = free_port()
    processor = make_processor(workers=2, extra=["--metrics-port", str(port),
                                                 "--metrics-host", "127.0.0.1"])
    processor.start()
    base = f"http://127.0.0.1:{port}"
    assert wait_status(f"{base}/healthz", 200).strip() == "ok"
    wait_status(f"{base}/readyz", 200)
    make_not_mp4(processor.watch_dir / "a.mp4", (5 << 20) + 10)
    make_not_mp4(processor.watch_dir / "b.mp4", (5 << 20) + 20)
    wait_for_metadata(client, bucket, "a.mp4", processor=processor)
    wait_for_metadata(client, bucket, "b.mp4", processor=processor)

    # gauges are refreshed with each worker's heartbeat, once a second
    text, values = wait_until(
        lambda: (m := scrape(base))[1]["processor_active_streams"] == 0 and m,
        10, "active streams back to 0")
    assert values["processor_chunks_uploaded_total"] == 4   # two workers, summed
    assert values["processor_uploaded_bytes_total"] == 2 * ((5 << 20) + 15)
    assert values['processor_streams_completed_total{status="complete"}'] == 2
    assert "processor_upload_retries_total" in text or "processor_upload_retries" in text
    assert values["processor_active_streams"] == 0
    assert values['processor_chunk_upload_seconds_count'] == 4
    assert values['processor_s3_requests_total{operation="put_chunk",outcome="ok"}'] == 4
    assert values["processor_s3_ready"] == 1
    assert values["processor_workers_alive"] == values["processor_workers_configured"] == 2
    assert values["processor_lag_bytes"] == 0 and values["processor_oldest_stream_age_seconds"] == 0
    assert values["processor_checkpoint_write_seconds_count"] >= 6  # 2 streams, 2 chunks, 2 ends
    assert values["processor_dispatch_seconds_count"] >= 2
    assert "a.mp4" not in text and "stream_id" not in text  # no per-stream labels
    assert http_get(f"{base}/nope")[0] == 404


def test_readyz_fails_while_s3_is_unreachable(tmp_path: Path, s3: S3Endpoint) -> None:
    """With the endpoint down, /healthz stays 200 and /readyz answers 503."""
    port = free_port()
    dead = s3.with_url(f"http://127.0.0.1:{free_port()}")
    processor = Processor(workdir=tmp_path, endpoint=dead, bucket=unique_bucket_name(),
                          extra=["--metrics-port", str(port), "--metrics-host", "127.0.0.1"])
    try:
        processor.start()
        wait_status(f"http://127.0.0.1:{port}/healthz", 200)
        body = wait_status(f"http://127.0.0.1:{port}/readyz", 503)
        assert "not reachable" in body
        assert s3.secret_key not in processor.log_path().read_text()
        processor.wait_for_event("bucket_unavailable")
    finally:
        processor.stop()


def test_torn_wal_tail_is_cut_and_the_stream_still_completes(
        make_processor: Any, client: Any, bucket: str, finished_video: Path) -> None:
    """Garbage at the end of a worker's write-ahead log is cut and reported at start."""
    processor = make_processor(workers=1, stream_timeout=30.0)
    processor.start()
    shutil.copy(finished_video, processor.watch_dir / "cam.mp4")
    processor.wait_for_event("chunk_uploaded")
    processor.kill9()
    wal = StateDir(processor.state_dir).worker(0).wal
    with open(wal, "ab") as f:
        f.write(b"\x40\x00\x00\x00\xde\xad\xbe\xefpartial record")  # a torn append
    processor.stream_timeout = 1.0
    processor.start()
    truncated = processor.wait_for_event("wal_tail_truncated")
    assert truncated[0]["bytes"] == 22
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    check_stream(client, bucket, doc, (processor.watch_dir / "cam.mp4").read_bytes())


@pytest.fixture(scope="module")
def finished_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_video(tmp_path_factory.mktemp("videos") / "finished.mp4", 8.0)
