"""Tests for shared.settings.parse_size and parse_extensions."""

from __future__ import annotations

import pytest

from shared.settings import parse_duration, parse_extensions, parse_min_free, parse_size


@pytest.mark.parametrize(("text", "expected"), [
    ("10485760", 10485760), ("0", 0), ("10MiB", 10 * 1024**2), ("10MB", 10 * 1000**2),
    ("5m", 5 * 1024**2), ("5M", 5 * 1024**2), ("1.5MiB", 1572864), ("2k", 2048),
    ("2kb", 2000), ("1GiB", 1024**3), ("5gb", 5 * 1000**3), (" 7 MiB ", 7 * 1024**2),
    ("12b", 12), ("1.1MB", 1_100_000),
])
def test_parse_size_units(text: str, expected: int) -> None:
    """Plain bytes, decimal and binary units (any case, optional spaces) parse exactly."""
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", [
    "", " ", "abc", "10XB", "MiB", "-5MiB", "-1", "1.5", "0.3KiB", "1,5MiB", "1e3", "10 Mi B",
    "0.0000001MB",
])
def test_parse_size_rejects(text: str) -> None:
    """Garbage, unknown units, negatives and fractions of a byte are refused."""
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(("text", "expected"), [("4.1MB", 4_100_000), ("8.2MB", 8_200_000)])
def test_parse_size_exact_decimals(text: str, expected: int) -> None:
    """Decimal sizes that are whole numbers of bytes parse exactly."""
    assert parse_size(text) == expected


@pytest.mark.parametrize(("text", "expected"), [
    ("mp4", ("mp4",)), ("mp4, .MOV", ("mp4", "mov")), (" .Mp4 ,mkv, MP4,.mp4 ", ("mp4", "mkv")),
    ("mp4,,mov,", ("mp4", "mov")), ("..mp4", ("mp4",)),
])
def test_parse_extensions(text: str, expected: tuple[str, ...]) -> None:
    """Extensions lose dots, spaces and case, and are de-duplicated in order."""
    assert parse_extensions(text) == expected


@pytest.mark.parametrize("text", ["", " ", ",", " . , .. ", "a/b"])
def test_parse_extensions_rejects(text: str) -> None:
    """An empty list or a path-like extension is refused."""
    with pytest.raises(ValueError):
        parse_extensions(text)


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("15m", 900),
                                           ("2h", 7200), ("7d", 604800), ("0s", 0),
                                           ("1.5h", 5400)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "s", "-1s", "5w", "1h30m", "soon"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_min_free_in_bytes_or_percent() -> None:
    assert parse_min_free("2GiB").required(100 << 30) == 2 << 30
    assert parse_min_free("10%").required(1000) == 100
    assert parse_min_free(" 12.5% ").required(800) == 100
    for bad in ("0", "0%", "100%", "ten%", "5 apples"):
        with pytest.raises(ValueError):
            parse_min_free(bad)
