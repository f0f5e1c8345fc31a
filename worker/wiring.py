"""Builds one worker's parts and wires them together: the one place that knows them all.

Each part gets only what it uses: the state (store, log), the S3 client behind
``Storage``, the source files, and the loop's ``Liveness``. Tests build the same
graph in-process (``tests/worker/inprocess.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from shared.settings import Settings
from shared.state.store import CheckpointStore
from shared.state.wal import WriteAheadLog
from shared.uplink import Uplink
from worker.completion import Finalizer
from worker.live import LivePlaylists
from worker.liveness import Liveness
from worker.multipart import FinalUpload
from worker.prober import Prober
from worker.recovery import BucketRecovery
from worker.retention import Retention
from worker.settled import SettledFiles
from worker.source import SourceFiles
from worker.storage import BucketCheck, Storage
from worker.tracker import StreamTracker
from worker.uploader import Uploader

__all__ = ["build_tracker"]


def build_tracker(settings: Settings, store: CheckpointStore, wal: WriteAheadLog, client: Any,
                  log: Any, live: Liveness, *, settled: SettledFiles | None = None,
                  prober: Prober | None = None, storage: Storage | None = None,
                  uplink: Uplink | None = None, wake: Callable[[], None] = lambda: None
                  ) -> tuple[StreamTracker, Callable[[], None]]:
    """The tracker with everything under it, and what closes their threads and helper
    process (the caller closes the store and the log it passed in). Tests may hand in
    ``settled``, ``prober`` or ``storage`` (then ``client`` is unused). ``uplink`` is the
    shared ``--bwlimit`` bucket, when there is a cap; ``wake`` wakes an idle loop (the
    backlog lane calls it when its PUT is done)."""
    storage = storage if storage is not None else Storage(client, settings.s3_bucket, uplink,
                                                          live.stopping, live.notify,
                                                          settings.policy)
    source = SourceFiles(settings.watch_dir)
    settled = settled if settled is not None else SettledFiles(enabled=settings.trust_settled)
    prober = prober if prober is not None else Prober(live.pulse)
    uploader = Uploader(source, wal, storage, log, settled)
    upload = FinalUpload(storage, wal, log, live, settings.max_parts)
    finalizer = Finalizer(settings, source, uploader, upload, storage, wal, prober, log, live)
    bucket = BucketCheck(storage, settings.create_bucket, log)
    retention = Retention(settings, store, wal, storage, log)
    tracker = StreamTracker(settings, store, wal, source, uploader, upload, finalizer, bucket,
                            retention, log)
    tracker.order.lane.wake = wake
    tracker.recovery = BucketRecovery(settings, storage, source, log, live.pulse,
                                      born_at=store.born_at)
    tracker.recovery.taken = lambda stream_id: store.stream(stream_id) is not None
    tracker.playlists = finalizer.playlists = LivePlaylists(settings, source, storage, log)
    retention.look_again = tracker.touch
    retention.unload = tracker.unload_stream

    def close() -> None:
        tracker.order.close()
        upload.close()
        prober.close()

    return tracker, close
