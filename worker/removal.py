"""Removing one verified source file, as the kernel allows it and no further.

The caller has checked S3; this checks the file. It is opened read-only beneath the
watch dir (no symlink followed) and a read lease is taken on it: Linux grants one
(``F_SETLEASE``, ``F_RDLCK``) only while no process on the host has the file open
for writing, so a recorder that is idle but still holds its file is seen, which no
stat can show. Holding the lease, the open file must still be the verified state
(device, inode, size, mtime, ctime), and the name must still lead to that inode.

A writer that opens the file by its name during those few system calls waits for
the lease (the kernel breaks it, and the open completes once it is released), and
would then write to a file no longer in any directory. So the name is first renamed
to a hidden one in the same directory, where no writer looks; if the lease shows a
break pending after that, a writer got in first, and the name is given back. Only
then is the hidden name unlinked. What remains is a writer whose open() found the
file by its old name before the rename yet reaches the lease check only after ours
(one system call racing four of ours); ``remove`` intents let a crash between the
rename and the unlink be finished at the next start (``finish_removal``).
"""

from __future__ import annotations

import errno
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from shared.paths import parent_beneath

__all__ = ["FileIdentity", "LeaseRefused", "NotTheVerifiedFile", "remove_verified",
           "hidden_name", "finish_removal"]

_REASONS = {
    errno.EAGAIN: "open_for_writing",       # a writer has it open (or a conflicting lease)
    errno.EINVAL: "lease_unsupported",      # NFS, FUSE, SMB, overlay on some kernels
    errno.ENOSYS: "lease_unsupported",
    errno.EOPNOTSUPP: "lease_unsupported",
    errno.EPERM: "lease_not_permitted",     # not the file's owner and no CAP_LEASE
    errno.EACCES: "lease_not_permitted",
}


@dataclass(frozen=True)
class FileIdentity:
    """What a completion verified about a file; any change means a different file or
    different bytes."""

    dev: int
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class LeaseRefused(Exception):
    """The kernel would not grant the read lease; ``reason`` says why, for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class NotTheVerifiedFile(Exception):
    """The path no longer holds the verified state (changed, replaced or renamed)."""


def hidden_name(stream_id: str) -> str:
    """Where a file being removed is moved first (a dot name: never a stream)."""
    return f".processor-removing-{stream_id}"


def remove_verified(watch_dir: Path, rel_path: str, expected: FileIdentity,
                    hidden: str) -> None:
    """Unlink ``rel_path`` if, under a read lease, it is exactly ``expected`` (through
    ``hidden``, a name in the same directory).

    Raises FileNotFoundError (nothing there, or a symlink on the way), LeaseRefused,
    NotTheVerifiedFile, or another OSError (e.g. no write permission on the directory).
    """
    with parent_beneath(watch_dir, rel_path) as (parent, name):
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                         dir_fd=parent)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise NotTheVerifiedFile("the name is now a symlink") from exc
            raise
        try:
            try:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
            except OSError as exc:
                reason = _REASONS.get(exc.errno or 0)
                if reason is None:
                    raise
                raise LeaseRefused(reason, os.strerror(exc.errno or 0)) from exc
            try:
                held = os.fstat(fd)
                if FileIdentity.of(held) != expected:
                    raise NotTheVerifiedFile("the file changed since completion verified it")
                named = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
                    raise NotTheVerifiedFile("the name now leads to another file")
                os.rename(name, hidden, src_dir_fd=parent, dst_dir_fd=parent)
                if fcntl.fcntl(fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK:
                    _give_back(parent, hidden, name)
                    raise LeaseRefused("open_for_writing", "a writer opened it during removal")
                os.unlink(hidden, dir_fd=parent)
                _sync_directory(parent)
            finally:
                try:
                    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
                except OSError:
                    pass  # closing the descriptor releases it too
        finally:
            os.close(fd)


def _sync_directory(parent: int) -> None:
    """Make the rename and unlink durable before the record says "removed": after a
    power cut the file must not come back under its hidden name, where no stream and
    no recovery would look for it."""
    fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _give_back(parent: int, hidden: str, name: str) -> None:
    """Put the file back under its name, unless a new file took the name meanwhile (it
    then stays under ``hidden``, and the caller's error says so)."""
    try:
        os.link(hidden, name, src_dir_fd=parent, dst_dir_fd=parent)
    except FileExistsError as exc:
        raise NotTheVerifiedFile(f"a new file took the name; the old one is kept as "
                                 f"{hidden}") from exc
    os.unlink(hidden, dir_fd=parent)


def finish_removal(watch_dir: Path, rel_path: str, hidden: str, ino: int) -> bool:
    """After a crash during a removal: unlink the verified inode (``ino``) if it was
    left under ``hidden``. Returns whether the file is gone from its name (the removal
    happened, or is finished now)."""
    try:
        with parent_beneath(watch_dir, rel_path) as (parent, name):
            try:
                named = os.stat(name, dir_fd=parent, follow_symlinks=False)
                if named.st_ino == ino:
                    return False  # the rename never happened: nothing was removed
            except FileNotFoundError:
                pass
            try:
                left = os.stat(hidden, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return True
            if left.st_ino == ino:
                os.unlink(hidden, dir_fd=parent)
            return True
    except FileNotFoundError:
        return True  # its directory is gone, and the file with it
