"""Removing one verified source file, as the kernel allows it and no further.

The caller has checked S3 and recorded the removal as intended; this checks the
file. It is opened read-only beneath the watch dir (no symlink followed) and a read
lease is taken on it: Linux grants one (``F_SETLEASE``, ``F_RDLCK``) only while no
process on the host has the file open for writing, so a recorder that is idle but
still holds its file is seen, which no stat can show. Holding the lease, the open
file must still be the verified state (device, inode, size, mtime, ctime), and the
name must still lead to that inode.

A writer that opens the file by its name during those few system calls waits for
the lease (the kernel breaks it, and the open completes once it is released), and
would then write to a file no longer in any directory. So the name is first renamed
to a hidden one in the same directory, where no writer looks; if the lease shows a
break pending after that, a writer got in first, and the name is given back. Only
then is the hidden name unlinked (after checking the hidden name holds the leased
inode: a new file renamed over the name in between is given back). What remains is
a writer whose open() found the file by its old name before the rename yet reaches
the lease check only after ours (one system call racing five of ours): the lease is
read once more after the unlink, so that this case is at least reported. The lease
break's signal (SIGIO) would kill the process: the worker ignores it
(``worker.process``), and this module reads the break with ``F_GETLEASE`` instead.

After a crash, ``settle`` tells from the directory what happened to a removal that
was under way: the file still under its name untouched, left under its hidden name
(the removal is finished, under a lease again, or the name given back), or gone.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.paths import parent_beneath
from worker.settled import FileState

__all__ = ["LeaseRefused", "NotTheVerifiedFile", "LeftHidden", "WriterRaced",
           "remove_verified", "hidden_name", "Settled", "settle"]

_REASONS = {
    errno.EAGAIN: "open_for_writing",       # a writer has it open (or a conflicting lease)
    errno.EINVAL: "lease_unsupported",      # NFS, FUSE, SMB, overlay on some kernels
    errno.ENOSYS: "lease_unsupported",
    errno.EOPNOTSUPP: "lease_unsupported",
    errno.EPERM: "lease_not_permitted",     # not the file's owner and no CAP_LEASE
    errno.EACCES: "lease_not_permitted",
}
_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_RENAME_NOREPLACE = 1


class LeaseRefused(Exception):
    """The kernel would not grant the read lease; ``reason`` says why, for the log."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class NotTheVerifiedFile(Exception):
    """The path no longer holds the verified state (changed, replaced or renamed)."""


class WriterRaced(Exception):
    """The race this module cannot close (see the module doc) happened: the file was
    removed, and a writer that had found it by name opened it just after the check.
    What it writes now goes to a removed file: said loudly, for the operator."""


class LeftHidden(NotTheVerifiedFile):
    """A writer opened the file during its removal, and a new file took its name before
    the name could be given back: it is kept under its hidden name (the message
    says which), for the operator; the name's new file is a new stream."""


def hidden_name(stream_id: str) -> str:
    """Where a file being removed is moved first (a dot name: never a stream)."""
    return f".processor-removing-{stream_id}"


@contextmanager
def _leased(parent: int, name: str) -> Iterator[int]:
    """``name`` in ``parent`` opened read-only, under a read lease while in use."""
    try:
        fd = os.open(name, _OPEN_FLAGS, dir_fd=parent)
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
            yield fd
        finally:
            try:
                fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
            except OSError:
                pass  # closing the descriptor releases it too
    finally:
        os.close(fd)


def _still_leased(fd: int) -> bool:
    """False once a writer's open (or a truncate) has started breaking the lease."""
    return fcntl.fcntl(fd, fcntl.F_GETLEASE) == fcntl.F_RDLCK


def remove_verified(watch_dir: Path, rel_path: str, expected: FileState,
                    hidden: str) -> None:
    """Unlink ``rel_path`` if, under a read lease, it is exactly ``expected`` (through
    ``hidden``, a name in the same directory).

    Raises FileNotFoundError (nothing there, or a symlink on the way), LeaseRefused,
    NotTheVerifiedFile, or another OSError (e.g. no write permission on the
    directory): the file is then still under its name (or, if a new file took the
    name meanwhile, under ``hidden``, which the error says).
    """
    with parent_beneath(watch_dir, rel_path) as (parent, name), _leased(parent, name) as fd:
        held = os.fstat(fd)
        if FileState.of(held) != expected:
            raise NotTheVerifiedFile("the file changed since completion verified it")
        named = os.stat(name, dir_fd=parent, follow_symlinks=False)
        if (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
            raise NotTheVerifiedFile("the name now leads to another file")
        _rename(parent, name, hidden)
        moved = os.stat(hidden, dir_fd=parent, follow_symlinks=False)
        if (moved.st_dev, moved.st_ino) != (held.st_dev, held.st_ino):
            _give_back(parent, hidden, name)  # a new file was renamed over the name
            raise NotTheVerifiedFile("the name now leads to another file")
        if not _still_leased(fd):
            _give_back(parent, hidden, name)
            raise LeaseRefused("open_for_writing", "a writer opened it during removal")
        os.unlink(hidden, dir_fd=parent)
        if not _still_leased(fd):
            raise WriterRaced("a writer opened the file by its old name during the removal")
    _sync_directory(watch_dir, rel_path)


class Settled(enum.Enum):
    KEPT = "kept"        # the file is under its name (never renamed, or given back)
    REMOVED = "removed"  # it is not: removed, now or before the crash
    LEFT_HIDDEN = "left_hidden"  # kept under the hidden name: a new file took the name


def settle(watch_dir: Path, rel_path: str, hidden: str, expected: FileState) -> Settled:
    """After a crash during a removal: what became of the file. Under its name and
    untouched (its full identity: a file that reused the inode has another ctime), it
    was kept. Left under ``hidden`` with its size and mtime, it is removed now if a
    lease shows no writer, else given its name back. Anything else: removed (at worst
    a new file at the name is then uploaded as a new stream, never taken for the old).
    """
    try:
        with parent_beneath(watch_dir, rel_path) as (parent, name):
            try:
                if FileState.of(os.stat(name, dir_fd=parent,
                                           follow_symlinks=False)) == expected:
                    return Settled.KEPT
            except FileNotFoundError:
                pass
            try:
                left = os.stat(hidden, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return Settled.REMOVED
            if (left.st_dev, left.st_ino) != (expected.dev, expected.ino):
                return Settled.REMOVED  # not our file: left alone
            try:
                with _leased(parent, hidden) as fd:
                    if expected.same_content(os.fstat(fd)) and _still_leased(fd):
                        os.unlink(hidden, dir_fd=parent)
                        return Settled.REMOVED
            except (LeaseRefused, NotTheVerifiedFile):
                pass
            # a writer holds it, or wrote to it: it goes back under its name, where the
            # stream sees the new bytes (and reopens)
            try:
                _give_back(parent, hidden, name)
            except LeftHidden:
                return Settled.LEFT_HIDDEN
            return Settled.KEPT
    except FileNotFoundError:
        return Settled.REMOVED  # its directory is gone, and the file with it


_LIBC: ctypes.CDLL | None = None


def _rename(parent: int, old: str, new: str) -> None:
    """``renameat2(RENAME_NOREPLACE)`` (glibc 2.28+): never over a file that took the
    name, which ``os.rename`` would replace."""
    global _LIBC
    if _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    libc = _LIBC
    rename = getattr(libc, "renameat2", None)
    if rename is None:  # glibc < 2.28: a hard link fails on an existing name, too
        os.link(old, new, src_dir_fd=parent, dst_dir_fd=parent, follow_symlinks=False)
        os.unlink(old, dir_fd=parent)
        return
    if rename(parent, os.fsencode(old), parent, os.fsencode(new), _RENAME_NOREPLACE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), new)


def _give_back(parent: int, hidden: str, name: str) -> None:
    """Put the file back under its name, unless a new file took the name meanwhile (it
    then stays under ``hidden``, and the error says so)."""
    try:
        _rename(parent, hidden, name)
    except FileExistsError as exc:
        raise LeftHidden(f"a new file took the name; the old one is kept as {hidden}") from exc


def _sync_directory(watch_dir: Path, rel_path: str) -> None:
    """Make the rename and unlink durable before the caller says "removed": after a
    power cut the file must not come back under its hidden name. Best effort: the
    removal has happened either way, and the record already says so."""
    try:
        with parent_beneath(watch_dir, rel_path) as (parent, _):
            fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=parent)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    except OSError:
        pass
