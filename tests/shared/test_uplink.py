"""Tests for shared.uplink: the shared token bucket and the throttled chunk body.

The rate across real worker processes, through a real S3 server, is measured at the
proxy by tests/e2e/test_uplink.py; here the bucket's own rules are checked in-process.
Only lower bounds on time are asserted tightly (a cap can't be beaten by a slow
machine); upper bounds are loose.
"""

from __future__ import annotations

import os
import threading
import time

import pytest

from shared.uplink import LIVE_FRESH, PIECE, ThrottledBody, Uplink

MIB = 1024 * 1024


def _drain(body: ThrottledBody) -> bytes:
    out = bytearray()
    while piece := body.read(PIECE):
        out += piece
    return bytes(out)


def test_without_a_rate_nothing_waits() -> None:
    uplink = Uplink.create(2)
    started = time.monotonic()
    for _ in range(100):
        assert uplink.take(MIB, live=False) == 0.0
    assert time.monotonic() - started < 1.0 and uplink.rate is None


def test_a_metered_body_is_sent_at_the_cap_and_unchanged() -> None:
    uplink = Uplink.create(1)
    uplink.set_rate(4 * MIB)
    data = os.urandom(2 * MIB)
    body = ThrottledBody(bytearray(data), uplink, live=True)
    body.metered = True
    started = time.monotonic()
    assert _drain(body) == data
    elapsed = time.monotonic() - started
    # 2 MiB at 4 MiB/s is 0.5 s; the bucket may have saved 0.1 s of tokens
    assert 0.35 <= elapsed < 3.0 and body.waited > 0.2


def test_reads_before_sending_are_free_and_a_retry_pays_again() -> None:
    uplink = Uplink.create(1)
    uplink.set_rate(1 * MIB)
    data = os.urandom(MIB)
    body = ThrottledBody(data, uplink, live=True)
    started = time.monotonic()
    assert _drain(body) == data            # botocore hashing it before the request
    assert time.monotonic() - started < 0.3 and body.waited == 0.0
    body.seek(0)
    body.metered = True
    assert _drain(body) == data            # the wire pass pays: ~1 s at 1 MiB/s
    first = body.waited
    assert first > 0.6
    body.seek(0)                           # a retry sends it all again, and pays again
    assert _drain(body) == data
    assert body.waited - first > 0.8
    assert len(body) == MIB and body.tell() == MIB


def test_backlog_waits_while_another_worker_sends_live() -> None:
    uplink = Uplink.create(2)
    uplink.set_rate(64 * MIB)
    other = uplink.as_slot(1)                   # as a second worker sees it (same memory)
    other.take(PIECE, live=True)                # worker 1 sends a live piece
    started = time.monotonic()
    waited = uplink.take(PIECE, live=False)     # worker 0's backlog piece
    assert waited >= LIVE_FRESH * 0.8 and time.monotonic() - started >= LIVE_FRESH * 0.8
    other.take(PIECE, live=True)
    other.live_done()                           # its body is sent: backlog goes at once
    started = time.monotonic()
    uplink.take(PIECE, live=False)
    assert time.monotonic() - started < LIVE_FRESH


def test_a_dead_workers_live_stamp_is_forgotten() -> None:
    uplink = Uplink.create(2)
    uplink.set_rate(64 * MIB)
    other = uplink.as_slot(1)
    other.take(PIECE, live=True)
    uplink.forget_slot(1)
    started = time.monotonic()
    uplink.take(PIECE, live=False)
    assert time.monotonic() - started < LIVE_FRESH


def test_a_drain_stops_waiting_for_tokens() -> None:
    uplink = Uplink.create(1)
    uplink.set_rate(1024)                       # 1 KiB/s: a piece would take minutes
    uplink.take(PIECE, live=True)               # spends the bucket, and more
    started = time.monotonic()
    uplink.take(PIECE, live=True, stopping=lambda: True)
    assert time.monotonic() - started < 0.5


def test_a_lower_rate_takes_effect_for_those_already_waiting() -> None:
    uplink = Uplink.create(1)
    uplink.set_rate(1024)
    uplink.take(PIECE, live=True)               # ~2 minutes of debt at 1 KiB/s
    uplink.set_rate(None)                       # the timetable says off
    started = time.monotonic()
    uplink.take(PIECE, live=True)
    assert time.monotonic() - started < 0.5


def test_a_slow_cap_sends_short_pieces_so_the_connection_never_goes_quiet() -> None:
    uplink = Uplink.create(1)
    uplink.set_rate(16 * 1024)                  # 16 KiB/s: pieces of 4 KiB, 4 a second
    body = ThrottledBody(bytearray(64 * 1024), uplink, live=True)
    body.metered = True
    first = body.read(PIECE)
    assert len(first) == 4096 and body.tell() == 4096
    started = time.monotonic()
    assert len(body.read(PIECE)) == 4096
    assert time.monotonic() - started < 1.0


def test_a_worker_killed_holding_the_lock_does_not_stop_the_others() -> None:
    import signal
    import subprocess
    import sys

    uplink = Uplink.create(2)
    uplink.set_rate(64 * MIB)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time\n"
         f"fd = os.open({uplink.lock_path!r}, os.O_RDWR)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\nprint('held', flush=True)\ntime.sleep(60)\n"],
        stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        started = time.monotonic()
        uplink.take(PIECE, live=False)          # the kernel dropped the dead holder's lock
        assert time.monotonic() - started < 1.0
    finally:
        holder.kill()
        uplink.remove()


def test_a_held_back_backlog_body_still_sends_a_piece_now_and_then(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import shared.uplink

    monkeypatch.setattr(shared.uplink, "HOLD_AT_MOST", 0.5)
    uplink = Uplink.create(2)
    uplink.set_rate(64 * MIB)
    other = uplink.as_slot(1)
    stop = threading.Event()

    def live_forever() -> None:               # worker 1 sends live without a pause
        while not stop.is_set():
            other.take(PIECE, live=True)
            time.sleep(0.01)

    sender = threading.Thread(target=live_forever)
    sender.start()
    try:
        time.sleep(0.05)
        started = time.monotonic()
        uplink.take(PIECE, live=False)
        assert 0.4 <= time.monotonic() - started < 2.0
    finally:
        stop.set()
        sender.join()
