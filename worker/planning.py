"""Chunk arithmetic: which byte ranges become which chunks, and when.

A chunk's place comes from the stream's chunk list, never from ``index *
chunk_size``: the next chunk starts where the last committed one ends, so chunks of
varying size (boundaries that follow a file's fragments) need no other change.
Today every chunk but a stream's last is ``chunk_size`` long. Full chunks go up as
soon as they are on disk; the short last one only at completion.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ChunkSpan", "next_full_chunk", "completion_spans", "chunks_kept_on_reopen"]


@dataclass(frozen=True)
class ChunkSpan:
    index: int
    offset: int
    size: int

    def __str__(self) -> str:
        return f"chunk {self.index} [{self.offset}, {self.offset + self.size})"


def next_full_chunk(index: int, offset: int, file_size: int,
                    chunk_size: int) -> ChunkSpan | None:
    """Chunk ``index``, starting at ``offset`` (where the committed ones end), if all of
    its bytes are on disk."""
    if file_size - offset >= chunk_size:
        return ChunkSpan(index, offset, chunk_size)
    return None


def completion_spans(index: int, offset: int, file_size: int,
                     chunk_size: int) -> list[ChunkSpan]:
    """Every chunk still to upload when the stream completes, from chunk ``index`` at
    ``offset``: full ones, then the tail."""
    spans = []
    while offset < file_size:
        size = min(chunk_size, file_size - offset)
        spans.append(ChunkSpan(index, offset, size))
        index += 1
        offset += size
    return spans


def aligned_chunk_limit(chunk_size: int) -> int:
    """The most bytes a chunk that ends on a fragment (worker/live.py) may hold: twice
    ``chunk_size``, and never past S3's 5 GiB PUT. No fragment boundary that far in
    makes the rest of the stream fixed-size."""
    return min(2 * chunk_size, 5 * 1024**3)


def chunks_kept_on_reopen(chunk_sizes: list[int], chunk_size: int) -> int:
    """How many committed chunks survive when a completed file grows again: all but a
    short last one, which is replaced by a fuller chunk at the same key."""
    if chunk_sizes and chunk_sizes[-1] < chunk_size:
        return len(chunk_sizes) - 1
    return len(chunk_sizes)
