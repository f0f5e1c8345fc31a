"""Which files are streams, and their path relative to the watch dir.

A stream is a regular file (not a symlink: nothing outside the watch dir is ever
read) whose extension matches and no part of whose path starts with ``.``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["relative_stream_path", "scan_streams"]


def relative_stream_path(
    watch_dir: Path, path: str | os.PathLike[str], extensions: tuple[str, ...], recursive: bool
) -> str | None:
    """``path`` relative to ``watch_dir`` with ``/`` separators if it may be a stream."""
    try:
        rel = os.path.relpath(os.fspath(path), os.fspath(watch_dir))
    except ValueError:
        return None
    parts = rel.split(os.sep)
    if rel.startswith("..") or rel == "." or any(p.startswith(".") or not p for p in parts):
        return None
    if not recursive and len(parts) > 1:
        return None
    name = parts[-1]
    if "." not in name or name.rsplit(".", 1)[1].lower() not in extensions:
        return None
    return "/".join(parts)


def scan_streams(watch_dir: Path, extensions: tuple[str, ...], recursive: bool) -> Iterator[str]:
    """Every candidate stream under ``watch_dir``, without following symlinks."""
    for root, dirs, files in os.walk(watch_dir, followlinks=False):
        dirs[:] = [d for d in dirs if not d.startswith(".")] if recursive else []
        for name in files:
            if os.path.islink(os.path.join(root, name)):
                continue  # os.walk lists symlinks to files among files
            rel = relative_stream_path(watch_dir, os.path.join(root, name), extensions, recursive)
            if rel is not None:
                yield rel
