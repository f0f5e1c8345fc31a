"""The supervisor's main loop: one wait over the inbox, the workers' heartbeat
pipes and their process sentinels; dispatch; then housekeeping.

Signals:
  SIGTERM, SIGINT  the first drains: stop watching, tell workers to stop, exit 0
                   within --drain-timeout; the second quits at once (exit 130).
"""

from __future__ import annotations

import enum
import os
import selectors
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prometheus_client import multiprocess

from shared import metrics, routing
from shared.logs import get_logger
from shared.messages import EXIT_STATE_UNAVAILABLE, EXIT_STATE_WRITE_FAILED, Stop, Touch
from shared.paths import relative_stream_path, scan_streams
from shared.settings import Settings
from shared.state.errors import StateWriteError
from supervisor.events import DirectoryChanged, Inbox, PathChanged, SignalReceived
from supervisor.free_space import FreeSpaceKeeper
from supervisor.http import BucketProbe, StatusServer
from supervisor.migration import rebalance
from supervisor.slots import WorkerSlot, WorkerTarget, resolve_target
from supervisor.uplink_cap import CapKeeper
from supervisor.watcher import Change, Watcher, start_watcher

__all__ = ["Supervisor", "State", "EXIT_FORCED", "EXIT_WORKERS_FAILING"]

EXIT_FORCED = 130           # a second signal: quit at once
EXIT_WORKERS_FAILING = 1    # a worker cannot open its state, again and again
HEARTBEAT_DEADLINE = 180.0  # > boto3's worst case for one call (connect 5 s + read 30 s) and a
                            # 10 MiB chunk on a slow link
KILL_AFTER_TERM = 5.0
QUICK_EXIT = 10.0           # a worker dying sooner than this after start is crash-looping
MAX_STATE_FAILURES = 5
TICK = 1.0
HOUSEKEEPING_EVERY = 0.1  # reaping, restarts, heartbeat deadlines: not every event
_WATCHER = object()       # the watcher's descriptor in the epoll set


class State(enum.Enum):
    RUNNING = "running"
    DRAINING = "draining"
    STOPPED = "stopped"


class Supervisor:
    def __init__(self, settings: Settings, early_signals: list[int] | None = None, *,
                 worker_target: str | WorkerTarget) -> None:
        """``worker_target`` is what each worker process runs (``module:function``, or the
        function), handed in so that the supervisor imports nothing of the worker's."""
        self.settings = settings
        self.early_signals = early_signals if early_signals is not None else []
        self.log = get_logger()
        self.inbox = Inbox()
        target = resolve_target(worker_target)
        self.slots = [WorkerSlot(i, target) for i in range(settings.workers)]
        self.state = State.RUNNING
        self.exit_code = 0
        self.drain_deadline = 0.0
        self.watcher: Watcher | None = None
        self.http: StatusServer | None = None
        self._selector: selectors.BaseSelector | None = None  # rebuilt when workers change
        self._housekept_at = 0.0
        self.free_space = FreeSpaceKeeper(settings, self.log)
        self.cap = CapKeeper(settings, self.log)

    # lifecycle
    def run(self) -> int:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        for early in self.early_signals:  # arrived before the handlers above existed
            self.inbox.put(SignalReceived(early))
        metrics.WORKERS_CONFIGURED.set(len(self.slots))
        try:
            moved = rebalance(self.settings, self.log)
        except (Exception, StateWriteError) as exc:  # locked by an orphan, disk full, corrupt
            self.log.error("checkpoint_migration_failed", error=str(exc))
            return EXIT_WORKERS_FAILING
        if moved:
            self.log.info("checkpoints_rebalanced", moved=moved, workers=self.settings.workers)
        if self.settings.metrics_port:
            self.http = StatusServer(self.settings.metrics_host, self.settings.metrics_port,
                                     self.health, BucketProbe(self.settings), self.snapshot)
            self.http.start()
        self.watcher = start_watcher(self.settings, self.inbox)
        for slot in self.slots:
            self._start(slot)
        for rel in scan_streams(self.settings.watch_dir, self.settings.extensions,
                                self.settings.recursive):
            self._touch(rel)  # files present at start-up, after the watch started
        self.log.info("supervisor_started", workers=self.settings.workers,
                      watch_dir=str(self.settings.watch_dir), bucket=self.settings.s3_bucket,
                      metrics_port=self.http.port if self.http else None,
                      retention=self._retention_summary(), bwlimit=self.cap.describe(),
                      encryption=self.settings.policy.encryption,
                      storage_class=self.settings.policy.storage_class,
                      object_tags=self.settings.policy.tags)
        try:
            while self.state is not State.STOPPED:
                worker_changed, changes = self._wait()
                self._dispatch(self.inbox.drain() + changes)
                now = time.monotonic()
                if worker_changed or now - self._housekept_at >= HOUSEKEEPING_EVERY \
                        or self.state is not State.RUNNING:
                    self._housekept_at = now
                    self._housekeeping()
        finally:
            if self._selector is not None:
                self._selector.close()
            self._shutdown()
        return self.exit_code

    def _retention_summary(self) -> str | None:
        """Local retention as configured, for the start-up line (None: off)."""
        s = self.settings
        if not s.retention:
            return None
        parts = [f"delete_after={s.delete_after:g}s" if s.delete_after is not None else "",
                 f"min_free={s.min_free}" if s.min_free is not None else "",
                 "dry_run" if s.delete_dry_run else ""]
        return " ".join(p for p in parts if p)

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.inbox.put(SignalReceived(signum))

    def _wait(self) -> tuple[bool, list[Change]]:
        """Sleep until the watcher, the inbox, a worker's heartbeat pipe or its exit
        wakes us (or a tick passes); read the file changes and heartbeats that arrived.
        Returns whether a worker exited, and the changes.

        One epoll set, kept while the workers stay the same: with 500 growing files
        the loop turns ~250 times a second, and building a new poll set of every
        pipe on each turn, then polling each pipe again, was most of its CPU."""
        if self._selector is None:
            self._selector = self._build_selector()
        exited = False
        changes: list[Change] = []
        for key, _ in self._selector.select(timeout=TICK):
            slot = key.data
            if slot is None:
                continue  # the inbox: drained by the caller
            if slot is _WATCHER:
                if self.watcher is not None:
                    changes = self.watcher.read()
                continue
            if slot.process is not None and key.fd == slot.process.sentinel:
                exited = True
            elif slot.heartbeats is not None and not slot.read_heartbeats():
                self._selector.unregister(key.fd)  # closed: it would stay readable
        if exited:
            self._forget_selector()  # the dead worker's fds stay ready until reaped
        return exited, changes

    def _build_selector(self) -> selectors.BaseSelector:
        selector = selectors.DefaultSelector()
        selector.register(self.inbox.wake_r, selectors.EVENT_READ, None)
        watched = self.watcher.fileno() if self.watcher is not None else None
        if watched is not None:
            selector.register(watched, selectors.EVENT_READ, _WATCHER)
        for slot in self.slots:
            if slot.is_alive() and slot.heartbeats is not None and slot.process is not None:
                selector.register(slot.heartbeats.fileno(), selectors.EVENT_READ, slot)
                selector.register(slot.process.sentinel, selectors.EVENT_READ, slot)
        return selector

    def _forget_selector(self) -> None:
        if self._selector is not None:
            self._selector.close()
            self._selector = None

    # dispatch
    def _dispatch(self, items: Sequence[object]) -> None:
        paths: dict[str, float] = {}
        for item in items:
            if isinstance(item, SignalReceived):
                self.handle_signal(item.signum)
            elif isinstance(item, PathChanged):
                rel = relative_stream_path(self.settings.watch_dir, item.path,
                                           self.settings.extensions, self.settings.recursive)
                if rel is not None:
                    paths.setdefault(rel, item.seen_at)
            elif isinstance(item, DirectoryChanged) and self.state is State.RUNNING:
                for rel in self._scan(item.path):
                    paths.setdefault(rel, time.time())
        if self.state is State.RUNNING:
            for rel, seen_at in paths.items():  # coalesced: one touch per path per loop turn
                self._touch(rel, seen_at)

    def _touch(self, rel_path: str, seen_at: float = 0.0) -> None:
        slot = self.slots[routing.worker_for(rel_path, len(self.slots))]
        if slot.send(Touch(rel_path, seen_at or time.time())):
            metrics.EVENTS_DISPATCHED.inc()

    def _scan(self, directory: str) -> list[str]:
        found = []
        for rel in scan_streams(Path(directory), self.settings.extensions, True):
            full = os.path.join(directory, rel)
            rel_to_watch = relative_stream_path(self.settings.watch_dir, full,
                                                self.settings.extensions, self.settings.recursive)
            if rel_to_watch is not None:
                found.append(rel_to_watch)
        return found

    def handle_signal(self, signum: int) -> None:
        """TERM/INT drains; a second one quits at once."""
        if self.state is State.RUNNING:
            self.handle_drain(signal.Signals(signum).name)
        else:
            self.handle_quit(signal.Signals(signum).name)

    def handle_drain(self, reason: str) -> None:
        self.state = State.DRAINING
        self.drain_deadline = time.monotonic() + max(0.5, self.settings.drain_timeout - 1.0)
        self.log.info("drain_started", signal=reason, timeout=self.settings.drain_timeout)
        self._stop_watcher()
        for slot in self.slots:
            slot.send(Stop())

    def handle_quit(self, reason: str) -> None:
        self.log.warning("quit_now", signal=reason)
        for slot in self.slots:
            slot.signal(signal.SIGKILL)
        self.exit_code = EXIT_FORCED
        self.state = State.STOPPED

    # housekeeping
    def _housekeeping(self) -> None:
        now = time.monotonic()
        metrics.WORKERS_ALIVE.set(sum(1 for slot in self.slots if slot.is_alive()))
        for slot in self.slots:
            if slot.process is not None and not slot.is_alive():
                self._reap(slot, now)
            elif slot.is_alive():
                self._check_heartbeat(slot, now)
            if slot.restart_at is not None and now >= slot.restart_at \
                    and self.state is State.RUNNING:
                self._start(slot, restart=True)
        if self.watcher is not None and self.state is State.RUNNING:
            self._dispatch(self.watcher.recover())
            self.free_space.tick(self.slots)
            self.cap.tick()
        if self.state is State.DRAINING:
            if not any(slot.is_alive() for slot in self.slots):
                self.state = State.STOPPED
            elif now >= self.drain_deadline:
                self.log.warning("drain_timeout", killing=[s.index for s in self.slots
                                                           if s.is_alive()])
                for slot in self.slots:
                    slot.signal(signal.SIGKILL)
                for slot in self.slots:
                    if slot.process is not None:
                        slot.process.join(timeout=2)
                self.state = State.STOPPED

    def _reap(self, slot: WorkerSlot, now: float) -> None:
        pid = slot.pid
        code = slot.reap()  # closes its pipes: the epoll set is rebuilt without them
        self._forget_selector()
        slot.process = None
        self.cap.forget(slot.index)
        if pid is not None:
            multiprocess.mark_process_dead(pid)
        lived = now - slot.started_at
        self.log.info("worker_exited", slot=slot.index, pid=pid, code=code,
                      lived_seconds=round(lived, 1))
        if self.state is not State.RUNNING:
            return
        slot.quick_failures = slot.quick_failures + 1 if lived < QUICK_EXIT else 0
        if code == EXIT_STATE_UNAVAILABLE and slot.quick_failures >= MAX_STATE_FAILURES:
            self.log.error("worker_state_unavailable", slot=slot.index,
                           failures=slot.quick_failures)
            self.exit_code = EXIT_WORKERS_FAILING
            self.handle_drain("worker_failing")
            return
        if code == EXIT_STATE_WRITE_FAILED:  # disk full: retry, slowly, until there is room
            slot.quick_failures = max(slot.quick_failures, 1)
        delay = min(30.0, 0.5 * 2 ** min(slot.quick_failures, 8)) if slot.quick_failures else 0.0
        slot.restart_at = now + delay

    def _check_heartbeat(self, slot: WorkerSlot, now: float) -> None:
        if now - slot.last_heartbeat < HEARTBEAT_DEADLINE:
            return
        if slot.term_sent_at is None:
            self.log.error("worker_unresponsive", slot=slot.index, pid=slot.pid,
                           silent_seconds=round(now - slot.last_heartbeat, 1))
            slot.signal(signal.SIGTERM)
        elif now - slot.term_sent_at >= KILL_AFTER_TERM:
            slot.signal(signal.SIGKILL)

    def _start(self, slot: WorkerSlot, restart: bool = False) -> None:
        slot.start(self.settings, self.cap.uplink)
        self._forget_selector()
        if restart:
            slot.restarts += 1
            metrics.WORKER_RESTARTS.inc()
            self.log.info("worker_restarted", slot=slot.index, pid=slot.pid)
            self._rescan_slot(slot.index)
        else:
            self.log.info("worker_spawned", slot=slot.index, pid=slot.pid)

    def _rescan_slot(self, index: int) -> None:
        """Tell a (re)started worker about every file it owns: events that arrived
        while it was down are lost, the directory is not."""
        for rel in scan_streams(self.settings.watch_dir, self.settings.extensions,
                                self.settings.recursive):
            if routing.worker_for(rel, len(self.slots)) == index:
                self._touch(rel)

    # health
    def health(self) -> tuple[bool, str]:
        """Called from the HTTP thread: 200 while the supervisor and all workers run."""
        if self.state is not State.RUNNING:
            return False, f"supervisor {self.state.value}"
        down = [slot.index for slot in self.slots if not slot.is_alive()]
        if down:
            return False, f"workers down: {down}"
        return True, "ok"

    def snapshot(self) -> dict[str, Any]:
        """Called from the HTTP thread for ``/streams``: what every worker last reported.
        Each slot's report is replaced whole by the main loop, so reading is safe."""
        now = time.monotonic()
        workers, streams, completions, removals = [], [], [], []
        for slot in self.slots:
            report = slot.last_report
            workers.append({"slot": slot.index, "pid": slot.pid, "alive": slot.is_alive(),
                            "heartbeat_age_seconds": round(now - slot.last_heartbeat, 3),
                            "restarts": slot.restarts, "active_streams": report.active_streams})
            streams += [dict(asdict(p), worker=slot.index) for p in report.streams]
            completions += [dict(asdict(c), worker=slot.index) for c in report.completions]
            removals += [dict(asdict(r), worker=slot.index) for r in report.removals]
        streams.sort(key=lambda s: s["started_at"])
        completions.sort(key=lambda c: c["completed_at"], reverse=True)
        removals.sort(key=lambda r: r["removed_at"], reverse=True)
        return {"generated_at": time.time(), "state": self.state.value,
                "stream_timeout": self.settings.stream_timeout,
                "chunk_size": self.settings.chunk_size, "workers": workers,
                "bwlimit": self.cap.describe(),
                "streams": streams, "recent_completions": completions[:20],
                "recent_removals": removals[:20]}

    def _stop_watcher(self) -> None:
        if self.watcher is not None:
            self._forget_selector()  # it holds the watcher's descriptor
            self.watcher.close()
            self.watcher = None

    def _shutdown(self) -> None:
        self._stop_watcher()
        for slot in self.slots:
            if slot.process is not None:
                slot.process.join(timeout=0)
                if slot.pid is not None:
                    multiprocess.mark_process_dead(slot.pid)
        if self.http is not None:
            self.http.stop()
        self.cap.close()
        self.inbox.close()
        self.log.info("drain_finished", code=self.exit_code)
