"""The worker process's life: start-up, the upload loop, and exit.

Started by the supervisor with ``spawn``, so the LevelDB handle, the boto3 client
and every file descriptor are opened here, never inherited. SIGTERM only clears
``alive``; work stops between chunks. A worker whose supervisor is gone exits.
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
from shared.messages import MAX_REPORTED_STREAMS, Heartbeat, Stop, Touch
from shared.s3 import make_client
from shared.settings import Settings
from worker.durability import StateWriteError, is_disk_full

__all__ = ["main", "EXIT_OK", "EXIT_STATE_UNAVAILABLE", "EXIT_STATE_WRITE_FAILED",
           "Draining"]

EXIT_OK = 0
EXIT_STATE_UNAVAILABLE = 3   # the LevelDB or WAL cannot be opened (locked, corrupt)
EXIT_STATE_WRITE_FAILED = 4  # a state write failed (disk full): restart once there is room
HEARTBEAT_EVERY = 1.0
WAL_NAME = "intents.wal"


class Draining(BaseException):
    """Raised from ``pulse`` between two requests once the worker must stop. A
    BaseException, so that no per-stream error handler can swallow it."""


class _ParentGone:
    pass


class Worker:
    def __init__(self, slot: int, commands: Connection, heartbeats: Connection,
                 settings: Settings) -> None:
        self.slot = slot
        self.settings = settings
        self.commands = commands
        self.heartbeats = heartbeats
        self.alive = True
        self.log = get_logger()
        self.mailbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.tracker: Any = None
        self._last_heartbeat = 0.0
        self._ppid = os.getppid()

    # signals and the pipe: they only flip a flag or fill the mailbox
    def install_signals(self) -> None:
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor coordinates Ctrl-C

    def _on_term(self, signum: int, frame: Any) -> None:
        self.alive = False

    def _read_commands(self) -> None:
        """Keep the supervisor's pipe drained so its sends never block on a busy worker."""
        while True:
            try:
                message = self.commands.recv()
            except (EOFError, OSError):
                self.mailbox.put(_ParentGone())
                return
            if isinstance(message, Touch) and message.seen_at:
                metrics.DISPATCH_SECONDS.observe(max(0.0, time.time() - message.seen_at))
            self.mailbox.put(message)

    def _handle(self, message: Any) -> None:
        if isinstance(message, Touch):
            self.tracker.touch(message.rel_path)
        elif isinstance(message, Stop):
            self.alive = False
        elif isinstance(message, _ParentGone):
            self.log.warning("supervisor_gone")
            self.alive = False

    def drain_mailbox(self, wait: float = 0.0) -> None:
        try:
            message = self.mailbox.get(timeout=wait) if wait > 0 else self.mailbox.get_nowait()
        except queue.Empty:
            return
        self._handle(message)
        while True:
            try:
                self._handle(self.mailbox.get_nowait())
            except queue.Empty:
                return

    def pulse(self) -> None:
        """Called by the upload loop between requests: heartbeat, mail, stop check."""
        self.drain_mailbox()
        if os.getppid() != self._ppid:
            self.alive = False
        if not self.alive:
            raise Draining()
        self.heartbeat()

    def heartbeat(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self._last_heartbeat >= HEARTBEAT_EVERY:
            self._last_heartbeat = now
            if self.tracker is not None:  # gauges too: once a second is plenty
                metrics.ACTIVE_STREAMS.set(self.tracker.active_count())
                metrics.LAG_BYTES.set(self.tracker.lag_bytes())
                metrics.OLDEST_STREAM_AGE.set(self.tracker.oldest_age())
            try:
                self.heartbeats.send(self._heartbeat_message())
            except (BrokenPipeError, OSError):
                self.alive = False

    def _heartbeat_message(self) -> Heartbeat:
        if self.tracker is None:
            return Heartbeat(0)
        return Heartbeat(self.tracker.active_count(),
                         streams=self.tracker.progress(MAX_REPORTED_STREAMS),
                         completions=tuple(self.tracker.completions))

    def run(self) -> int:
        from worker.checkpoint import CheckpointStore
        from worker.storage import Storage
        from worker.tracker import StreamTracker
        from worker.uploader import Uploader
        from worker.wal import WriteAheadLog

        directory = self.settings.worker_state_dir(self.slot)
        try:
            store = CheckpointStore(directory)
            wal = WriteAheadLog(directory / WAL_NAME)
        except (Exception, StateWriteError) as exc:  # locked, corrupt, or no room to recover
            self.log.error("state_unavailable", directory=str(directory), error=str(exc),
                           disk_full=is_disk_full(exc))
            return EXIT_STATE_WRITE_FAILED if is_disk_full(exc) else EXIT_STATE_UNAVAILABLE
        if wal.truncated_bytes:
            metrics.WAL_TRUNCATED_BYTES.inc(wal.truncated_bytes)
            self.log.warning("wal_tail_truncated", bytes=wal.truncated_bytes, path=str(wal.path))
        pending = wal.pending()
        storage = Storage(make_client(self.settings), self.settings.s3_bucket)
        uploader = Uploader(self.settings, store, wal, storage, self.log, self.pulse)
        self.tracker = StreamTracker(self.settings, store, uploader, self.log, self.pulse)
        self.tracker.load(pending)
        # What start-up built (botocore's service model, the client, modules) lives as
        # long as the worker: keep it out of the collector's full passes, which walked it
        # all every few hundred requests (perf: 2.4% of an uploading worker's CPU samples
        # in the collector before, 0.8% after)
        gc.freeze()
        threading.Thread(target=self._read_commands, name="mailbox", daemon=True).start()
        self.log.info("worker_started", slot=self.slot, resumed_streams=self.tracker.active_count(),
                      pending_intents=len(pending))
        self.heartbeat(force=True)
        code = EXIT_OK
        try:
            while self.alive:
                self.drain_mailbox()
                if not self.alive:
                    break
                try:
                    did = self.tracker.step()
                except Draining:
                    break
                except StateWriteError as exc:
                    self.log.error("state_write_failed", error=str(exc),
                                   disk_full=is_disk_full(exc.__cause__ or exc))
                    code = EXIT_STATE_WRITE_FAILED
                    break
                self.heartbeat()
                if not did:
                    self.drain_mailbox(wait=self.tracker.idle_wait())
                if os.getppid() != self._ppid:
                    self.log.warning("supervisor_gone")
                    break
        finally:
            uploader.close()
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
         settings: Settings) -> None:
    """The worker process, from ``worker.entry.run_worker`` (spawned)."""
    _limit_malloc_arenas()
    configure_logging(settings.log_level, settings.log_format, process=f"worker-{slot}",
                      pid=os.getpid())
    worker = Worker(slot, commands, heartbeats, settings)
    worker.install_signals()
    sys.exit(worker.run())  # multiprocessing turns SystemExit into the exit code
