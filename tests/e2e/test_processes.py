"""What runs where: FFmpeg's libraries live in each worker's probe helper, not in
the worker, and the helper goes away with its worker."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.support.bucket import check_stream, wait_for_metadata
from tests.support.runner import wait_until
from tests.support.videos import make_video

pytestmark = pytest.mark.timeout(120)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode()


def _maps(pid: int) -> str:
    return (Path("/proc") / str(pid) / "maps").read_text()


def test_ffmpeg_is_loaded_by_the_probe_helper_only(make_processor: Any, client: Any,
                                                   bucket: str, tmp_path: Path) -> None:
    processor = make_processor(workers=1)
    processor.start()
    processor.wait_for_event("worker_started")
    video = make_video(tmp_path / "clip.mp4", 3.0)
    shutil.copy(video, processor.watch_dir / "clip.mp4")
    doc = wait_for_metadata(client, bucket, "clip.mp4", processor=processor)
    check_stream(client, bucket, doc, video.read_bytes())
    assert doc["media_duration_seconds"] == pytest.approx(3.0, abs=0.2)

    assert processor.proc is not None
    (worker,) = [p for p in _children(processor.proc.pid) if "spawn_main" in _cmdline(p)]
    (helper,) = [p for p in _children(worker) if "worker.prober" in _cmdline(p)]
    assert "libavformat" in _maps(helper)
    assert "libavformat" not in _maps(worker)

    # the supervisor SIGKILLs a worker that overruns the drain timeout: its helper,
    # in the middle of nothing, must not linger (it reads EOF and exits)
    os.kill(worker, signal.SIGKILL)

    def helper_gone() -> bool:
        try:
            stat = Path(f"/proc/{helper}/stat").read_text()
        except OSError:
            return True
        return stat[stat.rfind(")") + 2] == "Z"  # exited, not reaped yet

    wait_until(helper_gone, 10, "the probe helper ended with its worker", processor.tail)
