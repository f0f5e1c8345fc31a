"""HTTP/1.1 message framing for :mod:`tests.support.proxy`.

Just enough parsing to find where each message ends (Content-Length, chunked
with trailers, close-delimited) while relaying the exact bytes, plus the
aws-chunked payload decoder and the S3 CRC32 encoding.  Kept separate so the
proxy module stays readable.
"""

from __future__ import annotations

import base64
import socket
import zlib
from collections.abc import Callable

import crc32c

RECV = 256 * 1024
CRLF = (b"\r\n", b"\n")
Send = Callable[[bytes], None]


class Closed(Exception):
    """The peer closed the connection in the middle of a message."""


class Reader:
    """Buffered socket reads that return the exact bytes received."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, bytearray()

    def fill(self) -> bool:
        data = self.sock.recv(RECV)
        self.buf += data
        return bool(data)

    def line(self) -> bytes | None:
        """One LF-terminated line, or None on EOF before any byte."""
        start = 0
        while (i := self.buf.find(b"\n", start)) < 0:
            start = len(self.buf)
            if start > 65536:
                raise Closed("line too long")
            if not self.fill():
                if self.buf:
                    raise Closed("EOF in line")
                return None
        out = bytes(self.buf[: i + 1])
        del self.buf[: i + 1]
        return out

    def some(self, limit: int) -> bytes:
        """Between 1 and ``limit`` bytes; raises on EOF."""
        if not self.buf and not self.fill():
            raise Closed("EOF in body")
        out = bytes(self.buf[:limit])
        del self.buf[:limit]
        return out

    def head(self) -> list[bytes] | None:
        """Start line and header lines (incl. the blank one); None on clean EOF."""
        lines: list[bytes] = []
        while True:
            ln = self.line()
            if ln is None:
                if lines:
                    raise Closed("EOF in head")
                return None
            if lines or ln not in CRLF:  # skip stray CRLFs between messages
                lines.append(ln)
            if len(lines) > 1 and ln in CRLF:
                return lines


def parse_headers(lines: list[bytes]) -> dict[str, str]:
    out: dict[str, str] = {}
    for raw in lines:
        name, sep, value = raw.decode("latin-1").partition(":")
        if sep:
            key, val = name.strip().lower(), value.strip()
            out[key] = f"{out[key]}, {val}" if key in out else val
    return out


def copy_n(reader: Reader, n: int, send: Send, payload: Send) -> None:
    while n > 0:
        data = reader.some(min(n, RECV))
        n -= len(data)
        payload(data)
        send(data)


def copy_body(
    reader: Reader, headers: dict[str, str], send: Send, payload: Send, until_eof: bool = False
) -> dict[str, str]:
    """Relay one message body; feed de-chunked bytes to ``payload``; return trailers."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        trailers: list[bytes] = []
        while True:
            size_line = reader.line()
            if size_line is None:
                raise Closed("EOF in chunked body")
            send(size_line)
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                while (ln := reader.line()) not in CRLF:
                    if ln is None:
                        raise Closed("EOF in trailers")
                    trailers.append(ln)
                    send(ln)
                send(ln)
                return parse_headers(trailers)
            copy_n(reader, size, send, payload)
            copy_n(reader, 2, send, lambda _b: None)  # CRLF after the chunk data
    if "content-length" in headers:
        copy_n(reader, int(headers["content-length"]), send, payload)
    elif until_eof:
        while reader.buf or reader.fill():
            copy_n(reader, len(reader.buf), send, payload)
    return {}


def decode_aws_chunked(raw: bytes) -> tuple[bytes, dict[str, str]] | None:
    """Payload and trailers of an aws-chunked body; None if malformed.

    Framing: ``hex-size[;chunk-signature=..]CRLF data CRLF`` ... ``0..CRLF``,
    then ``name:value CRLF`` trailers and a final CRLF.
    """
    out, pos = bytearray(), 0
    try:
        while True:
            eol = raw.index(b"\r\n", pos)
            size, pos = int(raw[pos:eol].split(b";", 1)[0], 16), eol + 2
            if size == 0:
                break
            if raw[pos + size : pos + size + 2] != b"\r\n":
                return None
            out += raw[pos : pos + size]
            pos += size + 2
    except ValueError:
        return None
    return bytes(out), parse_headers([ln for ln in raw[pos:].split(b"\r\n") if ln])


def crc32_b64(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode("ascii")


class BodyTap:
    """Forwards a request body while measuring it, holding back the last piece.

    Holding back lets the proxy finalise its record before the server can
    possibly have the whole body (and so before the client gets a response).
    """

    def __init__(self, sock: socket.socket, aws_chunked: bool) -> None:
        self.sock, self.aws_chunked = sock, aws_chunked
        self.size, self.crc, self.crc_c = 0, 0, 0
        self.raw = bytearray()  # aws-chunked bodies are decoded at the end
        self.held: list[bytes] = []

    def send(self, data: bytes) -> None:
        if self.held:
            self.sock.sendall(self.held.pop())
        self.held.append(data)

    def payload(self, data: bytes) -> None:
        self.size += len(data)
        if self.aws_chunked:
            self.raw += data
        else:
            self.crc = zlib.crc32(data, self.crc)
            self.crc_c = crc32c.crc32c(data, self.crc_c)

    def result(self, expected_crc: str | None,
               expected_crc32c: str | None = None) -> tuple[int, bool | None, bool | None]:
        """(payload size, crc32_ok, crc32c_ok) of the complete body; a check is None
        when its header was not sent."""
        size, crc, crc_c = self.size, self.crc, self.crc_c
        if self.aws_chunked:
            if (decoded := decode_aws_chunked(bytes(self.raw))) is None:
                return size, None, None
            size, crc, crc_c = len(decoded[0]), zlib.crc32(decoded[0]), crc32c.crc32c(decoded[0])
            expected_crc = expected_crc or decoded[1].get("x-amz-checksum-crc32")
            expected_crc32c = expected_crc32c or decoded[1].get("x-amz-checksum-crc32c")
        crc_ok = None if expected_crc is None else crc32_b64(crc) == expected_crc.strip()
        crc_c_ok = (None if expected_crc32c is None
                    else crc32_b64(crc_c) == expected_crc32c.strip())
        return size, crc_ok, crc_c_ok

    def flush(self) -> None:
        while self.held:
            self.sock.sendall(self.held.pop())
