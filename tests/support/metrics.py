"""The service's ``/metrics`` (Prometheus text format), parsed.

Why: the end-to-end, fault and bad-input suites each parsed the text their own way
(one kept the first sample of a name, one split on the first space, which breaks on
label values holding spaces). One parser, keyed by the series as written: the name
plus its labels, e.g. ``processor_streams_completed_total{status="complete"}``.
"""

from __future__ import annotations

from tests.support.http import http_get

__all__ = ["metric", "parse_metrics", "scrape"]


def parse_metrics(text: str) -> dict[str, float]:
    """Series (name with labels, as written) -> value; comments and blanks skipped."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            series, _, value = line.rpartition(" ")
            values[series.strip()] = float(value)
    return values


def metric(text: str, name: str) -> float:
    """The value of ``name``: the series of that exact name, else the sum of its
    labelled series, else 0 (a counter not incremented yet is not exported)."""
    values = parse_metrics(text)
    if name in values:
        return values[name]
    return sum(v for series, v in values.items() if series.startswith(name + "{"))


def scrape(base: str, timeout: float = 10.0) -> tuple[str, dict[str, float]]:
    """``GET <base>/metrics``: its text and its parsed series (fails unless 200)."""
    status, text = http_get(f"{base}/metrics", timeout=timeout)
    assert status == 200, f"/metrics answered {status}: {text[:200]}"
    return text, parse_metrics(text)
