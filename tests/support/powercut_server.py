"""The power-cut filesystem's server: the in-memory tree with what is durable of it,
its FUSE operations, and the control loop (the test side is ``tests/support/powercut.py``,
which says what it models and why it runs as a process of its own).

Run as ``python -m tests.support.powercut_server MOUNTPOINT``; stdin ``cut`` answers
``cut <files reverted> <directories reverted>``, ``stats`` the same counts for what a
cut would revert now; end of input unmounts.
"""

from __future__ import annotations

import errno
import functools
import os
import stat
import sys
import threading
import time
from typing import Any


class Node:
    def __init__(self, mode: int) -> None:
        self.mode = mode
        self.uid, self.gid = os.getuid(), os.getgid()
        self.atime = self.mtime = self.ctime = time.time_ns()

    def touch(self) -> None:
        self.mtime = self.ctime = time.time_ns()


class File(Node):
    def __init__(self, mode: int) -> None:
        super().__init__(stat.S_IFREG | (mode & 0o7777))
        self.data = bytearray()
        self.durable = b""       # the bytes as of the last fsync


class Dir(Node):
    def __init__(self, mode: int) -> None:
        super().__init__(stat.S_IFDIR | (mode & 0o7777))
        self.entries: dict[str, Node] = {}
        self.durable: dict[str, Node] = {}   # the entries as of the last fsync


def _truncate(node: Node, length: int) -> None:
    if not isinstance(node, File):
        raise _error(errno.EISDIR)
    if length < len(node.data):
        del node.data[length:]
    else:
        node.data.extend(bytes(length - len(node.data)))
    node.touch()


def _error(code: int) -> OSError:
    return OSError(code, os.strerror(code))


class Volatile:
    """The tree, what is durable of it, and the open handles (one lock for all: the
    FUSE loop and the control thread)."""

    def __init__(self) -> None:
        self.root = Dir(0o755)
        self.lock = threading.Lock()
        self.handles: dict[int, Node] = {}
        self.next_handle = 1

    # -- lookups --------------------------------------------------------------
    def lookup(self, path: str) -> Node:
        node: Node = self.root
        for part in filter(None, path.split("/")):
            if not isinstance(node, Dir):
                raise _error(errno.ENOTDIR)
            if part not in node.entries:
                raise _error(errno.ENOENT)
            node = node.entries[part]
        return node

    def parent(self, path: str) -> tuple[Dir, str]:
        head, _, name = path.rstrip("/").rpartition("/")
        node = self.lookup(head or "/")
        if not isinstance(node, Dir):
            raise _error(errno.ENOTDIR)
        return node, name

    def open(self, node: Node) -> int:
        handle, self.next_handle = self.next_handle, self.next_handle + 1
        self.handles[handle] = node
        return handle

    def node(self, path: str | None, fh: int | None) -> Node:
        if fh:
            if fh not in self.handles:
                raise _error(errno.EBADF)   # opened before a cut
            return self.handles[fh]
        if path is None:
            raise _error(errno.EBADF)
        return self.lookup(path)

    def file(self, path: str | None, fh: int | None) -> File:
        node = self.node(path, fh)
        if not isinstance(node, File):
            raise _error(errno.EISDIR)
        return node

    # -- the power cut ----------------------------------------------------------
    def pending(self) -> tuple[int, int]:
        """(files, directories) whose visible state differs from the durable one."""
        files = dirs = 0
        for directory in self._walk(durable=False):
            dirs += directory.entries != directory.durable
            files += sum(isinstance(n, File) and bytes(n.data) != n.durable
                         for n in directory.entries.values())
        return files, dirs

    def cut(self) -> tuple[int, int]:
        """Drop every unsynced byte and directory change; forget open handles."""
        counts = self.pending()
        self.handles.clear()
        for directory in self._walk(durable=True):
            directory.entries = dict(directory.durable)
            for node in directory.entries.values():
                if isinstance(node, File):
                    node.data = bytearray(node.durable)
        return counts

    def _walk(self, durable: bool) -> list[Dir]:
        seen, stack, out = set(), [self.root], []
        while stack:
            directory = stack.pop()
            if id(directory) in seen:
                continue
            seen.add(id(directory))
            out.append(directory)
            children = directory.durable if durable else directory.entries
            stack.extend(n for n in children.values() if isinstance(n, Dir))
        return out


def _operations(tree: Volatile) -> Any:
    """The FUSE operations over ``tree`` (built here: mfusepy loads libfuse on import)."""
    import mfusepy as fuse

    def locked(method: Any) -> Any:
        @functools.wraps(method)
        def run(self: Any, *args: Any) -> Any:
            with tree.lock:
                return method(self, *args)
        return run

    class PowerCutOperations(fuse.Operations):
        use_ns = True

        @locked
        def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
            node = tree.node(path, fh)
            size = len(node.data) if isinstance(node, File) else 4096
            links = 2 + sum(isinstance(n, Dir) for n in node.entries.values()) \
                if isinstance(node, Dir) else 1
            return {"st_mode": node.mode, "st_nlink": links, "st_size": size,
                    "st_uid": node.uid, "st_gid": node.gid, "st_blocks": (size + 511) // 512,
                    "st_atime": node.atime, "st_mtime": node.mtime, "st_ctime": node.ctime}

        @locked
        def readdir(self, path: str, fh: int) -> list[str]:
            node = tree.node(path, None)
            if not isinstance(node, Dir):
                raise _error(errno.ENOTDIR)
            return [".", "..", *node.entries]

        @locked
        def mkdir(self, path: str, mode: int) -> int:
            parent, name = tree.parent(path)
            if name in parent.entries:
                raise _error(errno.EEXIST)
            parent.entries[name] = Dir(mode)
            parent.touch()
            return 0

        @locked
        def rmdir(self, path: str) -> int:
            parent, name = tree.parent(path)
            node = tree.lookup(path)
            if not isinstance(node, Dir):
                raise _error(errno.ENOTDIR)
            if node.entries:
                raise _error(errno.ENOTEMPTY)
            del parent.entries[name]
            parent.touch()
            return 0

        @locked
        def create(self, path: str, mode: int, flags: int = 0) -> int:
            parent, name = tree.parent(path)
            node = parent.entries.get(name)
            if node is None:
                node = parent.entries[name] = File(mode)
                parent.touch()
            elif flags & os.O_EXCL:
                raise _error(errno.EEXIST)
            elif flags & os.O_TRUNC:
                _truncate(node, 0)
            return tree.open(node)

        @locked
        def open(self, path: str, flags: int) -> int:
            node = tree.lookup(path)
            if flags & os.O_TRUNC:   # libfuse 3 asks for atomic O_TRUNC: it is ours to do
                _truncate(node, 0)
            return tree.open(node)

        @locked
        def opendir(self, path: str) -> int:
            return tree.open(tree.lookup(path))

        @locked
        def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
            return bytes(tree.file(path, fh).data[offset:offset + size])

        @locked
        def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
            node = tree.file(path, fh)
            if offset > len(node.data):
                node.data.extend(bytes(offset - len(node.data)))
            node.data[offset:offset + len(data)] = data
            node.touch()
            return len(data)

        @locked
        def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
            _truncate(tree.file(path, fh), length)
            return 0

        @locked
        def unlink(self, path: str) -> int:
            parent, name = tree.parent(path)
            if isinstance(tree.lookup(path), Dir):
                raise _error(errno.EISDIR)
            del parent.entries[name]
            parent.touch()
            return 0

        @locked
        def rename(self, old: str, new: str) -> int:
            source, old_name = tree.parent(old)
            target, new_name = tree.parent(new)
            node = tree.lookup(old)
            existing = target.entries.get(new_name)
            if isinstance(existing, Dir) and (existing.entries or not isinstance(node, Dir)):
                raise _error(errno.ENOTEMPTY if existing.entries else errno.EISDIR)
            if existing is not None and isinstance(node, Dir) and not isinstance(existing, Dir):
                raise _error(errno.ENOTDIR)
            del source.entries[old_name]
            target.entries[new_name] = node
            source.touch()
            target.touch()
            node.ctime = time.time_ns()
            return 0

        @locked
        def fsync(self, path: str | None, datasync: int, fh: int) -> int:
            node = tree.file(path, fh)
            node.durable = bytes(node.data)
            return 0

        @locked
        def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
            node = tree.node(path, fh)
            if not isinstance(node, Dir):
                raise _error(errno.ENOTDIR)
            node.durable = dict(node.entries)
            return 0

        @locked
        def release(self, path: str | None, fh: int) -> int:
            tree.handles.pop(fh, None)
            return 0

        @locked
        def releasedir(self, path: str | None, fh: int) -> int:
            tree.handles.pop(fh, None)
            return 0

        def flush(self, path: str | None, fh: int) -> int:
            return 0

        @locked
        def chmod(self, path: str, mode: int) -> int:
            node = tree.lookup(path)
            node.mode = stat.S_IFMT(node.mode) | (mode & 0o7777)
            node.ctime = time.time_ns()
            return 0

        @locked
        def chown(self, path: str, uid: int, gid: int) -> int:
            node = tree.lookup(path)
            if uid != -1 and uid != 0xFFFFFFFF:
                node.uid = uid
            if gid != -1 and gid != 0xFFFFFFFF:
                node.gid = gid
            node.ctime = time.time_ns()
            return 0

        @locked
        def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
            node = tree.lookup(path)
            node.atime, node.mtime = times or (time.time_ns(), time.time_ns())
            return 0

        def access(self, path: str, amode: int) -> int:
            return 0

        def statfs(self, path: str) -> dict[str, int]:
            blocks = 1 << 24   # 64 GiB of 4 KiB blocks, all free: memory is the limit
            return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": blocks, "f_bfree": blocks,
                    "f_bavail": blocks, "f_files": 1 << 20, "f_ffree": 1 << 20,
                    "f_namemax": 255}

        def init_with_config(self, conn_info: Any, config_3: Any) -> None:
            print("mounted", flush=True)   # the parent's positive marker

    return PowerCutOperations()


stopping = threading.Event()


def _control(tree: Volatile) -> None:
    """Answer ``cut`` and ``stats`` from stdin; at its end, ask libfuse to unmount."""
    for line in sys.stdin:
        command = line.strip()
        with tree.lock:
            if command == "cut":
                files, dirs = tree.cut()
            elif command == "stats":
                files, dirs = tree.pending()
            else:
                print(f"error unknown command {command!r}", flush=True)
                continue
        print(f"{command} {files} {dirs}", flush=True)
    stopping.set()
    os.kill(os.getpid(), 15)   # libfuse's SIGTERM handler leaves the loop and unmounts


def main(mountpoint: str) -> None:
    os.environ.setdefault("FUSE_LIBRARY_NAME", "fuse3")   # mfusepy tries libfuse2 first
    import mfusepy as fuse

    tree = Volatile()
    threading.Thread(target=_control, args=(tree,), daemon=True, name="control").start()
    try:
        fuse.FUSE(_operations(tree), mountpoint, foreground=True, nothreads=True,
                  fsname="powercut", hard_remove=True, entry_timeout=0, attr_timeout=0,
                  negative_timeout=0)
    except RuntimeError:
        if not stopping.is_set():   # libfuse's loop reports the SIGTERM we sent it
            raise




if __name__ == "__main__":
    main(sys.argv[1])
