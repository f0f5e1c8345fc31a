"""Plain HTTP GETs against the service's status endpoint (``/healthz``, ``/readyz``,
``/metrics``, ``/streams``), for tests that poll it.

Why: three suites had their own ``urlopen`` wrapper, each treating "not listening
yet" and HTTP errors a little differently. Here an HTTP error is an answer (its
status and body) and a connection failure is status 0, so a poll never raises.
"""

from __future__ import annotations

import urllib.error
import urllib.request

from tests.support.runner import wait_until

__all__ = ["http_get", "wait_status"]


def http_get(url: str, timeout: float = 10.0) -> tuple[int, str]:
    """(status, body); (0, the error) when nothing answers (not listening yet, or gone)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError as exc:
        return 0, str(exc)


def wait_status(url: str, status: int, timeout: float = 30.0, every: float = 0.2) -> str:
    """The body of the first answer to ``GET url`` with ``status``."""
    def answered() -> list[str]:
        code, body = http_get(url)
        return [body] if code == status else []

    found: list[str] = wait_until(answered, timeout, f"{url} answering {status}", every=every)
    return found[0]
