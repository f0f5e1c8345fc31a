"""Tests for shared.routing: the stable path -> worker hash."""

from __future__ import annotations

from collections import Counter

import pytest
import xxhash

from shared.routing import path_bytes, worker_for

PATHS = ["cam1.mp4", "site/a/cam 2.mp4", "Ördner/☃.mp4", "x" * 500 + ".mp4"]


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("workers", [1, 3, 4, 7, 64])
def test_matches_xxh64(path: str, workers: int) -> None:
    """worker_for is xxh64 of the UTF-8 path modulo the worker count."""
    assert worker_for(path, workers) == xxhash.xxh64_intdigest(path.encode()) % workers


def test_pinned_value() -> None:
    """The hash is pinned: checkpoints' placement depends on it never changing."""
    assert xxhash.xxh64_intdigest(b"cam1.mp4") == 15800003130670395155
    assert worker_for("cam1.mp4", 4) == 3


def test_deterministic_and_in_range() -> None:
    """The same path always gives the same slot, within range."""
    for i in range(200):
        path = f"d{i % 7}/cam{i}.mp4"
        slot = worker_for(path, 5)
        assert 0 <= slot < 5 and all(worker_for(path, 5) == slot for _ in range(3))


def test_undecodable_name() -> None:
    """A surrogate-escaped (undecodable) name hashes its raw bytes."""
    raw = b"cam\xff\xfe.mp4"
    name = raw.decode("utf-8", "surrogateescape")
    assert path_bytes(name) == raw
    assert worker_for(name, 8) == xxhash.xxh64_intdigest(raw) % 8


def test_spread_over_workers() -> None:
    """1000 paths over 8 workers leave no worker below half the mean."""
    counts = Counter(worker_for(f"site{i % 13}/cam{i}.mp4", 8) for i in range(1000))
    assert set(counts) == set(range(8))
    assert min(counts.values()) >= 1000 / 8 / 2
