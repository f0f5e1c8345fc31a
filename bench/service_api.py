"""The only place the bench imports the service's own modules (besides the processor
it runs as a process, and ``bench/watcher.py``, a script of its own).

The service's modules may be renamed or moved; when they are, this file is the one
to follow them. The bench uses two things of the service itself:

* ``shared.routing.worker_for`` -- which worker a path lands on, so that the bench
  can put one live stream on each worker and warm only the workers the data uses.
* ``worker.media.probe_media`` -- the PyAV probe a worker runs when a stream is
  finished, timed alone as a part of finalization that is not the service's code.

and one name: the module a worker's probe helper runs as (``python -m
worker.prober``), by which the memory sampler tells that process from the others.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared.routing import worker_for

__all__ = ["PROBE_HELPER_MODULE", "probe_media", "worker_for"]

PROBE_HELPER_MODULE = "worker.prober"


def probe_media(path: Path) -> Any:
    """``worker.media.probe_media``, imported on first use (PyAV is slow to import and
    only the live section needs it)."""
    from worker.media import probe_media

    return probe_media(path)
