"""A byte-transparent HTTP/1.1 proxy that records what reaches the S3 server.

Tests point the service (or a boto3 client) at :attr:`RecordingProxy.url` and
then assert on what actually went over the wire (how many UploadPart calls,
body sizes, checksums...), not on what the code under test believes it did.

Bytes are relayed unchanged in both directions (Host header included, so SigV4
signatures stay valid against moto, MinIO or AWS).  Each direction is parsed
only to delimit messages (Content-Length / chunked / HEAD / 1xx / 204 / 304 /
close-delimited), which keeps keep-alive, pipelining and ``Expect:
100-continue`` working and pairs each response with its request.  Every client
connection gets its own upstream connection and half-closes are mirrored, so
connection reuse is exactly what client and server negotiate.  (moto's
Werkzeug server answers ``Connection: close`` to everything, so through moto
every request uses a new connection; MinIO/AWS keep connections alive.)

Records: a request is recorded once its head has been forwarded; ``body_size``
and ``crc32_ok`` are final before the last body byte is forwarded and
``status`` is set before the response head is relayed, so a client that has
its response always sees a complete record.  A request whose body never
completed keeps the bytes seen so far and ``crc32_ok=None``.

Fault-injection extension point: :meth:`RecordingProxy.before_forward` (or
the ``on_request`` callable) runs in the connection's thread after a request
head was parsed and before any of its bytes are sent upstream.  It may sleep
(delay) or raise (both sockets are closed, the request is not recorded).
"""

from __future__ import annotations

import dataclasses
import itertools
import socket
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import _httpwire as wire

__all__ = ["RecordingProxy", "RequestHead", "RequestRecord"]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server received it.

    ``path`` is percent-decoded and without query; ``headers`` have lower-cased
    names.  ``body_size`` is the payload size without HTTP-chunked or
    ``content-encoding: aws-chunked`` framing.  ``crc32_ok`` is None when no
    ``x-amz-checksum-crc32`` was sent (as header, aws-chunked trailer or HTTP
    trailer) or the body is incomplete/undecodable, else whether it matches.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body_size: int
    status: int | None
    crc32_ok: bool | None


@dataclass(frozen=True)
class RequestHead:
    """What :meth:`RecordingProxy.before_forward` sees."""

    connection_id: int
    index_on_connection: int
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


class _Abort(Exception):
    """``before_forward`` raised: the connection is dropped on purpose."""


class RecordingProxy:
    """Threaded transparent HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream``."""

    def __init__(
        self, upstream: str, on_request: Callable[[RequestHead], None] | None = None
    ) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"upstream must be http://host:port, got {upstream!r}")
        self.upstream = (parts.hostname, parts.port or 80)
        self.on_request = on_request
        self._lock = threading.Lock()
        self._records: dict[int, RequestRecord] = {}  # insertion-ordered
        self._keys = itertools.count()
        self._errors: list[BaseException] = []
        self._socks: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._connections = 0
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()

    @property
    def url(self) -> str:
        if self._listener is None:
            raise RuntimeError("proxy not started")
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> RecordingProxy:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.2)  # lets the accept loop notice stop()
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        """Close the listener and every live connection, join all threads."""
        self._stopping.set()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for s in socks:
            _close(s)
        for t in threads:
            t.join(timeout=5)
        if self._listener is not None:
            self._listener.close()

    def __enter__(self) -> RecordingProxy:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def requests(self) -> list[RequestRecord]:
        """Snapshot of the records, in the order request heads arrived."""
        with self._lock:
            return list(self._records.values())

    def clear(self) -> None:
        """Forget all records (in-flight requests are not re-added)."""
        with self._lock:
            self._records = {}

    def count(
        self,
        method: str,
        path_prefix: str = "",
        *,
        query_has: str | None = None,
        query_lacks: str | None = None,
    ) -> int:
        """Records with this method, a decoded path starting with
        ``path_prefix`` and a query that has / lacks the named parameter."""
        return sum(
            1
            for r in self.requests()
            if r.method == method.upper()
            and r.path.startswith(path_prefix)
            and (query_has is None or query_has in r.query)
            and (query_lacks is None or query_lacks not in r.query)
        )

    @property
    def connection_count(self) -> int:
        """Client connections accepted so far (to observe keep-alive reuse)."""
        with self._lock:
            return self._connections

    @property
    def errors(self) -> list[BaseException]:
        """Unexpected exceptions in the proxy (bugs, unparsable HTTP); socket
        errors and deliberate aborts are not included.  Tests assert it's empty."""
        with self._lock:
            return list(self._errors)

    def before_forward(self, head: RequestHead) -> None:
        """Fault-injection hook (see module doc); calls ``on_request`` by default."""
        if self.on_request is not None:
            self.on_request(head)

    # -- internals ----------------------------------------------------------
    def _spawn(self, target: Callable[..., None], *args: object) -> threading.Thread:
        t = threading.Thread(
            target=self._guard,
            args=(target, *args),
            daemon=True,
            name=f"recording-proxy-{target.__name__}",
        )
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()
        return t

    def _guard(self, target: Callable[..., None], *args: object) -> None:
        """Run a thread body; on any failure close its sockets so the other
        direction of the connection ends too."""
        try:
            target(*args)
        except BaseException as exc:
            if not isinstance(exc, (OSError, wire.Closed, _Abort)):
                with self._lock:
                    self._errors.append(exc)
            for s in args:
                if isinstance(s, socket.socket):
                    _close(s)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            with self._lock:
                self._connections += 1
                conn_id = self._connections
                self._socks.add(client)
            self._spawn(self._serve, client, conn_id)

    def _serve(self, client: socket.socket, conn_id: int) -> None:
        upstream: socket.socket | None = None
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)
            with self._lock:
                self._socks.add(upstream)
            if self._stopping.is_set():
                return
            pending: deque[_Pending] = deque()
            responses = self._spawn(self._relay_responses, upstream, client, pending)
            self._relay_requests(client, upstream, pending, conn_id)
            upstream.shutdown(socket.SHUT_WR)  # mirror the client's half-close
            responses.join()
        finally:
            for s in (client, upstream):
                if s is not None:
                    _close(s)
                    with self._lock:
                        self._socks.discard(s)

    def _relay_requests(
        self, client: socket.socket, upstream: socket.socket, pending: deque[_Pending], conn_id: int
    ) -> None:
        reader = wire.Reader(client)
        for n in itertools.count():
            if (lines := reader.head()) is None:
                return
            method, target, _ = lines[0].decode("latin-1").split(" ", 2)
            headers, split = wire.parse_headers(lines[1:]), urlsplit(target)
            path, query = unquote(split.path), dict(parse_qsl(split.query, keep_blank_values=True))
            try:
                self.before_forward(RequestHead(conn_id, n, method, path, query, headers))
            except Exception as exc:
                raise _Abort() from exc
            item = _Pending(method, next(self._keys))
            with self._lock:
                self._records[item.key] = RequestRecord(method, path, query, headers, 0, None, None)
            pending.append(item)  # before sending, so no response can precede it
            upstream.sendall(b"".join(lines))

            tap = wire.BodyTap(
                upstream, "aws-chunked" in headers.get("content-encoding", "").lower()
            )
            try:
                trailers = wire.copy_body(reader, headers, tap.send, tap.payload)
            finally:
                self._update(item, body_size=tap.size)
            expected = headers.get("x-amz-checksum-crc32") or trailers.get("x-amz-checksum-crc32")
            size, ok = tap.result(expected)
            self._update(item, body_size=size, crc32_ok=ok)
            tap.flush()  # only now may the server (and so the client) see the end

    def _relay_responses(
        self, upstream: socket.socket, client: socket.socket, pending: deque[_Pending]
    ) -> None:
        reader = wire.Reader(upstream)
        while (lines := reader.head()) is not None:
            status = int(lines[0].split(None, 2)[1])
            if 100 <= status < 200:  # interim (100 Continue); S3 never upgrades
                client.sendall(b"".join(lines))
                continue
            item = pending.popleft() if pending else None
            if item is not None:
                self._update(item, status=status)
            client.sendall(b"".join(lines))
            headers = wire.parse_headers(lines[1:])
            if (item is not None and item.method == "HEAD") or status in (204, 304):
                continue
            wire.copy_body(reader, headers, client.sendall, lambda _b: None, until_eof=True)
            if "content-length" not in headers and "chunked" not in headers.get(
                "transfer-encoding", ""
            ):
                break  # close-delimited body: the connection is over
        client.shutdown(socket.SHUT_WR)  # mirror the server's half-close

    def _update(self, item: _Pending, **changes: Any) -> None:
        with self._lock:
            if item.key in self._records:  # absent after clear()
                self._records[item.key] = dataclasses.replace(self._records[item.key], **changes)


@dataclass
class _Pending:
    """A forwarded request awaiting its response (shared by both directions)."""

    method: str
    key: int


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
