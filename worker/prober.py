"""Media probes in a helper process, one per worker, started on first use.

PyAV's FFmpeg libraries add ~22 MB to the process that loads them, and they parse
untrusted bytes in native code. So the worker does not load them: it hands each
probe to a helper (``python -m worker.prober``) that it starts when a stream first
completes and keeps for the next ones (the import is paid once). A probe that
crashes or hangs FFmpeg then costs that one probe, reported as ``media_error``,
not the worker and every stream it carries; the next probe starts a new helper.

The file travels over a Unix socket as a descriptor (SCM_RIGHTS) that the worker
opened beneath the watch dir, so the helper reads exactly the verified file. The
helper exits when the worker's end of the socket closes (the worker exited or
was killed).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path

from worker.media import MediaInfo, probe_media

__all__ = ["Prober", "PROBE_TIMEOUT"]

PROBE_TIMEOUT = 300.0  # demuxing a multi-GB fragmented file without headers is slow
_PACKAGE_ROOT = str(Path(__file__).resolve().parent.parent)


def _helper_command() -> list[str]:
    return [sys.executable, "-m", "worker.prober"]


def _failed(error: str) -> MediaInfo:
    return MediaInfo(None, None, None, None, None, error)


class Prober:
    """The worker's side: one helper process, one probe at a time."""

    def __init__(self, pulse: Callable[[], None], *, timeout: float = PROBE_TIMEOUT,
                 command: Sequence[str] | None = None) -> None:
        self.pulse = pulse
        self.timeout = timeout
        self.command = list(command) if command is not None else _helper_command()
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None

    def probe(self, fd: int) -> MediaInfo:
        """Probe the open file ``fd``; never raises for what the helper does. A helper
        that dies mid-probe is replaced and the probe tried once more (it may have been
        killed from outside); a second death is the file's doing."""
        info = self._probe_once(fd)
        if info.error is not None and info.error.startswith(("media probe crashed",
                                                              "media probe unavailable")):
            info = self._probe_once(fd)
        return info

    def _probe_once(self, fd: int) -> MediaInfo:
        try:
            sock = self._ensure()
            socket.send_fds(sock, [b"probe"], [fd])
        except OSError as exc:
            self.close()
            return _failed(f"media probe unavailable: {exc.strerror or exc}")
        try:
            return self._answer(sock)
        except BaseException:
            self.close()  # a drain mid-probe: the answer must not reach the next probe
            raise

    def _answer(self, sock: socket.socket) -> MediaInfo:
        deadline = time.monotonic() + self.timeout
        reply = b""
        while not reply.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                return _failed(f"media probe timed out after {self.timeout:g} s")
            ready, _, _ = select.select([sock], [], [], min(0.5, left))
            if ready:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""  # it died with our request unread
                if not data:
                    return _failed(f"media probe crashed ({self._ended()})")
                reply += data
            self.pulse()  # heartbeat and drain check while the helper works
        try:
            return MediaInfo(**json.loads(reply))
        except (ValueError, TypeError) as exc:
            self.close()
            return _failed(f"media probe answered nonsense: {exc}")

    def _ensure(self) -> socket.socket:
        if self._sock is not None and self._proc is not None and self._proc.poll() is None:
            return self._sock
        self.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # it parses untrusted bytes: it gets no credentials and no service settings
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PROCESSOR_"))}
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            self._proc = subprocess.Popen(
                [*self.command, str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, env=env)
        except OSError:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        return ours

    def _ended(self) -> str:
        """How the helper ended (it closed the socket), once it is reaped."""
        proc, self._proc = self._proc, None
        self.close()
        if proc is None:
            return "no helper"
        try:
            code = proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def close(self) -> None:
        """Stop the helper (it exits on EOF; killed if it does not at once)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                proc.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def serve(sock: socket.socket) -> None:
    """The helper's side: probe each descriptor received, answer one JSON line."""
    while True:
        message, fds, _, _ = socket.recv_fds(sock, 64, 1)
        if not message:
            return  # the worker is gone
        if not fds:
            info = _failed("media probe received no file")
        else:
            try:
                info = probe_media(f"/proc/self/fd/{fds[0]}")
            except Exception as exc:  # noqa: BLE001 - probe_media should not raise; say so
                info = _failed(f"media probe failed: {exc!r}")
            finally:
                for fd in fds:
                    os.close(fd)
        sock.sendall(json.dumps(asdict(info)).encode() + b"\n")


def main() -> None:
    # The group's SIGTERM/SIGINT are the worker's to act on (a drain); the helper ends
    # when the worker does, by EOF, so a drain never turns into a failed probe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    serve(socket.socket(fileno=int(sys.argv[1])))


if __name__ == "__main__":
    main()
