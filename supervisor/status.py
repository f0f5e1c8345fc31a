"""``processor status``: what the running service is doing, from its ``/streams``.

Active streams with their class (live or backlog, contract §8), bytes uploaded of
bytes on disk, lag and, on a wide enough console, chunks, time since the last write
and until the stream counts as complete, a progress bar and the worker; the uplink
cap; recent completions; worker health. ``--watch`` refreshes; ``--json`` prints the
raw data.
"""

from __future__ import annotations

import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any

import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

__all__ = ["status", "fetch_status", "render"]


def _default_url() -> str:
    port = os.environ.get("PROCESSOR_METRICS_PORT") or "9100"
    return f"http://127.0.0.1:{port}"


def fetch_status(url: str, timeout: float = 5.0) -> dict[str, Any]:
    with urllib.request.urlopen(f"{url.rstrip('/')}/streams", timeout=timeout) as response:
        return dict(json.load(response))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


# The streams table's columns, most important first, with the console width from which
# each is shown: at 80 columns (or piped, which rich renders at 80) the name, class,
# state, bytes and lag stay, and the name folds onto more lines rather than being cut.
_STREAM_COLUMNS = (("stream", 0), ("class", 0), ("state", 0), ("uploaded / on disk", 0),
                   ("lag", 0), ("chunks", 100), ("last write", 110), ("complete in", 120),
                   ("progress", 140), ("worker", 140))


def render(data: dict[str, Any], width: int = 200) -> Group:
    """The status screen for one ``/streams`` document, for a console ``width`` wide."""
    now = float(data.get("generated_at") or time.time())
    workers = data.get("workers", [])
    alive = sum(1 for w in workers if w.get("alive"))
    header = Text.assemble(
        ("processor ", "bold"), (str(data.get("state", "?")), "green"),
        f"  workers {alive}/{len(workers)} alive",
        f"  active streams {len(data.get('streams', []))}",
        f"  stream timeout {data.get('stream_timeout', '?')}s",
        f"  uplink cap {data.get('bwlimit') or 'none'}")

    shown = [name for name, from_width in _STREAM_COLUMNS if width >= from_width]
    streams = Table(title="Active streams", title_justify="left", expand=True)
    for column in shown:
        if column == "stream":
            streams.add_column(column, overflow="fold", ratio=3, min_width=16)
        else:
            streams.add_column(column, no_wrap=column in ("progress", "chunks", "worker"))
    for s in data.get("streams", []):
        on_disk, uploaded = int(s["bytes_on_disk"]), int(s["bytes_uploaded"])
        cells: dict[str, Any] = {
            "stream": f"{s['rel_path']}\n[dim]{s['stream_id']}[/dim]",
            "class": s.get("priority", ""), "state": s["state"],
            "uploaded / on disk": f"{_size(uploaded)} / {_size(on_disk)}",
            "lag": _size(max(0, on_disk - uploaded)), "chunks": str(s["chunks"]),
            "last write": f"{_ago(now - float(s['last_write_at']))} ago",
            "complete in": _ago(float(s["completes_in"])),
            "progress": ProgressBar(total=max(on_disk, 1), completed=min(uploaded, on_disk),
                                    width=20),
            "worker": str(s.get("worker", ""))}
        streams.add_row(*[cells[column] for column in shown])
    if not data.get("streams"):
        streams.add_row("[dim]none[/dim]", *[""] * (len(shown) - 1))

    done = Table(title="Recent completions", title_justify="left", expand=True)
    for column in ("stream", "status", "size", "chunks", "reopened", "completed"):
        done.add_column(column)
    for c in data.get("recent_completions", []):
        done.add_row(f"{c['rel_path']}  [dim]{c['stream_id']}[/dim]", c["status"],
                     _size(int(c["total_size_bytes"])), str(c["chunks"]),
                     str(c["reopen_count"]), f"{_ago(now - float(c['completed_at']))} ago")
    if not data.get("recent_completions"):
        done.add_row("[dim]none yet[/dim]", "", "", "", "", "")

    health = Table(title="Workers", title_justify="left")
    for column in ("slot", "pid", "alive", "last heartbeat", "restarts", "active streams"):
        health.add_column(column)
    for w in workers:
        health.add_row(str(w["slot"]), str(w["pid"]),
                       "[green]yes[/green]" if w["alive"] else "[red]no[/red]",
                       f"{_ago(float(w['heartbeat_age_seconds']))} ago", str(w["restarts"]),
                       str(w["active_streams"]))
    return Group(header, streams, done, health)


@click.command()
@click.option("--url", envvar="PROCESSOR_STATUS_URL", default=_default_url, show_default=
              "http://127.0.0.1:$PROCESSOR_METRICS_PORT (9100)",
              help="Base URL of the running service's HTTP endpoint.")
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw /streams JSON.")
def status(url: str, watch: bool, interval: float, as_json: bool) -> None:
    """Show the running service's streams, recent completions and worker health."""
    def get() -> dict[str, Any]:
        try:
            return fetch_status(url)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            click.echo(f"processor status: cannot read {url}/streams: {reason}", err=True)
            sys.exit(1)

    if as_json:
        click.echo(json.dumps(get(), indent=2, ensure_ascii=False))
        return
    console = Console()
    if not watch:
        console.print(render(get(), console.width))
        return
    with Live(render(get(), console.width), console=console, refresh_per_second=4,
              screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(get(), console.width))
        except KeyboardInterrupt:
            pass
