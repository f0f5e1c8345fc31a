"""``processor inspect``: the checkpoints of a stopped service, for debugging.

Reads every ``worker-<i>`` LevelDB and write-ahead log under the state dir. The
write-ahead logs are only read (a torn tail is reported, not cut); LevelDB itself
may tidy its own log files when opened. A running service holds the LevelDB
locks: inspect refuses then, rather than guess.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click
import plyvel

from shared.state.layout import StateDir
from shared.state.store import CheckpointStore
from shared.state.wal import read_pending
from shared.timefmt import rfc3339

__all__ = ["inspect_state", "read_state"]


def read_state(state_dir: Path) -> dict[str, Any]:
    """Everything the checkpoints say, as plain data."""
    slots = []
    for directory in sorted(StateDir(state_dir).slots().values(), key=lambda d: d.name):
        if not directory.has_checkpoints():
            continue
        try:
            store = CheckpointStore(directory, create=False)
        except plyvel.IOError as exc:
            raise click.ClickException(
                f"{directory.path}: cannot open the checkpoints ({exc}); is the service still "
                "running? Stop it first.") from exc
        try:
            streams = []
            for record in store.streams():
                chunks = store.chunks(record.stream_id)
                streams.append({
                    "stream_id": record.stream_id, "rel_path": record.rel_path,
                    "status": record.status.value, "end_reason": record.end_reason,
                    "current": store.current_stream_id(record.rel_path) == record.stream_id,
                    "size_seen": record.size, "chunk_size": record.chunk_size,
                    "chunks": len(chunks), "bytes_uploaded": sum(c.size for c in chunks),
                    "started_at": rfc3339(record.started_at),
                    "completed_at": rfc3339(record.completed_at) if record.completed_at else None,
                    "reopen_count": record.reopen_count,
                    "chunks_reuploaded": record.chunks_reuploaded,
                    "source_removed": record.source_removed,
                    "source_removed_at": (rfc3339(record.source_removed_at)
                                          if record.source_removed_at else None),
                    "recovered_at": (rfc3339(record.recovered_at)
                                     if record.recovered_at else None)})
        finally:
            store.close()
        intents, torn = read_pending(directory.wal)
        pending = [{"seq": i.seq, "op": i.op, **i.fields} for i in intents]
        slots.append({"worker": directory.name, "streams": streams, "pending_intents": pending,
                      "wal_torn_bytes": torn})
    return {"state_dir": str(state_dir), "workers": slots}


@click.command()
@click.option("--state-dir", type=click.Path(exists=True, file_okay=False, path_type=Path),
              envvar="PROCESSOR_STATE_DIR", default="./state", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def inspect_state(state_dir: Path, as_json: bool) -> None:
    """Print the checkpoints of a stopped service: streams, chunks, pending intents."""
    state = read_state(state_dir)
    if as_json:
        click.echo(json.dumps(state, indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    for slot in state["workers"]:
        table = Table(title=f"{slot['worker']}: {len(slot['streams'])} streams, "
                            f"{len(slot['pending_intents'])} pending intents, "
                            f"{slot['wal_torn_bytes']} torn WAL bytes", title_justify="left")
        for column in ("stream", "path", "status", "chunks", "uploaded", "seen", "reopened"):
            table.add_column(column)
        for s in slot["streams"]:
            status = s["status"] + (f" ({s['end_reason']})" if s["end_reason"] else "")
            if s["source_removed"]:
                status += f", file removed ({s['source_removed']})"
            if s["recovered_at"]:
                status += ", recovered from the bucket"
            table.add_row(s["stream_id"], s["rel_path"] + ("" if s["current"] else " (old)"),
                          status, str(s["chunks"]), str(s["bytes_uploaded"]),
                          str(s["size_seen"]), str(s["reopen_count"]))
        console.print(table)
        for intent in slot["pending_intents"]:
            console.print(f"  pending: {intent}")
    if not state["workers"]:
        console.print(f"no checkpoints under {state['state_dir']}")
    sys.stdout.flush()
