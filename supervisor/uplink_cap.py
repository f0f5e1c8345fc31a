"""``--bwlimit``: the supervisor owns the shared token bucket and keeps its rate.

The bucket (``shared.uplink.Uplink``) is created here, before any worker, and handed
to each worker when it is spawned. Once a second the rate the timetable gives for
the local time now is written into it; a change is logged and shown by the
``processor_uplink_cap_bytes_per_second`` gauge. A worker that dies is forgotten so
its live stamp cannot hold the others' backlog back.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from shared import metrics
from shared.bandwidth import format_rate
from shared.settings import Settings
from shared.uplink import Uplink

__all__ = ["CapKeeper"]

CHECK_EVERY = 1.0


class CapKeeper:
    def __init__(self, settings: Settings, log: Any,
                 clock: Callable[[], float] = time.monotonic,
                 local_time: Callable[[], datetime] = datetime.now) -> None:
        self.timetable = settings.bwlimit
        self.log = log
        self.clock = clock
        self.local_time = local_time
        self.uplink = Uplink.create(settings.workers) if self.timetable is not None else None
        self.rate: float | None = None
        self._checked_at: float | None = None
        metrics.UPLINK_CAP.set(0)
        self.tick()

    def tick(self) -> None:
        """Write the rate the timetable gives now (at most once a second)."""
        if self.timetable is None or self.uplink is None:
            return
        now = self.clock()
        if self._checked_at is not None and now - self._checked_at < CHECK_EVERY:
            return
        first = self._checked_at is None
        self._checked_at = now
        rate = self.timetable.rate_at(self.local_time())
        if rate == self.rate and not first:
            return
        self.uplink.set_rate(rate)
        metrics.UPLINK_CAP.set(rate or 0)
        if not first:
            self.log.info("uplink_cap_changed", cap=format_rate(rate), was=format_rate(self.rate),
                          cap_bytes_per_second=int(rate or 0))
        self.rate = rate

    def close(self) -> None:
        if self.uplink is not None:
            self.uplink.remove()

    def forget(self, slot: int) -> None:
        if self.uplink is not None:
            self.uplink.forget_slot(slot)

    def describe(self) -> str | None:
        """For the start-up line and status: the cap now, and the timetable if any."""
        if self.timetable is None:
            return None
        now = format_rate(self.rate)
        return now if self.timetable.constant else f"{now} (timetable {self.timetable})"
