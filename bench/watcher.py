"""The supervisor's CPU per file event: watchdog's inotify ``Observer`` against the
inotify descriptor read by the main loop (``supervisor.watcher.InotifyWatcher``).

Both sides do what the supervisor does with an event: take it from the watch, filter
and coalesce the path, hash it onto one of 8 workers and send a pickled ``Touch`` down
that worker's pipe (the reading ends are drained by 8 child processes). A writer
process appends 4 KiB to one of 500 open files at a steady rate, as the many-streams
section of ``bench/run.py`` does. The figure is this process's own CPU (all its
threads) per dispatched event; the two ways alternate, so a noisy machine affects both.

    .venv/bin/python bench/watcher.py [--rounds 3] [--seconds 15] [--rate 250]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import selectors
import sys
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.messages import Touch  # noqa: E402
from shared.paths import relative_stream_path  # noqa: E402
from shared.routing import worker_for  # noqa: E402
from supervisor.events import Inbox, PathChanged  # noqa: E402
from supervisor.watcher import InotifyWatcher  # noqa: E402

WORKERS = 8
FILES = 500
EXTENSIONS = ("mp4",)


def _sink(conn: Connection) -> None:
    try:
        while True:
            conn.recv()
    except EOFError:
        pass


def _writer(watch: Path, rate: float, seconds: float) -> None:
    fds = [os.open(watch / f"s{i:04d}.mp4", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
           for i in range(FILES)]
    piece = b"x" * 4096
    start = time.monotonic()
    n = 0
    while time.monotonic() - start < seconds:
        delay = start + n / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        os.write(fds[n % FILES], piece)
        n += 1


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _observer(watch: Path) -> tuple[int, Callable[[], list[object]], Callable[[], None]]:
    """watchdog's inotify Observer, its callback putting into the inbox (the old way)."""
    from watchdog.observers import Observer

    from supervisor.watcher import _EVENTS, _ToInbox

    inbox = Inbox()
    observer = Observer()
    observer.schedule(_ToInbox(inbox), str(watch), recursive=True, event_filter=_EVENTS)
    observer.daemon = True
    observer.start()

    def close() -> None:
        observer.stop()
        observer.join()
        inbox.close()

    return inbox.wake_r, inbox.drain, close


def _direct(watch: Path) -> tuple[int, Callable[[], list[object]], Callable[[], None]]:
    watcher = InotifyWatcher(watch, recursive=True)
    return watcher.fileno(), watcher.read, watcher.close  # type: ignore[return-value]


def run(way: str, rate: float, seconds: float) -> tuple[int, float]:
    """Events dispatched, and this process's CPU seconds, over one writer run."""
    ctx = multiprocessing.get_context("fork")
    with tempfile.TemporaryDirectory(prefix="vsp-watch-") as tmp:
        watch = Path(tmp)
        pipes, sinks = [], []
        for _ in range(WORKERS):
            ours, theirs = ctx.Pipe()
            sink = ctx.Process(target=_sink, args=(theirs,), daemon=True)
            sink.start()
            theirs.close()
            pipes.append(ours)
            sinks.append(sink)
        fd, take, close = (_observer if way == "observer" else _direct)(watch)
        selector = selectors.DefaultSelector()
        selector.register(fd, selectors.EVENT_READ)
        writer = ctx.Process(target=_writer, args=(watch, rate, seconds))
        cpu0 = _cpu()
        writer.start()
        sent = 0
        until = time.monotonic() + seconds + 1.0
        while time.monotonic() < until:
            if not selector.select(timeout=0.2):
                continue
            paths: dict[str, float] = {}
            for item in take():
                if isinstance(item, PathChanged):
                    rel = relative_stream_path(watch, item.path, EXTENSIONS, True)
                    if rel is not None:
                        paths.setdefault(rel, item.seen_at)
            for rel, seen_at in paths.items():
                pipes[worker_for(rel, WORKERS)].send(Touch(rel, seen_at))
                sent += 1
        cpu = _cpu() - cpu0
        writer.join()
        selector.close()
        close()
        for pipe in pipes:
            pipe.close()
        for sink in sinks:  # forked: each holds the pipes made before it, so no EOF
            sink.terminate()
            sink.join()
    return sent, cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rate", type=float, default=250.0, help="appends per second")
    args = parser.parse_args()
    per_event: dict[str, list[float]] = {"observer": [], "direct": []}
    for i in range(args.rounds):
        for way in ("observer", "direct"):
            sent, cpu = run(way, args.rate, args.seconds)
            per_event[way].append(cpu / max(sent, 1))
            print(f"round {i + 1} {way:8s}: {sent} events, {cpu:.2f} CPU-s, "
                  f"{100 * cpu / args.seconds:.1f}% of a core, "
                  f"{1000 * cpu / max(sent, 1):.3f} ms/event", flush=True)
    old = sorted(per_event["observer"])[len(per_event["observer"]) // 2]
    new = sorted(per_event["direct"])[len(per_event["direct"]) // 2]
    print(f"median CPU per event: observer {1000 * old:.3f} ms, direct {1000 * new:.3f} ms "
          f"({new / old:.2f}x the observer's)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
