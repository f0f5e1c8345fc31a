"""An incremental reader of the processor's JSON-lines log.

Why: tests poll the log every 0.1 s while they wait for an event, and a fault run
writes tens of thousands of lines. Re-reading and re-parsing the whole file on each
poll made every wait quadratic in the log's length; this reader reads only the bytes
added since its last read and parses only the lines they complete.

A line that is not JSON (a traceback, a torn write) is kept as
``{"event": "<non-json>", "line": ...}`` so that a test can see (and reject) it.
A last line without its newline is held back until it is complete, or until
:meth:`LogReader.events` is asked for ``final=True`` (the writer is gone).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["LogReader", "parse_line"]


def parse_line(line: bytes | str) -> dict[str, Any]:
    """One log line as its event dict, or a ``<non-json>`` event holding the text."""
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    try:
        event = json.loads(text)
    except ValueError:
        return {"event": "<non-json>", "line": text}
    if not isinstance(event, dict):
        return {"event": "<non-json>", "line": text}
    return event


class LogReader:
    """The events of one log file, read incrementally (the file only ever grows)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self._events: list[dict[str, Any]] = []

    def poll(self) -> int:
        """Read what was appended since the last call; return how many events it added."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return 0
        if not data:
            return 0
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        before = len(self._events)
        self._events.extend(parse_line(line.rstrip(b"\r")) for line in lines if line.strip())
        return len(self._events) - before

    def events(self, final: bool = False) -> list[dict[str, Any]]:
        """Every event so far (a new list). ``final``: count an unterminated last line
        too, for a log whose writer has exited (a killed process's torn line)."""
        self.poll()
        found = list(self._events)
        if final and self.partial.strip():
            found.append(parse_line(self.partial))
        return found

    def since(self, index: int) -> list[dict[str, Any]]:
        """The events after the first ``index`` ones (for waits that scan only news)."""
        self.poll()
        return self._events[index:]

    def count(self, name: str) -> int:
        self.poll()
        return sum(1 for e in self._events if e.get("event") == name)

    def tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines of the file as text (for failure messages)."""
        try:
            with open(self.path, "rb") as f:
                f.seek(0, 2)
                size = f.tell()
                start = max(0, size - max(64 << 10, 1024 * lines))
                f.seek(start)
                data = f.read()
        except FileNotFoundError:
            return ""
        text = data.decode(errors="replace").splitlines()
        if start > 0 and text:
            text = text[1:]  # the first line was cut by the seek
        return "\n".join(text[-lines:])
