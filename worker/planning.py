"""Chunk arithmetic: which byte ranges become which chunks, and when.

Chunk ``i`` is bytes ``[i*chunk_size, (i+1)*chunk_size)``. Full chunks go up as
soon as they are on disk; the short last one only at completion.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChunkSpan", "next_full_chunk", "completion_spans", "chunks_kept_on_reopen",
           "MAX_PARTS"]

MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload


@dataclass(frozen=True)
class ChunkSpan:
    index: int
    offset: int
    size: int

    def __str__(self) -> str:
        return f"chunk {self.index} [{self.offset}, {self.offset + self.size})"


def next_full_chunk(committed: int, file_size: int, chunk_size: int) -> ChunkSpan | None:
    """The next full chunk after ``committed`` chunks, if all of its bytes are on disk."""
    offset = committed * chunk_size
    if file_size - offset >= chunk_size:
        return ChunkSpan(committed, offset, chunk_size)
    return None


def completion_spans(committed: int, file_size: int, chunk_size: int) -> list[ChunkSpan]:
    """Every chunk still to upload when the stream completes: full ones, then the tail."""
    spans = []
    offset = committed * chunk_size
    index = committed
    while offset < file_size:
        size = min(chunk_size, file_size - offset)
        spans.append(ChunkSpan(index, offset, size))
        index += 1
        offset += size
    return spans


def chunks_kept_on_reopen(chunk_sizes: list[int], chunk_size: int) -> int:
    """How many committed chunks survive when a completed file grows again: all but a
    short last one, which is replaced by a fuller chunk at the same key."""
    if chunk_sizes and chunk_sizes[-1] < chunk_size:
        return len(chunk_sizes) - 1
    return len(chunk_sizes)
