"""Tests for shared.state.store.CheckpointStore on a real LevelDB."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.state.layout import WorkerStateDir
from shared.state.records import ChunkRecord, StreamRecord, StreamStatus
from shared.state.store import CheckpointStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CheckpointStore]:
    s = CheckpointStore(WorkerStateDir(tmp_path / "w"))
    yield s
    s.close()


def _record(stream_id: str, rel_path: str, **kw: object) -> StreamRecord:
    return StreamRecord(stream_id=stream_id, rel_path=rel_path, dev=1, ino=2,
                        chunk_size=100, started_at=1.5, **kw)  # type: ignore[arg-type]


def _chunk(index: int) -> ChunkRecord:
    return ChunkRecord(index=index, offset=index * 100, size=100, xxh3_128=f"{index:032x}",
                       uploaded_at=2.0 + index)


def _dump(directory: Path) -> dict[bytes, bytes]:
    import plyvel

    db = plyvel.DB(str(WorkerStateDir(directory).checkpoints))
    try:
        return dict(db.iterator())
    finally:
        db.close()


def test_start_stream_sets_current(store: CheckpointStore) -> None:
    """start_stream stores the record and makes it the path's current lineage."""
    rec = _record("a-00000001", "cams/a.mp4")
    store.start_stream(rec)
    assert store.stream("a-00000001") == rec
    assert store.current_stream_id("cams/a.mp4") == "a-00000001"
    newer = _record("a-00000002", "cams/a.mp4")
    store.start_stream(newer)
    assert store.current_stream_id("cams/a.mp4") == "a-00000002"
    assert store.stream("a-00000001") == rec


def test_unknown_lookups_are_none(store: CheckpointStore) -> None:
    """Lookups of unknown streams and paths give None and no chunks."""
    assert store.stream("nope") is None
    assert store.current_stream_id("nope.mp4") is None
    assert store.chunks("nope") == []


def test_commit_chunk_survives_reopen(tmp_path: Path) -> None:
    """commit_chunk stores the chunk and the new stream state together, durably."""
    store = CheckpointStore(WorkerStateDir(tmp_path / "w"))
    rec = _record("a-1", "a.mp4")
    store.start_stream(rec)
    updated = rec.evolve(size=100, mtime_ns=123)
    store.commit_chunk(updated, _chunk(0))
    store.close()
    reopened = CheckpointStore(WorkerStateDir(tmp_path / "w"))
    try:
        assert reopened.stream("a-1") == updated
        assert reopened.chunks("a-1") == [_chunk(0)]
        assert reopened.current_stream_id("a.mp4") == "a-1"
    finally:
        reopened.close()


def test_chunks_in_index_order_past_99(store: CheckpointStore) -> None:
    """Chunks come back in numeric index order across 1-, 2- and 3-digit indexes."""
    rec = _record("a-1", "a.mp4")
    store.start_stream(rec)
    order = [105, 3, 99, 10, 0, 9, 100, 11, 1000]
    for index in order:
        store.commit_chunk(rec, _chunk(index))
    assert [c.index for c in store.chunks("a-1")] == sorted(order)


def test_chunks_do_not_leak_between_prefix_ids(store: CheckpointStore) -> None:
    """Chunks of stream ``a-1`` are not listed for ``a-10`` nor the other way round."""
    for sid in ("a-1", "a-10"):
        store.start_stream(_record(sid, f"{sid}.mp4"))
    store.commit_chunk(_record("a-1", "a-1.mp4"), _chunk(0))
    store.commit_chunk(_record("a-10", "a-10.mp4"), _chunk(5))
    assert [c.index for c in store.chunks("a-1")] == [0]
    assert [c.index for c in store.chunks("a-10")] == [5]


def test_drop_chunks_from_removes_only_tail(store: CheckpointStore) -> None:
    """drop_chunks_from(i) removes chunks i.. of that stream only and saves the record."""
    rec, other = _record("a-1", "a.mp4"), _record("b-1", "b.mp4")
    for r in (rec, other):
        store.start_stream(r)
        for index in range(12):
            store.commit_chunk(r, _chunk(index))
    reopened = rec.evolve(reopen_count=1)
    store.drop_chunks_from(reopened, 10)
    assert [c.index for c in store.chunks("a-1")] == list(range(10))
    assert [c.index for c in store.chunks("b-1")] == list(range(12))
    assert store.stream("a-1") == reopened


def test_forget_stream_removes_current(store: CheckpointStore) -> None:
    """Forgetting the current lineage removes its record, chunks and path mapping."""
    rec = _record("a-1", "a.mp4")
    store.start_stream(rec)
    store.commit_chunk(rec, _chunk(0))
    store.forget_stream("a-1")
    assert store.stream("a-1") is None
    assert store.chunks("a-1") == []
    assert store.current_stream_id("a.mp4") is None
    assert store.rel_paths() == set()


def test_forget_superseded_stream_keeps_mapping(store: CheckpointStore) -> None:
    """Forgetting an old lineage keeps the path pointing at the newer one and its chunks."""
    old, new = _record("a-1", "a.mp4"), _record("a-2", "a.mp4")
    store.start_stream(old)
    store.commit_chunk(old, _chunk(0))
    store.start_stream(new)
    store.commit_chunk(new, _chunk(0))
    store.forget_stream("a-1")
    assert store.stream("a-1") is None and store.chunks("a-1") == []
    assert store.current_stream_id("a.mp4") == "a-2"
    assert store.stream("a-2") == new and store.chunks("a-2") == [_chunk(0)]


def test_export_import_delete_moves_one_path(tmp_path: Path) -> None:
    """export_path/import_items/delete_items move every lineage of one path and nothing else."""
    src = CheckpointStore(WorkerStateDir(tmp_path / "src"))
    dst = CheckpointStore(WorkerStateDir(tmp_path / "dst"))
    try:
        a_old, a_new = _record("a-1", "cam/a.mp4"), _record("a-2", "cam/a.mp4")
        b = _record("b-1", "cam/a.mp4.bak/b.mp4")
        for r in (a_old, a_new, b):
            src.start_stream(r)
            src.commit_chunk(r, _chunk(0))
            src.commit_chunk(r, _chunk(1))
        items = src.export_path("cam/a.mp4")
        assert b"p/cam/a.mp4" in dict(items)
        dst.import_items(items)
        src.delete_items([k for k, _ in items])
        assert dst.rel_paths() == {"cam/a.mp4"}
        assert dst.current_stream_id("cam/a.mp4") == "a-2"
        assert dst.stream("a-1") == a_old and len(dst.chunks("a-1")) == 2
        assert dst.stream("a-2") == a_new and len(dst.chunks("a-2")) == 2
        assert src.rel_paths() == {"cam/a.mp4.bak/b.mp4"}
        assert src.current_stream_id("cam/a.mp4") is None
        assert src.chunks("a-1") == [] and src.chunks("a-2") == []
        assert src.stream("b-1") == b and len(src.chunks("b-1")) == 2
    finally:
        src.close()
        dst.close()
    assert set(_dump(tmp_path / "src")) == {b"s/b-1", b"c/b-1/00000000", b"c/b-1/00000001",
                                            b"p/cam/a.mp4.bak/b.mp4"}


def test_second_open_is_refused(tmp_path: Path) -> None:
    """A second store on a directory whose LevelDB is open fails on the lock."""
    first = CheckpointStore(WorkerStateDir(tmp_path / "w"))
    try:
        with pytest.raises(Exception, match="(?i)lock"):
            CheckpointStore(WorkerStateDir(tmp_path / "w"))
    finally:
        first.close()
    CheckpointStore(WorkerStateDir(tmp_path / "w")).close()  # free again once closed


def test_stream_record_json_round_trip() -> None:
    """A record with a unicode path, an end reason and extras survives to_json/from_json."""
    rec = _record("cåm-0a1b2c3d", "ordner/cåm ☃ 'x'.mp4", size=5, mtime_ns=7,
                  status=StreamStatus.COMPLETE, end_reason="source_deleted",
                  completed_at=9.25, reopen_count=2, chunks_reuploaded=1,
                  extra={"duration": 1.5})
    back = StreamRecord.from_json(rec.to_json())
    assert back == rec
    assert back.status is StreamStatus.COMPLETE
    assert back.last_write_at == pytest.approx(7e-9)


def test_undecodable_path_can_be_stored(store: CheckpointStore) -> None:
    """A stream whose file name is not valid UTF-8 can be started and read back."""
    rel_path = b"cam\xff.mp4".decode("utf-8", "surrogateescape")
    rec = _record("cam-00000001", rel_path)
    store.start_stream(rec)
    assert store.stream("cam-00000001") == rec
    assert store.current_stream_id(rel_path) == "cam-00000001"


def test_part_copies_are_committed_in_one_batch_and_survive_reopen(tmp_path: Path) -> None:
    store = CheckpointStore(WorkerStateDir(tmp_path / "db"))
    record = _record("a-1", "a.mp4").evolve(upload_id="up-1")
    store.start_stream(record)
    for i in range(3):
        store.commit_chunk(record, _chunk(i))
    copied = [ChunkRecord(c.index, c.offset, c.size, c.xxh3_128, c.uploaded_at,
                          part_upload="up-1", part_etag=f'"etag{c.index}"')
              for c in store.chunks("a-1")[:2]]
    store.commit_parts(record, copied)
    store.close()
    again = CheckpointStore(WorkerStateDir(tmp_path / "db"))
    chunks = again.chunks("a-1")
    assert [c.part_etag for c in chunks] == ['"etag0"', '"etag1"', None]
    assert [c.part_upload for c in chunks] == ["up-1", "up-1", None]
    assert again.stream("a-1").upload_id == "up-1"  # type: ignore[union-attr]
    assert chunks[0].same_bytes(_chunk(0)) and not chunks[0].same_bytes(_chunk(1))
    again.close()


def test_records_written_before_part_copies_existed_still_load(tmp_path: Path) -> None:
    """Checkpoints of an older version (no upload_id, no part fields) are read as
    'nothing copied yet', so an upgrade resumes them."""
    import json

    import plyvel

    (tmp_path / "db").mkdir()
    db = plyvel.DB(str(WorkerStateDir(tmp_path / "db").checkpoints), create_if_missing=True)
    old = {"stream_id": "a-1", "rel_path": "a.mp4", "dev": 1, "ino": 2, "chunk_size": 5,
           "started_at": 1.0, "size": 5, "mtime_ns": 0, "status": "active",
           "end_reason": None, "completed_at": None, "reopen_count": 0,
           "chunks_reuploaded": 0, "extra": {}}
    db.put(b"s/a-1", json.dumps(old).encode())
    db.put(b"c/a-1/00000000", json.dumps({"index": 0, "offset": 0, "size": 5,
                                          "xxh3_128": "0" * 32, "uploaded_at": 1.0}).encode())
    db.close()
    store = CheckpointStore(WorkerStateDir(tmp_path / "db"))
    assert store.stream("a-1").upload_id is None  # type: ignore[union-attr]
    assert store.chunks("a-1")[0].part_upload is None
    store.close()
