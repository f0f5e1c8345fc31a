"""Watching the watch dir, two ways behind one small interface:

* ``InotifyWatcher`` (the default): watchdog's inotify bindings, read by the
  supervisor's own main loop. Its descriptor sits in the loop's epoll set beside the
  workers' pipes, so an event costs one wake-up of one thread.
* ``PollingWatcher`` (``--poll``): watchdog's polling observer, for network and
  bind-mounted filesystems, where inotify sees nothing. Its thread puts into the
  supervisor's inbox.

Why not watchdog's inotify ``Observer``: it hands every event through three threads
(the inotify reader, the emitter, the dispatcher) and two queues before the main loop
sees it. With 500 growing files that cost 0.29–0.36 ms of CPU per event (9–11% of a
core at 250 appends/s), against 0.13–0.15 ms read here (``bench/watcher.py``).
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import time
from pathlib import Path
from typing import Protocol

from watchdog.events import (
    DirCreatedEvent,
    DirMovedEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify_c import (
    InotifyConstants,
    WatchDescriptor,
    inotify_add_watch,
    inotify_init,
    inotify_rm_watch,
)
from watchdog.observers.polling import PollingObserver

from shared.logs import get_logger
from shared.settings import Settings
from supervisor.events import DirectoryChanged, Inbox, PathChanged

__all__ = ["Watcher", "InotifyWatcher", "PollingWatcher", "start_watcher"]

Change = PathChanged | DirectoryChanged


class Watcher(Protocol):
    def fileno(self) -> int | None:
        """A descriptor that is readable when ``read`` has changes; None when the
        changes arrive through the inbox instead."""

    def read(self) -> list[Change]:
        """The changes seen since the last call; never blocks."""

    def recover(self) -> list[Change]:
        """Called now and then: re-establishes a watch that was lost, and returns
        what must be rescanned because of it."""

    def close(self) -> None: ...


C = InotifyConstants
# What may mean new bytes, a new file or a file gone. Opens, reads and closes without
# a write (the workers' own reads, every few hundred ms per stream) are not asked for,
# so the kernel drops them instead of waking the loop.
_FILE_CHANGES = (C.IN_CREATE | C.IN_MODIFY | C.IN_CLOSE_WRITE | C.IN_MOVED_FROM
                 | C.IN_MOVED_TO | C.IN_DELETE)
_MASK = _FILE_CHANGES | C.IN_ONLYDIR | C.IN_DONT_FOLLOW | C.IN_EXCL_UNLINK
_HEADER = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len; then the name
_READ_SIZE = 256 * 1024          # ~10,000 events a read; the loop is woken again for more


class InotifyWatcher:
    """One inotify descriptor, one watch per directory (only the top one unless
    ``recursive``), and the path each watch stands for.

    Directories whose name starts with ``.`` are not watched, as they hold no streams.
    A directory that appears (created or moved in) is watched with its whole tree and
    reported as a ``DirectoryChanged``, so files written into it before its watch
    existed are found by the supervisor's scan. One moved away stops being watched.

    The watch dir itself is checked by ``recover`` (device and inode, one ``stat`` per
    call): deleted, it is watched again once it is back; replaced (``mv in in.old;
    mkdir in``), the new one is watched and the old one's watches dropped. Neither
    waits for the kernel's ``IN_IGNORED``, which comes late while a recorder still
    holds a file open in the deleted directory, and never for a rename. If the
    kernel's event queue overflows, the tree is watched afresh (watches of directories
    moved away meanwhile are dropped) and the whole watch dir is rescanned."""

    def __init__(self, watch_dir: Path, recursive: bool) -> None:
        self.root = os.fspath(watch_dir)
        self.recursive = recursive
        self.log = get_logger()
        self._fd = inotify_init()
        if self._fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"inotify_init: {os.strerror(error)}")
        os.set_blocking(self._fd, False)
        os.set_inheritable(self._fd, False)
        self._path_of: dict[int, str] = {}  # watch descriptor -> directory
        self._wd_of: dict[str, int] = {}
        self._root_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the watched root
        self._failed: dict[str, int] = {}  # directory -> errno already logged
        if not self._rewatch():
            os.close(self._fd)
            raise FileNotFoundError(errno.ENOENT, "cannot watch the watch dir", self.root)

    def fileno(self) -> int:
        return self._fd

    def watched(self) -> list[str]:
        """The directories watched now (for tests and the log)."""
        return sorted(self._wd_of)

    def read(self) -> list[Change]:
        try:
            buffer = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return []
        changes: list[Change] = []
        now = time.time()
        offset = 0
        while offset + _HEADER.size <= len(buffer):
            wd, mask, _cookie, length = _HEADER.unpack_from(buffer, offset)
            start = offset + _HEADER.size
            name = buffer[start:start + length].rstrip(b"\0")
            offset = start + length
            if mask & C.IN_Q_OVERFLOW:
                changes += self._overflowed()
                continue
            if mask & C.IN_IGNORED:
                self._forget(wd)
                continue
            parent = self._path_of.get(wd)
            if parent is None or not name:
                continue  # a watch removed since; or an event about the directory itself
            path = os.path.join(parent, os.fsdecode(name))
            if not mask & C.IN_ISDIR:
                if mask & _FILE_CHANGES:
                    changes.append(PathChanged(path, now))
            elif self.recursive and not name.startswith(b"."):
                if mask & (C.IN_CREATE | C.IN_MOVED_TO):
                    self._watch_tree(path)
                    changes.append(DirectoryChanged(path))
                elif mask & C.IN_MOVED_FROM:
                    self._unwatch_tree(path)
        return changes

    def recover(self) -> list[Change]:
        now_id = _identity(self.root)
        if now_id == self._root_id and self.root in self._wd_of:
            return []
        if self._root_id is not None:  # a new directory may reuse the old inode number,
            # so the kernel dropping the root's watch tells too
            self.log.warning("watch_dir_lost", watch_dir=self.root,
                             reason="replaced" if now_id is not None else "gone")
            self._unwatch_all()
            self._root_id = None
        if now_id is None or not self._rewatch():
            return []
        self.log.info("watch_dir_watched_again", watch_dir=self.root)
        return [DirectoryChanged(self.root)]

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # removes every watch with it
            self._fd = -1
        self._path_of.clear()
        self._wd_of.clear()

    # the watches
    def _rewatch(self) -> bool:
        """Watch the whole tree afresh, as it is now; drop the watches of directories
        that are no longer in it. False (and nothing watched) if the root cannot be."""
        root_id = _identity(self.root)
        seen = self._watch_tree(self.root) if root_id is not None else None
        if seen is None:
            self._unwatch_all()
            self._root_id = None
            return False
        for wd in set(self._path_of) - seen:
            self._unwatch(wd)
        self._root_id = root_id
        return True

    def _watch_tree(self, top: str) -> set[int] | None:
        """Watch ``top`` and, if recursive, every directory below it: the watch
        descriptors, or None if ``top`` could not be watched. Each directory is watched
        before it is listed, so one created meanwhile is either listed here or reported
        by its parent's watch."""
        wd = self._watch(top)
        if wd is None:
            return None
        seen = {wd}
        pending = [top] if self.recursive else []
        while pending:
            directory = pending.pop()
            try:
                with os.scandir(directory) as entries:
                    subdirs = [entry.path for entry in entries
                               if not entry.name.startswith(".")
                               and entry.is_dir(follow_symlinks=False)]
            except OSError:
                continue  # gone or unreadable already: its parent's events tell
            for sub in subdirs:
                sub_wd = self._watch(sub)
                if sub_wd is not None:
                    seen.add(sub_wd)
                    pending.append(sub)
        return seen

    def _watch(self, directory: str) -> int | None:
        wd = inotify_add_watch(self._fd, os.fsencode(directory), _MASK)
        if wd < 0:
            error = ctypes.get_errno()
            if error not in (errno.ENOENT, errno.ENOTDIR) \
                    and self._failed.get(directory) != error:  # gone, or a symlink now
                self._failed[directory] = error  # logged once, not at every retry
                hint = " (raise fs.inotify.max_user_watches)" if error == errno.ENOSPC else ""
                self.log.error("watch_failed", directory=directory,
                               error=os.strerror(error) + hint)
            return None
        self._failed.pop(directory, None)
        old = self._path_of.get(wd)  # the same directory, seen again (moved, or rescanned)
        if old is not None and old != directory and self._wd_of.get(old) == wd:
            del self._wd_of[old]
        self._path_of[wd] = directory
        self._wd_of[directory] = wd
        return wd

    def _unwatch_tree(self, top: str) -> None:
        """A directory moved away: its events would name paths that are not there."""
        below = top + os.sep
        for wd in [wd for wd, d in self._path_of.items() if d == top or d.startswith(below)]:
            self._unwatch(wd)

    def _unwatch_all(self) -> None:
        for wd in list(self._path_of):
            self._unwatch(wd)

    def _unwatch(self, wd: int) -> None:
        self._forget(wd)
        inotify_rm_watch(self._fd, WatchDescriptor(wd))  # its IN_IGNORED is then a no-op

    def _forget(self, wd: int) -> None:
        """Drop a watch's path: removed by us, or by the kernel (directory deleted or
        unmounted). The path may belong to a newer watch by now: that one stays."""
        directory = self._path_of.pop(wd, None)
        if directory is not None and self._wd_of.get(directory) == wd:
            del self._wd_of[directory]

    def _overflowed(self) -> list[Change]:
        self.log.warning("inotify_overflow", watch_dir=self.root,
                         action="watching and scanning the watch dir again")
        if not self._rewatch():
            self.log.warning("watch_dir_lost", watch_dir=self.root, reason="gone")
        return [DirectoryChanged(self.root)]


def _identity(path: str) -> tuple[int, int] | None:
    """Device and inode of the directory at ``path``; None if there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


# --poll
_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent,
           FileClosedEvent, DirCreatedEvent, DirMovedEvent]
_IGNORED = {"opened", "closed_no_write"}


class _ToInbox(FileSystemEventHandler):
    """Runs on the polling observer's thread: only puts into the inbox."""

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED:
            return
        for path in (event.src_path, getattr(event, "dest_path", "") or ""):
            if not path:
                continue
            path = os.fsdecode(path)
            if event.is_directory:
                if event.event_type in ("created", "moved"):
                    self.inbox.put(DirectoryChanged(path))
            else:
                self.inbox.put(PathChanged(path, time.time()))


class PollingWatcher:
    """watchdog's polling observer: it lists the tree every second."""

    def __init__(self, watch_dir: Path, recursive: bool, inbox: Inbox) -> None:
        self._observer = PollingObserver(timeout=1.0)
        self._observer.schedule(_ToInbox(inbox), os.fspath(watch_dir), recursive=recursive,
                                event_filter=_EVENTS)
        self._observer.daemon = True
        self._observer.start()

    def fileno(self) -> None:
        return None

    def read(self) -> list[Change]:
        return []

    def recover(self) -> list[Change]:
        return []

    def close(self) -> None:
        self._observer.stop()
        self._observer.join(timeout=5)


def start_watcher(settings: Settings, inbox: Inbox) -> Watcher:
    """inotify by default; polling (``--poll``) for network and bind-mounted filesystems."""
    if settings.poll:
        return PollingWatcher(settings.watch_dir, settings.recursive, inbox)
    return InotifyWatcher(settings.watch_dir, settings.recursive)
