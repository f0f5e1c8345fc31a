"""What happens when a worker's own state cannot be written (disk full, I/O error).

A failed write leaves a LevelDB handle whose log may be misframed (commits that
"succeed" afterwards are lost on reopen) and a write-ahead log with a torn
record. So the first failure ends the worker: ``StateWriteError`` is a
BaseException that no per-stream handler swallows; the worker exits with
``EXIT_STATE_WRITE_FAILED`` and the supervisor restarts it, with backoff, until
the disk has room again. Reopening recovers both logs to their last whole record,
and the write-ahead log's intents are reconciled with S3.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["StateWriteError", "state_write", "is_disk_full"]


class StateWriteError(BaseException):
    """A checkpoint or write-ahead-log write failed; the worker must restart."""


def is_disk_full(exc: BaseException) -> bool:
    return (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or \
        "No space left on device" in str(exc)


@contextmanager
def state_write(what: str) -> Iterator[None]:
    """Turn any failure of the enclosed write into a StateWriteError naming ``what``."""
    try:
        yield
    except StateWriteError:
        raise
    except Exception as exc:  # plyvel.Error, OSError
        raise StateWriteError(f"{what} failed: {exc}") from exc
