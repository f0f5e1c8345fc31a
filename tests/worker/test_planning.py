"""Tests for worker.planning: which byte ranges become which chunks, and when. Chunks
start where the committed ones end (an offset), not at ``index * chunk_size``."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from worker.planning import ChunkSpan, chunks_kept_on_reopen, completion_spans, next_full_chunk


def test_next_full_chunk_at_exact_boundary() -> None:
    """A chunk is ready as soon as its last byte is on disk."""
    assert next_full_chunk(0, 0, 100, 100) == ChunkSpan(0, 0, 100)
    assert next_full_chunk(2, 200, 300, 100) == ChunkSpan(2, 200, 100)


def test_next_full_chunk_one_byte_short() -> None:
    """A chunk missing one byte is not ready."""
    assert next_full_chunk(0, 0, 99, 100) is None
    assert next_full_chunk(2, 200, 299, 100) is None
    assert next_full_chunk(3, 300, 300, 100) is None


def test_next_full_chunk_beyond_file() -> None:
    """More committed bytes than the file holds (it shrank) yields nothing."""
    assert next_full_chunk(5, 500, 250, 100) is None


def test_next_full_chunk_follows_the_committed_offset() -> None:
    """After chunks of other sizes, the next one starts where they end."""
    assert next_full_chunk(2, 130, 230, 100) == ChunkSpan(2, 130, 100)
    assert next_full_chunk(2, 130, 229, 100) is None


def test_completion_spans_cover_rest_with_short_tail() -> None:
    """Completion covers the rest from the committed offset, full chunks then a short tail."""
    assert completion_spans(1, 100, 350, 100) == [
        ChunkSpan(1, 100, 100), ChunkSpan(2, 200, 100), ChunkSpan(3, 300, 50)]


def test_completion_spans_from_an_uneven_offset() -> None:
    assert completion_spans(1, 70, 250, 100) == [ChunkSpan(1, 70, 100), ChunkSpan(2, 170, 80)]


def test_completion_spans_exact_multiple() -> None:
    """A file that is an exact multiple of the chunk size has no short tail."""
    assert completion_spans(0, 0, 200, 100) == [ChunkSpan(0, 0, 100), ChunkSpan(1, 100, 100)]


def test_completion_spans_nothing_left() -> None:
    """Nothing remains once every byte is committed."""
    assert completion_spans(3, 300, 300, 100) == []


def test_completion_spans_zero_byte_file() -> None:
    """A zero-byte file has no spans."""
    assert completion_spans(0, 0, 0, 100) == []


def test_chunks_kept_on_reopen_drops_short_last() -> None:
    """Only a short last chunk is dropped when a completed file grows again."""
    assert chunks_kept_on_reopen([100, 100, 40], 100) == 2
    assert chunks_kept_on_reopen([40], 100) == 0


def test_chunks_kept_on_reopen_keeps_full() -> None:
    """Full chunks, and no chunks, are all kept."""
    assert chunks_kept_on_reopen([100, 100], 100) == 2
    assert chunks_kept_on_reopen([], 100) == 0


@settings(max_examples=300, deadline=None)
@given(chunk_size=st.integers(1, 10**9), full=st.integers(0, 300), data=st.data())
def test_completion_spans_property(chunk_size: int, full: int, data: st.DataObject) -> None:
    """Spans are contiguous from the committed offset, sum to the rest, all full but the last."""
    file_size = full * chunk_size + data.draw(st.integers(0, chunk_size - 1), label="tail")
    committed = data.draw(st.integers(0, full), label="committed")
    offset = committed * chunk_size
    spans = completion_spans(committed, offset, file_size, chunk_size)
    assert sum(s.size for s in spans) == file_size - offset
    for n, span in enumerate(spans):
        assert span.index == committed + n
        assert span.offset == offset == span.index * chunk_size
        assert 0 < span.size <= chunk_size
        offset += span.size
    assert all(s.size == chunk_size for s in spans[:-1])
