"""``--bwlimit``: a rate with explicit units, or a weekly timetable of rates.

Rates must say what they count and per what: ``4MiB/s``, ``500KiB/s``, ``4MB/s``,
``30Mbit/s``. A bare number, a size without ``/s``, or bits written as ``b`` are
refused, because each is read differently by different tools (rclone's ``4M`` is
MiB/s, a network engineer's ``4Mb`` is megabits) and a cap off by 8× is a bad
surprise on a metered link.

A timetable is a list of ``HH:MM,RATE`` entries in local time, each holding until
the next, optionally for some days: ``Mon-Fri-08:00,2MiB/s`` (rclone's form), or a
days word that applies to the entries after it, as in the contract's example
``"Mon-Fri 08:00,2MiB/s 19:00,off"``. ``off`` means no cap. Before the week's first
entry, the week's last one holds (the timetable wraps around).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation

__all__ = ["parse_rate", "parse_bwlimit", "Timetable", "format_rate"]

DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MINUTES_PER_WEEK = 7 * 24 * 60
MIN_RATE = 1024  # bytes/s: below this a 10 MiB chunk takes hours

_PREFIX = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3,
           "ki": 1024, "mi": 1024**2, "gi": 1024**3}
_RATE = re.compile(r"^(\d+(?:\.\d+)?)([kKmMgG]i?)?(B|bit|b)?(/s)?$")
_TIME = re.compile(r"^(\d{1,2}):(\d{2})$")
_DAYS = re.compile(r"^([A-Za-z]{3})(?:-([A-Za-z]{3}))?$")


def parse_rate(text: str) -> float | None:
    """Bytes per second from ``4MiB/s``, ``500KiB/s``, ``4MB/s`` or ``30Mbit/s``;
    None for ``off``. Raise ValueError saying what is wrong otherwise."""
    word = text.strip()
    if word.lower() == "off":
        return None
    match = _RATE.match(word)
    if not match:
        raise ValueError(f"{text!r} is not a rate (use e.g. 4MiB/s, 500KiB/s, 30Mbit/s or off)")
    number, prefix, unit, per_second = match.groups()
    if unit is None:
        raise ValueError(f"{text!r} has no unit: say bytes or bits, e.g. {number}MiB/s "
                         f"or {number}Mbit/s")
    if unit == "b":
        raise ValueError(f"{text!r}: 'b' could mean bits or bytes; write bits as 'bit' "
                         f"(e.g. {number}{prefix or ''}bit/s) and bytes as 'B'")
    if per_second is None:
        raise ValueError(f"{text!r} is a size, not a rate: add /s")
    try:
        value = Decimal(number) * _PREFIX[(prefix or "").lower()]
    except (InvalidOperation, KeyError):
        raise ValueError(f"{text!r} is not a rate") from None
    if unit == "bit":
        value /= 8
    if value < MIN_RATE:
        raise ValueError(f"{text!r} is below 1KiB/s; use off for no cap")
    return float(value)


def format_rate(rate: float | None) -> str:
    """``2MiB/s``, ``500KiB/s`` or ``off``: how status and logs show a cap."""
    if rate is None:
        return "off"
    for unit, size in (("GiB/s", 1024**3), ("MiB/s", 1024**2), ("KiB/s", 1024)):
        if rate >= size:
            return f"{rate / size:.3g}{unit}"
    return f"{rate:.0f}B/s"


@dataclass(frozen=True)
class Timetable:
    """The cap through the week: (minute of the week from Monday 00:00, rate or None),
    sorted; one entry at minute 0 for a constant cap. ``text`` is how it was given."""

    entries: tuple[tuple[int, float | None], ...]
    text: str = ""

    def rate_at(self, when: datetime) -> float | None:
        """The cap (bytes/s, None for no cap) at the local time ``when``."""
        minute = when.weekday() * 24 * 60 + when.hour * 60 + when.minute
        current = self.entries[-1][1]  # wraps around from the end of last week
        for start, rate in self.entries:
            if start > minute:
                break
            current = rate
        return current

    @property
    def constant(self) -> bool:
        return len({rate for _, rate in self.entries}) == 1

    def __str__(self) -> str:
        return self.text


def _days(text: str) -> tuple[int, ...]:
    match = _DAYS.match(text)
    names = [g.lower() for g in match.groups() if g] if match else []
    if not names or any(name not in DAYS for name in names):
        raise ValueError(f"{text!r} is not a day or range of days (use e.g. Mon, Mon-Fri, "
                         f"Sat-Sun)")
    first = DAYS.index(names[0])
    last = DAYS.index(names[-1])
    return tuple((first + i) % 7 for i in range((last - first) % 7 + 1))


def _entry(text: str) -> tuple[tuple[int, ...] | None, int, float | None]:
    """``[Days-]HH:MM,RATE`` into (days or None, minute of the day, rate)."""
    when, comma, rate_text = text.partition(",")
    if not comma:
        raise ValueError(f"{text!r} is not a timetable entry (use HH:MM,RATE, e.g. "
                         f"08:00,2MiB/s)")
    days: tuple[int, ...] | None = None
    head, _, clock = when.rpartition("-")
    if head:
        days = _days(head)
    match = _TIME.match(clock)
    if not match or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ValueError(f"{clock!r} in {text!r} is not a time of day (use HH:MM, 00:00-23:59)")
    return days, int(match.group(1)) * 60 + int(match.group(2)), parse_rate(rate_text)


def parse_bwlimit(text: str) -> Timetable:
    """A rate (constant cap) or a timetable; raise ValueError with one line saying why."""
    words = text.split()
    if not words:
        raise ValueError("empty: give a rate (e.g. 4MiB/s) or a timetable")
    if len(words) == 1 and "," not in words[0] and ":" not in words[0] \
            and (words[0].lower() == "off" or not _DAYS.match(words[0])):
        return Timetable(((0, parse_rate(words[0])),), text.strip())
    found: dict[int, float | None] = {}
    current_days: tuple[int, ...] = tuple(range(7))
    for word in words:
        if "," not in word:
            if ":" in word:
                raise ValueError(f"{word!r} is not a timetable entry (use HH:MM,RATE, e.g. "
                                 f"08:00,2MiB/s)")
            current_days = _days(word)  # applies to the entries after it
            continue
        days, minute, rate = _entry(word)
        for day in days if days is not None else current_days:
            start = day * 24 * 60 + minute
            if start in found:
                raise ValueError(f"two entries for {DAYS[day].title()} "
                                 f"{minute // 60:02d}:{minute % 60:02d}")
            found[start] = rate
    if not found:
        raise ValueError(f"{text!r} has no HH:MM,RATE entry")
    return Timetable(tuple(sorted(found.items())), text.strip())
