"""Live streams before backlog on one worker (contract §8): live first in each step, and
backlog chunk bodies sent from a side thread.

A stream is live while its file changed within the stream timeout; a file complete on
disk when first seen, or idle since, is backlog. A worker uploads each file in order,
one request at a time, but under a thin uplink a backlog body takes seconds to send
(and under ``--bwlimit`` it pauses whenever any worker sends a live body). Sent from
the loop, it would hold back every live chunk of its worker, and a new live stream
would not even be noticed. So full chunks of backlog streams are sent here, one at a
time, and the loop stays free: live chunks go from the loop at once.

Only the S3 call runs on the lane's thread. The read (into the lane's own buffer, so
the loop's stays free for live chunks) and the write-ahead intent happen on the loop
before the hand-off, and the commit after it, when the loop collects the result: the
state is only ever changed by the loop. A stream with a chunk on the lane is not
worked on until it is collected; the lane wakes the loop when its PUT is done. A
crash with a PUT on the lane leaves its intent pending, settled with a HEAD at the
next start as for any chunk.

A backlog file's completion (tail, verification, assembly, metadata) runs on the loop,
between live chunks: it delays them by at most one request, its tail PUT being the
longest. The tail is sent as live, so that no other worker's live body can hold it
(and with it this worker's live streams) back.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from worker.planning import ChunkSpan
from worker.source import SourceFiles
from worker.stream import Stream
from worker.uploader import PreparedChunk, Uploader

__all__ = ["LiveFirst", "BacklogLane"]


class BacklogLane:
    """One backlog chunk PUT at a time, off the loop's thread."""

    def __init__(self, uploader: Uploader, watch_dir: Path) -> None:
        self.uploader = uploader
        self.source = SourceFiles(watch_dir)  # its own chunk buffer
        self.wake: Callable[[], None] = lambda: None  # an idle loop, when the PUT is done
        self._executor: ThreadPoolExecutor | None = None
        self._job: tuple[Stream, PreparedChunk, Future[float]] | None = None

    @property
    def idle(self) -> bool:
        return self._job is None

    def holds(self, stream_id: str) -> bool:
        return self._job is not None and self._job[0].stream_id == stream_id

    def submit(self, stream: Stream, span: ChunkSpan) -> None:
        """Read the chunk and log its intent here (the loop's thread); send it there."""
        assert self._job is None, "one backlog PUT at a time"
        prepared = self.uploader.prepare(stream, span, self.source)
        if self._executor is None:
            self._executor = ThreadPoolExecutor(1, thread_name_prefix="backlog")
        future = self._executor.submit(self.uploader.send, prepared, False)
        future.add_done_callback(lambda _: self.wake())
        self._job = (stream, prepared, future)

    def collect(self) -> tuple[Stream, Callable[[Stream], bool]] | None:
        """The stream whose chunk the lane has sent, and the work that commits it (or
        raises the PUT's error), for the tracker to run as one of its attempts; None while
        the PUT runs."""
        if self._job is None or not self._job[2].done():
            return None
        stream, prepared, future = self._job
        self._job = None

        def settle(stream: Stream) -> bool:
            self.uploader.commit(stream, prepared, future.result())  # raises its error
            return True

        return stream, settle

    def close(self) -> None:
        """Wait for the PUT in flight (a drain lets it finish at full speed); its result is
        not committed, so its intent is settled with a HEAD at the next start."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)


class LiveFirst:
    """The order of one worker's work: live streams first, then backlog, each in order
    of arrival (contract §8), and where each full chunk is sent from."""

    def __init__(self, uploader: Uploader, watch_dir: Path, timeout: float,
                 clock: Callable[[], float], enabled: bool = True) -> None:
        self.enabled = enabled  # off (--no-live-first): one class, for the bench only
        self.uploader = uploader
        self.timeout = timeout
        self.clock = clock
        self.lane = BacklogLane(uploader, watch_dir)

    def is_live(self, stream: Stream) -> bool:
        return self.enabled and stream.live(self.clock(), self.timeout)

    def in_turn(self, streams: Iterable[Stream]) -> list[Stream]:
        """The streams in the order they get their turn in this step."""
        live: list[Stream] = []
        backlog: list[Stream] = []
        if self.enabled:
            now = self.clock()
            for stream in streams:
                (live if stream.live(now, self.timeout) else backlog).append(stream)
        else:
            backlog = list(streams)
        return live + backlog

    def send(self, stream: Stream, span: ChunkSpan) -> bool:
        """Send a full chunk: a live one from the loop, a backlog one on the lane once it
        is free. False when it has to wait for the lane (in order of arrival)."""
        if not self.enabled:
            self.uploader.upload_chunk(stream, span, live=False)
            return True
        if self.is_live(stream):
            self.uploader.upload_chunk(stream, span, live=True)
            return True
        if not self.lane.idle:
            return False
        self.lane.submit(stream, span)
        return True

    def close(self) -> None:
        self.lane.close()
