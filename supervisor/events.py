"""The supervisor's inbox: signal handlers and the polling observer's callbacks only
put here.

``put`` also writes a byte to a wake-up pipe, so the main loop can wait on the
pipe together with the inotify descriptor, the workers' pipes and their process
sentinels in one epoll wait.
"""

from __future__ import annotations

import os
import queue
from dataclasses import dataclass

__all__ = ["Inbox", "PathChanged", "DirectoryChanged", "SignalReceived"]


@dataclass(frozen=True)
class PathChanged:
    """A file event from the watcher (absolute path), and when it was seen (wall clock)."""

    path: str
    seen_at: float = 0.0


@dataclass(frozen=True)
class DirectoryChanged:
    """A directory appeared or moved in: its files arrive without their own events."""

    path: str


@dataclass(frozen=True)
class SignalReceived:
    signum: int


class Inbox:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self.wake_r, self._wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._armed = True  # the next put writes a wake-up byte

    def put(self, item: object) -> None:
        self._queue.put(item)
        if not self._armed:
            return  # a wake-up byte is pending already, or the loop is draining
        self._armed = False
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # the pipe is full: the loop is awake already

    def drain(self) -> list[object]:
        """Everything queued so far, oldest first; clears the wake-up pipe.

        Re-armed before the queue is emptied: an item put before that is taken
        below, one put after it writes a new wake-up byte. So a burst of events
        costs one byte and one loop turn, and none is left waiting unseen."""
        try:
            while os.read(self.wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        self._armed = True
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                return items

    def close(self) -> None:
        os.close(self.wake_r)
        os.close(self._wake_w)
