"""The worker process's life: start-up, the loop, and exit.

Started by the supervisor with ``spawn``, so the LevelDB handle, the boto3 client
and every file descriptor are opened here, never inherited. The loop owns the
mailbox and the heartbeat: a reader thread keeps the supervisor's pipe drained,
turning a ``Stop`` (or a vanished supervisor) into the stop flag at once and queuing
file events for the loop; the loop sends a heartbeat with its progress report
between streams. Code deep inside one stream's work gets only ``Liveness``: a
rate-limited "still alive" and the stop check. SIGTERM only sets the stop flag;
work stops between requests.
"""

from __future__ import annotations

import gc
import os
import queue
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from shared import metrics
from shared.logs import configure_logging, get_logger
from shared.messages import (
    EXIT_OK,
    EXIT_STATE_UNAVAILABLE,
    EXIT_STATE_WRITE_FAILED,
    Heartbeat,
    Remove,
    Stop,
    Touch,
)
from shared.settings import Settings
from shared.state.errors import StateWriteError, is_disk_full
from shared.state.layout import StateDir
from shared.uplink import Uplink
from worker import report
from worker.liveness import Draining, Liveness

__all__ = ["main", "Worker"]

HEARTBEAT_EVERY = 1.0


class Worker:
    def __init__(self, slot: int, commands: Connection, heartbeats: Connection,
                 settings: Settings, uplink: Uplink | None = None) -> None:
        self.slot = slot
        self.settings = settings
        self.uplink = uplink
        if uplink is not None:
            uplink.slot = slot
        self.commands = commands
        self.heartbeats = heartbeats
        self.stop_requested = False
        self.parent_gone = False
        self.log = get_logger()
        # touched paths, and removals the supervisor asked for (--min-free)
        self.mailbox: queue.SimpleQueue[str | Remove] = queue.SimpleQueue()
        self.tracker: Any = None
        self.live = Liveness(notify=self.notify, stopping=self.stopping)
        self._last_heartbeat = 0.0
        self._report = Heartbeat(0)  # the last progress report, resent by notify()
        self._ppid = os.getppid()

    # signals and the pipe: they only set the stop flag or fill the mailbox
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor coordinates Ctrl-C
        # a broken read lease (local retention, worker/removal.py) signals its holder;
        # the default action would end the worker. The break is read with F_GETLEASE.
        signal.signal(signal.SIGIO, signal.SIG_IGN)

    def _on_term(self, signum: int, frame: Any) -> None:
        self.stop_requested = True

    def _read_commands(self) -> None:
        """Keep the supervisor's pipe drained so its sends never block on a busy worker."""
        while True:
            try:
                message = self.commands.recv()
            except (EOFError, OSError):
                self.parent_gone = self.stop_requested = True
                self.mailbox.put("")  # wakes an idle loop
                return
            if isinstance(message, Touch):
                if message.seen_at:
                    metrics.DISPATCH_SECONDS.observe(max(0.0, time.time() - message.seen_at))
                self.mailbox.put(message.rel_path)
            elif isinstance(message, Remove):
                self.mailbox.put(message)
            elif isinstance(message, Stop):
                self.stop_requested = True
                self.mailbox.put("")

    def stopping(self) -> bool:
        if os.getppid() != self._ppid:
            self.parent_gone = self.stop_requested = True
        return self.stop_requested

    def take_mail(self, wait: float = 0.0) -> None:
        """Hand the touched paths waiting in the mailbox to the tracker (waiting up to
        ``wait`` seconds for the first)."""
        try:
            path = self.mailbox.get(timeout=wait) if wait > 0 else self.mailbox.get_nowait()
        except queue.Empty:
            return
        while True:
            if isinstance(path, Remove):
                self.tracker.retention.request(path.stream_id, path.reason)
            elif path:
                self.tracker.touch(path)
            try:
                path = self.mailbox.get_nowait()
            except queue.Empty:
                return

    # the heartbeat
    def heartbeat(self, force: bool = False) -> None:
        """Between two streams: a fresh progress report, at most once a second."""
        if force or time.monotonic() - self._last_heartbeat >= HEARTBEAT_EVERY:
            if self.tracker is not None:
                self._report = report.heartbeat(self.tracker)
            self._send(self._report)

    def notify(self) -> None:
        """Deep inside one stream's work: "still alive", with the last report as it was
        (the tracker is not asked mid-step)."""
        if time.monotonic() - self._last_heartbeat >= HEARTBEAT_EVERY:
            self._send(self._report)

    def _send(self, message: Heartbeat) -> None:
        self._last_heartbeat = time.monotonic()
        try:
            self.heartbeats.send(message)
        except (BrokenPipeError, OSError):
            self.stop_requested = True

    def _between_streams(self) -> None:
        if self.stopping():
            raise Draining()
        self.heartbeat()

    def run(self) -> int:
        from shared.s3 import make_client
        from shared.state.store import CheckpointStore
        from shared.state.wal import WriteAheadLog
        from worker.wiring import build_tracker

        directory = StateDir(self.settings.state_dir).worker(self.slot)
        try:
            store = CheckpointStore(directory)
            wal = WriteAheadLog(directory)
        except (Exception, StateWriteError) as exc:  # locked, corrupt, or no room to recover
            self.log.error("state_unavailable", directory=str(directory.path), error=str(exc),
                           disk_full=is_disk_full(exc))
            return EXIT_STATE_WRITE_FAILED if is_disk_full(exc) else EXIT_STATE_UNAVAILABLE
        if wal.truncated_bytes:
            metrics.WAL_TRUNCATED_BYTES.inc(wal.truncated_bytes)
            self.log.warning("wal_tail_truncated", bytes=wal.truncated_bytes, path=str(wal.path))
        pending = len(wal.pending())
        self.tracker, close = build_tracker(self.settings, store, wal, make_client(self.settings),
                                            self.log, self.live, uplink=self.uplink,
                                            wake=lambda: self.mailbox.put(""))
        self.tracker.load()
        # What start-up built (botocore's service model, the client, modules) lives as
        # long as the worker: keep it out of the collector's full passes, which walked it
        # all every few hundred requests (perf: 2.4% of an uploading worker's CPU samples
        # in the collector before, 0.8% after)
        gc.freeze()
        threading.Thread(target=self._read_commands, name="mailbox", daemon=True).start()
        self.log.info("worker_started", slot=self.slot,
                      resumed_streams=len(report.unfinished(self.tracker)),
                      pending_intents=pending, state_new=store.fresh)
        self.heartbeat(force=True)
        code = EXIT_OK
        try:
            while not self.stopping():
                self.take_mail()
                try:
                    did = self.tracker.step(self._between_streams)
                except Draining:
                    break
                except StateWriteError as exc:
                    self.log.error("state_write_failed", error=str(exc),
                                   disk_full=is_disk_full(exc.__cause__ or exc))
                    code = EXIT_STATE_WRITE_FAILED
                    break
                self.heartbeat()
                if not did:
                    self.take_mail(wait=self.tracker.idle_wait())
        finally:
            if self.parent_gone:
                self.log.warning("supervisor_gone")
            close()
            store.close()
            try:
                wal.close()
            except OSError:
                pass  # a buffered tail that cannot be written is cut on the next open
        self.log.info("worker_exited", slot=self.slot, code=code)
        return code


def _limit_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena, and the part-copy
    and mailbox threads each kept a few MB resident; two arenas are plenty for one
    loop thread and I/O-bound helpers. Must run before any thread starts."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-8, 2)  # M_ARENA_MAX
    except (OSError, AttributeError):
        pass  # not glibc: nothing to tune


def main(slot: int, commands: Connection, heartbeats: Connection,
         settings: Settings, uplink: Uplink | None = None) -> None:
    """The worker process, from ``worker.entry.run_worker`` (spawned)."""
    _limit_malloc_arenas()
    configure_logging(settings.log_level, settings.log_format, process=f"worker-{slot}",
                      pid=os.getpid())
    worker = Worker(slot, commands, heartbeats, settings, uplink)
    worker.install_signals()
    sys.exit(worker.run())  # multiprocessing turns SystemExit into the exit code
