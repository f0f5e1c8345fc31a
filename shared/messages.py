"""What the supervisor and its workers say to each other over their pipes.

Small frozen values, pickled by ``multiprocessing.Connection``.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Touch", "Stop", "Heartbeat", "WorkerMessage", "SupervisorMessage"]


@dataclass(frozen=True)
class Touch:
    """Something happened at ``rel_path`` (created, modified, moved, deleted): look at it."""

    rel_path: str


@dataclass(frozen=True)
class Stop:
    """Drain: finish or abandon the request in flight, checkpoint, exit 0."""


@dataclass(frozen=True)
class Heartbeat:
    """The worker's upload loop is alive; sent after each step and each idle tick."""

    active_streams: int


SupervisorMessage = Touch | Stop
WorkerMessage = Heartbeat
