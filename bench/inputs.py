"""The MP4s the clients upload: real H.264 files made once by the bundled ffmpeg.

Generating them takes a while (about a GiB for the full run), so they are cached
across runs (``--cache-dir``, ``$BENCH_CACHE``) and given an old mtime, as finished
recordings the processor takes as idle at once. Every file has its own noise seed,
so no client gains from duplicate content.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from bench.harness import Broken, GiB, log
from bench.service_api import worker_for
from tests.support.videos import make_video


def video_set(cache: Path, smoke: bool) -> tuple[Path, list[Path]]:
    """Finished, real H.264 MP4s made once by the bundled ffmpeg (cached)."""
    if smoke:
        directory, count, spec = cache / "smoke", 2, dict(seconds=16.0)
    else:
        # 1280x720 noise at 48 Mb/s: ~6 MB per second of video, 23 s => ~140 MB a file,
        # 8 files => ~1.05 GiB. Every file has its own noise seed (no duplicate content).
        directory, count, spec = cache / "bulk", 8, dict(seconds=23.0, size="1280x720",
                                                         bitrate_mbps=48.0)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for i in range(count):
        path = directory / f"cam{i:02d}.mp4"
        if not path.exists():
            log(f"generating {path} with ffmpeg (cached for later runs)")
            tmp = directory / f".tmp-cam{i:02d}.mp4"
            make_video(tmp, seed=1000 + i, **spec)  # type: ignore[arg-type]
            # old mtime: a finished recording, idle at once for the processor
            os.utime(tmp, (time.time() - 3600, time.time() - 3600))
            tmp.rename(path)
        files.append(path)
    _only(directory, files)
    total = sum(p.stat().st_size for p in files)
    if not smoke and total < GiB:
        raise Broken(f"bulk set is only {total} bytes; delete {directory} and re-run")
    return directory, files


def _only(directory: Path, files: list[Path]) -> None:
    """Every bulk client uploads the whole directory, so it must hold the set and
    nothing else. A ``frag-*.mp4`` an earlier version of the playlist section cached
    here is removed (it now lives in ``<set>-fragmented/``); anything else is an error
    that names it, rather than byte counts that disagree."""
    for path in directory.iterdir():
        if path in files or path.name.startswith(".tmp-"):
            continue
        if path.name.startswith("frag-") and path.suffix == ".mp4":
            log(f"removing {path}, cached there by an earlier version")
            path.unlink()
            continue
        raise Broken(f"{path} is not part of the input set; remove it and re-run")


def warm_set(cache: Path, work: Path, workers: int,
             slots: set[int]) -> tuple[Path, list[Path]]:
    """One small finished MP4 (0.5 s of video, ~40 KB) for each worker in ``slots``,
    each named so that it routes to that worker: the warm idle run's input. Only the
    workers the measured files land on are warmed: a worker that gets no file pays no
    one-time cost in the measured run either, so warming it would subtract a cost the
    run never had (8 files on 8 workers use 5 of them)."""
    tiny = cache / "warm" / "tiny.mp4"
    if not tiny.exists():
        tiny.parent.mkdir(parents=True, exist_ok=True)
        make_video(tiny.with_name(".tmp-tiny.mp4"), 0.5, seed=7)
        tiny.with_name(".tmp-tiny.mp4").rename(tiny)
    directory = Path(tempfile.mkdtemp(prefix=f"warm-{workers}w-", dir=work))
    by_worker: dict[int, Path] = {}
    k = 0
    while len(by_worker) < len(slots):
        name = f"warm{k:03d}.mp4"
        slot = worker_for(name, workers)
        if slot in slots:
            by_worker.setdefault(slot, directory / name)
        k += 1
    for path in by_worker.values():
        shutil.copyfile(tiny, path)
        os.utime(path, (time.time() - 3600, time.time() - 3600))  # finished: idle at once
    return directory, sorted(by_worker.values())
