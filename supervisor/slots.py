"""Fixed worker slots. Paths hash to slots, not to pids: a dead worker is replaced
in the same slot and resumes that slot's streams from its own checkpoints.

What a worker process runs is handed in (a function, or its ``module:function``
import string, as uvicorn takes its app), so this module knows nothing of the worker
and tests can run slots with a stand-in target."""

from __future__ import annotations

import importlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnProcess
from typing import Any

from shared.messages import Heartbeat
from shared.settings import Settings

__all__ = ["WorkerSlot", "WorkerTarget", "resolve_target"]

_SPAWN = multiprocessing.get_context("spawn")

# (slot, commands pipe end, heartbeats pipe end, settings) -> None; a module-level
# function, since ``spawn`` pickles it by name
WorkerTarget = Callable[[int, Connection, Connection, Settings], None]


def resolve_target(target: str | WorkerTarget) -> WorkerTarget:
    """The function named ``module:function``, or ``target`` itself."""
    if not isinstance(target, str):
        return target
    module_name, _, name = target.partition(":")
    if not module_name or not name:
        raise ValueError(f"{target!r} is not of the form module:function")
    function: WorkerTarget = getattr(importlib.import_module(module_name), name)
    return function


class WorkerSlot:
    def __init__(self, index: int, target: WorkerTarget) -> None:
        self.index = index
        self.target = target
        self.process: SpawnProcess | None = None
        self.commands: Connection | None = None     # supervisor -> worker
        self.heartbeats: Connection | None = None   # worker -> supervisor
        self.last_heartbeat = 0.0
        self.started_at = 0.0
        self.last_report: Heartbeat = Heartbeat(0)
        self.restarts = 0
        self.quick_failures = 0       # consecutive exits soon after start
        self.restart_at: float | None = None
        self.term_sent_at: float | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, settings: Settings, uplink: Any = None) -> None:
        """Spawn a fresh worker process: nothing is inherited but the pipes' ends (and the
        ``--bwlimit`` bucket's shared memory, passed as a fifth argument when there is
        a cap)."""
        cmd_r, cmd_w = _SPAWN.Pipe(duplex=False)
        hb_r, hb_w = _SPAWN.Pipe(duplex=False)
        args: tuple[Any, ...] = (self.index, cmd_r, hb_w, settings)
        process = _SPAWN.Process(target=self.target,
                                 args=args + ((uplink,) if uplink is not None else ()),
                                 name=f"worker-{self.index}")
        process.start()
        cmd_r.close()
        hb_w.close()
        self.process, self.commands, self.heartbeats = process, cmd_w, hb_r
        self.started_at = self.last_heartbeat = time.monotonic()
        self.restart_at = None
        self.term_sent_at = None
        self.last_report = Heartbeat(0)

    def is_alive(self) -> bool:
        return self.process is not None and self.process.is_alive()

    def send(self, message: Any) -> bool:
        """Send to the worker; False if it is gone (its replacement rescans its paths)."""
        if self.commands is None or not self.is_alive():
            return False
        try:
            self.commands.send(message)
            return True
        except (BrokenPipeError, OSError):
            return False

    def read_heartbeats(self) -> bool:
        """Take every message waiting; False once the pipe is closed (the worker is
        exiting, and its process sentinel reports the exit)."""
        assert self.heartbeats is not None
        try:
            while self.heartbeats.poll():
                message = self.heartbeats.recv()
                self.last_heartbeat = time.monotonic()
                if isinstance(message, Heartbeat):
                    self.last_report = message
        except (EOFError, OSError):
            return False
        return True

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.pid is not None and self.is_alive():
            try:
                os.kill(self.process.pid, signum)
            except ProcessLookupError:
                pass
            if signum == signal.SIGTERM and self.term_sent_at is None:
                self.term_sent_at = time.monotonic()

    def reap(self) -> int | None:
        """Collect the exit code of a dead worker and close its pipes."""
        assert self.process is not None
        self.process.join(timeout=0)
        code = self.process.exitcode
        for conn in (self.commands, self.heartbeats):
            if conn is not None:
                conn.close()
        self.commands = self.heartbeats = None
        return code
