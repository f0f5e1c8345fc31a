"""End to end: a finished lineage's checkpoint is dropped once nothing can need it
(its file is gone, or its path has a newer lineage), and only then; S3 keeps its objects."""

from __future__ import annotations

import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from supervisor.inspection import read_state
from tests.e2e.harness import check_stream, wait_for_metadata
from tests.support.proxy import RecordingProxy
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


def test_deleted_and_replaced_files_leave_no_checkpoint_behind(
        make_processor: Any, client: Any, bucket: str) -> None:
    """A completed file deleted, a completed file truncated (new lineage), and a file
    deleted while growing: each old lineage's records go, the objects stay, and the
    file that is still there keeps its checkpoint."""
    processor = make_processor(workers=2, stream_timeout=1.5)
    processor.start()
    data = make_not_mp4(processor.workdir / "src.bin", (3 << 20) + 777).read_bytes()
    for name in ("kept.mp4", "deleted.mp4", "truncated.mp4"):
        (processor.watch_dir / name).write_bytes(data)
    docs = {name: wait_for_metadata(client, bucket, name, processor=processor)
            for name in ("kept.mp4", "deleted.mp4", "truncated.mp4")}

    (processor.watch_dir / "deleted.mp4").unlink()
    _forgotten(processor, stream_id=docs["deleted.mp4"]["stream_id"], reason="source_gone")

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
    _forgotten(processor, stream_id=gone["stream_id"], reason="source_gone")
    _stop(processor)

    assert _recorded(processor) == {docs["kept.mp4"]["stream_id"]: "kept.mp4",
                                    second["stream_id"]: "truncated.mp4"}
    for name in ("kept.mp4", "deleted.mp4", "truncated.mp4"):
        check_stream(client, bucket, docs[name], data)  # forgetting deletes nothing in S3
    check_stream(client, bucket, second, data[: 1 << 20])


def test_file_deleted_while_stopped_is_forgotten_at_start_and_nothing_is_resent(
        make_processor: Any, client: Any, bucket: str, proxy: RecordingProxy,
        tmp_path: Path) -> None:
    """Start-up drops the checkpoint of a completed file that vanished meanwhile, keeps
    the other, and sends nothing; the vanished path can then start over."""
    processor = make_processor(workers=1, stream_timeout=1.5)
    processor.start()
    data = make_not_mp4(tmp_path / "src.bin", (2 << 20) + 5).read_bytes()
    for name in ("stays.mp4", "goes.mp4"):
        (processor.watch_dir / name).write_bytes(data)
    docs = {name: wait_for_metadata(client, bucket, name, processor=processor)
            for name in ("stays.mp4", "goes.mp4")}
    _stop(processor)

    (processor.watch_dir / "goes.mp4").unlink()
    proxy.clear()
    processor.start()
    _forgotten(processor, stream_id=docs["goes.mp4"]["stream_id"], reason="source_gone")
    processor.wait_for_event("worker_started")
    _stop(processor)
    assert proxy.count("PUT") == 0 and proxy.count("POST") == 0
    assert _recorded(processor) == {docs["stays.mp4"]["stream_id"]: "stays.mp4"}

    shutil.copy(tmp_path / "src.bin", processor.watch_dir / "goes.mp4")
    processor.start()
    again = wait_for_metadata(client, bucket, "goes.mp4", processor=processor,
                              predicate=lambda d: d["stream_id"] != docs["goes.mp4"]["stream_id"])
    check_stream(client, bucket, again, data)
