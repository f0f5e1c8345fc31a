"""Positive markers: how a test knows the service has handled something that leaves
no trace of its own, instead of sleeping a while and asserting that nothing happened
(which a slow machine passes without testing anything).

A *marker* is a small file written into the watch dir, routed to the worker that
owns the path under test (``shared.routing.worker_for``), and waited for until the
worker logs its ``stream_completed``. That proves the worker has handled every event
for the path that the watcher saw before the marker was written:

* the supervisor reads file events in order and sends them to a worker over one pipe,
  which the worker reads into a FIFO mailbox;
* at each step a worker looks at every path touched so far before it does any upload
  work, and a new stream of a path is logged (``stream_detected``) when it is looked at;
* the marker completes only ``--stream-timeout`` after it was detected, many steps later,
  so a stream the earlier event started has by then also been given upload work.

The marker's own requests are told apart by its ``object_prefix`` (see
:func:`tests.support.puts.writes`) and its checkpoint by its ``rel_path``.
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass

from shared.routing import worker_for
from tests.support.runner import Processor

__all__ = ["MARKER_STEM", "Marker", "flush_worker", "is_marker", "marker_name"]

MARKER_STEM = "zz-marker"


@dataclass(frozen=True)
class Marker:
    rel_path: str
    stream_id: str
    object_prefix: str  # the S3 key prefix of its stream (chunks, final object, metadata)


def is_marker(rel_path: str) -> bool:
    return rel_path.startswith(MARKER_STEM + "-")


def marker_name(processor: Processor, rel_path: str) -> str:
    """An unused top-level file name that ``processor``'s workers route like ``rel_path``."""
    slot = worker_for(rel_path, processor.workers)
    for i in itertools.count():
        name = f"{MARKER_STEM}-{i}.mp4"
        if worker_for(name, processor.workers) == slot and \
                not (processor.watch_dir / name).exists():
            return name
    raise AssertionError("unreachable")


def flush_worker(processor: Processor, rel_path: str, timeout: float = 60.0) -> Marker:
    """Write a marker routed like ``rel_path`` and wait until it is completed: every
    event for ``rel_path`` seen before now has then been handled by its worker."""
    name = marker_name(processor, rel_path)
    (processor.watch_dir / name).write_bytes(os.urandom(1000))
    processor.wait_for_event("stream_completed", lambda e: e.get("rel_path") == name,
                             timeout=timeout)
    (detected,) = processor.wait_for_event("stream_detected",
                                           lambda e: e.get("rel_path") == name, timeout=5)
    return Marker(name, detected["stream_id"], detected["object_prefix"])
