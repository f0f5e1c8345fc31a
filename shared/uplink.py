"""The uplink cap (``--bwlimit``) shared by all workers: a token bucket in shared memory.

Why shared memory: the cap is one number for all workers together, and a chunk body
is paid for piece by piece as it is sent (128 KiB at a time, botocore's send block),
so a round trip to the supervisor per piece would cost more than the sending. The
supervisor creates a few doubles (``multiprocessing.RawArray``) and a lock file, and
hands both to each worker when it spawns it; taking tokens is then a lock, a few
arithmetic operations and, when the bucket is empty, a short sleep. The supervisor
writes the current rate from the timetable once a second (a plain store: it never
takes the lock); every waiter re-reads it at least every 50 ms, so a change of rate
takes effect within a second.

Why a lock file (``flock``) and not a ``multiprocessing.Lock``: a worker killed while
holding a semaphore leaves it held for good, and every other worker would hang. The
kernel drops a dead process's ``flock``. Each worker opens the file itself (a lock
belongs to an open file), and a thread lock orders the worker's own two senders.

Live before backlog, across workers: a worker sending a live chunk stamps its slot
each time it takes tokens. A backlog body takes none while any slot's stamp is fresh,
so live chunks get the whole cap and backlog bodies pause mid-send (their connection
stays open) until no live chunk is being sent.

A backlog body held back that long (``HOLD_AT_MOST``) is let through one piece, so
that its connection is not left silent long enough for the server to drop it (S3
answers ``RequestTimeout`` after about 20 s without a byte).

The bucket allows debt: a taker is served when the balance is positive and may leave
it negative by one piece; the next takers wait until the debt is paid. So any second
carries at most the cap plus one burst (0.1 s of the cap) plus one piece per sender
(the loop and the backlog lane of each worker, each at most 1 MiB, paid and not yet
sent): within the contract's "one chunk over the cap". Pieces are 1/16 s of the cap
(at least 4 KiB), so a slow cap keeps the connection busy too.
"""

from __future__ import annotations

import ctypes
import fcntl
import multiprocessing
import os
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["Uplink", "ThrottledBody", "PIECE"]

PIECE = 128 * 1024       # botocore's send block: what one read asks for
MAX_PIECE = 1024 * 1024  # paid at once at fast caps: fewer takes (the metering's cost)
BURST_SECONDS = 0.1      # tokens an idle bucket may save up, in seconds of the cap
LIVE_FRESH = 0.25        # seconds a live sender's stamp holds backlog back
POLL = 0.05              # longest sleep between two looks at the bucket
HOLD_AT_MOST = 5.0       # seconds a backlog body is held back before a piece goes
MIN_PIECE = 4096

_RATE, _TOKENS, _STAMP, _LIVE = 0, 1, 2, 3  # _LIVE + slot: that slot's live stamp


class Uplink:
    """The shared bucket. Made by the supervisor (``Uplink.create``); pickled into each
    worker at spawn, where ``slot`` is set."""

    def __init__(self, values: Any, lock_path: str, workers: int) -> None:
        self._values = values
        self.lock_path = lock_path
        self.workers = workers
        self.slot = 0
        self._fd: int | None = None          # this process's own open of the lock file
        self._threads = threading.Lock()     # the loop and the backlog lane
        self._locked = _FileLock(self)

    @classmethod
    def create(cls, workers: int) -> Uplink:
        spawn = multiprocessing.get_context("spawn")
        fd, path = tempfile.mkstemp(prefix="processor-uplink-", suffix=".lock")
        os.close(fd)
        return cls(spawn.RawArray(ctypes.c_double, _LIVE + workers), path, workers)

    def as_slot(self, slot: int) -> Uplink:
        """The same bucket, as the worker in ``slot`` uses it."""
        view = Uplink(self._values, self.lock_path, self.workers)
        view.slot = slot
        return view

    def __getstate__(self) -> dict[str, Any]:
        return {"values": self._values, "lock_path": self.lock_path, "workers": self.workers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["values"], state["lock_path"], state["workers"])  # type: ignore[misc]

    def remove(self) -> None:
        """The supervisor's last act: the lock file goes (workers have exited)."""
        try:
            os.unlink(self.lock_path)
        except OSError:
            pass

    # the supervisor's side: plain stores of one aligned double, no lock to be stuck on
    def set_rate(self, rate: float | None) -> None:
        """The cap in bytes/s from now on; None for none."""
        self._values[_RATE] = rate or 0.0

    def forget_slot(self, slot: int) -> None:
        """A worker died: its live stamp must not hold backlog back."""
        self._values[_LIVE + slot] = 0.0

    # the workers' side
    @property
    def rate(self) -> float | None:
        rate = self._values[_RATE]
        return rate if rate > 0 else None

    def piece(self) -> int:
        """How much to pay for at once: 1/16 s of the cap, between 4 KiB (a slow cap still
        sends something several times a second) and 1 MiB (a fast one takes tokens once
        per 1 MiB, not once per 128 KiB read: 0.06 CPU-s per GiB metered, against ~0.01)."""
        rate = self._values[_RATE]
        return PIECE if rate <= 0 else max(MIN_PIECE, min(MAX_PIECE, int(rate / 16)))

    def take(self, size: int, live: bool, stopping: Callable[[], bool] = lambda: False,
             notify: Callable[[], None] | None = None) -> float:
        """Wait until ``size`` bytes may be sent; the seconds waited. Returns at once when
        there is no cap, and when ``stopping()`` (a drain must not wait on the cap).
        ``notify`` is called while waiting (the worker loop's heartbeat)."""
        waited = held = 0.0
        while True:
            with self._locked:
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
                held_back = not live and held < HOLD_AT_MOST and self._live_sending(now)
                if tokens > 0 and not held_back:
                    values[_TOKENS] = tokens - size
                    return waited
                pause = POLL if held_back else min(POLL, -tokens / rate)
            if stopping():
                return waited
            if notify is not None:
                notify()
            pause = max(pause, 0.001)
            time.sleep(pause)
            waited += pause
            held = held + pause if held_back else 0.0

    def _live_sending(self, now: float) -> bool:
        values = self._values
        return any(now - values[_LIVE + i] < LIVE_FRESH for i in range(self.workers))

    def live_done(self) -> None:
        """This worker's live body is sent: backlog may go on at once."""
        self._values[_LIVE + self.slot] = 0.0


class _FileLock:
    """The bucket's lock: this process's threads, then ``flock`` across processes."""

    def __init__(self, uplink: Uplink) -> None:
        self.uplink = uplink

    def __enter__(self) -> None:
        uplink = self.uplink
        uplink._threads.acquire()
        try:
            if uplink._fd is None:
                uplink._fd = os.open(uplink.lock_path, os.O_RDWR | os.O_CLOEXEC)
            fcntl.flock(uplink._fd, fcntl.LOCK_EX)
        except BaseException:
            uplink._threads.release()
            raise

    def __exit__(self, *exc: object) -> None:
        try:
            fcntl.flock(self.uplink._fd, fcntl.LOCK_UN)  # type: ignore[arg-type]
        finally:
            self.uplink._threads.release()


class ThrottledBody:
    """A chunk body that pays the uplink for each piece as botocore reads it to send it,
    so the cap is kept while sending: never a full-speed burst and then a sleep.
    Pieces are memoryview slices of the chunk's buffer (no copy). A retry seeks back to
    0 and pays again for the bytes it sends again.

    Only reads for the wire pay: over plain http, SigV4 reads the whole body to hash it
    before the request is sent. ``metered`` is switched off before signing and on just
    before sending, by botocore's ``before-sign`` and ``before-send`` events
    (``worker.storage`` registers them). With no ``uplink`` nothing is paid: it is then
    how a chunk read into part of a reused buffer (a ``memoryview``, which botocore
    takes for no body) is sent without a copy."""

    def __init__(self, data: bytes | bytearray | memoryview, uplink: Uplink | None, live: bool,
                 stopping: Callable[[], bool] = lambda: False,
                 notify: Callable[[], None] | None = None) -> None:
        self._view = memoryview(data)
        self._uplink = uplink
        self._live = live
        self._stopping = stopping
        self._notify = notify
        self._position = 0
        self._paid = 0          # bytes from 0 already paid for
        self.waited = 0.0       # seconds spent waiting for tokens
        self.metered = False    # reads pay only once botocore is about to send

    def __len__(self) -> int:
        return len(self._view)

    def read(self, size: int = -1) -> memoryview:
        length = len(self._view)
        end = length if size is None or size < 0 else min(length, self._position + size)
        if self.metered and self._uplink is not None:
            if self._position >= self._paid:  # nothing paid ahead: pay for one piece
                self._paid = self._position
                piece = min(self._uplink.piece(), length - self._paid)
                self.waited += self._uplink.take(piece, self._live, self._stopping,
                                                 self._notify)
                self._paid += piece
            end = min(end, self._paid)  # a short read when the cap is slow: read on
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
        if self._live and self._uplink is not None:
            self._uplink.live_done()
