"""The watchdog observer. Its callbacks run on the observer's thread and only put
events in the supervisor's inbox; filtering and routing happen in the main loop."""

from __future__ import annotations

import time

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
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver
from watchdog.observers.polling import PollingObserver

from shared.settings import Settings
from supervisor.events import DirectoryChanged, Inbox, PathChanged

__all__ = ["start_observer"]

# What may mean new bytes or a new file. watchdog builds the inotify mask from this,
# so opens and closes-without-write (the workers' own reads, every few hundred ms per
# stream) are dropped by the kernel instead of waking the observer thread.
_EVENTS = [FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileDeletedEvent,
           FileClosedEvent, DirCreatedEvent, DirMovedEvent]
_IGNORED = {"opened", "closed_no_write"}


class _ToInbox(FileSystemEventHandler):
    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _IGNORED:
            return
        paths = [event.src_path, getattr(event, "dest_path", "") or ""]
        for path in paths:
            if not path:
                continue
            path = path.decode() if isinstance(path, bytes) else path
            if event.is_directory:
                if event.event_type in ("created", "moved"):
                    self.inbox.put(DirectoryChanged(path))
            else:
                self.inbox.put(PathChanged(path, time.time()))


def start_observer(settings: Settings, inbox: Inbox) -> BaseObserver:
    """inotify by default; polling (``--poll``) for network and bind-mounted filesystems."""
    observer: BaseObserver = PollingObserver(timeout=1.0) if settings.poll else Observer()
    observer.schedule(_ToInbox(inbox), str(settings.watch_dir), recursive=settings.recursive,
                      event_filter=_EVENTS)
    observer.daemon = True
    observer.start()
    return observer
