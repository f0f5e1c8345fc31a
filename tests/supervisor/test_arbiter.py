"""``supervisor.arbiter.Supervisor``: the main loop, with stand-in workers.

Pins down what the supervisor does with its workers, which until now only the
end-to-end suite exercised (through real workers, where a wrong restart or a lost
dispatch shows up far away): file events go to slot ``worker_for(path)``; a worker
that dies is restarted in its slot and told again about the files it owns; one that
keeps failing to open its state makes the supervisor give up with
``EXIT_WORKERS_FAILING``, while one whose state writes fail is restarted with backoff
for ever; a worker that stops sending heartbeats is terminated, killed and replaced;
SIGTERM drains and exits 0 (killing workers that outlive the drain timeout), a second
one exits 130 at once.

``Supervisor.run()`` installs signal handlers, so it runs in a child process
(``python -c``, its own process group, killed whole at the end), exactly as the CLI
runs it, with the stand-in target (``tests/supervisor/stand_in_worker.py``). Each
test waits for positive markers: the supervisor's JSON log lines and the stand-ins'
report lines. Where a constant would make a test slow (heartbeat deadline, the five
state failures), the child sets it before ``run()``; the test says which.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from shared.routing import worker_for
from tests.supervisor.stand_in_worker import configure, reports
from tests.support.logs import LogReader

TARGET = "tests.supervisor.stand_in_worker:run"
ROOT = Path(__file__).resolve().parents[2]


def serve(config_json: str) -> int:
    """The child: run a Supervisor as ``supervisor.cli.main`` does, with the stand-in
    target and the constants ``config["patch"]`` names set on ``supervisor.arbiter``."""
    config = json.loads(config_json)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = config["metrics_dir"]  # before metrics import
    from shared.logs import configure_logging
    from shared.settings import Settings
    from supervisor import arbiter

    for name, value in config.get("patch", {}).items():
        assert hasattr(arbiter, name), name
        setattr(arbiter, name, value)
    configure_logging("info", "json", process="supervisor", pid=os.getpid())
    settings = Settings(**{**config["settings"],
                           "watch_dir": Path(config["settings"]["watch_dir"]),
                           "state_dir": Path(config["settings"]["state_dir"])})
    early = [int(s) for s in config.get("early_signals", [])]
    return arbiter.Supervisor(settings, early, worker_target=TARGET).run()


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 20.0,
             tail: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}\n{tail()}"
        time.sleep(0.05)
    return value


class Running:
    """A supervisor in a child process, its log and its stand-ins' reports."""

    def __init__(self, tmp_path: Path, workers: int, drain_timeout: float = 10.0,
                 patch: dict[str, float] | None = None,
                 early_signals: tuple[int, ...] = ()) -> None:
        self.watch = tmp_path / "in"
        self.watch.mkdir(exist_ok=True)
        self.state = tmp_path / "state"
        self.state.mkdir(exist_ok=True)
        (tmp_path / "metrics").mkdir(exist_ok=True)
        self.workers = workers
        self.log_path = tmp_path / "supervisor.log"
        config = {
            "metrics_dir": str(tmp_path / "metrics"),
            "patch": patch or {},
            "early_signals": list(early_signals),
            "settings": {"watch_dir": str(self.watch), "state_dir": str(self.state),
                         "workers": workers, "metrics_port": 0,
                         "drain_timeout": drain_timeout},
        }
        code = ("import sys; from tests.supervisor.test_arbiter import serve; "
                "sys.exit(serve(sys.argv[1]))")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(config)],
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.log = LogReader(self.log_path)

    # reading
    def events(self, name: str, **fields: Any) -> list[dict[str, Any]]:
        return [e for e in self.log.events() if e.get("event") == name
                and all(e.get(k) == v for k, v in fields.items())]

    def reports(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [r for r in reports(self.state) if r["event"] == event
                and all(r.get(k) == v for k, v in fields.items())]

    def tail(self) -> str:
        return self.log.tail() + "\nstand-ins: " + json.dumps(reports(self.state)[-20:])

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
        return wait_for(condition, what, timeout, self.tail)

    def wait_started(self) -> None:
        self.wait(lambda: self.events("supervisor_started"), "supervisor_started")
        self.wait(lambda: {r["slot"] for r in self.reports("started")} ==
                  set(range(self.workers)), "every slot's worker started")

    def exit_code(self, timeout: float = 20.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"supervisor still running\n{self.tail()}") from None

    # acting
    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def kill(self) -> None:
        """The supervisor and whatever it spawned (its process group), if still there."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[Callable[..., Running]]:
    started: list[Running] = []

    def start(**kwargs: Any) -> Running:
        running = Running(tmp_path, **kwargs)
        started.append(running)
        return running

    yield start
    for running in started:
        running.kill()


def _names_for(workers: int, count: int, prefix: str) -> list[str]:
    """``count`` file names that land on every slot at least once (when count allows)."""
    names: list[str] = []
    i = 0
    while len(names) < count or len({worker_for(n, workers) for n in names}) < min(
            workers, count):
        names.append(f"{prefix}-{i}.mp4")
        i += 1
    return names


def test_file_events_are_dispatched_to_their_slot(
        supervisor: Callable[..., Running], tmp_path: Path) -> None:
    """Files present at start-up (the scan) and files created afterwards (inotify) are
    each sent to slot worker_for(path), and to no other; other files are not sent."""
    watch = tmp_path / "in"
    watch.mkdir()
    (watch / "sub").mkdir()
    early = _names_for(3, 4, "early")
    for name in early:
        (watch / name).write_bytes(b"x")
    (watch / "notes.txt").write_bytes(b"not a recording")
    running = supervisor(workers=3)
    running.wait_started()

    late = _names_for(3, 4, "late") + ["sub/nested.mp4"]
    for name in late:
        (watch / name).write_bytes(b"y")
    expected = set(early) | set(late)
    running.wait(lambda: {r["path"] for r in running.reports("touch")} >= expected,
                 "a touch for every file")
    for touch in running.reports("touch"):
        assert touch["slot"] == worker_for(touch["path"], 3), touch
    assert {r["path"] for r in running.reports("touch")} == expected  # not notes.txt
    running.signal(signal.SIGTERM)
    assert running.exit_code() == 0


def test_sigterm_drains_every_worker_and_exits_0(supervisor: Callable[..., Running]) -> None:
    running = supervisor(workers=2)
    running.wait_started()
    running.signal(signal.SIGTERM)
    assert running.exit_code() == 0
    assert {r["slot"] for r in running.reports("stop")} == {0, 1}  # each told to Stop
    assert running.events("drain_started", signal="SIGTERM")
    assert running.events("drain_finished", code=0)
    assert not running.events("worker_restarted")
    assert len(running.reports("started")) == 2


def test_a_signal_before_the_handlers_is_honoured(supervisor: Callable[..., Running]) -> None:
    """A SIGTERM remembered by the entry point before run() (early_signals) drains."""
    running = supervisor(workers=1, early_signals=(signal.SIGTERM,))
    assert running.exit_code() == 0
    assert running.events("drain_started", signal="SIGTERM")


def test_workers_outliving_the_drain_timeout_are_killed(
        supervisor: Callable[..., Running], tmp_path: Path) -> None:
    """Workers that ignore Stop and SIGTERM are killed at the drain deadline; still 0."""
    configure(tmp_path / "state", all={"stubborn": True})
    running = supervisor(workers=2, drain_timeout=1.5)
    running.wait_started()
    running.signal(signal.SIGTERM)
    assert running.exit_code() == 0
    assert running.events("drain_timeout", killing=[0, 1])
    assert {r["slot"] for r in running.reports("stop")} == {0, 1}


def test_a_second_signal_quits_at_once_with_130(supervisor: Callable[..., Running],
                                                tmp_path: Path) -> None:
    configure(tmp_path / "state", all={"stubborn": True})
    running = supervisor(workers=2, drain_timeout=60.0)
    running.wait_started()
    running.signal(signal.SIGTERM)
    running.wait(lambda: {r["slot"] for r in running.reports("stop")} == {0, 1},
                 "both workers told to Stop (and ignoring it)")
    running.signal(signal.SIGINT)
    assert running.exit_code(timeout=10) == 130
    assert running.events("quit_now", signal="SIGINT")


def test_a_worker_that_dies_is_restarted_in_its_slot_and_told_its_files(
        supervisor: Callable[..., Running], tmp_path: Path) -> None:
    """Slot 1's first worker exits 1 at once; a new one starts in slot 1 and is told
    about every file slot 1 owns (events that came while it was down are lost)."""
    watch = tmp_path / "in"
    watch.mkdir()
    owned = [n for n in _names_for(2, 6, "f") if worker_for(n, 2) == 1]
    assert owned
    for name in owned:
        (watch / name).write_bytes(b"x")
    configure(tmp_path / "state", s1={"exit": 1, "times": 1})
    running = supervisor(workers=2)

    restarted = running.wait(lambda: running.events("worker_restarted", slot=1),
                             "worker_restarted")
    second = running.wait(lambda: running.reports("started", slot=1, start=1),
                          "slot 1's second worker")[0]
    assert restarted[0]["pid"] == second["pid"]
    [exited] = running.events("worker_exited", slot=1, code=1)
    assert exited["pid"] != second["pid"]
    running.wait(lambda: {r["path"] for r in running.reports("touch", pid=second["pid"])}
                 >= set(owned), "the new worker told about its files")
    assert len(running.reports("started", slot=0)) == 1  # the other slot untouched
    running.signal(signal.SIGTERM)
    assert running.exit_code() == 0


def test_state_unavailable_again_and_again_gives_up(supervisor: Callable[..., Running],
                                                    tmp_path: Path) -> None:
    """Slot 0 exits EXIT_STATE_UNAVAILABLE on every start: after MAX_STATE_FAILURES quick
    failures (set to 2 here: the real 5 take 15 s of backoff) the supervisor drains the
    other workers and exits EXIT_WORKERS_FAILING."""
    configure(tmp_path / "state", s0={"exit": 3})
    running = supervisor(workers=2, patch={"MAX_STATE_FAILURES": 2})
    assert running.exit_code() == 1
    assert len(running.reports("started", slot=0)) == 2
    assert running.events("worker_state_unavailable", slot=0, failures=2)
    assert running.events("drain_started", signal="worker_failing")
    assert running.reports("stop", slot=1)
    assert running.events("drain_finished", code=1)


def test_state_write_failures_are_retried_with_backoff_not_given_up(
        supervisor: Callable[..., Running], tmp_path: Path) -> None:
    """Slot 0 exits EXIT_STATE_WRITE_FAILED (disk full) after a long life (QUICK_EXIT set
    to 0, so no exit counts as quick): it is still restarted after a backoff, and even
    with MAX_STATE_FAILURES at 1 the supervisor does not give up."""
    configure(tmp_path / "state", s0={"exit": 4, "times": 1})
    running = supervisor(workers=1, patch={"MAX_STATE_FAILURES": 1, "QUICK_EXIT": 0.0})
    running.wait(lambda: running.reports("started", slot=0, start=1), "a second worker")
    [exited] = running.events("worker_exited", slot=0, code=4)
    [restarted] = running.events("worker_restarted", slot=0)
    gap = (_seconds(restarted["timestamp"]) - _seconds(exited["timestamp"]))
    assert gap >= 0.9, gap  # 0.5 * 2**1 s: not at once, as a worker that lived long would be
    running.signal(signal.SIGTERM)
    assert running.exit_code() == 0


def test_a_worker_without_heartbeats_is_terminated_killed_and_replaced(
        supervisor: Callable[..., Running], tmp_path: Path) -> None:
    """Slot 0's first worker sends no heartbeat and ignores SIGTERM: once
    HEARTBEAT_DEADLINE passes (2 s here, 180 s for real) it is sent SIGTERM, after
    KILL_AFTER_TERM (0.5 s here) SIGKILL, and a new worker starts in its slot (at once:
    QUICK_EXIT is 0 here, so its short life is no crash loop). Slot 1, which sends
    heartbeats every 0.1 s, is left alone."""
    configure(tmp_path / "state", s0={"silent": True, "stubborn": True, "times": 1})
    running = supervisor(workers=2, patch={"HEARTBEAT_DEADLINE": 2.0,
                                           "KILL_AFTER_TERM": 0.5, "QUICK_EXIT": 0.0})
    running.wait(lambda: running.reports("started", slot=0, start=1), "a new slot-0 worker")
    [silent] = running.events("worker_unresponsive", slot=0)
    first = running.reports("started", slot=0, start=0)[0]
    assert silent["pid"] == first["pid"]
    assert running.events("worker_exited", slot=0, pid=first["pid"], code=-signal.SIGKILL)
    assert not running.events("worker_unresponsive", slot=1)
    assert len(running.reports("started", slot=1)) == 1
    running.signal(signal.SIGTERM)
    assert running.exit_code() == 0


def _seconds(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()
