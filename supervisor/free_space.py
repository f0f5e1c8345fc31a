"""``--min-free``: the supervisor watches the watch dir's free space and asks workers
to remove their safe files, oldest completion first across all of them.

The workers own the checkpoints, so they make every check and the removal itself
(``worker.retention``); the supervisor only chooses. Each heartbeat lists the
worker's oldest candidates; when free space is under the threshold the supervisor
asks for as many of the oldest, over all workers, as cover the shortfall, and waits
for them. A request counts as freed space while it is open and, once its worker
reports the file removed, until free space has grown by the file's size since the
request, or for 3 s (recorders keep writing, so the rise may never show; a refused
request is dropped at once). Space a filesystem frees late, or not at all (a reader
still holds the file), is thus not answered by a removal every second, but at most
one shortfall's worth every 3 s. In a dry run a request counts for good.
When space is short and no file is safe it says so, at most once a minute, with the
bytes still waiting for upload.

Free space is read every second, so a completion is acted on within a second of
its heartbeat. The gauges are exported whether or not ``--min-free`` is set.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from shared import metrics
from shared.messages import Remove
from shared.settings import Settings
from supervisor.slots import WorkerSlot

__all__ = ["FreeSpaceKeeper"]

CHECK_EVERY = 1.0
REQUEST_EXPIRES = 60.0   # a request its worker never acts on (busy, restarted)
SETTLE_AT_MOST = 3.0     # a removal counts as freed space until seen, or this long
BLOCKED_LOG_EVERY = 60.0


@dataclass
class _Request:
    slot: int
    size: int
    sent_at: float
    free_at_send: int
    handled_at: float | None = None


class FreeSpaceKeeper:
    def __init__(self, settings: Settings, log: Any,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.watch_dir = settings.watch_dir
        self.min_free = settings.min_free
        self.dry_run = settings.delete_dry_run
        self.log = log
        self.clock = clock
        self.pending: dict[str, _Request] = {}
        self._checked_at = -CHECK_EVERY
        self._blocked_logged_at = -BLOCKED_LOG_EVERY

    def tick(self, slots: Sequence[WorkerSlot]) -> None:
        now = self.clock()
        if now - self._checked_at < CHECK_EVERY:
            return
        self._checked_at = now
        try:
            fs = os.statvfs(self.watch_dir)
        except OSError:
            return  # the watch dir is briefly unreachable: try again next second
        free, total = fs.f_bavail * fs.f_frsize, fs.f_blocks * fs.f_frsize
        metrics.WATCH_DIR_FREE_BYTES.set(free)
        metrics.WATCH_DIR_SIZE_BYTES.set(total)
        if self.min_free is None:
            return
        wanted = self.min_free.required(total)
        metrics.MIN_FREE_BYTES.set(wanted)
        self._settle(slots, now, free)
        if free >= wanted:
            return
        shortfall = wanted - free - sum(r.size for r in self.pending.values())
        offered = sorted(((r, slot) for slot in slots if slot.is_alive()
                          for r in slot.last_report.removable
                          if r.stream_id not in self.pending),
                         key=lambda pair: pair[0].completed_at)
        for removable, slot in offered:
            if shortfall <= 0:
                break
            if slot.send(Remove(removable.stream_id, "min_free")):
                self.pending[removable.stream_id] = _Request(slot.index, removable.size, now,
                                                             free)
                shortfall -= removable.size
        if shortfall > 0 and not offered and not self.pending:
            self._blocked(slots, free, wanted, now)

    def _settle(self, slots: Sequence[WorkerSlot], now: float, free: int) -> None:
        """Forget requests refused, or removed and seen in the free space (or not seen
        for too long), or a minute old and never acted on. In a dry run nothing is
        freed, so a request keeps counting as if it had been."""
        if self.dry_run:
            return
        for stream_id, request in list(self.pending.items()):
            report = slots[request.slot].last_report
            if request.handled_at is None and \
                    stream_id not in {r.stream_id for r in report.removable}:
                if stream_id not in {r.stream_id for r in report.removals}:
                    del self.pending[stream_id]  # refused: the file is still there
                    continue
                request.handled_at = now
            seen = free >= request.free_at_send + request.size * 0.9
            settled = request.handled_at is not None and (
                seen or now - request.handled_at >= SETTLE_AT_MOST)
            if settled or (request.handled_at is None
                           and now - request.sent_at >= REQUEST_EXPIRES):
                del self.pending[stream_id]

    def _blocked(self, slots: Sequence[WorkerSlot], free: int, wanted: int, now: float) -> None:
        metrics.RETENTION_BLOCKED.inc()
        if now - self._blocked_logged_at < BLOCKED_LOG_EVERY:
            return
        self._blocked_logged_at = now
        waiting = sum(max(0, p.bytes_on_disk - p.bytes_uploaded)
                      for slot in slots for p in slot.last_report.streams)
        self.log.warning("retention_blocked", reason="nothing_safe", free_bytes=free,
                         min_free_bytes=wanted, waiting_bytes=waiting)
