"""The state dir's layout: the names a previous release wrote must stay (users upgrade
in place), and slot directories are found by name only."""

from __future__ import annotations

from pathlib import Path

from shared.state.layout import StateDir


def test_the_names_on_disk_are_those_earlier_releases_wrote(tmp_path: Path) -> None:
    slot = StateDir(tmp_path).worker(3)
    assert slot.path == tmp_path / "worker-3"
    assert slot.checkpoints == tmp_path / "worker-3" / "checkpoints.ldb"
    assert slot.wal == tmp_path / "worker-3" / "intents.wal"
    assert slot.wal_rewrite.parent == slot.path and slot.wal_rewrite != slot.wal


def test_slots_lists_worker_directories_only(tmp_path: Path) -> None:
    for name in ("worker-0", "worker-12", "worker-x", "other"):
        (tmp_path / name).mkdir()
    (tmp_path / "worker-5").write_text("a file, not a slot")
    state = StateDir(tmp_path)
    assert list(state.slots()) == [0, 12]
    assert state.slots()[12] == state.worker(12)
    assert not state.worker(0).has_checkpoints()
    assert StateDir(tmp_path / "missing").slots() == {}
