"""metadata.json (contract §3, schema_version 1), built from committed state."""

from __future__ import annotations

from typing import Any

from shared.keys import StreamKeys, key_text
from shared.state.records import ChunkRecord, StreamRecord
from shared.timefmt import rfc3339
from worker.media import MediaInfo

__all__ = ["SCHEMA_VERSION", "build_metadata"]

SCHEMA_VERSION = 1


def build_metadata(
    record: StreamRecord,
    chunks: list[ChunkRecord],
    keys: StreamKeys,
    media: MediaInfo,
    *,
    status: str,
    completed_at: float,
    object_key: str | None,
    assembly: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The document written last to ``P/metadata.json``."""
    total = sum(c.size for c in chunks)
    document: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "stream_id": record.stream_id,
        "source_path": key_text(record.rel_path),
        "status": status,
        "total_size_bytes": total,
        "chunk_size": record.chunk_size,
        "chunks": [
            {"index": c.index, "key": keys.chunk(c.index), "offset": c.offset, "size": c.size,
             "xxh3_128": c.xxh3_128, "uploaded_at": rfc3339(c.uploaded_at)}
            for c in chunks
        ],
        "object_key": object_key,
        "assembly": assembly,
        "started_at": rfc3339(record.started_at),
        "last_write_at": rfc3339(record.last_write_at),
        "completed_at": rfc3339(completed_at),
        "stream_duration_seconds": round(max(0.0, record.last_write_at - record.started_at), 6),
        "media_duration_seconds": (None if media.duration_seconds is None
                                   else round(media.duration_seconds, 6)),
        "media": media.media_dict(),
        "reopen_count": record.reopen_count,
        "chunks_reuploaded": record.chunks_reuploaded,
    }
    if media.error is not None:
        document["media_error"] = media.error
    return document
