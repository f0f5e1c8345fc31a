"""A stream's in-memory state: a cache of its checkpoint plus what was last observed.

The committed parts (record, chunks) are re-read from the store after any failure;
only observations (size, mtime, when it last changed) and backoff live here alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.keys import StreamKeys
from worker.checkpoint import CheckpointStore, ChunkRecord, StreamRecord
from worker.settled import FileState

__all__ = ["StreamRuntime"]


@dataclass
class StreamRuntime:
    record: StreamRecord
    chunks: list[ChunkRecord]
    keys: StreamKeys
    last_change: float | None = None   # monotonic time of the last size/mtime change seen
    next_attempt: float = 0.0          # monotonic time before which no S3 work is tried
    failures: int = 0
    permanent_logged: bool = False
    source_error_logged: bool = False
    # chunk index -> (the settled file's state before the chunk was read, its xxh3):
    # completion need not read it again while the file is still in that state
    settled: dict[int, tuple[FileState, str]] = field(default_factory=dict)

    @property
    def stream_id(self) -> str:
        return self.record.stream_id

    @property
    def committed_bytes(self) -> int:
        return sum(c.size for c in self.chunks)

    def reload(self, store: CheckpointStore) -> None:
        """Drop the cached checkpoint and re-read it, keeping the observations."""
        stored = store.stream(self.stream_id)
        if stored is not None:
            self.record = stored.evolve(size=self.record.size, mtime_ns=self.record.mtime_ns)
        self.chunks = store.chunks(self.stream_id)
