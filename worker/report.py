"""What a worker reports each second: the heartbeat the supervisor serves on
``/streams`` and ``/status`` (shared/messages.py), and the gauges it exports.

Read from the tracker's streams between two units of work, never mid-step: the
tracker decides, this only counts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from shared import metrics
from shared.messages import MAX_REPORTED_STREAMS, Heartbeat, StreamProgress
from shared.timefmt import now as wall_now
from worker.stream import Stream, StreamState

if TYPE_CHECKING:
    from worker.tracker import StreamTracker

__all__ = ["heartbeat", "unfinished", "progress", "lag_bytes", "backlog_bytes", "oldest_age"]

MAX_REPORTED_REMOVABLE = 50  # per heartbeat: --min-free asks for the oldest first


def heartbeat(tracker: StreamTracker) -> Heartbeat:
    """The gauges set, and the heartbeat message built, from ``tracker``'s streams."""
    active = len(unfinished(tracker))
    metrics.ACTIVE_STREAMS.set(active)
    metrics.LAG_BYTES.set(lag_bytes(tracker))
    metrics.BACKLOG_BYTES.set(backlog_bytes(tracker))
    metrics.OLDEST_STREAM_AGE.set(oldest_age(tracker))
    return Heartbeat(active, streams=progress(tracker, MAX_REPORTED_STREAMS),
                     completions=tuple(tracker.completions),
                     removable=tracker.retention.removable(MAX_REPORTED_REMOVABLE),
                     removals=tuple(tracker.retention.removals))


def unfinished(tracker: StreamTracker) -> list[Stream]:
    return [s for s in tracker.streams.values() if s.state.unfinished]


def progress(tracker: StreamTracker, limit: int) -> tuple[StreamProgress, ...]:
    """What every unfinished stream is doing, oldest first (for ``/streams``)."""
    now = tracker.clock()
    found = [s.progress(now, tracker.settings.stream_timeout) for s in unfinished(tracker)]
    found.sort(key=lambda p: p.started_at)
    return tuple(found[:limit])


def lag_bytes(tracker: StreamTracker) -> int:
    """Bytes on disk not yet uploaded, over all streams still recording."""
    return sum(s.pending_bytes for s in tracker.streams.values()
               if s.state is StreamState.RECORDING)


def backlog_bytes(tracker: StreamTracker) -> int:
    """Of those, the bytes of streams that are not live (backlog)."""
    return sum(s.pending_bytes for s in tracker.streams.values()
               if s.state is StreamState.RECORDING and not tracker.order.is_live(s))


def oldest_age(tracker: StreamTracker) -> float:
    started = [s.record.started_at for s in unfinished(tracker)]
    return max(0.0, wall_now() - min(started)) if started else 0.0
