"""The worker process's entry point, kept free of imports.

``spawn`` imports the module of the target function in the new process before it
runs it; this one imports nothing, so the worker can decide what it loads first.
It keeps out ``rich`` (and ``pygments``), which structlog imports whenever they
are installed, for pretty tracebacks the worker never prints: 5 MB of resident
memory and ~40 ms of start-up per worker (measured). They are installed for
``processor status``, which runs in its own process.
"""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["run_worker"]

_NOT_IN_WORKERS = ("rich", "pygments", "colorama", "better_exceptions")


def run_worker(slot: int, commands: Any, heartbeats: Any, settings: Any,
               uplink: Any = None) -> None:
    for name in _NOT_IN_WORKERS:
        sys.modules.setdefault(name, None)  # type: ignore[arg-type]  # import fails
    from worker.process import main

    main(slot, commands, heartbeats, settings, uplink)
