"""Capped exponential backoff with jitter, per stream.

Transient failures (timeouts, resets, 5xx, throttling) are retried soon and ever
later, up to a cap; permanent ones (access denied, no such bucket) wait long,
since an operator has to act. Nothing is ever given up.
"""

from __future__ import annotations

import random

from shared.s3 import ErrorKind

__all__ = ["retry_delay", "TRANSIENT_BASE", "TRANSIENT_CAP", "PERMANENT_DELAY"]

TRANSIENT_BASE = 0.5
TRANSIENT_CAP = 30.0
PERMANENT_DELAY = (30.0, 60.0)


def retry_delay(kind: ErrorKind, failures: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after the ``failures``-th consecutive failure (1-based)."""
    uniform = (rng or random).uniform
    if kind is ErrorKind.PERMANENT:
        return uniform(*PERMANENT_DELAY)
    ceiling = min(TRANSIENT_CAP, TRANSIENT_BASE * 2 ** min(max(0, failures - 1), 32))
    return uniform(ceiling / 2, ceiling)  # "equal jitter": never near zero, no busy loop
