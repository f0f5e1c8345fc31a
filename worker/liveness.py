"""What the worker's loop hands down to code that runs long: a liveness call and a
stop check, no more (as gunicorn hands its workers ``notify()`` and ``alive``).

The loop owns the mailbox and the heartbeat. Code deep inside one unit of work (a
completion's verification, part copies being waited for, a probe) calls ``pulse``
between requests: that tells the supervisor the worker is alive and, once the worker
must stop, raises ``Draining``, which unwinds to the loop. It never re-enters the
tracker.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Liveness", "Draining", "NEVER_STOPS"]


class Draining(BaseException):
    """Raised between two requests once the worker must stop. A BaseException, so
    that no per-stream error handler can swallow it."""


@dataclass(frozen=True)
class Liveness:
    notify: Callable[[], None]     # "still alive": the loop's rate-limited heartbeat
    stopping: Callable[[], bool]   # True once the worker must stop

    def pulse(self) -> None:
        """Between two requests: stop if asked, else say the worker is alive."""
        if self.stopping():
            raise Draining()
        self.notify()


NEVER_STOPS = Liveness(notify=lambda: None, stopping=lambda: False)
