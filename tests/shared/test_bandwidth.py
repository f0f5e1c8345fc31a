"""Tests for shared.bandwidth: --bwlimit rates and timetables."""

from __future__ import annotations

from datetime import datetime

import pytest

from shared.bandwidth import format_rate, parse_bwlimit, parse_rate

MIB = 1024 * 1024


@pytest.mark.parametrize(("text", "expected"), [
    ("4MiB/s", 4 * MIB), ("500KiB/s", 500 * 1024), ("4MB/s", 4_000_000),
    ("30Mbit/s", 30_000_000 / 8), ("1Gbit/s", 125_000_000), ("1.5MiB/s", 1.5 * MIB),
    ("2048B/s", 2048), ("16kbit/s", 2000), ("off", None), (" OFF ", None),
])
def test_rates_with_units(text: str, expected: float | None) -> None:
    assert parse_rate(text) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("4", "no unit"), ("4M", "no unit"), ("4Mb/s", "'b' could mean bits or bytes"),
    ("4mib/s", "'b' could mean"), ("4MiB", "add /s"), ("100B/s", "below 1KiB/s"),
    ("fast", "is not a rate"), ("-4MiB/s", "is not a rate"), ("4 MiB/s", "is not a rate"),
])
def test_ambiguous_or_bad_rates_say_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_rate(text)


def test_a_single_rate_is_a_constant_cap() -> None:
    table = parse_bwlimit("2MiB/s")
    assert table.constant and str(table) == "2MiB/s"
    assert table.rate_at(datetime(2026, 12, 7, 3, 0)) == 2 * MIB
    assert parse_bwlimit("off").rate_at(datetime(2026, 12, 7, 3, 0)) is None


def test_the_contracts_timetable_holds_each_entry_until_the_next() -> None:
    table = parse_bwlimit("Mon-Fri 08:00,2MiB/s 19:00,off")
    monday, saturday = datetime(2026, 12, 7), datetime(2026, 12, 12)  # a Monday, a Saturday
    assert table.rate_at(monday.replace(hour=7, minute=59)) is None  # Sunday's 19:00,off
    assert table.rate_at(monday.replace(hour=8)) == 2 * MIB
    assert table.rate_at(monday.replace(hour=18, minute=59)) == 2 * MIB
    assert table.rate_at(monday.replace(hour=19)) is None
    assert table.rate_at(saturday.replace(hour=12)) is None  # Friday's 19:00,off holds


def test_rclone_style_days_and_wrapping_around_the_week() -> None:
    table = parse_bwlimit("Sat-10:00,1MiB/s Sun-20:00,off 06:00,4MiB/s")
    saturday, sunday, monday = (datetime(2026, 12, d) for d in (12, 13, 14))
    assert table.rate_at(monday.replace(hour=5)) == table.rate_at(sunday.replace(hour=21))
    assert table.rate_at(sunday.replace(hour=21)) is None
    assert table.rate_at(monday.replace(hour=6)) == 4 * MIB           # every day's 06:00
    assert table.rate_at(saturday.replace(hour=10, minute=30)) == 1 * MIB
    assert table.rate_at(sunday.replace(hour=6, minute=1)) == 4 * MIB
    assert not table.constant


def test_a_range_of_days_may_wrap() -> None:
    table = parse_bwlimit("Fri-Mon-00:00,1MiB/s Tue-Thu-00:00,off")
    assert table.rate_at(datetime(2026, 12, 13, 12)) == 1 * MIB      # Sunday
    assert table.rate_at(datetime(2026, 12, 9, 12)) is None          # Wednesday


@pytest.mark.parametrize(("text", "says"), [
    ("", "empty"), ("08:00", "is not a timetable entry"), ("25:00,1MiB/s", "not a time of day"),
    ("08:60,1MiB/s", "not a time of day"), ("8,1MiB/s", "not a time of day"),
    ("Mon-Fri 08:00,2MiB/s Mon-08:00,1MiB/s", "two entries for Mon 08:00"),
    ("Mox-08:00,1MiB/s", "is not a day"), ("08:00,2Mb/s", "'b' could mean"),
    ("Mon-Fri", "has no HH:MM,RATE entry"), ("08:00,", "is not a rate"),
])
def test_bad_timetables_say_why(text: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_bwlimit(text)


def test_rates_are_shown_in_binary_units() -> None:
    assert [format_rate(r) for r in (None, 2 * MIB, 500 * 1024, 1.5 * 1024**3, 999)] == [
        "off", "2MiB/s", "500KiB/s", "1.5GiB/s", "999B/s"]
