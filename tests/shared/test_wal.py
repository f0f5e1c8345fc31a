"""Tests for shared.state.wal: framing, reopening, torn tails, corruption, compaction."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

import shared.state.wal as wal_module
from shared.state.layout import WorkerStateDir
from shared.state.wal import MAX_RECORD, Intent, WriteAheadLog, read_pending, read_records


def _slot(tmp_path: Path, name: str) -> WorkerStateDir:
    """A slot directory of its own for each log a test makes."""
    directory = WorkerStateDir(tmp_path / name)
    directory.path.mkdir(exist_ok=True)
    return directory


def _wal(path: Path) -> WriteAheadLog:
    """The log whose file is ``path`` (a slot directory's log file)."""
    directory = WorkerStateDir(path.parent)
    assert directory.wal == path
    return WriteAheadLog(directory)


def _boundaries(data: bytes) -> list[int]:
    """End offsets of every framed record in ``data``."""
    ends, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        pos += 8 + length
        ends.append(pos)
    return ends


def _write_three(path: Path) -> list[Intent]:
    wal = _wal(path)
    intents = [wal.intend("put_chunk", stream_id=f"s{i}", rel_path=f"cam{i}.mp4", index=i)
               for i in range(3)]
    wal.close()
    return intents


def _summary(intents: list[Intent]) -> list[tuple[str, dict]]:
    return [(i.op, i.fields) for i in intents]


def test_nonexistent_file_has_no_pending(tmp_path: Path) -> None:
    """A log opened on a missing file has no pending intents and truncates nothing."""
    wal = _wal(_slot(tmp_path, "intents").wal)
    assert wal.pending() == [] and wal.truncated_bytes == 0
    wal.close()
    assert (_slot(tmp_path, "intents").wal).exists()


def test_empty_file_has_no_pending(tmp_path: Path) -> None:
    """A log opened on an empty file has no pending intents."""
    (_slot(tmp_path, "intents").wal).write_bytes(b"")
    wal = _wal(_slot(tmp_path, "intents").wal)
    assert wal.pending() == [] and wal.truncated_bytes == 0
    wal.close()


def test_intents_round_trip_across_reopen(tmp_path: Path) -> None:
    """Intents with unicode fields come back identical, oldest first, after a reopen."""
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    a = wal.intend("put_chunk", stream_id="câm-1", rel_path="dir/câm 1.mp4", index=7)
    b = wal.intend("assemble", stream_id="x-2", rel_path="x.mp4", parts=[1, 2])
    wal.close()
    reopened = _wal(path)
    assert reopened.pending() == [a, b]
    assert reopened.pending()[0].rel_path == "dir/câm 1.mp4"
    assert reopened.pending()[0].stream_id == "câm-1"
    reopened.close()


def test_done_removes_from_pending(tmp_path: Path) -> None:
    """A done mark removes the intent from pending in the same session."""
    wal = _wal(_slot(tmp_path, "intents").wal)
    a = wal.intend("put_chunk", stream_id="a")
    b = wal.intend("put_chunk", stream_id="b")
    wal.done(a)
    assert wal.pending() == [b]
    wal.close()


def test_done_survives_reopen(tmp_path: Path) -> None:
    """A done mark still removes the intent after a reopen, also when done after a reopen."""
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    a, b, c = (wal.intend("put_chunk", stream_id=s) for s in "abc")
    wal.done(b)
    wal.close()
    wal = _wal(path)
    assert wal.pending() == [a, c]
    wal.done(wal.pending()[0])
    wal.close()
    wal = _wal(path)
    assert wal.pending() == [c]
    wal.close()


def test_seq_keeps_increasing_after_reopen(tmp_path: Path) -> None:
    """New intents after a reopen get sequence numbers above every earlier record's."""
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    a = wal.intend("op")
    b = wal.intend("op")
    wal.done(b)  # the done mark itself is record seq 3
    wal.close()
    wal = _wal(path)
    c = wal.intend("op")
    wal.close()
    assert a.seq < b.seq < c.seq and c.seq == 4


def test_every_torn_tail_is_cut(tmp_path: Path) -> None:
    """For every cut point inside the last record the earlier records survive and the tail goes."""
    full = _slot(tmp_path, "full").wal
    intents = _write_three(full)
    data = full.read_bytes()
    ends = _boundaries(data)
    start_last = ends[1]
    assert ends[-1] == len(data)
    for kept in range(1, len(data) - start_last):
        path = _slot(tmp_path, f"torn-{kept}").wal
        path.write_bytes(data[:start_last + kept])
        wal = _wal(path)
        assert wal.truncated_bytes == kept, kept
        assert wal.pending() == intents[:2], kept
        assert path.stat().st_size == start_last, kept
        new = wal.intend("assemble", stream_id="new", rel_path="n.mp4")
        wal.close()
        again = _wal(path)
        assert again.truncated_bytes == 0, kept
        assert _summary(again.pending()) == _summary(intents[:2] + [new]), kept
        again.close()


def test_crc_mismatch_cuts_record_and_rest(tmp_path: Path) -> None:
    """A flipped byte in the middle record's body cuts it and everything after it."""
    path = _slot(tmp_path, "intents").wal
    intents = _write_three(path)
    data = bytearray(path.read_bytes())
    ends = _boundaries(bytes(data))
    middle = (ends[0] + 8 + ends[1]) // 2
    data[middle] ^= 0x01
    path.write_bytes(bytes(data))
    wal = _wal(path)
    assert wal.pending() == intents[:1]
    assert wal.truncated_bytes == len(data) - ends[0]
    assert path.stat().st_size == ends[0]
    wal.close()


def test_absurd_length_is_corruption(tmp_path: Path) -> None:
    """A length field above MAX_RECORD ends the log there, even with bytes to spare after it."""
    path = _slot(tmp_path, "intents").wal
    intents = _write_three(path)
    data = bytearray(path.read_bytes())
    ends = _boundaries(bytes(data))
    struct.pack_into("<I", data, ends[0], MAX_RECORD + 1)
    data += b"\0" * (MAX_RECORD + 16)  # the bogus length would "fit" in the file
    records, valid = read_records(bytes(data))
    assert valid == ends[0] and len(records) == 1
    path.write_bytes(bytes(data))
    wal = _wal(path)
    assert wal.pending() == intents[:1]
    assert path.stat().st_size == ends[0]
    wal.close()


def test_rewrite_keeps_exactly_given_intents(tmp_path: Path) -> None:
    """rewrite(keep) leaves only ``keep`` pending, also after reopen, and no .tmp file."""
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    a, b, c = (wal.intend("put_chunk", stream_id=s, rel_path=f"{s}.mp4") for s in "abc")
    wal.rewrite([c, a])
    assert wal.pending() == [a, c]
    d = wal.intend("put_chunk", stream_id="d")
    wal.close()
    assert list(path.parent.iterdir()) == [path]
    reopened = _wal(path)
    assert reopened.pending() == [a, c, d]
    assert b not in reopened.pending()
    reopened.close()


def test_adopt_renumbers_and_keeps_fields(tmp_path: Path) -> None:
    """adopt appends another log's intents with fresh seq numbers and identical op/fields."""
    other = _wal(_slot(tmp_path, "other").wal)
    foreign = [other.intend("put_chunk", stream_id="f", rel_path="f.mp4", index=i)
               for i in range(3)]
    other.close()
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    for _ in range(5):
        wal.intend("assemble", stream_id="own")
    wal.adopt(foreign, origin="worker-9")
    wal.close()
    reopened = _wal(path)
    adopted = reopened.pending()[5:]
    reopened.close()
    assert [(i.op, {k: v for k, v in i.fields.items() if k != "origin"}) for i in adopted] \
        == _summary(foreign)
    assert [i.seq for i in adopted] == [6, 7, 8]
    assert [i.fields["origin"] for i in adopted] == ["worker-9:1", "worker-9:2", "worker-9:3"]


def test_adopting_the_same_intents_twice_adds_them_once(tmp_path: Path) -> None:
    """A migration repeated after a crash does not double the intents it moved."""
    other = _wal(_slot(tmp_path, "other").wal)
    foreign = [other.intend("put_chunk", stream_id="f", rel_path="f.mp4", index=i)
               for i in range(3)]
    other.close()
    wal = _wal(_slot(tmp_path, "intents").wal)
    wal.adopt(foreign, origin="worker-1")
    wal.adopt(foreign, origin="worker-1")
    assert len(wal.pending()) == 3
    wal.close()


def test_compaction_when_nothing_pending(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once the file passes COMPACT_AT_BYTES, done() rewrites it with only what is pending;
    sequence numbers stay monotonic across the rewrite."""
    monkeypatch.setattr(wal_module, "COMPACT_AT_BYTES", 300)
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    intents = [wal.intend("put_chunk", stream_id=f"s{i}", rel_path="x.mp4") for i in range(10)]
    assert path.stat().st_size > 300  # ten fsynced intents: past the threshold
    for intent in intents:
        wal.done(intent)
    assert path.stat().st_size < 300
    later = wal.intend("put_chunk", stream_id="later")
    assert later.seq > intents[-1].seq
    wal.close()
    reopened = _wal(path)
    assert _summary(reopened.pending()) == _summary([later])
    reopened.close()


def test_compaction_keeps_pending_intents(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A long-open intent does not stop compaction: the log stays bounded and keeps it."""
    monkeypatch.setattr(wal_module, "COMPACT_AT_BYTES", 300)
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    keep = wal.intend("put_chunk", stream_id="keep", rel_path="k.mp4")
    sizes = []
    for i in range(200):
        wal.done(wal.intend("put_chunk", stream_id=f"s{i}", rel_path="x.mp4"))
        sizes.append(path.stat().st_size)
    wal.close()
    assert max(sizes) < 600
    reopened = _wal(path)
    assert reopened.pending() == [keep]
    reopened.close()


def test_only_durable_intents_are_fsynced_and_both_survive_a_killed_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A chunk's intent skips the fsync, an assembly's does not; a writer that dies
    without closing (kill -9) leaves both readable, since each append reaches the kernel."""
    synced: list[int] = []
    real_fsync = wal_module.os.fsync
    monkeypatch.setattr(wal_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    synced.clear()  # the new file's directory
    chunk = wal.intend("put_chunk", durable=False, stream_id="s", index=0)
    assert synced == []
    upload = wal.intend("open_upload", stream_id="s", key="k")
    assert len(synced) == 1
    late = wal.intend("put_chunk", durable=False, stream_id="s", index=1)
    assert len(synced) == 1
    # no close(): what a killed process leaves behind
    assert _wal(path).pending() == [chunk, upload, late]


def test_recovered_intents_are_those_found_at_open_until_settled(tmp_path: Path) -> None:
    """What a crash left is handed out per stream until its done mark; what this run
    logs is never 'recovered'."""
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    a = wal.intend("put_chunk", stream_id="a", rel_path="a.mp4", index=0)
    b = wal.intend("assemble", stream_id="b", rel_path="b.mp4", index=-1)
    wal.close()
    wal = _wal(path)
    assert wal.recovered() == [a, b] and wal.recovered("b") == [b]
    fresh = wal.begin("put_chunk", stream_id="a", index=1, rel_path="a.mp4")
    assert fresh not in wal.recovered() and fresh in wal.pending()
    wal.done(a)
    assert wal.recovered() == [b] and wal.recovered("a") == []
    wal.close()


def test_a_retry_supersedes_the_failed_attempts_intent(tmp_path: Path) -> None:
    """begin() of the same effect (stream, op, chunk) marks the earlier intent done, so a
    stream that keeps failing leaves one intent pending, also after a reopen."""
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    first = wal.begin("put_chunk", stream_id="s", index=3, key="k")
    other = wal.begin("put_chunk", stream_id="s", index=4, key="k4")
    retry = wal.begin("put_chunk", stream_id="s", index=3, key="k")
    assert wal.pending() == [other, retry] and first not in wal.pending()
    wal.done(retry)
    again = wal.begin("put_chunk", stream_id="s", index=3, key="k")
    assert wal.pending() == [other, again]
    wal.close()
    assert _wal(path).pending() == [other, again]


def test_recovered_intents_are_not_superseded_by_a_new_attempt(tmp_path: Path) -> None:
    """An intent from before the crash is settled by reconciliation, never silently
    closed by this run's first attempt of the same effect."""
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    old = wal.begin("put_chunk", stream_id="s", index=0, key="k")
    wal.close()
    wal = _wal(path)
    new = wal.begin("put_chunk", stream_id="s", index=0, key="k")
    assert wal.pending() == [old, new] and wal.recovered() == [old]
    wal.close()


def test_read_pending_is_the_same_fold_and_changes_nothing(tmp_path: Path) -> None:
    """processor inspect's view: the pending intents and the torn tail, file untouched."""
    path = _slot(tmp_path, "intents").wal
    wal = _wal(path)
    a = wal.intend("put_chunk", stream_id="a", index=0)
    wal.done(wal.intend("assemble", stream_id="b"))
    wal.close()
    with open(path, "ab") as f:
        f.write(b"\x05\x00")  # a torn header
    before = path.read_bytes()
    pending, torn = read_pending(path)
    assert pending == [a] and torn == 2 and path.read_bytes() == before
