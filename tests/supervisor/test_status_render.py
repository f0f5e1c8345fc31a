"""``processor status`` at 80 columns (a small terminal, or piped): readable, nothing cut."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from supervisor.status import render

NAME = "recordings/site-7/camera-front-door-north/2026-12-03T05-00-00.mp4"


def document(**stream: Any) -> dict[str, Any]:
    base = {"stream_id": "2026-12-03T05-00-00-8f3a9c1d", "rel_path": NAME, "state": "growing",
            "bytes_on_disk": 123 << 20, "bytes_uploaded": 120 << 20, "chunks": 12,
            "started_at": 1000.0, "last_write_at": 1990.0, "idle_seconds": 0.4,
            "completes_in": 29.6, "failures": 0, "priority": "backlog", "worker": 3}
    return {"generated_at": 2000.0, "state": "running", "stream_timeout": 30.0,
            "chunk_size": 10 << 20, "bwlimit": "2MiB/s (timetable Mon-Fri 08:00,2MiB/s "
            "19:00,off)", "workers": [], "streams": [{**base, **stream}],
            "recent_completions": [], "recent_removals": []}


def shown(width: int) -> str:
    console = Console(width=width, record=True, color_system=None)
    console.print(render(document(), width))
    return console.export_text()


def first_column(text: str) -> str:
    """The streams table's first column, its folded lines joined."""
    cells = [line.split("│")[1].strip() for line in text.splitlines()
             if line.count("│") > 2 and "stream" not in line]
    return "".join(cells)


def test_at_80_columns_the_name_folds_whole_and_the_class_stays() -> None:
    text = shown(80)
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text
    assert NAME in first_column(text)
    assert "backlog" in text and "120.0 MiB / 123.0 MiB" in text
    assert "uplink cap 2MiB/s" in text
    streams = text.split("Active streams")[1].split("Recent completions")[0]
    assert "last write" not in streams and "worker" not in streams


def test_a_wide_console_shows_every_column() -> None:
    text = shown(200)
    for column in ("class", "chunks", "last write", "complete in", "progress", "worker"):
        assert column in text
    assert NAME in text
