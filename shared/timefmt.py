"""RFC 3339 UTC timestamps with microseconds, as metadata.json and logs use them."""

from __future__ import annotations

import time
from datetime import UTC, datetime

__all__ = ["rfc3339", "now"]


def now() -> float:
    """Wall-clock seconds since the epoch."""
    return time.time()


def rfc3339(ts: float) -> str:
    """``2026-11-21T08:00:01.123456Z`` for a POSIX timestamp."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
