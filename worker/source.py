"""The source file of a stream: opened beneath the watch dir, read, hashed, checked.

Every access goes through ``shared.paths`` (no symlink is followed on the way to the
file) and checks the inode the stream recorded, so a stream only ever reads its own
file. Two outcomes are not failures of ours: ``SourceChanged`` (the file grew,
shrank, vanished or was replaced under us: observe it again) and ``SourceError``
(it cannot be read now, e.g. permissions: retried slowly).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import xxhash

from shared.paths import lstat_beneath, open_beneath
from shared.state.records import StreamRecord
from worker.planning import ChunkSpan

__all__ = ["SourceFiles", "SourceError", "SourceChanged", "VERIFY_PIECE"]

VERIFY_PIECE = 1 << 20


class SourceError(Exception):
    """The source file cannot be read now (e.g. permissions); retried slowly."""


class SourceChanged(Exception):
    """The file changed under us (grew, shrank, replaced): observe again, no failure."""


class SourceFiles:
    """One worker's access to the files it uploads, with its two reusable buffers."""

    def __init__(self, watch_dir: Path) -> None:
        self.watch_dir = watch_dir
        self._buffer = bytearray()
        self._verify_buffer = bytearray(VERIFY_PIECE)

    def stat(self, rel_path: str) -> os.stat_result | None:
        """The file's lstat; None when nothing is there."""
        try:
            return lstat_beneath(self.watch_dir, rel_path)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise SourceError(f"cannot stat source: {exc.strerror}") from exc

    @contextmanager
    def opened(self, record: StreamRecord) -> Iterator[tuple[int, os.stat_result]]:
        """A descriptor for the stream's file (its inode), reached through no symlink,
        and its stat at opening; closed on exit."""
        try:
            fd = open_beneath(self.watch_dir, record.rel_path)
        except FileNotFoundError as exc:
            raise SourceChanged("file vanished") from exc
        except OSError as exc:
            raise SourceError(f"cannot open source: {exc.strerror}") from exc
        try:
            st = os.fstat(fd)
            if st.st_ino != record.ino or not stat.S_ISREG(st.st_mode):
                raise SourceChanged("file replaced")
            yield fd, st
        finally:
            os.close(fd)

    def reserve_chunk_buffer(self, size: int) -> None:
        """Allocate the chunk buffer ahead of the first full chunk (the tracker asks once
        half a chunk is on disk): bytearray() zeroes it, so its 2,560 page faults (10–66
        ms on a loaded VM) land while the chunk is still being written, not between its
        last byte and its upload. Files under half a chunk never allocate it. It only
        grows: a chunk that ends on a fragment (worker/live.py) runs past ``chunk_size``
        by part of a fragment, a different part each time, and a tail is shorter; each
        is read into its front (the tracker reserves a quarter more for them)."""
        if len(self._buffer) < size:
            self._buffer = bytearray(size)

    def read_chunk(self, record: StreamRecord,
                   span: ChunkSpan) -> tuple[bytearray | memoryview, os.stat_result]:
        """A chunk's bytes, and the file's stat before they were read. Every chunk is read
        into one reused buffer: allocating (and page-faulting) 10 MiB per chunk cost a
        quarter of the worker's CPU, and fragment-aligned chunks, never exactly
        ``chunk_size``, paid it on every chunk (3 of 15 ms of CPU per 10 MiB chunk PUT).
        A chunk that fills the buffer is the bytearray itself, which boto3 sends as it
        is; a shorter one is a memoryview of its front. Valid until the next read."""
        with self.opened(record) as (fd, st):
            try:
                self.reserve_chunk_buffer(span.size)
                data: bytearray | memoryview = self._buffer \
                    if span.size == len(self._buffer) else memoryview(self._buffer)[:span.size]
                read = os.preadv(fd, [data], span.offset)
            except OSError as exc:
                raise SourceError(f"cannot read source: {exc.strerror}") from exc
        if read != span.size:
            raise SourceChanged("file shrank")
        return data, st

    def check_unchanged(self, record: StreamRecord) -> os.stat_result:
        """The file is still the inode, size and mtime the record last saw: its lstat."""
        try:
            st = lstat_beneath(self.watch_dir, record.rel_path)
        except FileNotFoundError as exc:
            raise SourceChanged("file vanished") from exc
        if (st.st_ino, st.st_size, st.st_mtime_ns) != (record.ino, record.size,
                                                       record.mtime_ns):
            raise SourceChanged("file changed during finalization")
        return st

    def hash_range(self, fd: int, offset: int, size: int) -> str:
        """xxh3-128 of the bytes at ``offset`` of the open file ``fd``, read 1 MiB at a
        time into one small buffer that stays in the CPU cache: 0.15 CPU-s per GiB against
        0.20 for reading whole 10 MiB chunks and hashing them from memory (measured here)."""
        view = memoryview(self._verify_buffer)
        hasher = xxhash.xxh3_128()
        try:
            done = 0
            while done < size:
                piece = view[:min(len(view), size - done)]
                read = os.preadv(fd, [piece], offset + done)
                if read == 0:
                    raise SourceChanged("file shrank")
                hasher.update(piece[:read])
                done += read
        except OSError as exc:
            raise SourceError(f"cannot read source: {exc.strerror}") from exc
        finally:
            view.release()
        return hasher.hexdigest()
