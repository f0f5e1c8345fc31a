"""The records a worker's LevelDB holds, and their codec.

Keys::

  s/<stream_id>              the stream's record (JSON)
  c/<stream_id>/<index:08d>  one committed chunk (JSON)
  p/<relative path>          the stream id of the path's current lineage

The JSON field names are the on-disk format: a state dir written by an earlier
release must load unchanged, so fields are only ever added, with defaults.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field, replace
from typing import Any

from shared.routing import path_bytes

__all__ = ["StreamStatus", "ChunkRecord", "GroupRecord", "StreamRecord", "stream_key", "chunk_key",
           "chunk_prefix", "path_key", "STREAM_PREFIX", "chunk_index_of"]

STREAM_PREFIX = b"s/"


class StreamStatus(enum.Enum):
    """What is stored; ``worker.stream.StreamState`` names the four states that this and
    ``end_reason`` make together."""

    ACTIVE = "active"            # seen, not finalized (growing, or reopened)
    COMPLETE = "complete"        # metadata.json written


@dataclass(frozen=True)
class ChunkRecord:
    """A chunk S3 acknowledged: its place in the file and the hash of its bytes; and,
    once copied, the ETag of its part in the multipart upload ``part_upload``."""

    index: int
    offset: int
    size: int
    xxh3_128: str
    uploaded_at: float
    part_upload: str | None = None
    part_etag: str | None = None

    @property
    def end(self) -> int:
        return self.offset + self.size

    def to_json(self) -> bytes:
        return json.dumps(vars(self)).encode()  # its fields are all JSON scalars

    @classmethod
    def from_json(cls, raw: bytes) -> ChunkRecord:
        return cls(**json.loads(raw))

    def same_bytes(self, other: ChunkRecord) -> bool:
        """The same upload of the same bytes (whatever was copied from it since)."""
        return (self.index, self.size, self.xxh3_128, self.uploaded_at) == (
            other.index, other.size, other.xxh3_128, other.uploaded_at)


@dataclass(frozen=True)
class GroupRecord:
    """One group of a two-level assembly (worker/groups.py), kept in its stream record's
    ``extra["groups"]`` (so it moves and is forgotten with the stream). ``digest``
    names the chunks it was built from; ``at`` says where its bytes are: ``group``,
    the intermediate object, or ``final``, bytes ``[offset, offset + size)`` of the
    final object (after completion, when intermediates are removed). ``part_upload``
    and ``part_etag``: its part in the final object's upload, once copied."""

    index: int
    digest: str
    size: int
    at: str = "group"
    offset: int = 0
    part_upload: str | None = None
    part_etag: str | None = None

    def to_json(self) -> dict[str, Any]:
        return dict(vars(self))

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GroupRecord:
        return cls(**data)


@dataclass(frozen=True)
class StreamRecord:
    """One lineage of one file. ``end_reason`` is set when the source went away
    (``source_deleted``) or was replaced/truncated (``source_replaced``): the stream
    is then finalized from what was uploaded. ``upload_id`` is the multipart upload
    of the final object that chunks are being copied into, until it is completed.
    ``source_removed`` is set once local retention removed the file: whatever is at
    the path afterwards is a new stream."""

    stream_id: str
    rel_path: str
    dev: int
    ino: int
    chunk_size: int
    started_at: float
    size: int = 0
    mtime_ns: int = 0
    status: StreamStatus = StreamStatus.ACTIVE
    end_reason: str | None = None
    completed_at: float | None = None
    reopen_count: int = 0
    chunks_reuploaded: int = 0
    upload_id: str | None = None
    # fields added later live here, so that an earlier release still reads the record
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def verified_ctime_ns(self) -> int:
        """The file's ctime when completion verified it (local retention, contract §7);
        0: completed by a release before retention, never removed."""
        return int(self.extra.get("verified_ctime_ns", 0))

    @property
    def source_removed(self) -> str | None:
        """Why local retention removed the file (``delete_after``, ``min_free``), set
        before the file is touched and cleared again if it stays; None: not removed."""
        value = self.extra.get("source_removed")
        return None if value is None else str(value)

    @property
    def source_removed_at(self) -> float | None:
        value = self.extra.get("source_removed_at")
        return None if value is None else float(value)

    @property
    def recovered_at(self) -> float | None:
        """When the stream was found again in S3 after the state was lost (contract §10,
        worker/recovery.py); None for one this state dir has known throughout."""
        value = self.extra.get("recovered_at")
        return None if value is None else float(value)

    @property
    def group_chunks(self) -> int | None:
        """Chunks per group when the final object is assembled in two levels (contract
        §9; its upload's parts are then groups), else None."""
        value = self.extra.get("group_chunks")
        return None if value is None else int(value)

    @property
    def groups(self) -> list[GroupRecord]:
        return [GroupRecord.from_json(g) for g in self.extra.get("groups", [])]

    def with_extra(self, **changes: Any) -> StreamRecord:
        """The record with ``extra`` fields set (None removes one)."""
        extra = {**self.extra, **changes}
        return replace(self, extra={k: v for k, v in extra.items() if v is not None})

    @property
    def last_write_at(self) -> float:
        return self.mtime_ns / 1e9

    def to_json(self) -> bytes:
        data = dict(vars(self))  # not asdict(): it deep-copies, on every chunk commit
        data["status"] = self.status.value
        return json.dumps(data).encode()  # ASCII escapes keep undecodable names

    @classmethod
    def from_json(cls, raw: bytes) -> StreamRecord:
        data = json.loads(raw)
        data["status"] = StreamStatus(data["status"])
        return cls(**data)

    def evolve(self, **changes: Any) -> StreamRecord:
        return replace(self, **changes)


def stream_key(stream_id: str) -> bytes:
    return STREAM_PREFIX + stream_id.encode()


def chunk_prefix(stream_id: str) -> bytes:
    return b"c/" + stream_id.encode() + b"/"


def chunk_key(stream_id: str, index: int) -> bytes:
    return chunk_prefix(stream_id) + b"%08d" % index


def chunk_index_of(key: bytes) -> int:
    return int(key.rsplit(b"/", 1)[1])


def path_key(rel_path: str) -> bytes:
    return b"p/" + path_bytes(rel_path)
