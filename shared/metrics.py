"""Prometheus metrics, shared by all processes through multiprocess mode.

``PROMETHEUS_MULTIPROC_DIR`` must be set before this module (and prometheus_client)
is first imported; the supervisor does that in ``supervisor.cli`` and spawned
workers inherit it. No label carries a per-stream or per-file value.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

__all__ = [
    "CHUNKS_UPLOADED", "UPLOADED_BYTES", "STREAMS_COMPLETED", "UPLOAD_RETRIES",
    "ACTIVE_STREAMS", "S3_ERRORS", "record_s3_failure", "CHUNK_UPLOAD_SECONDS",
    "CHUNKS_REUPLOADED", "STREAMS_REOPENED",
    "WORKER_RESTARTS", "EVENTS_DISPATCHED", "WAL_TRUNCATED_BYTES", "S3_REQUESTS", "LAG_BYTES",
    "OLDEST_STREAM_AGE", "S3_READY", "WORKERS_ALIVE", "WORKERS_CONFIGURED",
    "CHECKPOINT_WRITE_SECONDS", "DISPATCH_SECONDS", "SOURCE_ERRORS", "FILES_REFUSED",
    "MEDIA_ERRORS", "SOURCE_FILES_REMOVED", "SOURCE_BYTES_REMOVED", "RETENTION_BLOCKED",
    "WATCH_DIR_FREE_BYTES", "WATCH_DIR_SIZE_BYTES", "MIN_FREE_BYTES",
    "UPLINK_CAP", "UPLINK_CAPPED_BYTES", "UPLINK_WAIT_SECONDS", "BACKLOG_BYTES",
    "PLAYLIST_WRITES", "PLAYLIST_BYTES",
]

CHUNKS_UPLOADED = Counter(
    "processor_chunks_uploaded", "Chunk objects uploaded (acknowledged by S3 and recorded).")
UPLOADED_BYTES = Counter(
    "processor_uploaded_bytes", "Bytes of chunk bodies uploaded.")
STREAMS_COMPLETED = Counter(
    "processor_streams_completed", "Streams finalized (metadata.json written), by final status.",
    ["status"])
PLAYLIST_WRITES = Counter(
    "processor_playlist_writes", "Live HLS playlists written (one PUT per committed chunk of "
    "a fragmented stream, and one at its completion).")
PLAYLIST_BYTES = Counter(
    "processor_playlist_bytes", "Bytes of live HLS playlists written. Each write is the "
    "whole playlist, about 80 bytes per segment, so a recording that runs for days costs "
    "more per chunk as it goes (README, \"Live playback\").")
UPLOAD_RETRIES = Counter(
    "processor_upload_retries", "S3 requests that failed and will be retried.")
S3_ERRORS = Counter(
    "processor_s3_errors", "Failed S3 requests by operation and error kind (all retried).",
    ["operation", "kind"])
ACTIVE_STREAMS = Gauge(
    "processor_active_streams", "Streams seen and not yet finalized.", multiprocess_mode="livesum")
CHUNK_UPLOAD_SECONDS = Histogram(
    "processor_chunk_upload_seconds", "Duration of one chunk PUT, read excluded.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
CHUNKS_REUPLOADED = Counter(
    "processor_chunks_reuploaded",
    "Chunks uploaded again because their bytes changed on disk after upload.")
CHUNKS_VERIFIED = Counter(
    "processor_chunks_verified", "Chunks checked against their file at completion, by how: "
    "read (read and hashed again) or settled (their file provably unchanged since it had "
    "settled before they were read).", ["by"])
STREAMS_REOPENED = Counter(
    "processor_streams_reopened", "Completed streams whose file grew or changed again.")
WORKER_RESTARTS = Counter(
    "processor_worker_restarts", "Worker processes restarted by the supervisor after dying.")
EVENTS_DISPATCHED = Counter(
    "processor_events_dispatched", "Path notifications sent from the supervisor to workers.")
S3_REQUESTS = Counter(
    "processor_s3_requests", "S3 requests by operation and outcome (ok, transient, "
    "permanent, not_found).", ["operation", "outcome"])
LAG_BYTES = Gauge(
    "processor_lag_bytes", "Bytes on disk not yet uploaded, over all unfinished streams.",
    multiprocess_mode="livesum")
OLDEST_STREAM_AGE = Gauge(
    "processor_oldest_stream_age_seconds", "Age of the oldest unfinished stream.",
    multiprocess_mode="livemax")
S3_READY = Gauge(
    "processor_s3_ready", "1 when the bucket answered the last readiness check, else 0.",
    multiprocess_mode="livemax")
WORKERS_ALIVE = Gauge(
    "processor_workers_alive", "Worker processes running.", multiprocess_mode="livemax")
WORKERS_CONFIGURED = Gauge(
    "processor_workers_configured", "Worker processes configured (--workers).",
    multiprocess_mode="livemax")
CHECKPOINT_WRITE_SECONDS = Histogram(
    "processor_checkpoint_write_seconds", "Duration of a synchronous LevelDB write.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1))
DISPATCH_SECONDS = Histogram(
    "processor_dispatch_seconds", "From a file event seen by the supervisor to its worker "
    "receiving it.", buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5))
SOURCE_ERRORS = Counter(
    "processor_source_errors", "Attempts that could not read a source file (e.g. permissions).")
FILES_REFUSED = Counter(
    "processor_files_refused", "Files not uploaded because no S3 key can name them "
    "(the stream's keys would pass 1024 bytes).")
MEDIA_ERRORS = Counter(
    "processor_media_errors", "Streams completed whose file is not a readable MP4 "
    "(uploaded all the same, with media_error in metadata.json).")
WAL_TRUNCATED_BYTES = Counter(
    "processor_wal_truncated_bytes", "Bytes cut from torn or corrupt write-ahead-log tails.")
SOURCE_FILES_REMOVED = Counter(
    "processor_source_files_removed", "Source files removed by local retention, by reason "
    "(delete_after, min_free).", ["reason"])
SOURCE_BYTES_REMOVED = Counter(
    "processor_source_bytes_removed", "Bytes of source files removed by local retention.",
    ["reason"])
RETENTION_BLOCKED = Counter(
    "processor_retention_blocked", "Removals refused or put off (a writer holds the file, "
    "no lease, not provably in S3, changed since completion, nothing safe to free).")
WATCH_DIR_FREE_BYTES = Gauge(
    "processor_watch_dir_free_bytes", "Free bytes (for unprivileged users) of the watch "
    "dir's filesystem.", multiprocess_mode="livemax")
WATCH_DIR_SIZE_BYTES = Gauge(
    "processor_watch_dir_size_bytes", "Size of the watch dir's filesystem.",
    multiprocess_mode="livemax")
MIN_FREE_BYTES = Gauge(
    "processor_min_free_bytes", "The --min-free threshold in bytes (0 when off).",
    multiprocess_mode="livemax")

# A labelled series appears only once it has a child: create the statuses up front so
# dashboards and alerts see zeros rather than nothing.
for _status in ("complete", "source_deleted", "source_replaced"):
    STREAMS_COMPLETED.labels(status=_status)
for _reason in ("delete_after", "min_free"):
    SOURCE_FILES_REMOVED.labels(reason=_reason)
    SOURCE_BYTES_REMOVED.labels(reason=_reason)


def record_s3_failure(operation: str, kind: str) -> None:
    """Count one failed S3 request that will be retried."""
    UPLOAD_RETRIES.inc()
    S3_ERRORS.labels(operation=operation, kind=kind).inc()

# the uplink (contract §8)
UPLINK_CAP = Gauge(
    "processor_uplink_cap_bytes_per_second",
    "The --bwlimit cap in force now, in bytes/s (0: no cap).", multiprocess_mode="livemax")
UPLINK_CAPPED_BYTES = Counter(
    "processor_uplink_capped_bytes", "Bytes of chunk bodies sent under a --bwlimit cap.")
UPLINK_WAIT_SECONDS = Histogram(
    "processor_uplink_wait_seconds",
    "Seconds one chunk body waited for the cap's tokens while being sent, by class "
    "(live: its file is still being written; backlog: complete or idle).", ["class"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300))
BACKLOG_BYTES = Gauge(
    "processor_backlog_bytes",
    "Bytes on disk not yet uploaded, of streams whose files are complete or idle.",
    multiprocess_mode="livesum")
