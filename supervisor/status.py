"""``processor status``: what the running service is doing, from its ``/streams``.

Active streams with a progress bar (bytes uploaded of bytes on disk), chunks, lag,
time since the last write and until the stream counts as complete; recent
completions; worker health. ``--watch`` refreshes; ``--json`` prints the raw data.
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


def render(data: dict[str, Any]) -> Group:
    """The status screen for one ``/streams`` document."""
    now = float(data.get("generated_at") or time.time())
    workers = data.get("workers", [])
    alive = sum(1 for w in workers if w.get("alive"))
    header = Text.assemble(
        ("processor ", "bold"), (str(data.get("state", "?")), "green"),
        f"  workers {alive}/{len(workers)} alive",
        f"  active streams {len(data.get('streams', []))}",
        f"  stream timeout {data.get('stream_timeout', '?')}s")

    streams = Table(title="Active streams", title_justify="left", expand=True)
    for column in ("stream", "state", "progress", "uploaded / on disk", "chunks", "lag",
                   "last write", "complete in", "worker"):
        streams.add_column(column, no_wrap=column in ("progress", "chunks", "worker"))
    for s in data.get("streams", []):
        on_disk, uploaded = int(s["bytes_on_disk"]), int(s["bytes_uploaded"])
        bar = ProgressBar(total=max(on_disk, 1), completed=min(uploaded, on_disk), width=20)
        streams.add_row(
            f"{s['rel_path']}\n[dim]{s['stream_id']}[/dim]", s["state"], bar,
            f"{_size(uploaded)} / {_size(on_disk)}", str(s["chunks"]),
            _size(max(0, on_disk - uploaded)), f"{_ago(now - float(s['last_write_at']))} ago",
            _ago(float(s["completes_in"])), str(s.get("worker", "")))
    if not data.get("streams"):
        streams.add_row("[dim]none[/dim]", *[""] * 8)

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
        console.print(render(get()))
        return
    with Live(render(get()), console=console, refresh_per_second=4, screen=False) as live:
        try:
            while True:
                time.sleep(interval)
                live.update(render(get()))
        except KeyboardInterrupt:
            pass
