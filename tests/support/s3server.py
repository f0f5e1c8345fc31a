"""A real S3 endpoint for tests.

By default tests run against moto's standalone server started as a separate
process (so the service under test talks real HTTP to it, exactly as it would
talk to AWS).  Setting ``TEST_S3_ENDPOINT`` (plus credentials) points the whole
suite at another S3 implementation such as MinIO instead.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.config import Config

__all__ = [
    "S3Endpoint",
    "endpoint_from_env",
    "moto_server",
    "s3_endpoint",
    "unique_bucket_name",
    "free_port",
]

#: Dummy credentials for moto.  The secret is deliberately recognisable so a
#: test can assert that it never shows up in logs.
MOTO_ACCESS_KEY = "testing"
MOTO_SECRET_KEY = "testing-secret-key-do-not-log"

_STARTUP_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class S3Endpoint:
    """Where an S3-compatible server lives and how to authenticate to it."""

    url: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def client(self, config: Config | None = None) -> Any:
        """Return a boto3 S3 client for this endpoint.

        Path-style addressing is forced because neither moto-on-localhost nor
        a proxy URL can serve virtual-host buckets.  ``config`` is merged on
        top (e.g. to set checksum behaviour or retries).  A fresh
        :class:`boto3.session.Session` is used because the default session is
        not thread-safe.
        """
        base = Config(s3={"addressing_style": "path"})
        if config is not None:
            base = base.merge(config)
        session = boto3.session.Session()
        return session.client(
            "s3",
            endpoint_url=self.url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=base,
        )

    def env(self) -> dict[str, str]:
        """Credentials/region env vars for a subprocess (and nothing else).

        The endpoint URL is intentionally *not* included: the service under
        test receives it through its own configuration.
        """
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }

    def with_url(self, url: str) -> S3Endpoint:
        """Same credentials, different URL (e.g. a :class:`RecordingProxy`)."""
        return dataclasses.replace(self, url=url)


def endpoint_from_env() -> S3Endpoint | None:
    """Endpoint configured through ``TEST_S3_*`` variables, or None.

    ``TEST_S3_ACCESS_KEY``/``TEST_S3_SECRET_KEY`` fall back to the standard
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``; ``TEST_S3_REGION``
    defaults to ``us-east-1``.
    """
    url = os.environ.get("TEST_S3_ENDPOINT", "").strip()
    if not url:
        return None
    access = os.environ.get("TEST_S3_ACCESS_KEY") or os.environ.get("AWS_ACCESS_KEY_ID")
    secret = os.environ.get("TEST_S3_SECRET_KEY") or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if not access or not secret:
        raise RuntimeError(
            "TEST_S3_ENDPOINT is set but no credentials were found: set "
            "TEST_S3_ACCESS_KEY/TEST_S3_SECRET_KEY (or AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY)"
        )
    region = os.environ.get("TEST_S3_REGION", "").strip() or "us-east-1"
    return S3Endpoint(url=url.rstrip("/"), access_key=access, secret_key=secret, region=region)


def free_port() -> int:
    """A TCP port that was free a moment ago (the usual bind-to-0 trick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_http(url: str) -> bool:
    """True once *any* HTTP response comes back (status is irrelevant)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=2)
    try:
        conn.request("GET", "/")
        conn.getresponse().read()
        return True
    except OSError:
        return False
    finally:
        conn.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate politely, then kill; always reap so no zombie is left."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()


@contextmanager
def moto_server(startup_timeout: float = _STARTUP_TIMEOUT_S) -> Iterator[S3Endpoint]:
    """Run ``python -m moto.server`` on a free localhost port for the block.

    The server's output goes to ``moto.log`` in a private temp dir (its path
    is included in any startup error).  Startup is retried on a new port if
    the process dies early, which covers the free-port race.

    Note: moto rejects bucket names shorter than 3 characters, like AWS.
    """
    with tempfile.TemporaryDirectory(prefix="moto-") as tmp:
        log_path = Path(tmp) / "moto.log"
        env = dict(os.environ)
        # moto itself needs no credentials; keep real ones out of its process.
        for key in (
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_SESSION_TOKEN",
            "AWS_PROFILE",
        ):
            env.pop(key, None)
        last_error = "not started"
        for _attempt in range(3):
            port = free_port()
            url = f"http://127.0.0.1:{port}"
            with open(log_path, "ab") as log:
                proc = subprocess.Popen(
                    [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
            try:
                deadline = time.monotonic() + startup_timeout
                ready = False
                while time.monotonic() < deadline and proc.poll() is None:
                    if _answers_http(url):
                        ready = True
                        break
                    time.sleep(0.1)
                if not ready:
                    last_error = (
                        f"moto server exited with {proc.returncode}"
                        if proc.poll() is not None
                        else f"moto server did not answer within {startup_timeout:.0f}s"
                    )
                    continue
                yield S3Endpoint(url=url, access_key=MOTO_ACCESS_KEY, secret_key=MOTO_SECRET_KEY)
                return
            finally:
                _stop(proc)
        log_tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(
            f"could not start moto server: {last_error}\n--- {log_path} ---\n{log_tail}"
        )


@contextmanager
def s3_endpoint() -> Iterator[S3Endpoint]:
    """The endpoint from ``TEST_S3_*`` if configured, else a fresh moto server."""
    configured = endpoint_from_env()
    if configured is not None:
        yield configured
        return
    with moto_server() as endpoint:
        yield endpoint


def unique_bucket_name(prefix: str = "vsp") -> str:
    """A valid, collision-free bucket name (3-63 chars of ``[a-z0-9-]``).

    Useful against shared servers such as MinIO where buckets outlive a run.
    """
    clean = "".join(c for c in prefix.lower() if c.isalnum() or c == "-").strip("-") or "vsp"
    name = f"{clean[:40]}-{secrets.token_hex(8)}"
    return name
