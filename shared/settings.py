"""The validated configuration, as one frozen value passed to every process.

The supervisor builds it once from the command line, environment and ini file
(see ``supervisor.cli``); workers receive it pickled, so it holds plain values only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

from shared.bandwidth import Timetable
from shared.object_policy import ObjectPolicy

__all__ = ["MIN_CHUNK_SIZE", "MAX_CHUNK_SIZE", "S3_MAX_PARTS", "Settings", "parse_size",
           "parse_extensions", "parse_duration", "MinFree", "parse_min_free"]

MIN_CHUNK_SIZE = 5 * 1024 * 1024  # S3's minimum size of every part but the last
MAX_CHUNK_SIZE = 5 * 1024 * 1024 * 1024  # S3's maximum part size
S3_MAX_PARTS = 10_000  # S3's limit on the parts of one multipart upload

_UNITS = {
    "": 1, "b": 1,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3,
    "k": 1024, "m": 1024**2, "g": 1024**3,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(text: str) -> int:
    """Parse ``10485760``, ``10MiB`` or ``10MB`` into bytes; raise ValueError otherwise."""
    match = _SIZE.match(text)
    if not match or match.group(2).lower() not in _UNITS:
        raise ValueError(f"{text!r} is not a size (use bytes, or e.g. 10MiB, 10MB)")
    value = Decimal(match.group(1)) * _UNITS[match.group(2).lower()]
    if value != value.to_integral_value():
        raise ValueError(f"{text!r} is not a whole number of bytes")
    return int(value)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Parse ``90``, ``90s``, ``15m``, ``2h`` or ``7d`` into seconds; raise ValueError."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (use e.g. 90s, 15m, 2h, 7d)")
    return float(match.group(1)) * _SECONDS[match.group(2)]


@dataclass(frozen=True)
class MinFree:
    """``--min-free``: bytes, or a percentage of the filesystem's size."""

    bytes: int | None = None
    percent: float | None = None

    def required(self, total_bytes: int) -> int:
        """The free bytes wanted on a filesystem of ``total_bytes``."""
        if self.percent is not None:
            return int(total_bytes * self.percent / 100)
        return int(self.bytes or 0)

    def __str__(self) -> str:
        return f"{self.percent:g}%" if self.percent is not None else f"{self.bytes} bytes"


def parse_min_free(text: str) -> MinFree:
    """Parse ``500MiB``, ``2GB`` or ``10%``; raise ValueError otherwise."""
    stripped = text.strip()
    if stripped.endswith("%"):
        try:
            percent = float(stripped[:-1])
        except ValueError:
            raise ValueError(f"{text!r} is not a percentage (e.g. 10%)") from None
        if not 0 < percent < 100:
            raise ValueError(f"{text!r}: a percentage must be above 0% and below 100%")
        return MinFree(percent=percent)
    size = parse_size(stripped)
    if size <= 0:
        raise ValueError(f"{text!r}: must be more than 0 bytes")
    return MinFree(bytes=size)


def parse_extensions(text: str) -> tuple[str, ...]:
    """Parse ``"mp4, .MOV"`` into ``("mp4", "mov")``; raise ValueError when empty."""
    parts = [p.strip().lstrip(".").lower() for p in text.split(",")]
    exts = tuple(dict.fromkeys(p for p in parts if p))
    if not exts:
        raise ValueError("no extension given")
    for ext in exts:
        if "/" in ext or ext.startswith("."):
            raise ValueError(f"{ext!r} is not a file extension")
    return exts


@dataclass(frozen=True)
class Settings:
    """Every option of the contract's table, validated."""

    watch_dir: Path
    recursive: bool = True
    extensions: tuple[str, ...] = ("mp4",)
    state_dir: Path = Path("state")
    workers: int = 4
    chunk_size: int = 10 * 1024 * 1024
    stream_timeout: float = 30.0
    s3_endpoint: str | None = None
    s3_bucket: str = "video-streams"
    s3_prefix: str = "streams"
    s3_region: str = "us-east-1"
    create_bucket: bool = True
    keep_chunks: bool = True
    trust_settled: bool = True
    metrics_port: int = 9100
    metrics_host: str = "0.0.0.0"
    drain_timeout: float = 25.0
    poll: bool = False
    log_level: str = "info"
    log_format: str = "json"
    max_parts: int = S3_MAX_PARTS  # a stream with more chunks keeps them, unassembled
    delete_after: float | None = None  # local retention (contract §7): off unless set
    min_free: MinFree | None = None
    delete_dry_run: bool = False
    bwlimit: Timetable | None = None  # the uplink cap (contract §8): none unless set
    live_first: bool = True  # off only to measure what it gains (bench/sections/uplink.py)
    policy: ObjectPolicy = ObjectPolicy()  # encryption, storage class, tags (contract §9)
    recover_from_bucket: bool = True  # a lost state dir: streams found again in S3 (§10)
    live_playlist: bool = True  # fragment-aligned chunks and an HLS playlist (§6)

    @property
    def retention(self) -> bool:
        """Whether source files may be removed (or, in a dry run, reported)."""
        return self.delete_after is not None or self.min_free is not None

    @property
    def removes_files(self) -> bool:
        return self.retention and not self.delete_dry_run
