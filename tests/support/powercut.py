"""A power-cut filesystem for tests, in the spirit of Jepsen's LazyFS.

A FUSE filesystem held in memory. Beside what every process sees, it keeps what a
disk would still hold after the power went:

- each file's bytes as of its last ``fsync``/``fdatasync`` (none: empty);
- each directory's entries as of its last ``fsync`` of the directory (none: empty).

:meth:`PowerCutFS.cut` drops everything since: unsynced data, and creates, renames
and unlinks no ``fsync`` of their directory made durable. This is strict POSIX, and
harsher than ext4 in its default ``data=ordered`` mode, which commits a new file's
entry with its data and flushes a file replaced by rename. A program that survives it
survives those too.

Why a process of its own (``tests/support/powercut_server.py``): a FUSE
server serves the kernel on behalf of every process, and one inside the test process
could be waiting on its own I/O. It is driven over stdin/stdout.

The kernel is told to cache no entry, attribute or negative lookup (timeouts 0) and
not to write back: every write reaches this process at once, and what a cut removes
is gone for the next lookup. File pages cached for reading are dropped on the next
``open`` (FUSE's default without ``kernel_cache``), and a cut follows a ``kill -9``
of every process that had files open.

Needs ``/dev/fuse``, root, Debian's ``libfuse3-3`` and the ``mfusepy`` binding (test
extras): :func:`unavailable` says what is missing, for a skip.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from ctypes.util import find_library
from pathlib import Path


def unavailable() -> str | None:
    """Why a power-cut filesystem cannot be mounted here, or None."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse"
    if os.geteuid() != 0 and not shutil.which("fusermount3"):
        return "not root and no fusermount3"
    if not find_library("fuse3"):
        return "no libfuse3 (Debian: apt-get install fuse3)"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy unusable: {exc}"
    return None


class PowerCutFS:
    """A mounted power-cut filesystem at ``mountpoint`` (created if missing)."""

    def __init__(self, mountpoint: Path) -> None:
        self.mountpoint = Path(mountpoint)
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, FUSE_LIBRARY_NAME="fuse3")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.support.powercut_server", str(self.mountpoint)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            cwd=Path(__file__).resolve().parents[2])
        self.cuts = 0
        self._expect("mounted", timeout=20)
        if not os.path.ismount(self.mountpoint):
            raise RuntimeError(f"powercut: {self.mountpoint} not mounted after init")

    def _expect(self, word: str, timeout: float) -> list[str]:
        assert self.proc.stdout is not None
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            line = self.proc.stdout.readline()
        finally:
            timer.cancel()
        fields = line.split()
        if not fields or fields[0] != word:
            raise RuntimeError(f"powercut: expected {word!r}, got {line!r} "
                               f"(exit {self.proc.poll()})")
        return fields[1:]

    def _ask(self, command: str) -> tuple[int, int]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        files, dirs = self._expect(command, timeout=30)
        return int(files), int(dirs)

    def cut(self) -> tuple[int, int]:
        """The power goes: (files, directories) that lost unsynced changes. Every
        process with files open here must already be dead (``kill -9``)."""
        self.cuts += 1
        return self._ask("cut")

    def pending(self) -> tuple[int, int]:
        """What a cut would revert now: (files, directories)."""
        return self._ask("stats")

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if os.path.ismount(self.mountpoint):
            subprocess.run(["umount", "-l", str(self.mountpoint)], check=False)

    def __enter__(self) -> PowerCutFS:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


