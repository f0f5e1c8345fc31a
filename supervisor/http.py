"""``/metrics`` (all processes aggregated), ``/healthz``, ``/readyz`` and ``/streams``
(what each worker is doing, as JSON for ``processor status``), served by the
supervisor on a background thread."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from shared import metrics
from shared.s3 import describe, make_client
from shared.settings import Settings

__all__ = ["StatusServer", "BucketProbe"]


class BucketProbe:
    """Is the bucket reachable? A HEAD with short timeouts, cached for a few seconds."""

    TTL = 5.0

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._client: Any = None
        self._lock = threading.Lock()
        self._checked_at = -self.TTL
        self._ok = False
        self._detail = "not checked yet"

    def check(self) -> tuple[bool, str]:
        with self._lock:
            if time.monotonic() - self._checked_at >= self.TTL:
                if self._client is None:
                    self._client = make_client(self._settings, read_timeout=3.0)
                try:
                    self._client.head_bucket(Bucket=self._settings.s3_bucket)
                    self._ok, self._detail = True, "bucket reachable"
                except Exception as exc:
                    self._ok, self._detail = False, f"bucket not reachable: {describe(exc)}"
                self._checked_at = time.monotonic()
            return self._ok, self._detail


class StatusServer:
    def __init__(self, host: str, port: int, healthy: Callable[[], tuple[bool, str]],
                 probe: BucketProbe,
                 snapshot: Callable[[], dict[str, Any]] = lambda: {}) -> None:
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        self.healthy = healthy
        self.probe = probe
        self.snapshot = snapshot

        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 -- http.server's naming
                if self.path == "/metrics":
                    metrics.S3_READY.set(1 if outer.probe.check()[0] else 0)
                    self._reply(200, generate_latest(registry), CONTENT_TYPE_LATEST)
                elif self.path == "/streams":
                    body = json.dumps(outer.snapshot()).encode()  # ASCII: odd names survive
                    self._reply(200, body, "application/json")
                elif self.path == "/healthz":
                    ok, detail = outer.healthy()
                    self._reply(200 if ok else 503, (detail + "\n").encode())
                elif self.path == "/readyz":
                    ok, detail = outer.healthy()
                    if ok:
                        ok, detail = outer.probe.check()
                    self._reply(200 if ok else 503, (detail + "\n").encode())
                else:
                    self._reply(404, b"not found\n")

            def _reply(self, status: int, body: bytes,
                       content_type: str = "text/plain; charset=utf-8") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # access logs would drown the JSON event log

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="http",
                                       daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
