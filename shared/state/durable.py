"""Making directory entries survive a power cut.

An ``fsync`` of a file makes its bytes durable, not its name: the entry in its
directory is durable only once the directory itself is fsynced (POSIX; ext4 in its
default mode is kinder, other filesystems and the power-cut filesystem of the tests
are not). A worker directory made by ``mkdir`` and never fsynced in its parent can
vanish with everything in it, LevelDB included, which a restart would take for a
lost state dir (tests/faults/test_power_cut.py found exactly that).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["fsync_dir", "make_dirs", "write_file"]


def fsync_dir(path: Path) -> None:
    """Make the entries of directory ``path`` (creates, renames, unlinks) durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> None:
    """``mkdir -p path``, each directory it creates fsynced into its parent, and
    ``path``'s own entry fsynced even when it existed: a run killed between its mkdir
    and that fsync left it there, not yet durable, and no later run would sync it."""
    missing = []
    while not path.is_dir():
        missing.append(path)
        if path.parent == path:
            break
        path = path.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            if not directory.is_dir():
                raise
        fsync_dir(directory.parent)
    if not missing:
        try:
            fsync_dir(path.parent)
        except PermissionError:
            pass  # a parent we may only traverse: whoever made path made it durable


def write_file(path: Path, text: str) -> None:
    """``text`` at ``path``, whole or not at all, and on disk before this returns."""
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temporary, path)
    fsync_dir(path.parent)
