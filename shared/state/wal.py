"""A write-ahead log of intents for S3 side effects in flight.

Before a worker uploads a chunk or starts assembling a final object, it appends
an *intent* (fsynced, except for a new chunk's upload: see ``Uploader.upload_chunk``);
when the effect is recorded in the checkpoint store it appends a *done* mark.
After a crash, the intents without a done mark are what may have happened in S3
without being recorded: ``Uploader.reconcile`` settles them with what S3 holds.

This log is the one place intents are kept: those recovered at open (to reconcile),
those of the current run (an attempt that failed is superseded by its retry, so
pending intents stay few), and the fold of records into pending intents, which
``processor inspect`` uses too.

Framing: ``<u32 length><u32 crc32(payload)><payload: JSON>``, little-endian. A
record that is short, too long or fails its CRC ends the log: it and everything
after it are cut (a torn write from a crash, or corruption), never trusted.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared.state.durable import fsync_dir
from shared.state.errors import state_write
from shared.state.layout import WorkerStateDir

__all__ = ["Intent", "WriteAheadLog", "read_records", "fold", "read_pending", "MAX_RECORD"]

_HEADER = struct.Struct("<II")
MAX_RECORD = 1 << 20
COMPACT_AT_BYTES = 1 << 20


@dataclass(frozen=True)
class Intent:
    """An S3 side effect about to happen: ``op`` with its fields (stream_id, rel_path, …)."""

    seq: int
    op: str
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def stream_id(self) -> str:
        return str(self.fields.get("stream_id", ""))

    @property
    def rel_path(self) -> str:
        return str(self.fields.get("rel_path", ""))

    @property
    def index(self) -> int:
        """The chunk index (``-1`` for an effect on the final object)."""
        return int(self.fields.get("index", -1))

    @property
    def effect(self) -> tuple[str, str, int]:
        """What the intent is about: a retry of the same effect supersedes it."""
        return (self.stream_id, self.op, self.index)

    def __str__(self) -> str:
        return f"{self.op}#{self.seq}({self.stream_id})"


def _frame(payload: dict[str, Any]) -> bytes:
    body = json.dumps(payload, separators=(",", ":")).encode()  # ASCII: undecodable names survive
    return _HEADER.pack(len(body), zlib.crc32(body)) + body


def read_records(data: bytes) -> tuple[list[dict[str, Any]], int]:
    """Decode framed records; return them and the length of the valid prefix."""
    records: list[dict[str, Any]] = []
    pos = 0
    while pos + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + _HEADER.size
        if length > MAX_RECORD or start + length > len(data):
            break
        body = data[start:start + length]
        if zlib.crc32(body) != crc:
            break
        try:
            record = json.loads(body)
        except ValueError:
            break
        if not isinstance(record, dict):
            break
        records.append(record)
        pos = start + length
    return records, pos


def fold(records: Iterable[dict[str, Any]]) -> tuple[dict[int, Intent], int]:
    """Replay decoded records: the intents without a done mark (by sequence number),
    and the next sequence number to use."""
    pending: dict[int, Intent] = {}
    next_seq = 1
    for record in records:
        seq = int(record.get("seq", 0))
        if "done" in record:
            pending.pop(int(record["done"]), None)
        elif "op" in record:
            pending[seq] = Intent(seq, str(record["op"]), dict(record.get("f", {})))
        next_seq = max(next_seq, seq + 1, int(record.get("done", 0)) + 1)
    return pending, next_seq


def read_pending(path: Path) -> tuple[list[Intent], int]:
    """Read a log without changing it: its pending intents, oldest first, and how many
    bytes of torn tail it has (for ``processor inspect``)."""
    data = path.read_bytes() if path.exists() else b""
    records, valid = read_records(data)
    pending, _ = fold(records)
    return sorted(pending.values(), key=lambda i: i.seq), len(data) - valid


class WriteAheadLog:
    """One worker's intent log. Opening it cuts a bad tail and finds pending intents."""

    def __init__(self, directory: WorkerStateDir) -> None:
        self.path = directory.wal
        self._rewrite_path = directory.wal_rewrite
        path = self.path
        data = path.read_bytes() if path.exists() else b""
        records, valid = read_records(data)
        self.truncated_bytes = len(data) - valid
        if self.truncated_bytes:
            with open(path, "r+b") as f:
                f.truncate(valid)
                f.flush()
                os.fsync(f.fileno())
        self._pending, self._next_seq = fold(records)
        self._recovered = set(self._pending)  # found at open, not settled since
        self._current: dict[tuple[str, str, int], int] = {}  # effect -> seq, this run
        self._file = open(path, "ab")
        if not data:
            fsync_dir(path.parent)

    def pending(self) -> list[Intent]:
        """Intents without a done mark, oldest first."""
        return sorted(self._pending.values(), key=lambda i: i.seq)

    def recovered(self, stream_id: str | None = None) -> list[Intent]:
        """Intents found pending when the log was opened and not settled since (of one
        stream, or all), oldest first: what a crash may have left done but unrecorded."""
        if not self._recovered:  # the usual case, asked once per stream and step
            return []
        found = [self._pending[seq] for seq in self._recovered]
        return sorted((i for i in found if stream_id is None or i.stream_id == stream_id),
                      key=lambda i: i.seq)

    def begin(self, op: str, *, stream_id: str, index: int, durable: bool = True,
              **fields: Any) -> Intent:
        """``intend`` for the worker's own effects: an intent of the same effect left
        open by a failed attempt in this run is marked done first (the retry re-does
        it), so a stream that keeps failing does not grow the pending set."""
        effect = (stream_id, op, index)
        previous = self._current.pop(effect, None)
        if previous is not None and previous in self._pending:
            self.done(self._pending[previous])
        intent = self.intend(op, durable=durable, stream_id=stream_id, index=index, **fields)
        self._current[effect] = intent.seq
        return intent

    def intend(self, op: str, *, durable: bool = True, **fields: Any) -> Intent:
        """Record that ``op`` is about to happen; returns the intent to close later.

        ``durable=False`` skips the fsync: the intent still survives a killed process
        (it is in the kernel's page cache), only a power loss can drop it. Use it only
        for effects that are safe to repeat blind after such a loss."""
        intent = Intent(self._next_seq, op, fields)
        self._next_seq += 1
        self._append({"seq": intent.seq, "op": op, "f": fields}, sync=durable)
        self._pending[intent.seq] = intent
        return intent

    def done(self, intent: Intent) -> None:
        """Mark ``intent`` as recorded. Not fsynced: losing it only causes a harmless
        second reconciliation of an effect that is idempotent."""
        self._pending.pop(intent.seq, None)
        self._recovered.discard(intent.seq)
        if self._current.get(intent.effect) == intent.seq:
            del self._current[intent.effect]
        self._append({"seq": self._next_seq, "done": intent.seq}, sync=False)
        self._next_seq += 1
        if self._file.tell() > COMPACT_AT_BYTES:
            self.rewrite(self._pending.values())  # bounded even while some intent stays open

    def adopt(self, intents: Iterable[Intent], origin: str) -> None:
        """Append intents moved here from log ``origin`` (re-numbered, fsynced).

        Each carries an ``origin`` key, and one already adopted is skipped, so a
        migration repeated after a crash does not double them."""
        present = {i.fields.get("origin") for i in self._pending.values()}
        for intent in intents:
            key = intent.fields.get("origin") or f"{origin}:{intent.seq}"
            if key not in present:
                self.intend(intent.op, **{**intent.fields, "origin": key})

    def rewrite(self, keep: Iterable[Intent]) -> None:
        """Atomically replace the log with only ``keep`` (compaction, migration)."""
        keep = sorted(keep, key=lambda i: i.seq)
        tmp = self._rewrite_path
        with state_write("write-ahead log rewrite"), open(tmp, "wb") as f:
            f.write(_frame({"seq": self._next_seq - 1}))  # keeps numbering monotonic
            for intent in keep:
                f.write(_frame({"seq": intent.seq, "op": intent.op, "f": intent.fields}))
            f.flush()
            os.fsync(f.fileno())
        self._file.close()
        os.replace(tmp, self.path)
        fsync_dir(self.path.parent)
        self._pending = {i.seq: i for i in keep}
        self._recovered &= set(self._pending)
        self._file = open(self.path, "ab")

    def close(self) -> None:
        self._file.close()

    def _append(self, payload: dict[str, Any], *, sync: bool) -> None:
        with state_write("write-ahead log append"):
            self._file.write(_frame(payload))
            self._file.flush()
            if sync:
                os.fsync(self._file.fileno())
