"""What the supervisor and its workers say to each other: the messages on their
pipes (small frozen values, pickled by ``multiprocessing.Connection``) and the
worker's exit codes, which the supervisor acts on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Touch", "Stop", "Remove", "Removable", "Removal", "Heartbeat", "StreamProgress",
           "Completion",
           "WorkerMessage", "SupervisorMessage", "EXIT_OK", "EXIT_STATE_UNAVAILABLE",
           "EXIT_STATE_WRITE_FAILED", "MAX_REPORTED_STREAMS"]

EXIT_OK = 0
EXIT_STATE_UNAVAILABLE = 3   # the LevelDB or WAL cannot be opened (locked, corrupt)
EXIT_STATE_WRITE_FAILED = 4  # a state write failed (disk full): restart once there is room

MAX_REPORTED_STREAMS = 2000  # per heartbeat: keeps one message small at any scale


@dataclass(frozen=True)
class Touch:
    """Something happened at ``rel_path`` (created, modified, moved, deleted): look at it.
    ``seen_at`` is when the supervisor saw the event (wall clock), for dispatch latency."""

    rel_path: str
    seen_at: float = 0.0


@dataclass(frozen=True)
class Stop:
    """Drain: finish or abandon the request in flight, checkpoint, exit 0."""


@dataclass(frozen=True)
class Remove:
    """Remove this stream's source file if it is safe now (``--min-free``: the supervisor
    chose it, oldest completion first across all workers)."""

    stream_id: str
    reason: str = "min_free"


@dataclass(frozen=True)
class Removable:
    """A completed stream whose file local retention may remove (all checks are made
    again at removal)."""

    stream_id: str
    completed_at: float         # wall clock
    size: int


@dataclass(frozen=True)
class Removal:
    """A source file local retention removed recently."""

    stream_id: str
    rel_path: str
    size: int
    reason: str                 # delete_after | min_free
    removed_at: float           # wall clock


@dataclass(frozen=True)
class StreamProgress:
    """One unfinished stream as its worker sees it now."""

    stream_id: str
    rel_path: str
    state: str                  # growing | finalizing | backoff | source_deleted | source_replaced
    bytes_on_disk: int
    bytes_uploaded: int
    chunks: int
    started_at: float           # wall clock
    last_write_at: float        # the file's mtime
    idle_seconds: float         # since the last size/mtime change seen
    completes_in: float         # seconds until it counts as complete, if nothing changes
    failures: int = 0
    priority: str = "live"      # live | backlog (contract §8)


@dataclass(frozen=True)
class Completion:
    """A stream finalized recently."""

    stream_id: str
    rel_path: str
    status: str
    total_size_bytes: int
    chunks: int
    completed_at: float
    reopen_count: int


@dataclass(frozen=True)
class Heartbeat:
    """The worker's upload loop is alive; sent after each step and each idle tick, at
    most once a second, with what the worker is doing (for ``/streams``)."""

    active_streams: int
    streams: tuple[StreamProgress, ...] = field(default=())
    completions: tuple[Completion, ...] = field(default=())
    removable: tuple[Removable, ...] = field(default=())  # oldest completion first
    removals: tuple[Removal, ...] = field(default=())


SupervisorMessage = Touch | Stop | Remove
WorkerMessage = Heartbeat
