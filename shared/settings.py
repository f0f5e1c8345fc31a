"""The validated configuration, as one frozen value passed to every process.

The supervisor builds it once from the command line, environment and ini file
(see ``supervisor.cli``); workers receive it pickled, so it holds plain values only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

__all__ = ["MIN_CHUNK_SIZE", "MAX_CHUNK_SIZE", "S3_MAX_PARTS", "Settings", "parse_size",
           "parse_extensions"]

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
