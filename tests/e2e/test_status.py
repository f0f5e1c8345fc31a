"""`processor status` and `processor inspect` against a real running (and stopped) service."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import wait_for_metadata
from tests.support.runner import processor_command, wait_until
from tests.support.s3server import free_port
from tests.support.videos import start_live_writer

pytestmark = pytest.mark.timeout(180)


def run(args: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200", "TERM": "dumb"}
    return subprocess.run(processor_command() + args, capture_output=True, text=True,
                          timeout=60, env=env, **kwargs)


def poll_status(url: str, predicate: Any, timeout: float = 15.0) -> dict[str, Any]:
    """The first /streams document (via `processor status --json`) satisfying ``predicate``;
    workers report once a second, so the view trails the logs by up to that."""
    seen: list[dict[str, Any]] = []

    def matching() -> dict[str, Any] | None:
        seen[:] = [json.loads(run(["status", "--json", "--url", url]).stdout)]
        return seen[0] if predicate(seen[0]) else None

    found: dict[str, Any] = wait_until(matching, timeout, "a matching /streams document",
                                       lambda: str(seen), every=0.3)
    return found


def test_status_shows_progress_completions_and_workers(make_processor: Any, client: Any,
                                                       bucket: str) -> None:
    """While a live stream uploads, status shows it with progress; afterwards, as done."""
    port = free_port()
    processor = make_processor(workers=2, stream_timeout=3.0,
                               extra=["--metrics-port", str(port), "--metrics-host", "127.0.0.1",
                                      "--bwlimit", "64MiB/s"])
    processor.start()
    processor.wait_for_event("worker_started", count=2)
    url = f"http://127.0.0.1:{port}"
    live = start_live_writer(processor.watch_dir / "cam.mp4", 8.0)
    processor.wait_for_event("chunk_uploaded")
    raw = poll_status(url, lambda d: d["streams"] and d["streams"][0]["bytes_uploaded"] > 0)
    [stream] = raw["streams"]
    assert stream["rel_path"] == "cam.mp4" and stream["state"] in ("growing", "finalizing")
    assert 0 < stream["bytes_uploaded"] <= stream["bytes_on_disk"]
    assert stream["chunks"] >= 1 and 0 <= stream["completes_in"] <= 3.0
    assert stream["priority"] == "live" and raw["bwlimit"] == "64MiB/s"
    assert [w["alive"] for w in raw["workers"]] == [True, True]
    shown = run(["status", "--url", url])
    assert shown.returncode == 0
    assert "cam.mp4" in shown.stdout and stream["stream_id"] in shown.stdout
    assert "Workers" in shown.stdout and "Active streams" in shown.stdout
    assert "uplink cap 64MiB/s" in shown.stdout and "live" in shown.stdout
    live.communicate(timeout=60)
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    after = poll_status(url, lambda d: not d["streams"])
    [done] = after["recent_completions"]
    assert (done["stream_id"], done["total_size_bytes"]) == (doc["stream_id"],
                                                              doc["total_size_bytes"])
    assert "complete" in run(["status", "--url", url]).stdout


def test_status_reports_an_unreachable_service(tmp_path: Path) -> None:
    """No service listening: one clear line on stderr and exit status 1."""
    result = run(["status", "--url", f"http://127.0.0.1:{free_port()}"])
    assert result.returncode == 1
    assert "cannot read" in result.stderr and result.stderr.count("\n") == 1


def test_inspect_prints_checkpoints_of_a_stopped_service(make_processor: Any, client: Any,
                                                         bucket: str) -> None:
    """inspect refuses while the service runs, then lists its streams once it stopped."""
    processor = make_processor(workers=2, stream_timeout=1.0)
    processor.start()
    (processor.watch_dir / "a.mp4").write_bytes(os.urandom((5 << 20) + 7))
    doc = wait_for_metadata(client, bucket, "a.mp4", processor=processor)
    busy = run(["inspect", "--state-dir", str(processor.state_dir), "--json"])
    assert busy.returncode == 1 and "Stop it first" in busy.stderr
    processor.signal(signal.SIGTERM)
    assert processor.wait(timeout=20) == 0
    result = run(["inspect", "--state-dir", str(processor.state_dir), "--json"])
    assert result.returncode == 0, result.stderr
    state = json.loads(result.stdout)
    streams = [s for w in state["workers"] for s in w["streams"]]
    [stream] = streams
    assert stream["stream_id"] == doc["stream_id"] and stream["status"] == "complete"
    assert stream["bytes_uploaded"] == (5 << 20) + 7 and stream["chunks"] == 2
    assert all(w["pending_intents"] == [] for w in state["workers"])
    table = run(["inspect", "--state-dir", str(processor.state_dir)])
    assert doc["stream_id"] in table.stdout
