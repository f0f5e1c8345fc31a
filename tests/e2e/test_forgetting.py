"""End to end: a finished lineage's checkpoint is dropped once nothing can need it (its
path has a newer lineage, or it was ended early because its file was deleted or
replaced while recording), and only then; S3 keeps its objects. A normally completed
file keeps its checkpoint even while it is missing, so it is not uploaded again when
it comes back."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from shared.state.layout import StateDir
from shared.state.records import StreamRecord, StreamStatus
from shared.state.store import CheckpointStore
from supervisor.inspection import read_state
from tests.support.bucket import check_stream, wait_for_metadata
from tests.support.markers import flush_worker, is_marker
from tests.support.proxy import RecordingProxy
from tests.support.puts import writes
from tests.support.videos import make_not_mp4

pytestmark = pytest.mark.timeout(240)


def _recorded(processor: Any) -> dict[str, str]:
    """stream_id -> rel_path of every lineage in the stopped processor's checkpoints."""
    state = read_state(processor.state_dir)
    return {s["stream_id"]: s["rel_path"] for w in state["workers"] for s in w["streams"]}


def _stop(processor: Any) -> None:
    processor.signal(signal.SIGTERM)
    assert processor.wait(timeout=30) == 0


def _forgotten(processor: Any, **match: str) -> list[dict[str, Any]]:
    return processor.wait_for_event(
        "stream_forgotten", lambda e: all(e.get(k) == v for k, v in match.items()))


def test_replaced_and_ended_lineages_go_and_a_new_file_at_their_path_is_uploaded(
        make_processor: Any, client: Any, bucket: str) -> None:
    """A completed file truncated (a new lineage follows) and a file deleted while
    growing: each old lineage's records go, their objects stay, and a file written
    later at the deleted path is a new stream (it used to be ignored)."""
    processor = make_processor(workers=2, stream_timeout=1.5)
    processor.start()
    data = make_not_mp4(processor.workdir / "src.bin", (3 << 20) + 777).read_bytes()
    for name in ("kept.mp4", "truncated.mp4"):
        (processor.watch_dir / name).write_bytes(data)
    docs = {name: wait_for_metadata(client, bucket, name, processor=processor)
            for name in ("kept.mp4", "truncated.mp4")}

    with open(processor.watch_dir / "truncated.mp4", "r+b") as f:  # same inode, shorter
        f.truncate(1 << 20)
    _forgotten(processor, stream_id=docs["truncated.mp4"]["stream_id"], reason="superseded")
    second = wait_for_metadata(client, bucket, "truncated.mp4", processor=processor,
                               predicate=lambda d: d["stream_id"] !=
                               docs["truncated.mp4"]["stream_id"])

    growing = processor.watch_dir / "growing.mp4"
    growing.write_bytes(data[: 1 << 20])
    processor.wait_for_event("stream_detected", lambda e: e["rel_path"] == "growing.mp4")
    growing.unlink()
    gone = wait_for_metadata(client, bucket, "growing.mp4", processor=processor)
    assert gone["status"] == "source_deleted"
    _forgotten(processor, stream_id=gone["stream_id"], reason="source_deleted")
    growing.write_bytes(data)
    again = wait_for_metadata(client, bucket, "growing.mp4", processor=processor,
                              predicate=lambda d: d["stream_id"] != gone["stream_id"])
    _stop(processor)

    assert _recorded(processor) == {docs["kept.mp4"]["stream_id"]: "kept.mp4",
                                    second["stream_id"]: "truncated.mp4",
                                    again["stream_id"]: "growing.mp4"}
    for name in ("kept.mp4", "truncated.mp4"):
        check_stream(client, bucket, docs[name], data)  # forgetting deletes nothing in S3
    check_stream(client, bucket, second, data[: 1 << 20])
    check_stream(client, bucket, again, data)


def test_a_completed_file_moved_away_and_back_is_not_uploaded_again(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy,
        tmp_path: Path) -> None:
    """Moved out while running, and out while stopped (as when a mount is not there
    yet at start-up), then back: its checkpoint was kept, so nothing is sent.

    Each step waits for a marker file (tests/support/markers.py) to complete: the
    worker has then handled the file's disappearance or return, and whatever it
    would have sent for it has been sent."""
    processor = make_processor(workers=1, stream_timeout=1.0)
    processor.start()
    data = make_not_mp4(tmp_path / "src.bin", (2 << 20) + 5).read_bytes()
    for name in ("running.mp4", "stopped.mp4"):
        (processor.watch_dir / name).write_bytes(data)
    docs = {name: wait_for_metadata(client, bucket, name, processor=processor)
            for name in ("running.mp4", "stopped.mp4")}
    aside = processor.workdir / "aside"
    aside.mkdir()
    proxy.clear()
    markers = []
    os.rename(processor.watch_dir / "running.mp4", aside / "running.mp4")
    markers.append(flush_worker(processor, "running.mp4"))  # seen missing by its worker
    os.rename(aside / "running.mp4", processor.watch_dir / "running.mp4")
    markers.append(flush_worker(processor, "running.mp4"))  # seen back
    _stop(processor)

    os.rename(processor.watch_dir / "stopped.mp4", aside / "stopped.mp4")
    processor.start()
    processor.wait_for_event("supervisor_started")
    markers.append(flush_worker(processor, "stopped.mp4"))  # the start-up scan handled
    os.rename(aside / "stopped.mp4", processor.watch_dir / "stopped.mp4")
    markers.append(flush_worker(processor, "stopped.mp4"))  # seen back
    _stop(processor)

    assert writes(proxy, bucket, except_prefixes=[m.object_prefix for m in markers]) == []
    detected = [e["rel_path"] for e in processor.all_events()
                if e.get("event") == "stream_detected" and not is_marker(e["rel_path"])]
    assert sorted(detected) == ["running.mp4", "stopped.mp4"]  # each once, when first made
    assert not [e for e in processor.all_events() if e.get("event") == "stream_forgotten"]
    recorded = {sid: rel for sid, rel in _recorded(processor).items() if not is_marker(rel)}
    assert recorded == {doc["stream_id"]: name for name, doc in docs.items()}


def test_a_lineage_ended_just_before_a_crash_does_not_block_its_path(
        make_processor: Any, client: Any, bucket: str, tmp_path: Path) -> None:
    """A kill between ending a replaced file's lineage and starting the next one leaves
    the path pointing at a completed, ended lineage. Start-up drops it, so the file now
    at the path is uploaded instead of being ignored for good."""
    processor = make_processor(workers=1, stream_timeout=1.0)
    data = make_not_mp4(tmp_path / "src.bin", (1 << 20) + 3).read_bytes()
    processor.watch_dir.mkdir(parents=True)
    target = processor.watch_dir / "cam.mp4"
    target.write_bytes(data)
    st = target.stat()
    store = CheckpointStore(StateDir(processor.state_dir).worker(0))
    ended = StreamRecord(stream_id="cam-0badc0de", rel_path="cam.mp4", dev=st.st_dev,
                         ino=st.st_ino + 1, chunk_size=5 << 20, started_at=time.time() - 60,
                         size=len(data), mtime_ns=st.st_mtime_ns)
    store.start_stream(ended)
    store.save_stream(ended.evolve(status=StreamStatus.COMPLETE, end_reason="source_replaced",
                                   completed_at=time.time() - 30))
    store.close()
    processor.start()
    _forgotten(processor, stream_id="cam-0badc0de", reason="source_replaced")
    doc = wait_for_metadata(client, bucket, "cam.mp4", processor=processor)
    assert doc["stream_id"] != "cam-0badc0de"
    check_stream(client, bucket, doc, data)
