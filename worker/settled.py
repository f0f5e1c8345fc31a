"""Which chunks completion need not read again: those of a file that had settled.

Completion verifies every chunk against the file, because MP4 muxers patch bytes
after the fact. For a recording that is still being written when its chunks go up,
only reading them again can tell. But a file that was already finished when its
chunks were read (a backlog after an outage, files copied in) would be read twice for
nothing: a second page-cache copy and hash of every byte, 0.3 CPU-s per GiB here.

So a chunk read from a file that had *settled* skips the re-read, on this proof: the
file's ``ctime`` (which every write, truncate, ``utime`` and rename moves, and no
program can set back) was at least ``settle_seconds()`` old by this machine's clock
when the chunk's read began, and at completion the file's device, inode, size, mtime
and ctime are exactly what they were then. Any write after the read would have moved
ctime past the read's start. The age rule is there for the two ways a write can go
unseen by ctime: a timestamp tick shared with the previous write, and a shared
mapping that keeps writing into pages still dirty (the kernel stamps a mapped page's
first write after writeback only); the age exceeds the kernel's dirty-page expiry
plus its writeback interval, with room to spare.

Only filesystems whose timestamps come from this kernel's clock and that write pages
back qualify (``LOCAL_FILESYSTEMS``). NFS, SMB and FUSE take their times from a
server whose clock and caching we cannot trust; tmpfs never writes a page back, so a
mapped write there may never be stamped. Their chunks are always read again.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FileState", "SettledFiles", "LOCAL_FILESYSTEMS", "settle_seconds",
           "filesystem_types"]

LOCAL_FILESYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "overlay"})
MOUNTINFO = Path("/proc/self/mountinfo")
_SYSCTL = Path("/proc/sys/vm")
_MARGIN_SECONDS = 25.0  # on top of the kernel's dirty expiry + writeback interval


@dataclass(frozen=True)
class FileState:
    """What a later stat must find unchanged."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileState:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def same_content(self, st: os.stat_result) -> bool:
        """The same inode with the same size and mtime: what a rename (which moves
        ctime on) leaves of the state (local retention, worker/removal.py)."""
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns) == (
            self.dev, self.ino, self.size, self.mtime_ns)


def settle_seconds(sysctl: Path = _SYSCTL) -> float:
    """How old a file's last change must be: the kernel's dirty-page expiry plus its
    writeback interval (35 s by default) plus a margin; 60 s when they cannot be read."""
    try:
        centis = sum(int((sysctl / name).read_text())
                     for name in ("dirty_expire_centisecs", "dirty_writeback_centisecs"))
    except (OSError, ValueError):
        return 60.0
    return centis / 100 + _MARGIN_SECONDS


def filesystem_types(mountinfo: Path = MOUNTINFO) -> dict[int, str]:
    """Device number -> filesystem type of every mount this process sees."""
    types: dict[int, str] = {}
    try:
        text = mountinfo.read_text(errors="replace")
    except OSError:
        return types
    for line in text.splitlines():
        fields = line.split()
        try:
            major, minor = fields[2].split(":")
            fstype = fields[fields.index("-") + 1]
            types[os.makedev(int(major), int(minor))] = fstype
        except (IndexError, ValueError):
            continue  # a line this parser does not understand proves nothing
    return types


class SettledFiles:
    """Issues and checks the proof described above."""

    def __init__(self, *, enabled: bool = True, settle: float | None = None,
                 clock: Callable[[], float] = time.time,
                 mounts: Callable[[], dict[int, str]] = filesystem_types) -> None:
        self.enabled = enabled  # off (--no-trust-settled): no proof, every chunk re-read
        self.settle = settle_seconds() if settle is None else settle
        self.clock = clock
        self.mounts = mounts

    def local(self, dev: int) -> bool:
        """Read afresh each time (a few lines): a device number can be reused by
        another mount, and this is asked once per chunk at most."""
        return self.mounts().get(dev) in LOCAL_FILESYSTEMS

    def proof(self, st: os.stat_result) -> FileState | None:
        """For a stat taken before a read: the state to find again at completion, or
        None when the file had not settled (or lives where ctime cannot be trusted)."""
        last_change = max(st.st_ctime_ns, st.st_mtime_ns) / 1e9
        if (not self.enabled or self.clock() - last_change < self.settle
                or not self.local(st.st_dev)):
            return None
        return FileState.of(st)
