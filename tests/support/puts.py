"""Counting what reached the S3 server, from the recording proxy's records: the chunk
PUTs per stream and index, and the writes a test did not expect.

Why: "each chunk went up exactly once" is the contract's core promise, checked by
the end-to-end and fault suites; each had its own parser of chunk keys out of
request paths. A chunk PUT is a PUT without a query (a part copy has one) to
``/<bucket>/.../<stream_id>/chunks/<index>``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

from tests.support.proxy import RecordingProxy, RequestRecord

__all__ = ["chunk_key", "chunk_put_counts", "chunk_puts", "writes"]


def chunk_key(record: RequestRecord, bucket: str) -> tuple[str, int] | None:
    """(stream_id, index) of a chunk PUT record, else None."""
    if record.method != "PUT" or record.query or not record.path.startswith(f"/{bucket}/"):
        return None
    parts = record.path.split("/")
    name = parts[-1].removesuffix(".m4s")  # a stream with a live playlist (contract §2)
    if len(parts) < 4 or parts[-2] != "chunks" or not name.isdigit():
        return None
    return parts[-3], int(name)


def chunk_put_counts(proxy: RecordingProxy, bucket: str,
                     complete_only: bool = False) -> Counter[tuple[str, int]]:
    """(stream_id, index) -> chunk PUTs the server received (``complete_only``: with
    the whole body forwarded)."""
    counts: Counter[tuple[str, int]] = Counter()
    for record in proxy.requests():
        key = chunk_key(record, bucket)
        if key is not None and (record.complete or not complete_only):
            counts[key] += 1
    return counts


def chunk_puts(proxy: RecordingProxy, bucket: str, doc: dict[str, Any]) -> dict[int, int]:
    """Index -> PUTs the server received for each chunk of ``doc``'s stream."""
    return {index: n for (sid, index), n in chunk_put_counts(proxy, bucket).items()
            if sid == doc["stream_id"]}


def writes(proxy: RecordingProxy, bucket: str,
           except_prefixes: Iterable[str] = ()) -> list[RequestRecord]:
    """Every PUT, POST or DELETE the server received for ``bucket``, but those under
    ``except_prefixes`` (object key prefixes, e.g. a marker stream's ``object_prefix``)."""
    skip = tuple(f"/{bucket}/{p.strip('/')}/" for p in except_prefixes)
    return [r for r in proxy.requests()
            if r.method in ("PUT", "POST", "DELETE")
            and (r.path == f"/{bucket}" or r.path.startswith(f"/{bucket}/"))
            and not (skip and r.path.startswith(skip))]
