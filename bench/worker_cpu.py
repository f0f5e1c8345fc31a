#!/usr/bin/env python3
"""One worker's own CPU for a backlog, for before/after runs of a hot path.

The whole-group figures of ``bench/run.py`` carry five processes' start-up and the
machine's noise, which hide a few percent. This runs one worker's tracker in this
process (``tests/worker/inprocess.py``: the worker's own wiring, real LevelDB, a moto
server in its own process) over the MP4s given, until each is complete, and prints
the ``time.process_time()`` of that loop alone: the worker's CPU, without the server's.

Before/after: check out the older commit in a worktree and run both in turn, pair by
pair, from the same directory of inputs, e.g.::

    git worktree add /tmp/prev HEAD~1
    for i in 1 2 3 4 5 6; do
      PYTHONPATH=/tmp/prev python /tmp/prev/bench/worker_cpu.py DIR
      python bench/worker_cpu.py DIR
    done

(an older commit without this file: copy it there). The inputs are read from the page
cache after the first pass.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":  # as a script: the repository root in place of bench/
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import argparse  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import structlog  # noqa: E402

import worker  # noqa: E402
from shared.settings import Settings  # noqa: E402
from tests.support.s3server import moto_server, unique_bucket_name  # noqa: E402
from tests.worker.inprocess import build_local  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="the MP4s to upload (each linked in)")
    parser.add_argument("--chunk-size", type=int, default=10 << 20)
    parser.add_argument("--no-live-playlist", dest="live_playlist", action="store_false")
    args = parser.parse_args(argv)
    if not args.directory.is_dir():
        parser.error(f"{args.directory} is not a directory")
    files = sorted(p for p in args.directory.iterdir() if p.suffix == ".mp4")
    if not files:
        parser.error(f"no .mp4 in {args.directory}")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(40))
    with moto_server() as ep:
        os.environ.update(ep.env())
        work = Path(tempfile.mkdtemp(prefix="worker-cpu-"))
        try:
            watch = work / "in"
            watch.mkdir()
            for path in files:
                os.link(path, watch / path.name)
            bucket = unique_bucket_name("worker-cpu")
            ep.client().create_bucket(Bucket=bucket)
            settings = Settings(watch_dir=watch, state_dir=work / "state",
                                chunk_size=args.chunk_size, stream_timeout=0.5,
                                s3_endpoint=ep.url, s3_bucket=bucket, s3_region=ep.region,
                                recover_from_bucket=False, live_playlist=args.live_playlist)
            tracker, close = build_local(work, settings)
            for path in files:
                tracker.touch(path.name)
            started = time.process_time()
            while len(tracker.completions) < len(files):
                if not tracker.step():
                    time.sleep(0.01)
            cpu = time.process_time() - started
            close()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    gib = sum(p.stat().st_size for p in files) / 2**30
    print(f"{Path(worker.__file__).parent.parent}: {cpu:.3f} CPU-s, "
          f"{cpu / gib:.3f} CPU-s per GiB ({len(files)} files, {gib:.3f} GiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
