"""The object layout of contract §2, formatted and parsed in one place.

``P = <s3-prefix>/<relative dir, if any>/<stream_id>`` holds ``P/chunks/<6 digits>``
(``.m4s`` appended for a stream with a live playlist), the assembled ``P/<file name>``,
``P/playlist.m3u8`` and ``P/metadata.json``.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass
from pathlib import PurePosixPath

__all__ = ["StreamKeys", "new_stream_id", "key_text", "MAX_STEM_CHARS", "MAX_KEY_BYTES",
           "FRAGMENT_SUFFIX"]

MAX_STEM_CHARS = 100  # keeps keys well under S3's 1024-byte limit for long names
MAX_KEY_BYTES = 1024  # S3's and MinIO's limit on a key's UTF-8 length
_CHUNK_KEY = re.compile(r"/chunks/(\d{6,})(?:\.m4s)?$")
FRAGMENT_SUFFIX = ".m4s"  # chunks of whole fragments: players want a media extension


def key_text(rel_path: str) -> str:
    """``rel_path`` as valid UTF-8 text for keys and metadata: a file name that is not
    valid UTF-8 keeps its odd bytes as ``\\xNN`` escapes (the path itself, with its
    raw bytes, stays the checkpoint's and the router's key)."""
    return rel_path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def new_stream_id(rel_path: str) -> str:
    """``<stem>-<8 lowercase hex>`` for a new stream of ``rel_path``.

    The random suffix makes ids unique across lineages of the same path (a file
    replaced or truncated starts a new stream); the checkpoint keeps it stable.
    """
    name = PurePosixPath(key_text(rel_path)).name
    stem = name.rsplit(".", 1)[0] if "." in name[1:] else name
    return f"{stem[:MAX_STEM_CHARS]}-{secrets.token_hex(4)}"


@dataclass(frozen=True)
class StreamKeys:
    """Every key of one stream, derived from the prefix, its path and its id."""

    s3_prefix: str
    rel_path: str
    stream_id: str
    chunk_suffix: str = ""   # FRAGMENT_SUFFIX for a stream with a live playlist

    def __post_init__(self) -> None:
        parts = self.rel_path.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise ValueError(f"not a relative path inside the watch dir: {self.rel_path!r}")

    @property
    def prefix(self) -> str:
        """``P``: the folder holding all of this stream's objects."""
        parent = str(PurePosixPath(key_text(self.rel_path)).parent)
        pieces = [self.s3_prefix.strip("/"), "" if parent == "." else parent, self.stream_id]
        return "/".join(p for p in pieces if p)

    def chunk(self, index: int) -> str:
        """Chunk ``index`` (0-based), zero-padded to 6 digits so keys sort in order."""
        if index < 0:
            raise ValueError("chunk index must be >= 0")
        return f"{self.prefix}/chunks/{index:06d}{self.chunk_suffix}"

    @property
    def chunks_prefix(self) -> str:
        return f"{self.prefix}/chunks/"

    def group(self, index: int) -> str:
        """Intermediate object ``index`` of a two-level assembly (contract §9), removed
        once the final object exists."""
        return f"{self.prefix}/groups/{index:06d}"

    @property
    def groups_prefix(self) -> str:
        return f"{self.prefix}/groups/"

    @property
    def final_object(self) -> str:
        """The assembled object, named as the source file."""
        return f"{self.prefix}/{PurePosixPath(key_text(self.rel_path)).name}"

    @property
    def metadata(self) -> str:
        return f"{self.prefix}/metadata.json"

    @property
    def playlist(self) -> str:
        """The HLS playlist of a fragmented stream (contract §6)."""
        return f"{self.prefix}/playlist.m3u8"

    @property
    def longest_key_bytes(self) -> int:
        """UTF-8 length of the longest key this stream writes (6-digit chunk keys, with
        the live playlist's suffix, which a stream may take later)."""
        return max(len(k.encode()) for k in (self.final_object, self.metadata, self.playlist,
                                              self.chunk(0) + FRAGMENT_SUFFIX))

    @staticmethod
    def chunk_index(key: str) -> int | None:
        """The index encoded in a chunk key, or None if ``key`` is not one."""
        match = _CHUNK_KEY.search(key)
        return int(match.group(1)) if match else None
