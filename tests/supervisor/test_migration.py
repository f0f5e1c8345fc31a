"""Tests for supervisor.migration.rebalance on real LevelDBs and write-ahead logs."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import plyvel

from shared.routing import worker_for
from shared.settings import Settings
from shared.state.layout import StateDir, WorkerStateDir
from shared.state.records import ChunkRecord, StreamRecord
from shared.state.store import CheckpointStore
from shared.state.wal import WriteAheadLog
from supervisor.migration import rebalance

PATHS = [f"cam{i}.mp4" for i in range(6)] + [f"site/{i}/cam.mp4" for i in range(6)] + [
    "ördner/kamera 1.mp4", "a b/'quoted'.mp4"]
INTENT_ONLY = "only-intents/x.mp4"  # a path with pending intents and no records


class RecordingLog:
    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def info(self, event: str, **kw: Any) -> None:
        self.calls.append((event, kw))


def _settings(tmp_path: Path, workers: int) -> Settings:
    return Settings(watch_dir=tmp_path / "in", state_dir=tmp_path / "state", workers=workers)


def _slot_dir(settings: Settings, slot: int) -> WorkerStateDir:
    return StateDir(settings.state_dir).worker(slot)


def _populate(settings: Settings, slot: int, rel_path: str, tag: int) -> None:
    """Two lineages with chunks plus two pending intents (and one closed) for ``rel_path``."""
    directory = _slot_dir(settings, slot)
    store = CheckpointStore(directory)
    wal = WriteAheadLog(directory)
    try:
        for lineage in range(2):
            sid = f"s{tag}-{lineage}"
            rec = StreamRecord(stream_id=sid, rel_path=rel_path, dev=1, ino=tag, chunk_size=10,
                               started_at=float(tag))
            store.start_stream(rec)
            for index in range(3):
                store.commit_chunk(rec.evolve(size=10 * (index + 1)),
                                   ChunkRecord(index, 10 * index, 10, f"h{tag}.{index}", 1.0))
        wal.intend("put_chunk", stream_id=f"s{tag}-1", rel_path=rel_path, index=3)
        wal.done(wal.intend("put_chunk", stream_id=f"s{tag}-1", rel_path=rel_path, index=2))
        wal.intend("assemble", stream_id=f"s{tag}-1", rel_path=rel_path)
    finally:
        store.close()
        wal.close()


def _add_intent_only(settings: Settings, slot: int) -> None:
    wal = WriteAheadLog(_slot_dir(settings, slot))
    wal.intend("assemble", stream_id="orphan-1", rel_path=INTENT_ONLY)
    wal.close()


def _slots(settings: Settings) -> list[int]:
    return list(StateDir(settings.state_dir).slots())


def _dump(settings: Settings) -> dict[int, tuple[dict[bytes, bytes], list[tuple[str, dict]]]]:
    """Every slot's raw LevelDB content and pending intents (op, fields)."""
    out = {}
    for slot in _slots(settings):
        directory = _slot_dir(settings, slot)
        db = plyvel.DB(str(directory.checkpoints), create_if_missing=True)
        items = dict(db.iterator())
        db.close()
        wal = WriteAheadLog(directory)
        # "origin" is migration bookkeeping (idempotent adoption), not content
        intents = [(i.op, {k: v for k, v in i.fields.items() if k != "origin"})
                   for i in wal.pending()]
        wal.close()
        out[slot] = (items, intents)
    return out


def _paths_in(slot_dump: tuple[dict[bytes, bytes], list[tuple[str, dict]]]) -> set[str]:
    items, intents = slot_dump
    paths = {StreamRecord.from_json(v).rel_path for k, v in items.items() if k.startswith(b"s/")}
    paths |= {k[2:].decode() for k in items if k.startswith(b"p/")}
    return paths | {f["rel_path"] for _, f in intents if f.get("rel_path")}


def _by_path(dump: dict) -> dict[str, tuple[dict[bytes, bytes], list[tuple[str, dict]]]]:
    """Each path's keys/values and intents, wherever they live."""
    out: dict[str, tuple[dict[bytes, bytes], list]] = {}
    for items, intents in dump.values():
        sid_path = {StreamRecord.from_json(v).stream_id: StreamRecord.from_json(v).rel_path
                    for k, v in items.items() if k.startswith(b"s/")}
        for key, value in items.items():
            if key.startswith(b"p/"):
                path = key[2:].decode()
            else:
                path = sid_path[key.split(b"/")[1].decode()]
            out.setdefault(path, ({}, []))[0][key] = value
        for op, fields in intents:
            out.setdefault(fields.get("rel_path", ""), ({}, []))[1].append((op, fields))
    return out


def _unordered(dump: dict) -> dict:
    """``dump`` with each slot's intents as a sorted list (their order across paths is free)."""
    return {slot: (items, sorted(json.dumps(i, sort_keys=True) for i in intents))
            for slot, (items, intents) in dump.items()}


def _misplaced_setup(tmp_path: Path, old: int, new: int) -> Settings:
    """Every path in an ``old``-worker slot that is not its owner among ``new`` workers."""
    settings = _settings(tmp_path, old)
    for tag, path in enumerate(PATHS):
        _populate(settings, (worker_for(path, new) + 1) % old, path, tag)
    _add_intent_only(settings, (worker_for(INTENT_ONLY, new) + 1) % old)
    return settings


def test_rebalance_moves_everything_to_owner(tmp_path: Path) -> None:
    """Each path's records and pending intents end up only in its new owner's dir, unchanged."""
    settings = _misplaced_setup(tmp_path, 4, 3)
    before = _by_path(_dump(settings))
    moved = rebalance(dataclasses.replace(settings, workers=3), RecordingLog())
    assert moved == len(PATHS) + 1
    after = _dump(settings)
    for slot, slot_dump in after.items():
        for path in _paths_in(slot_dump):
            assert worker_for(path, 3) == slot, (path, slot)
    assert _by_path(after) == before


def test_rebalance_logs_each_moved_path(tmp_path: Path) -> None:
    """A checkpoint_migrated event names every moved path with its source and target."""
    settings = _misplaced_setup(tmp_path, 4, 2)
    log = RecordingLog()
    rebalance(dataclasses.replace(settings, workers=2), log)
    events = {kw["rel_path"]: kw for event, kw in log.calls if event == "checkpoint_migrated"}
    assert set(events) == set(PATHS) | {INTENT_ONLY}
    for path, kw in events.items():
        assert kw["to_worker"] == worker_for(path, 2)
        assert kw["from_worker"] == (worker_for(path, 2) + 1) % 4
    assert events["cam0.mp4"]["intents"] == 2 and events[INTENT_ONLY]["intents"] == 1


def test_second_rebalance_moves_nothing(tmp_path: Path) -> None:
    """A rerun with the same worker count moves nothing and changes nothing."""
    settings = dataclasses.replace(_misplaced_setup(tmp_path, 4, 3), workers=3)
    rebalance(settings, RecordingLog())
    first = _dump(settings)
    log = RecordingLog()
    assert rebalance(settings, log) == 0
    assert log.calls == []
    assert _dump(settings) == first


def test_owned_state_is_left_alone(tmp_path: Path) -> None:
    """State already at its owner is not moved, and an intent without rel_path stays put."""
    settings = _settings(tmp_path, 4)
    for tag, path in enumerate(PATHS):
        _populate(settings, worker_for(path, 4), path, tag)
    wal = WriteAheadLog(_slot_dir(settings, 3))
    wal.intend("create_bucket")
    wal.close()
    before = _dump(settings)
    assert rebalance(settings, RecordingLog()) == 0
    assert _dump(settings) == before


def test_crash_between_copy_and_delete(tmp_path: Path) -> None:
    """A rerun after a crash that copied records, deleting nothing, leaves one copy at the owner."""
    settings = _misplaced_setup(tmp_path, 4, 2)
    before = _by_path(_dump(settings))
    path = "cam0.mp4"
    source = (worker_for(path, 2) + 1) % 4
    src = CheckpointStore(_slot_dir(settings, source))
    dst = CheckpointStore(_slot_dir(settings, worker_for(path, 2)))
    dst.import_items(src.export_path(path))
    src.close()
    dst.close()
    rebalance(dataclasses.replace(settings, workers=2), RecordingLog())
    after = _dump(settings)
    holders = [slot for slot, d in after.items() if path in _paths_in(d)]
    assert holders == [worker_for(path, 2)]
    assert _by_path(after) == before


def test_crash_after_adopt_does_not_double_intents(tmp_path: Path) -> None:
    """After a crash right after the intents were adopted, a rerun leaves them once at the owner."""
    settings = _misplaced_setup(tmp_path, 4, 2)
    before = _by_path(_dump(settings))
    path = "cam0.mp4"
    source = (worker_for(path, 2) + 1) % 4
    src = WriteAheadLog(_slot_dir(settings, source))
    dst = WriteAheadLog(_slot_dir(settings, worker_for(path, 2)))
    dst.adopt([i for i in src.pending() if i.rel_path == path], origin=f"worker-{source}")
    src.close()
    dst.close()
    rebalance(dataclasses.replace(settings, workers=2), RecordingLog())
    assert _by_path(_dump(settings))[path][1] == before[path][1]


def test_four_to_one_and_back_loses_nothing(tmp_path: Path) -> None:
    """Shrinking 4 -> 1 and growing back to 4 restores every slot's state exactly."""
    settings = _settings(tmp_path, 4)
    for tag, path in enumerate(PATHS):
        _populate(settings, worker_for(path, 4), path, tag)
    _add_intent_only(settings, worker_for(INTENT_ONLY, 4))
    before = _dump(settings)
    assert rebalance(dataclasses.replace(settings, workers=1), RecordingLog()) > 0
    shrunk = _dump(settings)
    assert {p for s, d in shrunk.items() if s != 0 for p in _paths_in(d)} == set()
    assert _by_path(shrunk) == _by_path(before)
    rebalance(settings, RecordingLog())
    assert _unordered(_dump(settings)) == _unordered(before)
    assert _by_path(_dump(settings)) == _by_path(before)
