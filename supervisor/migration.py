"""Moves checkpoints to their owners when ``--workers`` changed between runs.

Runs in the supervisor before any worker starts, so no LevelDB is in use. For
each path whose hash now names another slot, in this order, each step durable:
pending intents are appended to the new owner's log, its records are written to
the new owner's LevelDB, deleted from the old one, and the old log is rewritten
without them. A crash between steps leaves copies that a rerun moves again,
identically (the owner has not run yet), so nothing is lost or doubled.
"""

from __future__ import annotations

from typing import Any

from shared import metrics, routing
from shared.settings import Settings
from shared.state.layout import StateDir
from shared.state.store import CheckpointStore
from shared.state.wal import WriteAheadLog

__all__ = ["rebalance"]


def rebalance(settings: Settings, log: Any) -> int:
    """Move every path's state to slot ``worker_for(path)``; return how many moved."""
    state_dir = StateDir(settings.state_dir)
    dirs = state_dir.slots()
    opened: dict[int, tuple[CheckpointStore, WriteAheadLog]] = {}

    def open_slot(slot: int) -> tuple[CheckpointStore, WriteAheadLog]:
        if slot not in opened:
            directory = dirs.get(slot, state_dir.worker(slot))
            store = CheckpointStore(directory)
            wal = WriteAheadLog(directory)
            if wal.truncated_bytes:  # the worker will find the log already cut: say it here
                metrics.WAL_TRUNCATED_BYTES.inc(wal.truncated_bytes)
                log.warning("wal_tail_truncated", slot=slot, bytes=wal.truncated_bytes,
                            path=str(wal.path))
            opened[slot] = (store, wal)
        return opened[slot]

    moved = 0
    try:
        for source in sorted(dirs):
            store, wal = open_slot(source)
            paths = store.rel_paths() | {i.rel_path for i in wal.pending() if i.rel_path}
            for rel_path in sorted(paths):
                target = routing.worker_for(rel_path, settings.workers)
                if target == source:
                    continue
                dest_store, dest_wal = open_slot(target)
                intents = [i for i in wal.pending() if i.rel_path == rel_path]
                dest_wal.adopt(intents, origin=state_dir.worker(source).name)
                items = store.export_path(rel_path)
                dest_store.import_items(items)
                store.delete_items([key for key, _ in items])
                if intents:
                    wal.rewrite([i for i in wal.pending() if i.rel_path != rel_path])
                moved += 1
                log.info("checkpoint_migrated", rel_path=rel_path, from_worker=source,
                         to_worker=target, intents=len(intents))
    finally:
        for store, wal in opened.values():
            store.close()
            wal.close()
    return moved
