"""Local retention (contract §7): remove a worker's source files once they are safely in
S3, and never one that is not.

Off unless ``--delete-after`` or ``--min-free`` is set. A completed stream becomes a
*candidate*; it is removed when it is due (``--delete-after`` after its completion)
or when the supervisor asks (``--min-free``, oldest completion first across all
workers), and only if every check holds at that moment, in this order, cheapest
first: its record is complete and current; the file is the state completion verified
(device, inode, size, mtime, ctime); S3 holds ``metadata.json`` and the object (or
every chunk) at the exact size, by requests made now; and, under a read lease, no
process has it open for writing (``worker.removal``).

Crash safety: a ``remove`` intent is logged (fsynced) before the file is touched and
the record marked after it. At start-up an intent left open is settled from the
path: if the verified file is no longer there, the removal happened (or is finished
now, if the file was left under its hidden name) and is recorded; otherwise the file
stays a candidate. A crash can therefore never remove a file
whose stream is not complete, and never lose the knowledge that a path's file was
removed (so a new file there, even on a reused inode, is a new stream).
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from shared import metrics
from shared.keys import StreamKeys
from shared.messages import Removable, Removal
from shared.paths import lstat_beneath
from shared.s3 import StorageError
from shared.settings import Settings
from shared.state.records import StreamRecord, StreamStatus
from shared.state.store import CheckpointStore
from shared.state.wal import WriteAheadLog
from shared.timefmt import now as wall_now
from worker.removal import (
    FileIdentity,
    LeaseRefused,
    NotTheVerifiedFile,
    finish_removal,
    hidden_name,
    remove_verified,
)
from worker.storage import Storage
from worker.stream import Stream

__all__ = ["Retention"]

RETRY_AFTER = {              # seconds before a refused candidate is tried again
    "open_for_writing": 5.0,
    "lease_unsupported": 300.0,
    "lease_not_permitted": 300.0,
    "not_in_s3": 60.0,
    "s3_error": 30.0,
    "unlink_failed": 60.0,
}
LOG_WRITER_EVERY = 60.0      # open_for_writing is logged at most this often per file


@dataclass
class _Candidate:
    stream_id: str
    rel_path: str
    completed_at: float
    size: int
    retry_at: float = 0.0
    logged: dict[str, float] = field(default_factory=dict)  # reason -> when last logged
    dry_run_done: bool = False


def identity_of(record: StreamRecord) -> FileIdentity:
    return FileIdentity(record.dev, record.ino, record.size, record.mtime_ns,
                        record.verified_ctime_ns)


class Retention:
    """One worker's removal candidates and the removals themselves."""

    def __init__(self, settings: Settings, store: CheckpointStore, wal: WriteAheadLog,
                 storage: Storage, log: Any, clock: Callable[[], float] = time.monotonic
                 ) -> None:
        self.enabled = settings.retention
        self.dry_run = settings.delete_dry_run
        self.delete_after = settings.delete_after
        self.watch_dir = settings.watch_dir
        self.prefix = settings.s3_prefix
        self.store = store
        self.wal = wal
        self.storage = storage
        self.log = log
        self.clock = clock
        self.candidates: dict[str, _Candidate] = {}
        self._order: list[tuple[float, str]] = []  # (completed_at, stream_id), lazily pruned
        self.requested: dict[str, str] = {}        # stream id -> reason, from the supervisor
        self.unverified = 0                        # completed before retention existed
        self.removals: deque[Removal] = deque(maxlen=20)  # for /streams
        # the tracker's touch: a changed file is handed back to be looked at (a change
        # no file event reported, e.g. `touch`, then reopens the stream)
        self.look_again: Callable[[str], None] = lambda rel_path: None

    # what is a candidate
    def recover(self) -> None:
        """Settle the ``remove`` intents a crash left open (before anything observes a
        path): a removal that happened is recorded, one that did not is forgotten."""
        for intent in self.wal.recovered():
            if intent.op != "remove":
                continue
            record = self.store.stream(intent.stream_id)
            if record is not None and record.source_removed is None and \
                    self._gone(record, str(intent.fields.get("hidden", ""))):
                Stream.source_removed(self.store, record, str(intent.fields.get("reason")),
                                      wall_now())
                self.log.info("source_removed", stream_id=record.stream_id,
                              rel_path=record.rel_path, size=record.size,
                              reason=intent.fields.get("reason"), recovered=True)
            self.wal.done(intent)

    def _gone(self, record: StreamRecord, hidden: str) -> bool:
        try:
            return finish_removal(self.watch_dir, record.rel_path,
                                  hidden or hidden_name(record.stream_id), record.ino)
        except OSError:
            return False  # cannot tell: assume not removed (it stays a candidate)

    def consider(self, record: StreamRecord) -> None:
        """A completed stream (at start-up, or just completed) may become a candidate."""
        if not self.enabled or not _eligible(record):
            return
        if not record.verified_ctime_ns:
            self.unverified += 1
            return
        assert record.completed_at is not None
        self.candidates[record.stream_id] = _Candidate(
            record.stream_id, record.rel_path, record.completed_at, record.size)
        bisect.insort(self._order, (record.completed_at, record.stream_id))

    def discard(self, stream_id: str) -> None:
        """The stream was reopened, forgotten or removed: no longer a candidate."""
        self.candidates.pop(stream_id, None)
        self.requested.pop(stream_id, None)

    def request(self, stream_id: str, reason: str) -> None:
        if stream_id in self.candidates:
            self.requested[stream_id] = reason

    def removable(self, limit: int) -> tuple[Removable, ...]:
        """The oldest candidates not waiting after a refusal, for the heartbeat."""
        now = self.clock()
        found = []
        for _, stream_id in self._order:
            c = self.candidates.get(stream_id)
            if c is not None and c.retry_at <= now and not c.dry_run_done:
                found.append(Removable(c.stream_id, c.completed_at, c.size))
                if len(found) >= limit:
                    break
        return tuple(found)

    # the work
    def step(self) -> bool:
        """Try the candidates that are due or requested; True if any S3 or file work."""
        if not self.candidates:
            self._order.clear()
            return False
        did = False
        requested, self.requested = self.requested, {}
        for stream_id, reason in requested.items():
            c = self.candidates.get(stream_id)
            if c is not None and c.retry_at <= self.clock():
                did |= self._try(c, reason)
        if self.delete_after is not None:
            due_before = wall_now() - self.delete_after
            for c in self._due(due_before):
                did |= self._try(c, "delete_after")
        return did

    def _due(self, due_before: float) -> Iterable[_Candidate]:
        self._order = [(t, s) for t, s in self._order if s in self.candidates]
        now = self.clock()
        for completed_at, stream_id in list(self._order):
            if completed_at > due_before:
                break
            c = self.candidates.get(stream_id)
            if c is not None and c.retry_at <= now and not c.dry_run_done:
                yield c

    def _try(self, c: _Candidate, reason: str) -> bool:
        record = self.store.stream(c.stream_id)
        if record is None or not _eligible(record) or \
                self.store.current_stream_id(record.rel_path) != record.stream_id:
            self.discard(c.stream_id)
            return False
        expected = identity_of(record)
        try:
            st = lstat_beneath(self.watch_dir, record.rel_path)
        except FileNotFoundError:
            self.discard(c.stream_id)  # gone already (removed by hand): nothing to do
            return False
        except OSError as exc:
            return self._refused(c, "unlink_failed", detail=exc.strerror)
        if FileIdentity.of(st) != expected:
            return self._changed(c, "the file changed since completion verified it")
        try:
            missing = self._missing_in_s3(record)
        except StorageError as exc:
            return self._refused(c, "s3_error", detail=exc.detail)
        if missing:
            return self._refused(c, "not_in_s3", detail=missing)
        fields = dict(stream_id=record.stream_id, rel_path=record.rel_path, size=record.size,
                      reason=reason)
        if self.dry_run:
            c.dry_run_done = True
            self.log.info("source_would_remove", **fields)
            return True
        hidden = hidden_name(record.stream_id)
        intent = self.wal.begin("remove", stream_id=record.stream_id, index=-1,
                                rel_path=record.rel_path, reason=reason, hidden=hidden)
        try:
            remove_verified(self.watch_dir, record.rel_path, expected, hidden)
        except LeaseRefused as exc:
            self.wal.done(intent)
            return self._refused(c, exc.reason, detail=str(exc))
        except NotTheVerifiedFile as exc:
            self.wal.done(intent)
            return self._changed(c, str(exc))
        except FileNotFoundError:
            self.wal.done(intent)
            self.discard(c.stream_id)
            return True
        except OSError as exc:
            self.wal.done(intent)
            return self._refused(c, "unlink_failed", detail=exc.strerror)
        removed = Stream.source_removed(self.store, record, reason, wall_now())
        self.wal.done(intent)
        self.discard(c.stream_id)
        self.removals.append(Removal(record.stream_id, record.rel_path, record.size, reason,
                                     removed.source_removed_at or 0.0))
        metrics.SOURCE_FILES_REMOVED.labels(reason=reason).inc()
        metrics.SOURCE_BYTES_REMOVED.labels(reason=reason).inc(record.size)
        self.log.info("source_removed", **fields)
        return True

    def _missing_in_s3(self, record: StreamRecord) -> str | None:
        """Why S3 does not (provably, now) hold the stream; None when it does."""
        keys = StreamKeys(self.prefix, record.rel_path, record.stream_id)
        if self.storage.object_size(keys.metadata) is None:
            return "metadata.json not found"
        size = self.storage.object_size(keys.final_object)
        if size == record.size:
            return None
        if size is not None:
            return f"object has {size} bytes, the file {record.size}"
        chunks = self.store.chunks(record.stream_id)  # not assembled: every chunk, then
        if not chunks or chunks[-1].end != record.size:
            return "no final object, and the chunks do not cover the file"
        for chunk in chunks:
            if self.storage.object_size(keys.chunk(chunk.index)) != chunk.size:
                return f"chunk {chunk.index} missing or of another size"
        return None

    def _refused(self, c: _Candidate, reason: str, detail: str | None = None) -> bool:
        """Not now: try again later, and say why (rate-limited per file)."""
        now = self.clock()
        c.retry_at = now + RETRY_AFTER[reason]
        metrics.RETENTION_BLOCKED.inc()
        last = c.logged.get(reason)
        once = reason in ("lease_unsupported", "lease_not_permitted")
        if last is None or (not once and now - last >= LOG_WRITER_EVERY):
            c.logged[reason] = now
            self.log.warning("retention_blocked", stream_id=c.stream_id, rel_path=c.rel_path,
                             reason=reason, detail=detail, retry_in=RETRY_AFTER[reason])
        return True

    def _changed(self, c: _Candidate, detail: str) -> bool:
        """The file is not what completion verified: never removed under this completion.
        The tracker looks at it again: a new size or mtime reopens the stream, whose next
        completion verifies it again; a change of ctime alone keeps it here for good
        (until a restart considers it again)."""
        metrics.RETENTION_BLOCKED.inc()
        self.look_again(c.rel_path)
        self.log.warning("retention_blocked", stream_id=c.stream_id, rel_path=c.rel_path,
                         reason="changed_since_completion", detail=detail)
        self.discard(c.stream_id)
        return True


def _eligible(record: StreamRecord) -> bool:
    return (record.status is StreamStatus.COMPLETE and record.end_reason is None
            and record.source_removed is None and record.completed_at is not None)
