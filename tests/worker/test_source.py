"""``worker.source.SourceFiles.read_chunk``: every chunk is read into one reused buffer
that only grows, so chunks of varying size (fragment-aligned ones, tails) each come back
as exactly their own bytes, never the end of a longer chunk read before. Real files."""

from __future__ import annotations

import os
from pathlib import Path

from shared.state.records import StreamRecord
from worker.planning import ChunkSpan
from worker.source import SourceFiles

CHUNK = 1 << 20


def test_chunks_of_any_size_read_back_exactly(tmp_path: Path) -> None:
    data = os.urandom(6 * CHUNK)
    (tmp_path / "cam.mp4").write_bytes(data)
    st = os.stat(tmp_path / "cam.mp4")
    record = StreamRecord(stream_id="cam-00000001", rel_path="cam.mp4", dev=st.st_dev,
                          ino=st.st_ino, chunk_size=CHUNK, started_at=0.0)
    source = SourceFiles(tmp_path)
    # longer than chunk_size (a chunk ending on a fragment), exact, shorter, a tail
    spans = [(0, CHUNK + 5000), (CHUNK + 5000, CHUNK), (2 * CHUNK + 5000, CHUNK - 77),
             (3 * CHUNK, 2 * CHUNK - 1), (5 * CHUNK, 100)]
    held = []
    for index, (offset, size) in enumerate(spans):
        chunk, _ = source.read_chunk(record, ChunkSpan(index, offset, size))
        assert len(chunk) == size and bytes(chunk) == data[offset:offset + size]
        held.append(chunk)
    # one buffer, grown only for a chunk longer than it: each read went into its front
    buffers = [id(c.obj) if isinstance(c, memoryview) else id(c) for c in held]
    assert buffers[0] == buffers[1] == buffers[2] != buffers[3] == buffers[4]
