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

Built-in faults (:meth:`RecordingProxy.set_faults`, thread-safe, changeable at
any time; random choices come from a seeded RNG):

- ``refuse``: close every accepted connection at once, and a kept-alive one at
  its next request (nothing reaches the server); :meth:`stop_listening` /
  :meth:`resume_listening` instead make the port refuse connections at the TCP
  level;
- :meth:`stall`: for N seconds, accept connections and read requests but
  forward nothing; each held connection is dropped when the stall ends;
- ``latency``: seconds added before each request is forwarded;
- ``response_delay``: seconds the server's response head is held before it is
  relayed (the server has done the work, the client does not know yet);
- ``reset_share``: that share of requests with a body are forwarded in part,
  then both connections are reset (RST, ``SO_LINGER`` 0);
- ``reset_first``: the first that many requests with a body (after the plan is
  set) are reset whatever ``reset_share`` draws, so a short scenario cannot pass
  without one;
- ``error_share`` / ``error_status``: that share of requests is answered by
  the proxy itself with 503 ``SlowDown`` or 500 ``InternalError`` (a proper S3
  XML error body, ``Connection: close``) and never forwarded.

``match`` limits the per-request faults (latency, delay, reset, error) to requests
it returns True for.  Each injected fault is kept as an :class:`InjectedFault`
(:meth:`injected`, :meth:`fault_counts`); requests answered by the proxy or
held in a stall are *not* request records, since the server never saw them.
A record's ``complete`` says whether its whole body was forwarded (a request
reset mid-body, or whose client died mid-body, has ``complete=False``), and
``started_at`` / ``answered_at`` (``time.monotonic()``) say when its head
arrived and when its response head was relayed to the client.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from . import _httpwire as wire

__all__ = ["RecordingProxy", "RequestHead", "RequestRecord", "Faults", "InjectedFault"]


@dataclass(frozen=True)
class RequestRecord:
    """One request as the server received it.

    ``path`` is percent-decoded and without query; ``headers`` have lower-cased
    names.  ``body_size`` is the payload size without HTTP-chunked or
    ``content-encoding: aws-chunked`` framing.  ``crc32c_ok`` is the same check for
    ``x-amz-checksum-crc32c`` (the service's chunks carry that one).  ``crc32_ok`` is None when no
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
    crc32c_ok: bool | None = None
    complete: bool = False
    started_at: float = 0.0
    answered_at: float | None = None


@dataclass(frozen=True)
class RequestHead:
    """What :meth:`RecordingProxy.before_forward` sees."""

    connection_id: int
    index_on_connection: int
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]


@dataclass(frozen=True)
class Faults:
    """What the proxy injects (see the module doc). The default injects nothing."""

    refuse: bool = False
    latency: float = 0.0
    reset_share: float = 0.0
    reset_first: int = 0
    error_share: float = 0.0
    error_status: int = 503
    response_delay: float = 0.0
    match: Callable[[RequestHead], bool] | None = None

    def __post_init__(self) -> None:
        for name in ("reset_share", "error_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if self.reset_first < 0:
            raise ValueError("reset_first must be >= 0")
        if self.latency < 0 or self.response_delay < 0:
            raise ValueError("latency and response_delay must be >= 0")
        if self.error_status not in _ERRORS:
            raise ValueError(f"error_status must be one of {sorted(_ERRORS)}")


@dataclass(frozen=True)
class InjectedFault:
    """One fault the proxy injected: ``kind`` is refused, stalled, latency,
    delayed_response, reset or error; ``method``/``path`` are empty when no
    request head was read."""

    kind: str
    at: float
    method: str = ""
    path: str = ""
    query: dict[str, str] = dataclasses.field(default_factory=dict)
    status: int | None = None


_ERRORS = {
    503: ("Slow Down", "SlowDown", "Please reduce your request rate."),
    500: ("Internal Server Error", "InternalError",
          "We encountered an internal error. Please try again."),
}


def _s3_error(status: int, method: str, resource: str, request_id: str) -> bytes:
    reason, code, message = _ERRORS[status]
    body = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<Resource>{_xml_escape(resource)}</Resource>"
            f"<RequestId>{request_id}</RequestId><HostId>recording-proxy</HostId></Error>"
            ).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nx-amz-request-id: {request_id}\r\n"
            "Connection: close\r\n\r\n").encode()
    return head if method == "HEAD" else head + body


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class _Abort(Exception):
    """``before_forward`` raised, or a fault was injected: the connection is
    dropped on purpose."""


class _Reset(Exception):
    """Cut the request body here and reset both connections."""


class RecordingProxy:
    """Threaded transparent HTTP/1.1 proxy on 127.0.0.1 in front of ``upstream``."""

    def __init__(
        self,
        upstream: str,
        on_request: Callable[[RequestHead], None] | None = None,
        *,
        seed: int = 0,
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
        self._port = 0
        self._acceptor: threading.Thread | None = None
        self._stopping = threading.Event()
        self._faults = Faults()
        self._stall_until = 0.0
        self._forced_resets = 0  # of Faults.reset_first, since the plan was set
        self._rng = random.Random(seed)
        self._injected: list[InjectedFault] = []
        self._body_bytes: list[tuple[float, int]] = []  # (monotonic, bytes) as forwarded

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("proxy not started")
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> RecordingProxy:
        self._listen()
        return self

    def _listen(self) -> None:
        listener = socket.create_server(("127.0.0.1", self._port))
        listener.settimeout(0.2)  # lets the accept loop notice stop()
        self._port = listener.getsockname()[1]
        with self._lock:
            self._listener = listener
        self._acceptor = self._spawn(self._accept_loop, listener)

    def stop_listening(self) -> None:
        """Close the listening socket: new connections are refused by the kernel
        (connections already accepted carry on)."""
        with self._lock:
            listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # Linux: stops listening, wakes accept()
            except OSError:
                pass
            if self._acceptor is not None and self._acceptor is not threading.current_thread():
                self._acceptor.join(timeout=5)  # no accept() may still hold the socket open
            listener.close()

    def resume_listening(self) -> None:
        """Listen again on the same port after :meth:`stop_listening`."""
        if self._stopping.is_set():
            raise RuntimeError("proxy stopped")
        with self._lock:
            if self._listener is not None:
                return
        self._listen()

    # -- faults -------------------------------------------------------------
    @property
    def faults(self) -> Faults:
        with self._lock:
            return self._faults

    def set_faults(self, faults: Faults | None = None, **changes: Any) -> Faults:
        """Replace the fault plan (``faults``), or change some of its fields."""
        with self._lock:
            self._faults = dataclasses.replace(faults or self._faults, **changes)
            self._forced_resets = 0
            return self._faults

    def clear_faults(self) -> None:
        """Inject nothing from now on (ends a stall too)."""
        with self._lock:
            self._faults = Faults()
            self._forced_resets = 0
            self._stall_until = 0.0

    def stall(self, seconds: float) -> None:
        """Black-hole: for ``seconds`` from now, forward nothing; every connection
        or request that arrives meanwhile is held, then dropped when it ends."""
        with self._lock:
            self._stall_until = time.monotonic() + seconds

    def seed(self, seed: int) -> None:
        with self._lock:
            self._rng = random.Random(seed)

    def injected(self) -> list[InjectedFault]:
        with self._lock:
            return list(self._injected)

    def fault_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for fault in self.injected():
            counts[fault.kind] = counts.get(fault.kind, 0) + 1
        return counts

    def stop(self) -> None:
        """Close the listener and every live connection, join all threads."""
        self._stopping.set()
        with self._lock:
            socks, threads = list(self._socks), list(self._threads)
        for s in socks:
            _close(s)
        for t in threads:
            t.join(timeout=5)
        self.stop_listening()

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
            self._body_bytes = []

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

    def _timed(self, send: Callable[[bytes], None]) -> Callable[[bytes], None]:
        """``send``, noting when each piece of a request body was forwarded."""
        def timed(data: bytes) -> None:
            send(data)
            with self._lock:
                self._body_bytes.append((time.monotonic(), len(data)))
        return timed

    def body_bytes_between(self, start: float, end: float) -> int:
        """Request body bytes forwarded to the server in [start, end) (monotonic), as
        sent on the wire: what an uplink cap is measured by."""
        with self._lock:
            return sum(n for t, n in self._body_bytes if start <= t < end)

    def first_body_byte_at(self) -> float | None:
        with self._lock:
            return self._body_bytes[0][0] if self._body_bytes else None

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

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                with self._lock:
                    if self._listener is not listener:
                        return  # stop_listening()
                raise
            client.settimeout(None)
            with self._lock:
                self._connections += 1
                conn_id = self._connections
                self._socks.add(client)
            self._spawn(self._serve, client, conn_id)

    def _inject(self, kind: str, head: RequestHead | None = None,
                status: int | None = None) -> None:
        fault = InjectedFault(kind, time.monotonic(), head.method if head else "",
                              head.path if head else "", dict(head.query) if head else {},
                              status)
        with self._lock:
            self._injected.append(fault)

    def _stall_left(self) -> float:
        with self._lock:
            return self._stall_until - time.monotonic()

    def _hold(self, client: socket.socket) -> None:
        """Read and discard what the client sends until the stall ends (or the
        client goes away, or the proxy stops)."""
        while not self._stopping.is_set() and (left := self._stall_left()) > 0:
            client.settimeout(min(left, 0.2))
            try:
                if not client.recv(wire.RECV):
                    return
            except TimeoutError:
                continue

    def _serve(self, client: socket.socket, conn_id: int) -> None:
        upstream: socket.socket | None = None
        try:
            if self.faults.refuse:
                self._inject("refused")
                return
            if self._stall_left() > 0:
                self._inject("stalled")
                self._hold(client)
                return
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
            head = RequestHead(conn_id, n, method, path, query, headers)
            try:
                self.before_forward(head)
            except Exception as exc:
                raise _Abort() from exc
            cut = self._per_request_faults(head, reader, client, pending)
            item = _Pending(method, next(self._keys), head)
            with self._lock:
                self._records[item.key] = RequestRecord(
                    method, path, query, headers, 0, None, None, started_at=time.monotonic()
                )
            pending.append(item)  # before sending, so no response can precede it
            upstream.sendall(b"".join(lines))

            tap = wire.BodyTap(
                upstream, "aws-chunked" in headers.get("content-encoding", "").lower()
            )
            send = self._timed(tap.send if cut is None else _cutting(tap, cut))
            try:
                trailers = wire.copy_body(reader, headers, send, tap.payload)
            except _Reset:
                self._update(item, body_size=cut or 0)
                self._inject("reset", head)
                _reset(client, upstream)
                raise _Abort() from None
            except BaseException:
                self._update(item, body_size=tap.size)  # what was seen before it broke
                raise
            expected = headers.get("x-amz-checksum-crc32") or trailers.get("x-amz-checksum-crc32")
            expected_c = (headers.get("x-amz-checksum-crc32c")
                          or trailers.get("x-amz-checksum-crc32c"))
            size, ok, ok_c = tap.result(expected, expected_c)
            self._update(item, body_size=size, crc32_ok=ok, crc32c_ok=ok_c, complete=True)
            tap.flush()  # only now may the server (and so the client) see the end

    def _per_request_faults(
        self, head: RequestHead, reader: wire.Reader, client: socket.socket,
        pending: deque[_Pending],
    ) -> int | None:
        """Apply stall, latency and error faults to one request (raising _Abort when
        it must not be forwarded); return where to cut its body for a reset, if any."""
        if self.faults.refuse:  # an outage ends connections kept alive, not only new ones
            self._inject("refused", head)
            raise _Abort()
        if self._stall_left() > 0:
            self._inject("stalled", head)
            self._hold(client)
            raise _Abort()
        plan = self.faults
        applies = plan.match is None or plan.match(head)  # user code: not under the lock
        length = _body_length(head.headers)
        with self._lock:
            error = applies and plan.error_share > 0 and self._rng.random() < plan.error_share
            body = applies and not error and length != 0
            forced = body and self._forced_resets < plan.reset_first
            self._forced_resets += forced
            reset = forced or (body and plan.reset_share > 0
                               and self._rng.random() < plan.reset_share)
            cut = None
            if reset:  # never the whole body: the server must not get it complete
                cut = (self._rng.randint(1, length - 1) if length > 1 else 0) \
                    if length is not None else 65536
            request_id = f"{self._rng.getrandbits(64):016X}"
        if applies and plan.latency > 0:
            self._inject("latency", head)
            if self._stopping.wait(plan.latency):
                raise _Abort()
        if error:
            if head.headers.get("expect", "").lower() != "100-continue":
                wire.copy_body(reader, head.headers, lambda _b: None, lambda _b: None)
            deadline = time.monotonic() + 30  # earlier responses on this connection first
            while pending and time.monotonic() < deadline and not self._stopping.is_set():
                time.sleep(0.01)
            self._inject("error", head, plan.error_status)
            client.sendall(_s3_error(plan.error_status, head.method, head.path, request_id))
            client.shutdown(socket.SHUT_WR)
            raise _Abort()
        return cut

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
            early = False  # answered before its body was forwarded (Expect: 100-continue)
            if item is not None:
                with self._lock:
                    early = (item.head.headers.get("expect", "").lower() == "100-continue"
                             and not self._records[item.key].complete)
                plan = self.faults
                if plan.response_delay > 0 and (plan.match is None or plan.match(item.head)):
                    self._inject("delayed_response", item.head, status)
                    if self._stopping.wait(plan.response_delay):
                        return
                self._update(item, status=status, answered_at=time.monotonic())
            client.sendall(b"".join(lines))
            headers = wire.parse_headers(lines[1:])
            if (item is not None and item.method == "HEAD") or status in (204, 304):
                continue
            wire.copy_body(reader, headers, client.sendall, lambda _b: None, until_eof=True)
            if "content-length" not in headers and "chunked" not in headers.get(
                "transfer-encoding", ""
            ):
                break  # close-delimited body: the connection is over
            if early:
                # a server refusing a request before its body (radosgw's 400s) leaves the
                # client free to skip the body and reuse the connection: the request
                # relay, waiting for that body, would read the next request as it. End
                # the connection instead, as the client's next request will find.
                client.shutdown(socket.SHUT_RDWR)
                return
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
    head: RequestHead


def _body_length(headers: dict[str, str]) -> int | None:
    """Declared body length: 0 when there is no body, None when chunked."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return None
    try:
        return int(headers.get("content-length", "0"))
    except ValueError:
        return 0


def _cutting(tap: wire.BodyTap, cut: int) -> Callable[[bytes], None]:
    """A ``send`` that forwards the first ``cut`` body bytes, then raises _Reset."""
    forwarded = 0

    def send(data: bytes) -> None:
        nonlocal forwarded
        if forwarded + len(data) >= cut:
            if (part := data[: cut - forwarded]):
                tap.send(part)
            tap.flush()
            raise _Reset()
        forwarded += len(data)
        tap.send(data)

    return send


def _reset(*socks: socket.socket) -> None:
    """Abort connections with a TCP RST (linger 0), not a FIN."""
    linger = struct.pack("ii", 1, 0)
    for s in socks:
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
            if s is not socks[0]:
                s.shutdown(socket.SHUT_RD)  # wakes the other thread blocked in recv()
        except OSError:
            pass
        s.close()


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
