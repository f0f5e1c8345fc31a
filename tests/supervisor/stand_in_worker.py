"""A stand-in worker target for supervisor tests: what ``WorkerSlot`` spawns in place of
``worker.entry`` when a test needs a worker that misbehaves on cue.

The supervisor is tested against the pipe protocol and the exit codes only
(``shared.messages``), so the stand-in speaks them and nothing else: it sends a
``Heartbeat`` every ``heartbeat_every`` seconds (``active_streams`` = the Touches it got
so far), records each ``Touch``, exits 0 on ``Stop``, and exits on its own when its
supervisor is gone (its commands pipe closes), so a failed test leaves no process.

What it does is read from ``<settings.state_dir>/stand-in.json`` (``configure``),
written by the test before the slot starts, per slot index (or ``"*"``)::

    {"exit": 3}                      exit at once with status 3
    {"exit": 1, "times": 1}          ... on its first start only, then behave
    {"silent": true}                 never send a heartbeat
    {"stubborn": true}               ignore Stop and SIGTERM (only SIGKILL ends it)

What it did goes to ``<settings.state_dir>/stand-in.jsonl``, one JSON object per line,
each written with one ``write(2)`` (``reports``): ``started`` (with its pid, its start
count in the slot and the settings it was handed), ``touch`` (the path), ``stop``,
``orphaned``. Tests wait for these lines: positive markers, never a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from shared.messages import Heartbeat, Stop, Touch
from shared.settings import Settings

__all__ = ["run", "configure", "reports", "CONTROL", "REPORT"]

CONTROL = "stand-in.json"
REPORT = "stand-in.jsonl"
HEARTBEAT_EVERY = 0.1


def configure(state_dir: Path, **slots: dict[str, Any]) -> None:
    """Say what the stand-ins of each slot do: ``configure(d, s0={"exit": 3})``, or
    ``all={...}`` for every slot without its own entry."""
    state_dir.mkdir(parents=True, exist_ok=True)
    control = {("*" if name == "all" else name.lstrip("s")): what
               for name, what in slots.items()}
    (state_dir / CONTROL).write_text(json.dumps(control))


def reports(state_dir: Path) -> list[dict[str, Any]]:
    """Every line the stand-ins wrote so far (a torn last line is left for later)."""
    try:
        data = (state_dir / REPORT).read_bytes()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in data.split(b"\n")[:-1] if line.strip()]


def _report(state_dir: Path, **fields: Any) -> None:
    line = (json.dumps(fields) + "\n").encode()
    state_dir.mkdir(parents=True, exist_ok=True)  # as a worker makes its state dir
    fd = os.open(state_dir / REPORT, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def _behaviour(state_dir: Path, slot: int, start: int) -> dict[str, Any]:
    try:
        control = json.loads((state_dir / CONTROL).read_text())
    except FileNotFoundError:
        return {}
    what: dict[str, Any] = control.get(str(slot), control.get("*", {}))
    if start >= what.get("times", sys.maxsize):
        return {}  # done misbehaving: a normal worker from now on
    return what


def run(slot: int, commands: Connection, heartbeats: Connection, settings: Settings) -> None:
    """The worker target: ``(slot, commands pipe, heartbeats pipe, settings)``."""
    state_dir = settings.state_dir
    start = sum(1 for r in reports(state_dir) if r["event"] == "started" and r["slot"] == slot)
    what = _behaviour(state_dir, slot, start)
    _report(state_dir, event="started", slot=slot, pid=os.getpid(), start=start,
            workers=settings.workers, bucket=settings.s3_bucket)
    if "exit" in what:
        sys.exit(int(what["exit"]))
    if what.get("stubborn"):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    touched = 0
    sent_at = 0.0
    while True:
        now = time.monotonic()
        if not what.get("silent") and now - sent_at >= HEARTBEAT_EVERY:
            try:
                heartbeats.send(Heartbeat(active_streams=touched))
            except OSError:
                _report(state_dir, event="orphaned", slot=slot, pid=os.getpid())
                return
            sent_at = now
        if not commands.poll(HEARTBEAT_EVERY / 2):
            continue
        try:
            message = commands.recv()
        except (EOFError, OSError):  # the supervisor is gone
            _report(state_dir, event="orphaned", slot=slot, pid=os.getpid())
            return
        if isinstance(message, Touch):
            touched += 1
            _report(state_dir, event="touch", slot=slot, pid=os.getpid(),
                    path=message.rel_path)
        elif isinstance(message, Stop):
            _report(state_dir, event="stop", slot=slot, pid=os.getpid())
            if not what.get("stubborn"):
                return
