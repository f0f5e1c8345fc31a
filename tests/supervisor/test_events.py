"""The supervisor's inbox: one wake-up byte per burst, and no item ever unseen."""

from __future__ import annotations

import os
import select
import threading

from supervisor.events import Inbox, PathChanged


def _pending_bytes(inbox: Inbox) -> int:
    ready, _, _ = select.select([inbox.wake_r], [], [], 0)
    if not ready:
        return 0
    data = os.read(inbox.wake_r, 4096)
    return len(data)


def test_a_burst_writes_one_wake_up_byte() -> None:
    inbox = Inbox()
    try:
        for i in range(100):
            inbox.put(PathChanged(f"/w/{i}.mp4"))
        assert _pending_bytes(inbox) == 1
        assert len(inbox.drain()) == 100
        inbox.put(PathChanged("/w/next.mp4"))  # re-armed by the drain
        assert _pending_bytes(inbox) == 1
    finally:
        inbox.close()


def test_items_put_while_draining_are_never_left_unseen() -> None:
    """Producers race the loop; every item is either drained or has woken the loop."""
    inbox = Inbox()
    total = 20_000
    seen = 0
    done = threading.Event()

    def produce() -> None:
        for i in range(total):
            inbox.put(i)
        done.set()

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        while seen < total:
            ready, _, _ = select.select([inbox.wake_r], [], [], 2.0)
            assert ready or not done.is_set() or seen == total, \
                f"loop asleep with {total - seen} items queued"
            seen += len(inbox.drain())
    finally:
        thread.join()
        inbox.close()
    assert seen == total
