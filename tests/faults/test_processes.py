"""Scenarios 5, 6 and 9: a worker killed, the supervisor killed, SIGTERM at random
moments."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from functools import partial
from typing import Any

import pytest

from shared.routing import worker_for
from tests.faults.common import (
    KillLedger,
    Row,
    end_check,
    finish_writers,
    pick,
    seeded,
    stop_writers,
)
from tests.support.http import http_get
from tests.support.metrics import metric
from tests.support.runner import alive, wait_until, worker_pids
from tests.support.s3server import free_port
from tests.support.videos import start_live_writer

pytestmark = pytest.mark.timeout(pick(200, 900))


def test_worker_kill9(make_processor: Any, client: Any, bucket: str, proxy: Any,
                      reliability: Row) -> None:
    """kill -9 of the worker uploading a stream: restarted in its slot, counted, finished."""
    seed, rng = seeded("worker-kill")
    kills = pick(1, 5)
    reliability.seed, reliability.injected = seed, "kill -9 of one worker"
    started = time.monotonic()
    port = free_port()
    processor = make_processor(workers=2, stream_timeout=3.0,
                               extra=["--metrics-port", str(port), "--metrics-host", "127.0.0.1"])
    processor.start()
    processor.wait_for_event("worker_started", count=2)
    names = ["cam0.mp4", "cam1.mp4", "cam2.mp4"]
    seconds = pick(8.0, 40.0)
    writers = [start_live_writer(processor.watch_dir / n, seconds, seed=rng.randrange(2**31))
               for n in names]
    ledger = KillLedger(proxy, bucket)
    restart_delays = []
    try:
        processor.wait_for_event("chunk_uploaded", timeout=60)
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, seconds / (kills + 1)))
            slot = worker_for(rng.choice(names), 2)
            victim = worker_pids(processor)[slot]
            before = _restarts(processor, slot)
            killed_at = time.monotonic()
            ledger.kill(partial(os.kill, victim, signal.SIGKILL), processor.events, since=0.0)
            restarted = processor.wait_for_event(
                "worker_restarted", lambda e, s=slot: e["slot"] == s, count=before + 1,
                timeout=60)
            assert restarted[-1]["pid"] != victim
            restart_delays.append(round(time.monotonic() - killed_at, 2))
        finish_writers(writers, timeout=seconds + 120)
    finally:
        stop_writers(writers)
    end_check(reliability, processor, client, bucket, proxy,
              {n: processor.watch_dir / n for n in names}, ledger=ledger)
    assert processor.proc.poll() is None
    restarts = [e for e in processor.events() if e.get("event") == "worker_restarted"]
    assert len(restarts) == kills
    status, text = http_get(f"http://127.0.0.1:{port}/metrics")
    assert status == 200 and metric(text, "processor_worker_restarts_total") == kills
    reliability.times = kills
    reliability.recover_seconds = max(restart_delays)
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(worker_restarted_events=len(restarts),
                             restarts_metric=metric(text, "processor_worker_restarts_total"))
    print(reliability.line())


def _all_gone(pids: list[int]) -> bool:
    return not any(alive(p) for p in pids)


def _restarts(processor: Any, slot: int) -> int:
    return sum(1 for e in processor.events()
               if e.get("event") == "worker_restarted" and e["slot"] == slot)


def test_supervisor_kill9(make_processor: Any, client: Any, bucket: str, proxy: Any,
                          reliability: Row) -> None:
    """kill -9 of the supervisor alone: workers exit by themselves (no orphan holds a
    LevelDB lock), and a restart resumes and finishes every stream."""
    seed, rng = seeded("supervisor-kill")
    kills = pick(1, 3)
    reliability.seed, reliability.injected = seed, "kill -9 of the supervisor alone"
    started = time.monotonic()
    processor = make_processor(workers=2, stream_timeout=3.0)
    names = ["cam0.mp4", "cam1.mp4"]
    seconds = pick(10.0, 30.0)
    ledger = KillLedger(proxy, bucket)
    exits = []
    processor.start()
    writers = [start_live_writer(processor.watch_dir / n, seconds, seed=rng.randrange(2**31))
               for n in names]
    try:
        for _ in range(kills):
            processor.wait_for_event("worker_started", count=2, timeout=60)
            time.sleep(rng.uniform(0.5, seconds / (kills + 1)))
            pids = list(worker_pids(processor).values())
            assert pids and all(alive(p) for p in pids)

            def kill_supervisor() -> None:
                processor.signal(signal.SIGKILL)
                processor.proc.wait(timeout=10)

            killed_at = time.monotonic()
            ledger.kill(kill_supervisor, processor.events)
            wait_until(partial(_all_gone, pids), 15,
                       "orphaned workers still alive (they hold the LevelDB locks)", every=0.1)
            exits.append(round(time.monotonic() - killed_at, 2))
            processor.start()
        finish_writers(writers, timeout=seconds + 120)
    finally:
        stop_writers(writers)
    end_check(reliability, processor, client, bucket, proxy,
              {n: processor.watch_dir / n for n in names}, ledger=ledger)
    assert not [e for e in processor.all_events() if e.get("event") == "state_unavailable"]
    reliability.times = kills
    reliability.recover_seconds = max(exits)
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(workers_gone_after_s=exits)
    print(reliability.line())


def test_sigterm_at_random_moments(make_processor: Any, client: Any, bucket: str, proxy: Any,
                                   reliability: Row) -> None:
    """SIGTERM N times, each at a random moment of a run: exit 0 within the drain
    timeout every time, and the next start resumes."""
    seed, rng = seeded("sigterm")
    terms = pick(2, 20)
    drain = 8.0
    reliability.seed, reliability.injected = seed, "SIGTERM at a random moment"
    started = time.monotonic()
    processor = make_processor(workers=2, stream_timeout=3.0, drain_timeout=drain)
    names = ["cam0.mp4", "cam1.mp4"]
    seconds = terms * 5.0 + 5
    writers = [start_live_writer(processor.watch_dir / n, seconds, bitrate_mbps=pick(12.0, 6.0),
                                 seed=rng.randrange(2**31)) for n in names]
    ledger = KillLedger(proxy, bucket)
    took, moments = [], []
    try:
        for _ in range(terms):
            processor.start()
            # random moment after the supervisor took over its signals: a SIGTERM
            # earlier than that is test_sigterm_during_startup's business
            processor.wait_for_event("supervisor_started", timeout=60)
            moment = rng.uniform(0.0, 4.0)
            moments.append(round(moment, 2))
            time.sleep(moment)

            def term() -> None:
                sent = time.monotonic()
                processor.signal(signal.SIGTERM)
                try:
                    processor.proc.wait(timeout=drain + 10)
                except subprocess.TimeoutExpired:
                    pass
                took.append(round(time.monotonic() - sent, 2))

            ledger.kill(term, processor.events)
            assert processor.proc.returncode == 0, processor.tail()
            assert any(e.get("event") == "drain_finished" for e in processor.events())
            assert took[-1] <= drain, f"took {took[-1]}s, drain timeout {drain}s"
        processor.start()
        finish_writers(writers, timeout=seconds + 120)
    finally:
        stop_writers(writers)
    end_check(reliability, processor, client, bucket, proxy,
              {n: processor.watch_dir / n for n in names}, ledger=ledger)
    reliability.times = terms
    reliability.recover_seconds = max(took)
    reliability.seconds = time.monotonic() - started
    reliability.notes.update(exit_seconds=took, moments=moments,
                             drain_timeouts=sum(e.get("event") == "drain_timeout"
                                                for e in processor.all_events()))
    print(reliability.line())


@pytest.mark.serial  # 0.1 s into start-up: a busy neighbour makes the start slower
def test_sigterm_during_startup(make_processor: Any) -> None:
    """SIGTERM right after the process was started (a container stopped as it starts).

    Regression test: handlers used to be installed only in Supervisor.run(), after
    importing click, boto3 and the rest (~0.25 s idle); a SIGTERM then killed the
    process by the default action (status -15). Fixed in 218b74c."""
    processor = make_processor(workers=1, drain_timeout=8.0)
    processor.start()
    # once the interpreter is up (it catches SIGINT), 0.1 s later: the process is
    # then importing the service (~0.25 s on an idle machine, longer under load)
    wait_until(lambda: _caught(processor.proc.pid) & (1 << (signal.SIGINT - 1)), 20,
               "the interpreter to start", every=0.001)
    time.sleep(0.1)
    caught_term = bool(_caught(processor.proc.pid) & (1 << (signal.SIGTERM - 1)))
    processor.signal(signal.SIGTERM)
    code = processor.wait(timeout=20)
    assert code == 0, f"exit status {code}; SIGTERM handler installed: {caught_term}"


def _caught(pid: int) -> int:
    """The process's mask of caught signals (SigCgt), 0 if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("SigCgt:"):
                    return int(line.split()[1], 16)
    except FileNotFoundError:
        pass
    return 0
