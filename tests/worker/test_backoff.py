"""Tests for worker.backoff.retry_delay."""

from __future__ import annotations

import random

from shared.s3 import ErrorKind
from worker.backoff import PERMANENT_DELAY, TRANSIENT_BASE, TRANSIENT_CAP, retry_delay


def _ceiling(failures: int) -> float:
    return min(TRANSIENT_CAP, TRANSIENT_BASE * 2 ** max(0, failures - 1))


def test_transient_within_equal_jitter_band() -> None:
    """The n-th transient delay lies in [ceiling/2, ceiling], never near zero."""
    rng = random.Random(1)
    for failures in range(1, 40):
        for _ in range(50):
            delay = retry_delay(ErrorKind.TRANSIENT, failures, rng)
            assert _ceiling(failures) / 2 <= delay <= _ceiling(failures)
            assert delay >= TRANSIENT_BASE / 2


def test_transient_grows_then_caps() -> None:
    """Transient delays double with each failure until TRANSIENT_CAP, then stay capped."""
    rng = random.Random(2)
    first = [retry_delay(ErrorKind.TRANSIENT, 1, rng) for _ in range(200)]
    fifth = [retry_delay(ErrorKind.TRANSIENT, 5, rng) for _ in range(200)]
    late = [retry_delay(ErrorKind.TRANSIENT, 50, rng) for _ in range(200)]
    assert max(first) <= TRANSIENT_BASE < min(fifth)
    assert min(late) >= TRANSIENT_CAP / 2 and max(late) <= TRANSIENT_CAP
    assert max(late) > 0.9 * TRANSIENT_CAP


def test_zero_failures_is_first_delay() -> None:
    """failures=0 is treated like the first failure."""
    delay = retry_delay(ErrorKind.TRANSIENT, 0, random.Random(3))
    assert TRANSIENT_BASE / 2 <= delay <= TRANSIENT_BASE


def test_permanent_within_range() -> None:
    """Permanent failures wait within PERMANENT_DELAY whatever the failure count."""
    rng = random.Random(4)
    low, high = PERMANENT_DELAY
    delays = [retry_delay(ErrorKind.PERMANENT, n, rng) for n in range(1, 500)]
    assert all(low <= d <= high for d in delays)


def test_seeded_rng_is_reproducible() -> None:
    """The same seed yields the same delays."""
    a = [retry_delay(ErrorKind.TRANSIENT, n, random.Random(9)) for n in range(1, 10)]
    b = [retry_delay(ErrorKind.TRANSIENT, n, random.Random(9)) for n in range(1, 10)]
    assert a == b


def test_transient_after_thousands_of_failures() -> None:
    """Even after thousands of consecutive failures the delay is capped, not an error."""
    delay = retry_delay(ErrorKind.TRANSIENT, 2000, random.Random(5))
    assert TRANSIENT_CAP / 2 <= delay <= TRANSIENT_CAP
