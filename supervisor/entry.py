"""The ``processor`` console script's first code: signal handlers before any import.

Importing click, boto3 and the rest takes a noticeable fraction of a second; a
SIGTERM in that window (a container stopped as it starts) would kill the
process with the default action instead of a clean exit 0. Until the supervisor
installs its own handlers, signals are only remembered here; it replays them.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

__all__ = ["main", "EARLY_SIGNALS"]

EARLY_SIGNALS: list[int] = []


def _remember(signum: int, frame: Any) -> None:
    EARLY_SIGNALS.append(signum)


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("status", "inspect", "playlist"):
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, _remember)
    from supervisor.cli import main as cli_main

    return cli_main(early_signals=EARLY_SIGNALS)
