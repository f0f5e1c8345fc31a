"""The uplink cap (``--bwlimit``) shared by all workers: a token bucket in shared memory.

Why shared memory: the cap is one number for all workers together, and a chunk body
is paid for piece by piece as it is sent (128 KiB at a time, botocore's send block),
so a round trip to the supervisor per piece would cost more than the sending. The
supervisor creates a few doubles (``multiprocessing.RawArray``) and one process-shared
lock, and hands them to each worker when it spawns it; taking tokens is then a lock, a
few arithmetic operations and, when the bucket is empty, a short sleep. The supervisor
writes the current rate from the timetable once a second; every waiter re-reads it at
least every 50 ms, so a change of rate takes effect within a second.

Live before backlog, across workers: a worker sending a live chunk stamps its slot
each time it takes tokens. A backlog body takes none while any slot's stamp is fresh,
so live chunks get the whole cap and backlog bodies pause mid-send (their connection
stays open) until no live chunk is being sent.

The bucket allows debt: a taker is served when the balance is positive and may leave
it negative by one piece; the next takers wait until the debt is paid. So any second
carries at most the cap plus one burst (0.1 s of the cap) plus one piece per worker:
far within the contract's "one chunk over the cap".
"""

from __future__ import annotations

import ctypes
import multiprocessing
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Uplink", "ThrottledBody", "PIECE"]

PIECE = 128 * 1024       # botocore's send block: one take per block read
BURST_SECONDS = 0.1      # tokens an idle bucket may save up, in seconds of the cap
LIVE_FRESH = 0.25        # seconds a live sender's stamp holds backlog back
POLL = 0.05              # longest sleep between two looks at the bucket

_RATE, _TOKENS, _STAMP, _LIVE = 0, 1, 2, 3  # _LIVE + slot: that slot's live stamp


class Uplink:
    """The shared bucket. Made by the supervisor (``Uplink.create``); pickled into each
    worker at spawn, where ``slot`` is set."""

    def __init__(self, values: Any, lock: Any, workers: int) -> None:
        self._values = values
        self._lock = lock
        self.workers = workers
        self.slot = 0

    @classmethod
    def create(cls, workers: int) -> Uplink:
        spawn = multiprocessing.get_context("spawn")
        return cls(spawn.RawArray(ctypes.c_double, _LIVE + workers), spawn.Lock(), workers)

    def as_slot(self, slot: int) -> Uplink:
        """The same bucket, as the worker in ``slot`` uses it."""
        view = Uplink(self._values, self._lock, self.workers)
        view.slot = slot
        return view

    def __getstate__(self) -> dict[str, Any]:
        return {"values": self._values, "lock": self._lock, "workers": self.workers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["values"], state["lock"], state["workers"])  # type: ignore[misc]

    # the supervisor's side
    def set_rate(self, rate: float | None) -> None:
        """The cap in bytes/s from now on; None for none."""
        with self._lock:
            self._values[_RATE] = rate or 0.0

    def forget_slot(self, slot: int) -> None:
        """A worker died: its live stamp must not hold backlog back."""
        with self._lock:
            self._values[_LIVE + slot] = 0.0

    # the workers' side
    @property
    def rate(self) -> float | None:
        rate = self._values[_RATE]
        return rate if rate > 0 else None

    def take(self, size: int, live: bool, stopping: Callable[[], bool] = lambda: False
             ) -> float:
        """Wait until ``size`` bytes may be sent; the seconds waited. Returns at once when
        there is no cap, and when ``stopping()`` (a drain must not wait on the cap)."""
        waited = 0.0
        while True:
            with self._lock:
                values = self._values
                rate = values[_RATE]
                if rate <= 0:
                    return waited
                now = time.monotonic()
                if live:
                    values[_LIVE + self.slot] = now
                tokens = min(values[_TOKENS] + (now - values[_STAMP]) * rate,
                             max(PIECE, rate * BURST_SECONDS))
                values[_TOKENS], values[_STAMP] = tokens, now
                held_back = not live and self._live_sending(now)
                if tokens > 0 and not held_back:
                    values[_TOKENS] = tokens - size
                    return waited
                pause = POLL if held_back else min(POLL, -tokens / rate)
            if stopping():
                return waited
            pause = max(pause, 0.001)
            time.sleep(pause)
            waited += pause

    def _live_sending(self, now: float) -> bool:
        values = self._values
        return any(now - values[_LIVE + i] < LIVE_FRESH for i in range(self.workers))

    def live_done(self) -> None:
        """This worker's live body is sent: backlog may go on at once."""
        with self._lock:
            self._values[_LIVE + self.slot] = 0.0


class ThrottledBody:
    """A chunk body that pays the uplink for each piece as botocore reads it to send it,
    so the cap is kept while sending: never a full-speed burst and then a sleep.
    Pieces are memoryview slices of the chunk's buffer (no copy). A retry seeks back to
    0 and pays again for the bytes it sends again.

    Only reads for the wire pay: over plain http, SigV4 reads the whole body to hash it
    before the request is sent. ``metered`` is switched off before signing and on just
    before sending, by botocore's ``before-sign`` and ``before-send`` events
    (``worker.storage`` registers them)."""

    def __init__(self, data: bytes | bytearray, uplink: Uplink, live: bool,
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self._view = memoryview(data)
        self._uplink = uplink
        self._live = live
        self._stopping = stopping
        self._position = 0
        self._paid = 0          # bytes from 0 already paid for
        self.waited = 0.0       # seconds spent waiting for tokens
        self.metered = False    # reads pay only once botocore is about to send

    def __len__(self) -> int:
        return len(self._view)

    def read(self, size: int = -1) -> memoryview:
        end = len(self._view) if size is None or size < 0 else min(
            len(self._view), self._position + size)
        if end > self._paid and self.metered:
            piece = min(max(end - self._paid, PIECE), len(self._view) - self._paid)
            self.waited += self._uplink.take(piece, self._live, self._stopping)
            self._paid += piece
        chunk = self._view[self._position:end]
        self._position = end
        return chunk

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._position, 2: len(self._view)}[whence]
        self._position = max(0, min(len(self._view), base + offset))
        self._paid = min(self._paid, self._position)
        return self._position

    def tell(self) -> int:
        return self._position

    def close(self) -> None:
        if self._live:
            self._uplink.live_done()
