"""structlog set-up: one JSON object per line on stdout, an ``event`` name per step."""

from __future__ import annotations

import logging
import os
import warnings
from typing import Any

import structlog

__all__ = ["configure_logging", "get_logger"]

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


class _LineWriter:
    """Writes each line with one ``write(2)`` on fd 1: the supervisor and its workers
    share stdout, and ``print`` (message, then newline) lets their lines interleave."""

    def msg(self, message: str) -> None:
        data = (message + "\n").encode("utf-8", "backslashreplace")
        while data:
            written = os.write(1, data)
            data = data[written:]

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


def configure_logging(level: str = "info", fmt: str = "json", **context: Any) -> None:
    """Configure this process's structlog; ``context`` (e.g. ``process="worker-2"``) is
    bound to every line. Called once per process, at its start."""
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *args: _LineWriter(),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(**context)
    warnings.showwarning = _log_warning


def _log_warning(message: Warning | str, category: type[Warning], filename: str,
                 lineno: int, file: Any = None, line: str | None = None) -> None:
    """Python warnings (e.g. watchdog's RuntimeWarning when inotify reuses a watch for
    a fast-changing directory tree) as log lines: printed to stderr, they were text in
    the middle of the JSON log."""
    get_logger().warning("python_warning", category=category.__name__, message=str(message),
                         source=f"{filename}:{lineno}")


def get_logger() -> Any:
    return structlog.get_logger()
