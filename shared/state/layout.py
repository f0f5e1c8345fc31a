"""The state dir's layout: every file name under ``--state-dir``, and nowhere else.

The supervisor (migration, ``processor inspect``) and the workers all reach the state
through these two values, so a name changes in one place and a reader can see the
whole layout at once::

    <state-dir>/
      worker-<slot>/             one per worker slot, owned by that slot's process
        born                     when the checkpoints were made from nothing
        checkpoints.ldb/         LevelDB: stream records, committed chunks, path index
        checkpoints.ldb.new/     a new LevelDB until it is durable (then renamed)
        intents.wal              write-ahead log of S3 side effects in flight
        intents.tmp              the log's replacement while it is being rewritten

A slot's directory is named by the slot, not the pid, so a replaced worker resumes
its predecessor's streams.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["StateDir", "WorkerStateDir"]

_WORKER_DIR = "worker-{slot}"
_WORKER_DIR_PATTERN = re.compile(r"^worker-(\d+)$")
_CHECKPOINTS = "checkpoints.ldb"
_CHECKPOINTS_STAGING = "checkpoints.ldb.new"
_WAL = "intents.wal"
_WAL_REWRITE = "intents.tmp"


@dataclass(frozen=True)
class WorkerStateDir:
    """One worker slot's directory."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def checkpoints(self) -> Path:
        """The LevelDB directory."""
        return self.path / _CHECKPOINTS

    @property
    def checkpoints_staging(self) -> Path:
        """Where a new LevelDB is made and synced before it takes its name."""
        return self.path / _CHECKPOINTS_STAGING

    @property
    def wal(self) -> Path:
        return self.path / _WAL

    @property
    def wal_rewrite(self) -> Path:
        """Where a compaction or migration writes the log before renaming it over ``wal``."""
        return self.path / _WAL_REWRITE

    @property
    def born(self) -> Path:
        """When the checkpoints were made from nothing (worker/recovery.py reads it)."""
        return self.path / "born"

    def has_checkpoints(self) -> bool:
        return self.checkpoints.exists()


@dataclass(frozen=True)
class StateDir:
    """The whole ``--state-dir``."""

    root: Path

    def worker(self, slot: int) -> WorkerStateDir:
        """Where worker ``slot`` keeps its LevelDB and write-ahead log."""
        return WorkerStateDir(self.root / _WORKER_DIR.format(slot=slot))

    def slots(self) -> dict[int, WorkerStateDir]:
        """The slot directories present, by slot (a run with more workers may have left
        some beyond today's ``--workers``)."""
        found: dict[int, WorkerStateDir] = {}
        if self.root.is_dir():
            for child in self.root.iterdir():
                match = _WORKER_DIR_PATTERN.match(child.name)
                if match and child.is_dir():
                    found[int(match.group(1))] = WorkerStateDir(child)
        return dict(sorted(found.items()))
