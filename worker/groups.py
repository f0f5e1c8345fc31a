"""Two-level assembly (contract §9): a recording of more chunks than one multipart
upload may have parts (``--max-parts``, S3: 10,000, so 97.7 GiB of 10 MiB chunks).

Its chunks are copied, a group at a time, into intermediate objects ``P/groups/N``
(each a multipart upload of part copies, at most 5 GiB), and the groups are copied
into the final object's upload. Server-side copies only: no byte goes up twice.
As the single-level upload does, it happens while the file is recorded: a group is
built as soon as its chunks are all uploaded, and copied into the final upload at
once, so that completion only builds the last, partial group.

Where a group's bytes are is recorded in the stream record (``GroupRecord``): in
its intermediate object until completion, then in the final object, whose byte
range the next assembly copies from after a reopen. So a reopen (or a chunk that
changed on disk) rebuilds only the groups whose chunks changed; each group names
the chunks it was built from by a digest of their hashes.

Crashes: a group is recorded only once its object is complete, and built afresh
(its leftover upload aborted) otherwise. Every intermediate lives under
``P/groups/``, so at completion, once the final object exists and the groups are
recorded as in it, one LIST of that prefix removes whatever is left, from this run
or one cut short: no intermediate or unfinished upload outlives a completion.
Only the loop thread touches the stream; the copy threads run S3 requests only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import xxhash

from shared.s3 import ErrorKind, StorageError
from shared.state.records import ChunkRecord, GroupRecord
from worker.storage import Storage
from worker.stream import Stream

__all__ = ["Groups", "chunks_per_group", "MAX_OBJECT_BYTES", "MAX_PART_BYTES"]

MAX_OBJECT_BYTES = 5 * 1024**4  # S3's limit on one object (5 TiB)
MAX_PART_BYTES = 5 * 1024**3    # and on one part: a group is at most this
BUILD_THREADS_BACKGROUND = 2    # copies in flight per group build while recording
BUILD_THREADS_COMPLETION = 8    # and at completion


def chunks_per_group(max_parts: int, chunk_size: int) -> int:
    """As many chunks as one upload may have parts, and a group at most 5 GiB, for
    chunks of at most ``chunk_size`` bytes (``Stream.largest_chunk``)."""
    return max(1, min(max_parts, MAX_PART_BYTES // max(chunk_size, 1)))


def group_digest(chunks: list[ChunkRecord]) -> str:
    """Names the chunk uploads a group is built from: any re-upload changes it."""
    text = "|".join(f"{c.index}:{c.size}:{c.xxh3_128}" for c in chunks)
    return xxhash.xxh3_128_hexdigest(text.encode())


@dataclass
class _Job:
    stream_id: str
    index: int
    kind: str              # "build" (chunks -> group object) or "copy" (group -> part)
    digest: str
    upload_id: str | None  # the final upload, for a copy
    future: Future[Any]


class Groups:
    """The groups of one worker's two-level streams, built and copied on copy threads."""

    def __init__(self, storage: Storage, pool: ThreadPoolExecutor, max_parts: int,
                 log: Any) -> None:
        self.storage = storage
        self.pool = pool
        self.max_parts = max_parts
        self.log = log
        self.jobs: dict[tuple[str, int, str], _Job] = {}

    # which streams
    def needed(self, stream: Stream) -> bool:
        """Whether the stream is (or must become) assembled in two levels."""
        return stream.record.group_chunks is not None or len(stream.chunks) > self.max_parts

    def size(self, stream: Stream) -> int:
        return stream.record.group_chunks or chunks_per_group(self.max_parts,
                                                               stream.largest_chunk)

    def count(self, stream: Stream) -> int:
        size = self.size(stream)
        return (len(stream.chunks) + size - 1) // size

    def fits(self, stream: Stream) -> bool:
        """Within S3's object limit, in as many groups as an upload has parts, each of
        as many (a lowered --max-parts cannot take groups recorded before)."""
        return (stream.committed_bytes <= MAX_OBJECT_BYTES
                and self.count(stream) <= self.max_parts
                and self.size(stream) <= self.max_parts)

    def start(self, stream: Stream) -> None:
        """Record that the stream's final upload holds groups (its caller has dropped a
        one-level upload, whose parts were chunks)."""
        self.log.info("assembly_two_level", stream_id=stream.stream_id,
                      chunks=len(stream.chunks), chunks_per_group=self.size(stream))
        stream.save_groups(self.size(stream), [])

    def members(self, stream: Stream, index: int) -> list[ChunkRecord]:
        size = self.size(stream)
        return stream.chunks[index * size:(index + 1) * size]

    def in_flight(self, stream_id: str | None = None) -> int:
        return sum(1 for j in self.jobs.values() if stream_id in (None, j.stream_id))

    # the work left
    def submit(self, stream: Stream, *, full_only: bool, limit: int | None,
               first: int = 0) -> tuple[int, int]:
        """Start the builds and part copies the stream's groups ``first..`` still need
        (only full groups while recording). Returns (jobs started, first group not yet
        both built and copied into the open upload)."""
        size, started = self.size(stream), 0
        groups = {g.index: g for g in stream.record.groups}
        count = len(stream.chunks) // size if full_only else self.count(stream)
        pending: int | None = None
        for index in range(first, count):
            members = self.members(stream, index)
            digest = group_digest(members)
            group = groups.get(index)
            copied = stream.upload_id is not None and group is not None \
                and group.part_upload == stream.upload_id
            if group is not None and group.digest == digest and copied:
                continue
            pending = index if pending is None else pending
            if limit is not None and len(self.jobs) >= limit:
                break
            if group is None or group.digest != digest:
                # at completion a build's copies run in parallel (it is what is waited
                # for); in the background, two at a time beside the other work
                threads = BUILD_THREADS_BACKGROUND if full_only else BUILD_THREADS_COMPLETION
                started += self._start(stream, index, "build", digest, None,
                                       self._build, stream.keys.group(index),
                                       [stream.keys.chunk(c.index) for c in members], threads)
            elif stream.upload_id is not None:
                source, span = self._source(stream, group)
                started += self._start(stream, index, "copy", digest, stream.upload_id,
                                       self.storage.copy_part, stream.keys.final_object,
                                       stream.upload_id, index + 1, source, span)
        return started, count if pending is None else pending

    def _source(self, stream: Stream, group: GroupRecord) -> tuple[str, tuple[int, int] | None]:
        if group.at == "final":
            return stream.keys.final_object, (group.offset, group.offset + group.size)
        return stream.keys.group(group.index), None

    def _start(self, stream: Stream, index: int, kind: str, digest: str,
               upload_id: str | None, fn: Callable[..., Any], *args: Any) -> int:
        slot = (stream.stream_id, index, kind)
        if slot in self.jobs:  # never two jobs racing on one group
            return 0
        self.jobs[slot] = _Job(stream.stream_id, index, kind, digest, upload_id,
                               self.pool.submit(fn, *args))
        return 1

    def _build(self, key: str, chunk_keys: list[str], threads: int) -> int:
        """On a copy thread: the group object from its chunks, in one multipart upload
        (any left by an attempt cut short aborted first), its copies ``threads`` at a
        time. A drain stops it between copies, so that SIGTERM is not held up by up to
        512 of them. Returns how many chunks it holds."""
        self.storage.abort_uploads(key)
        upload_id = self.storage.create_upload(key)

        def copy(number: int) -> str:
            if self.storage.stopping():
                raise StorageError("build_group", ErrorKind.TRANSIENT, "the worker is stopping")
            return self.storage.copy_part(key, upload_id, number, chunk_keys[number - 1])
        try:
            with ThreadPoolExecutor(threads, thread_name_prefix="group-copy") as copies:
                etags = list(copies.map(copy, range(1, len(chunk_keys) + 1)))
            self.storage.complete_upload(key, upload_id, etags)
        except BaseException:
            try:
                self.storage.abort_upload(key, upload_id)
            except Exception:  # noqa: BLE001 - the sweep at completion removes it
                pass
            raise
        return len(chunk_keys)

    # recording what finished
    def harvest(self, streams: Mapping[str, Stream], only: str | None = None
                ) -> tuple[int, list[tuple[str, BaseException, str | None]], set[str]]:
        """Record finished jobs, one save per stream. A job made stale (its chunks
        uploaded again, or a new final upload) is dropped. Returns how many finished,
        the failures (stream, error, the final upload a copy went into), and the streams
        with a job that succeeded."""
        finished = 0
        failures: list[tuple[str, BaseException, str | None]] = []
        succeeded: set[str] = set()
        updates: dict[str, dict[int, GroupRecord]] = {}
        for slot, job in list(self.jobs.items()):
            if (only is not None and job.stream_id != only) or not job.future.done():
                continue
            del self.jobs[slot]
            finished += 1
            stream = streams.get(job.stream_id)
            try:
                result = job.future.result()
            except Exception as exc:  # noqa: BLE001 - reported to the caller, who backs off
                if stream is None or job.upload_id in (None, stream.upload_id):
                    failures.append((job.stream_id, exc, job.upload_id))
                if stream is not None and job.kind == "copy" and isinstance(exc, StorageError) \
                        and exc.kind is ErrorKind.NOT_FOUND:
                    # its source is gone (removed behind our back): build it again
                    updates.setdefault(job.stream_id, {g.index: g for g in stream.record.groups}
                                       ).pop(job.index, None)
                continue  # else a copy into an upload since replaced: nothing to report
            succeeded.add(job.stream_id)
            if stream is None or stream.record.group_chunks is None:
                continue
            members = self.members(stream, job.index)
            if group_digest(members) != job.digest:
                continue  # its chunks changed meanwhile: built again
            groups = updates.setdefault(job.stream_id,
                                        {g.index: g for g in stream.record.groups})
            if job.kind == "build":
                groups[job.index] = GroupRecord(job.index, job.digest,
                                                sum(c.size for c in members))
            elif job.upload_id == stream.upload_id and job.index in groups \
                    and groups[job.index].digest == job.digest:
                groups[job.index] = replace(groups[job.index], part_upload=job.upload_id,
                                            part_etag=str(result))
        for stream_id, groups in updates.items():
            stream = streams[stream_id]
            stream.save_groups(stream.record.group_chunks,
                               [groups[i] for i in sorted(groups)])
        return finished, failures, succeeded

    def etags(self, stream: Stream) -> list[str]:
        """The final upload's parts, in group order (all copied: see ``submit``)."""
        groups = sorted(stream.record.groups, key=lambda g: g.index)[:self.count(stream)]
        assert [g.index for g in groups] == list(range(self.count(stream)))
        return [str(g.part_etag) for g in groups]

    def forget_intermediates(self, stream: Stream) -> None:
        """The intermediates were removed without an assembly: forget the groups that
        lived there (those in the final object of an earlier completion stay)."""
        stream.save_groups(stream.record.group_chunks,
                           [g for g in stream.record.groups if g.at == "final"])

    # after the final object exists
    def assembled(self, stream: Stream) -> bool:
        """Whether the final object already holds exactly these groups: each recorded as
        in it (only ``settle`` records that, after an assembly of exactly those groups)
        and built from the chunks the stream has now. True after a crash between
        completing the upload and writing metadata.json, and after a reopen that
        changed nothing: then no copy is made again."""
        groups = {g.index: g for g in stream.record.groups}
        if any(index >= self.count(stream) for index in groups):
            return False  # the object holds more than the stream's chunks now
        return all(
            (group := groups.get(index)) is not None and group.at == "final"
            and group.digest == group_digest(self.members(stream, index))
            for index in range(self.count(stream)))

    def settle(self, stream: Stream) -> None:
        """The final object is complete: its groups now live in it, at these offsets.
        Recorded before the intermediates are removed, so that no crash can leave a
        group recorded where it no longer is."""
        offset, settled = 0, []
        for group in sorted(stream.record.groups, key=lambda g: g.index)[:self.count(stream)]:
            settled.append(replace(group, at="final", offset=offset))
            offset += group.size
        stream.save_groups(stream.record.group_chunks, settled)

    def sweep(self, stream: Stream) -> int:
        """Remove every intermediate object and upload under ``P/groups/``."""
        prefix = stream.keys.groups_prefix
        aborted = self.storage.abort_uploads(prefix, under=True)
        keys = list(self.storage.sizes_under(prefix))
        self.storage.delete_keys(keys)
        return aborted + len(keys)
