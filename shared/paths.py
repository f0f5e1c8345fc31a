"""Which files are streams, and their path relative to the watch dir.

A stream is a regular file (not a symlink: nothing outside the watch dir is ever
read) whose extension matches and no part of whose path starts with ``.``.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["relative_stream_path", "scan_streams", "open_beneath", "lstat_beneath",
           "parent_beneath"]

# O_PATH: walking a directory neither reads it nor fires inotify open/close events.
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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


def _parent_fd(watch_dir: Path, parts: list[str]) -> int:
    """A descriptor for the directory holding ``parts[-1]``, reached from ``watch_dir``
    one component at a time with ``O_NOFOLLOW``: that flag alone guards only the last
    component, and a parent directory swapped for a symlink would lead outside."""
    fd = os.open(watch_dir, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in parts[:-1]:
            child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextmanager
def _symlinks_read_as_absent(rel_path: str) -> Iterator[None]:
    try:
        yield
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise FileNotFoundError(errno.ENOENT, "symlink on the path", rel_path) from exc
        raise


def open_beneath(watch_dir: Path, rel_path: str) -> int:
    """A read-only descriptor for the file at ``rel_path`` under ``watch_dir``, through
    no symlink (a symlink on the way reads as absent). Non-blocking open, so a FIFO
    swapped in cannot hang the worker."""
    parts = rel_path.split("/")
    with _symlinks_read_as_absent(rel_path):
        parent = _parent_fd(watch_dir, parts)
        try:
            return os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                           dir_fd=parent)
        finally:
            os.close(parent)


def lstat_beneath(watch_dir: Path, rel_path: str) -> os.stat_result:
    """``lstat`` of ``rel_path`` under ``watch_dir``, through no symlink."""
    parts = rel_path.split("/")
    with _symlinks_read_as_absent(rel_path):
        parent = _parent_fd(watch_dir, parts)
        try:
            return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(parent)


@contextmanager
def parent_beneath(watch_dir: Path, rel_path: str) -> Iterator[tuple[int, str]]:
    """The directory holding ``rel_path`` (an ``O_PATH`` descriptor reached through no
    symlink) and the file's name in it, for ``*at`` calls on exactly that entry."""
    parts = rel_path.split("/")
    with _symlinks_read_as_absent(rel_path):
        parent = _parent_fd(watch_dir, parts)
    try:
        yield parent, parts[-1]
    finally:
        os.close(parent)
