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

Crash safety: before the file is touched, a ``remove`` intent is fsynced and the
record marked removed (synced), so that from then on nothing can take a file at the
path for this stream's file grown, even one that reuses the inode. If the file stays
(a writer, a change), the mark is cleared again. At start-up an intent left open is
settled from the directory (``worker.removal.settle``): the file untouched under its
name clears the mark, anything else keeps it. A crash can therefore never remove a
file whose stream is not complete, nor let a later file overwrite a removed one's
objects in S3.

A step tries a few candidates at most, calling the loop's heartbeat between them, and
an S3 error pauses retention for a while: it never holds the worker's loop long.
"""

from __future__ import annotations

import bisect
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from shared import metrics
from shared.messages import Removable, Removal
from shared.paths import lstat_beneath
from shared.s3 import StorageError
from shared.settings import Settings
from shared.state.errors import StateWriteError
from shared.state.records import StreamRecord, StreamStatus
from shared.state.store import CheckpointStore
from shared.state.wal import WriteAheadLog
from shared.timefmt import now as wall_now
from worker.liveness import Draining
from worker.removal import (
    LeaseRefused,
    LeftHidden,
    NotTheVerifiedFile,
    Settled,
    WriterRaced,
    hidden_name,
    remove_verified,
    settle,
)
from worker.settled import FileState
from worker.storage import Storage
from worker.stream import Stream, keys_of

__all__ = ["Retention"]

RETRY_AFTER = {              # seconds before a refused candidate is tried again
    "open_for_writing": 5.0,
    "lease_unsupported": 300.0,
    "lease_not_permitted": 300.0,
    "not_in_s3": 60.0,
    "s3_error": 30.0,
    "unlink_failed": 60.0,
    "other_links": 300.0,
    "internal": 60.0,
}
LOG_AGAIN_AFTER = 60.0       # a refusal is logged at most this often per file
ONCE_PER_FILE = ("lease_unsupported", "lease_not_permitted")
TRIES_PER_STEP = 4           # candidates tried in one step of the loop


@dataclass
class _Candidate:
    stream_id: str
    rel_path: str
    completed_at: float
    size: int
    retry_at: float = 0.0
    logged: dict[str, float] = field(default_factory=dict)  # reason -> when last logged
    dry_run_done: bool = False


def identity_of(record: StreamRecord) -> FileState:
    return FileState(record.dev, record.ino, record.size, record.mtime_ns,
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
        self._order: list[tuple[float, str]] = []  # (completed_at, stream_id); stale
        # entries (discarded, or completed again since) are skipped, and pruned
        self.requested: dict[str, str] = {}        # stream id -> reason, from the supervisor
        self.paused_until = 0.0                    # after an S3 error
        self.unverified_logging = False            # set once start-up has loaded
        self.unverified = 0                        # completed before retention existed
        self.removals: deque[Removal] = deque(maxlen=64)  # for /streams, the supervisor
        # hooks the tracker sets (worker.wiring): look at a path again (a change no file
        # event reported, e.g. `touch`, then reopens the stream), and drop a stream it
        # holds in memory (its record is about to say "removed")
        self.look_again: Callable[[str], None] = lambda rel_path: None
        self.unload: Callable[[str], None] = lambda stream_id: None

    # what is a candidate
    def recover(self) -> None:
        """Settle the ``remove`` intents a crash left open, before anything observes a
        path: the file untouched under its name is kept (the mark cleared), anything
        else is recorded as removed."""
        for intent in self.wal.recovered():
            if intent.op != "remove":
                continue
            record = self.store.stream(intent.stream_id)
            if record is not None and _eligible(record, marked_ok=True):
                hidden = str(intent.fields.get("hidden") or hidden_name(record.stream_id))
                if not self._settle(record, hidden, str(intent.fields.get("reason"))):
                    continue  # the intent stays open: settled at the next start
            self.wal.done(intent)

    def _settle(self, record: StreamRecord, hidden: str, reason: str) -> bool:
        """Record what became of a removal under way; False if the directory could not
        tell (the record keeps its mark meanwhile: a file at the path is a new stream)."""
        try:
            outcome = settle(self.watch_dir, record.rel_path, hidden, identity_of(record))
        except OSError as exc:
            if record.source_removed is None:
                Stream.source_removed(self.store, record, reason, wall_now())
            self.log.error("removal_unsettled", stream_id=record.stream_id,
                           rel_path=record.rel_path, hidden=hidden, error=exc.strerror)
            return False
        fields = dict(stream_id=record.stream_id, rel_path=record.rel_path, size=record.size)
        if outcome is Settled.KEPT:
            if record.source_removed is not None:
                Stream.source_removed(self.store, record, None, None)
            self.look_again(record.rel_path)  # given back with new bytes: reopened
            return True
        if record.source_removed is None:
            Stream.source_removed(self.store, record, reason, wall_now())
        if outcome is Settled.LEFT_HIDDEN:
            self.log.error("removal_left_hidden", hidden=hidden, **fields)
        else:
            self.log.info("source_removed", reason=reason, recovered=True, **fields)
        return True

    def consider(self, record: StreamRecord) -> None:
        """A completed stream (at start-up, or just completed) may become a candidate."""
        if not self.enabled or not _eligible(record):
            return
        if not record.verified_ctime_ns:
            self.unverified += 1  # logged once at start-up, or here for a fresh one
            if self.unverified_logging:
                self.log.warning("retention_blocked", stream_id=record.stream_id,
                                 rel_path=record.rel_path, reason="not_verified",
                                 detail="its ctime moved while completion verified it")
            return
        assert record.completed_at is not None
        self.candidates[record.stream_id] = _Candidate(
            record.stream_id, record.rel_path, record.completed_at, record.size)
        bisect.insort(self._order, (record.completed_at, record.stream_id))
        if len(self._order) > 2 * len(self.candidates) + 64:
            self._order = [(t, s) for t, s in self._order if self._current(t, s)]

    def discard(self, stream_id: str) -> None:
        """The stream was reopened, forgotten or removed: no longer a candidate."""
        self.candidates.pop(stream_id, None)
        self.requested.pop(stream_id, None)

    def request(self, stream_id: str, reason: str) -> None:
        if stream_id in self.candidates:
            self.requested[stream_id] = reason

    def _current(self, completed_at: float, stream_id: str) -> _Candidate | None:
        c = self.candidates.get(stream_id)
        return c if c is not None and c.completed_at == completed_at else None

    def _ready(self, now: float, completed_before: float = float("inf"),
               limit: int | None = None) -> list[_Candidate]:
        """Candidates in completion order that are not waiting after a refusal: those
        completed before ``completed_before``, at most ``limit``."""
        found: list[_Candidate] = []
        for completed_at, stream_id in self._order:
            if completed_at > completed_before or len(found) == limit:
                break
            c = self._current(completed_at, stream_id)
            if c is not None and c.retry_at <= now and not c.dry_run_done:
                found.append(c)
        return found

    def removable(self, limit: int) -> tuple[Removable, ...]:
        """The oldest candidates not waiting after a refusal, for the heartbeat."""
        ready = self._ready(self.clock(), limit=limit)
        return tuple(Removable(c.stream_id, c.completed_at, c.size) for c in ready)

    # the work
    def step(self, between: Callable[[], None] = lambda: None) -> bool:
        """Try a few candidates that are requested or due, calling ``between`` after
        each; True if any S3 or file work was done."""
        if not self.candidates or self.clock() < self.paused_until:
            return False
        now = self.clock()
        work = [(self.candidates[s], r) for s, r in self.requested.items()
                if s in self.candidates and self.candidates[s].retry_at <= now]
        if self.delete_after is not None:
            work += [(c, "delete_after") for c in self._ready(
                now, completed_before=wall_now() - self.delete_after, limit=TRIES_PER_STEP)]
        did = False
        for c, reason in work[:TRIES_PER_STEP]:
            if c.stream_id not in self.candidates:
                continue  # requested and due: tried once already
            self.requested.pop(c.stream_id, None)
            try:
                did |= self._try(c, reason)
            except (StateWriteError, Draining):
                raise  # the worker's own ways out
            except Exception as exc:  # a bug: contained to this file, tried again later
                self.log.exception("retention_failed", stream_id=c.stream_id,
                                   rel_path=c.rel_path, error=repr(exc))
                self._refused(c, "internal", detail=repr(exc))
            between()
            if self.clock() < self.paused_until:
                break
        return did

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
        if FileState.of(st) != expected:
            return self._changed(c, "the file changed since completion verified it")
        if st.st_nlink > 1 and reason == "min_free":  # removing it would free nothing
            return self._refused(c, "other_links", detail=f"{st.st_nlink} links")
        try:
            missing = self._missing_in_s3(record)
        except StorageError as exc:
            self.paused_until = self.clock() + RETRY_AFTER["s3_error"]
            return self._refused(c, "s3_error", detail=exc.detail)
        if missing:
            return self._refused(c, "not_in_s3", detail=missing)
        fields = dict(stream_id=record.stream_id, rel_path=record.rel_path, size=record.size,
                      reason=reason)
        if self.dry_run:
            c.dry_run_done = True
            self.log.info("source_would_remove", **fields)
            return True
        return self._remove(c, record, reason, expected, fields)

    def _remove(self, c: _Candidate, record: StreamRecord, reason: str,
                expected: FileState, fields: dict[str, Any]) -> bool:
        hidden = hidden_name(record.stream_id)
        intent = self.wal.begin("remove", stream_id=record.stream_id, index=-1,
                                rel_path=record.rel_path, reason=reason, hidden=hidden)
        self.unload(record.stream_id)
        marked = Stream.source_removed(self.store, record, reason, wall_now())
        try:
            remove_verified(self.watch_dir, record.rel_path, expected, hidden)
        except LeftHidden as exc:
            self.wal.done(intent)  # the name's new file is a new stream: the mark stays
            self.discard(c.stream_id)
            self.log.error("removal_left_hidden", hidden=hidden, detail=str(exc), **fields)
            return True
        except WriterRaced as exc:
            self.log.error("source_removed_while_opened", detail=str(exc), **fields)
        except (LeaseRefused, NotTheVerifiedFile) as exc:
            Stream.source_removed(self.store, marked, None, None)
            self.wal.done(intent)
            if isinstance(exc, LeaseRefused):
                return self._refused(c, exc.reason, detail=str(exc))
            return self._changed(c, str(exc))
        except Exception as exc:  # OSError, or a bug: where did it stay? the directory says
            if not self._settle(marked, hidden, reason):
                raise  # the intent stays open for the next start
            self.wal.done(intent)
            if self.store.stream(record.stream_id) == marked:
                self.discard(c.stream_id)
                return True
            detail = exc.strerror if isinstance(exc, OSError) else repr(exc)
            return self._refused(c, "unlink_failed", detail=detail)
        self.wal.done(intent)
        self.discard(c.stream_id)
        self.removals.append(Removal(record.stream_id, record.rel_path, record.size, reason,
                                     marked.source_removed_at or 0.0))
        metrics.SOURCE_FILES_REMOVED.labels(reason=reason).inc()
        metrics.SOURCE_BYTES_REMOVED.labels(reason=reason).inc(record.size)
        self.log.info("source_removed", **fields)
        return True

    def _missing_in_s3(self, record: StreamRecord) -> str | None:
        """Why S3 does not (provably, now) hold the stream; None when it does."""
        keys = keys_of(self.prefix, record)
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
        listed = self.storage.sizes_under(keys.chunks_prefix)
        for chunk in chunks:
            if listed.get(keys.chunk(chunk.index)) != chunk.size:
                return f"chunk {chunk.index} missing or of another size"
        return None

    def _refused(self, c: _Candidate, reason: str, detail: str | None = None) -> bool:
        """Not now: try again later, and say why (rate-limited per file)."""
        now = self.clock()
        c.retry_at = now + RETRY_AFTER[reason]
        metrics.RETENTION_BLOCKED.inc()
        last = c.logged.get(reason)
        if last is None or (reason not in ONCE_PER_FILE and now - last >= LOG_AGAIN_AFTER):
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


def _eligible(record: StreamRecord, marked_ok: bool = False) -> bool:
    """Complete (not ended early) and, unless ``marked_ok``, not marked removed."""
    return (record.status is StreamStatus.COMPLETE and record.end_reason is None
            and record.completed_at is not None
            and (marked_ok or record.source_removed is None))
