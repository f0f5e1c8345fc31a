"""Which worker owns a stream: a stable hash of its relative path.

Every event for one path goes to one worker, so that worker alone uploads the
stream's chunks, in order. The hash must not change between releases: it also
decides where checkpoints live (``supervisor.migration`` moves them when the
number of workers changes).
"""

from __future__ import annotations

import xxhash

__all__ = ["worker_for", "path_bytes"]


def path_bytes(rel_path: str) -> bytes:
    """The path as bytes; undecodable file names keep their raw bytes."""
    return rel_path.encode("utf-8", "surrogateescape")


def worker_for(rel_path: str, workers: int) -> int:
    """The slot (0-based) that owns ``rel_path`` among ``workers`` slots."""
    return xxhash.xxh64_intdigest(path_bytes(rel_path)) % workers
