"""``supervisor.slots``: a worker slot spawns, talks to, signals and reaps its process.

Pins down, with the stand-in worker target (``tests/supervisor/stand_in_worker.py``)
in real spawned processes: the target gets its slot index, its two pipe ends and the
settings; ``send`` reaches it and says False once it is gone; ``read_heartbeats``
keeps the last report and says False once the pipe is closed; ``signal`` marks when
SIGTERM was sent; ``reap`` returns the exit status (the supervisor acts on it) and
closes the pipes; a slot starts again with a new process. And ``resolve_target``,
which the CLI hands a ``module:function`` string. Waits are for the stand-in's report
lines, never a sleep.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.messages import Heartbeat, Stop, Touch
from shared.settings import Settings
from supervisor.slots import WorkerSlot, resolve_target
from tests.supervisor import stand_in_worker
from tests.supervisor.stand_in_worker import configure, reports

TARGET = "tests.supervisor.stand_in_worker:run"


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.02)
    return value


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(watch_dir=tmp_path / "in", state_dir=tmp_path / "state", workers=3,
                    s3_bucket="slot-test", metrics_port=0)


@pytest.fixture
def slots() -> Iterator[list[WorkerSlot]]:
    """Slots made by a test; whatever still runs at the end is killed and reaped."""
    made: list[WorkerSlot] = []
    yield made
    for slot in made:
        if slot.process is not None:
            slot.signal(signal.SIGKILL)
            slot.process.join(5)
            if slot.commands is not None:
                slot.reap()


def _slot(slots: list[WorkerSlot], index: int) -> WorkerSlot:
    slot = WorkerSlot(index, resolve_target(TARGET))
    slots.append(slot)
    return slot


def _exited(slot: WorkerSlot) -> bool:
    assert slot.process is not None
    slot.process.join(0.05)
    return slot.process.exitcode is not None


def _reported(settings: Settings, event: str, pid: int | None) -> list[dict[str, Any]]:
    return [r for r in reports(settings.state_dir) if r["event"] == event and r["pid"] == pid]


def test_start_hands_the_target_its_slot_and_settings(settings: Settings,
                                                      slots: list[WorkerSlot]) -> None:
    slot = _slot(slots, 2)
    before = time.monotonic()
    slot.start(settings)
    assert slot.pid is not None and slot.is_alive()
    assert slot.process is not None and slot.process.name == "worker-2"
    assert before <= slot.started_at == slot.last_heartbeat
    [started] = wait_for(lambda: _reported(settings, "started", slot.pid), "started")
    assert (started["slot"], started["workers"], started["bucket"]) == (2, 3, "slot-test")


def test_heartbeats_and_touches_go_both_ways(settings: Settings,
                                             slots: list[WorkerSlot]) -> None:
    """A Touch sent reaches the worker; its heartbeats are read, the last one kept."""
    slot = _slot(slots, 0)
    slot.start(settings)
    started_at = slot.last_heartbeat
    assert slot.send(Touch("cams/a.mp4", seen_at=1.0)) is True
    assert slot.send(Touch("cams/b.mp4", seen_at=1.0)) is True
    touches = wait_for(lambda: len(_reported(settings, "touch", slot.pid)) == 2 and
                       _reported(settings, "touch", slot.pid), "touches")
    assert [t["path"] for t in touches] == ["cams/a.mp4", "cams/b.mp4"]

    def reported_both() -> bool:
        assert slot.read_heartbeats() is True
        return slot.last_report.active_streams == 2

    wait_for(reported_both, "a heartbeat counting both touches")
    assert isinstance(slot.last_report, Heartbeat)
    assert slot.last_heartbeat > started_at


def test_stop_ends_the_worker_with_status_0_and_reap_closes_the_pipes(
        settings: Settings, slots: list[WorkerSlot]) -> None:
    slot = _slot(slots, 1)
    slot.start(settings)
    wait_for(lambda: _reported(settings, "started", slot.pid), "started")
    assert slot.send(Stop()) is True
    wait_for(lambda: _exited(slot), "exit after Stop")
    assert _reported(settings, "stop", slot.pid)
    assert not slot.is_alive()
    assert slot.send(Touch("late.mp4")) is False  # gone: the replacement rescans
    wait_for(lambda: slot.read_heartbeats() is False, "the heartbeat pipe to close")

    assert slot.reap() == 0
    assert slot.commands is None and slot.heartbeats is None


def test_sigterm_is_marked_and_its_status_reaped(settings: Settings,
                                                 slots: list[WorkerSlot]) -> None:
    slot = _slot(slots, 0)
    slot.start(settings)
    wait_for(lambda: _reported(settings, "started", slot.pid), "started")
    assert slot.term_sent_at is None
    slot.signal(signal.SIGTERM)
    first_term = slot.term_sent_at
    assert first_term is not None
    wait_for(lambda: _exited(slot), "exit after SIGTERM")
    slot.signal(signal.SIGTERM)  # dead: nothing sent, the first time kept
    assert slot.term_sent_at == first_term
    assert slot.reap() == -signal.SIGTERM


def test_a_stubborn_worker_needs_sigkill(settings: Settings,
                                         slots: list[WorkerSlot]) -> None:
    configure(settings.state_dir, s0={"stubborn": True})
    slot = _slot(slots, 0)
    slot.start(settings)
    wait_for(lambda: _reported(settings, "started", slot.pid), "started")
    slot.send(Stop())
    wait_for(lambda: _reported(settings, "stop", slot.pid), "Stop received (and ignored)")
    slot.signal(signal.SIGTERM)
    slot.signal(signal.SIGKILL)
    wait_for(lambda: _exited(slot), "exit after SIGKILL")
    assert slot.reap() == -signal.SIGKILL


def test_reap_returns_the_workers_own_exit_status(settings: Settings,
                                                  slots: list[WorkerSlot]) -> None:
    """The status a worker chooses (e.g. EXIT_STATE_UNAVAILABLE) reaches the supervisor."""
    configure(settings.state_dir, s1={"exit": 3})
    slot = _slot(slots, 1)
    slot.start(settings)
    wait_for(lambda: _exited(slot), "exit")
    assert slot.reap() == 3


def test_a_slot_starts_again_with_a_new_process(settings: Settings,
                                                slots: list[WorkerSlot]) -> None:
    """A restart is a fresh process in the same slot, with fresh pipes and state."""
    configure(settings.state_dir, s0={"exit": 1, "times": 1})
    slot = _slot(slots, 0)
    slot.start(settings)
    wait_for(lambda: _exited(slot), "first exit")
    first_pid = slot.pid
    assert slot.reap() == 1
    slot.term_sent_at = 123.0
    slot.restart_at = 456.0
    slot.start(settings)
    assert slot.pid != first_pid
    assert (slot.term_sent_at, slot.restart_at) == (None, None)
    assert slot.last_report == Heartbeat(0)
    [second] = wait_for(lambda: _reported(settings, "started", slot.pid), "second start")
    assert (second["slot"], second["start"]) == (0, 1)
    assert slot.send(Touch("x.mp4")) is True
    wait_for(lambda: _reported(settings, "touch", slot.pid), "touch to the new process")


def test_resolve_target_imports_module_function() -> None:
    assert resolve_target(TARGET) is stand_in_worker.run
    assert resolve_target(stand_in_worker.run) is stand_in_worker.run  # a function as is


@pytest.mark.parametrize("bad", ["tests.supervisor.stand_in_worker", ":run",
                                 "tests.supervisor.stand_in_worker:", ""])
def test_resolve_target_rejects_a_malformed_string(bad: str) -> None:
    with pytest.raises(ValueError, match="module:function"):
        resolve_target(bad)


def test_resolve_target_fails_for_what_does_not_exist() -> None:
    with pytest.raises(ModuleNotFoundError):
        resolve_target("tests.supervisor.no_such_module:run")
    with pytest.raises(AttributeError):
        resolve_target("tests.supervisor.stand_in_worker:no_such_function")
