"""What a bucket's policy asks of every object we write (contract §9): server-side
encryption, a storage class, tags; and the request arguments that carry it.

Enterprise buckets refuse a PUT without the encryption their policy names, and an
SSE-C object cannot even be HEADed without its key. So the arguments are not only
for PUTs: each kind of request the processor makes gets exactly the ones S3
defines for it (a part copy needs the key of its source chunk as well as of its
destination upload; a CompleteMultipartUpload needs the key again, which is the
header rclone once forgot). ``Storage`` asks for them by request kind, so no call
site can leave them out.

The SSE-C key lives in a ``CustomerKey`` whose repr hides it, so a Settings value
logged or raised in an error never shows it. botocore derives the key's base64 and
MD5 headers itself; we never hold either.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

__all__ = ["ObjectPolicy", "CustomerKey", "SSE_MODES", "parse_object_tags",
           "parse_storage_class", "read_customer_key", "loopback_endpoint"]

SSE_MODES = ("AES256", "aws:kms")
SSE_C_KEY_BYTES = 32  # AES-256
# Archive classes cannot be the source of a copy until restored, and every chunk is
# one: the final object could never be assembled.
_NOT_COPYABLE = {"GLACIER", "DEEP_ARCHIVE"}
_STORAGE_CLASS = re.compile(r"^[A-Z][A-Z0-9_]{0,63}$")
_MAX_TAGS = 10  # S3's limit per object
_TAG_KEY_MAX, _TAG_VALUE_MAX = 128, 256


@dataclass(frozen=True)
class CustomerKey:
    """An SSE-C key. Its bytes never show in a repr, str or comparison message."""

    secret: bytes = field(repr=False)

    def __str__(self) -> str:
        return "<SSE-C key>"


def read_customer_key(path: str) -> CustomerKey:
    """The 32 raw bytes of ``path``; raise ValueError naming the file, never its bytes."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read {path!r}: {exc.strerror}") from None
    if len(data) != SSE_C_KEY_BYTES:
        raise ValueError(f"{path!r} holds {len(data)} bytes; an SSE-C key is exactly "
                         f"{SSE_C_KEY_BYTES} raw bytes (e.g. head -c 32 /dev/urandom)")
    return CustomerKey(data)


def parse_storage_class(text: str) -> str:
    value = text.strip()
    if not _STORAGE_CLASS.match(value):
        raise ValueError(f"{text!r} is not a storage class (e.g. STANDARD_IA, "
                         "INTELLIGENT_TIERING)")
    if value in _NOT_COPYABLE:
        raise ValueError(f"{value} objects cannot be copied until restored, so chunks "
                         "stored so could never be assembled (use a lifecycle rule to "
                         "move the final objects there)")
    return value


def parse_object_tags(text: str) -> str:
    """``camera=front&site=berlin`` (S3's own form) or ``camera=front,site=berlin``
    into the URL-encoded form of the ``x-amz-tagging`` header."""
    separator = "&" if "&" in text else ","
    pairs: list[tuple[str, str]] = []
    for item in (p.strip() for p in text.split(separator)):
        if not item:
            continue
        key, equals, value = (part.strip() for part in item.partition("="))
        if not equals:
            raise ValueError(f"{item!r} is not key=value")
        if separator == "&":  # S3's form may already be URL-encoded
            key, value = unquote(key), unquote(value)
        if not key or len(key) > _TAG_KEY_MAX or len(value) > _TAG_VALUE_MAX:
            raise ValueError(f"{item!r}: a tag key is 1-{_TAG_KEY_MAX} characters and a "
                             f"value at most {_TAG_VALUE_MAX}")
        if any(key == k for k, _ in pairs):
            raise ValueError(f"tag {key!r} is given twice")
        pairs.append((key, value))
    if not pairs:
        raise ValueError("no tag given")
    if len(pairs) > _MAX_TAGS:
        raise ValueError(f"{len(pairs)} tags; S3 allows at most {_MAX_TAGS} per object")
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in pairs)


def loopback_endpoint(url: str | None) -> bool:
    """Whether ``url`` names this host (where plain http exposes no key on a wire)."""
    host = urlsplit(url or "").hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ObjectPolicy:
    """The encryption, storage class and tags every written object carries."""

    sse: str | None = None            # "AES256" or "aws:kms"
    kms_key_id: str | None = None     # with aws:kms; else the bucket's default key
    customer_key: CustomerKey | None = None  # SSE-C
    storage_class: str | None = None
    tags: str | None = None           # URL-encoded, as the x-amz-tagging header

    def __post_init__(self) -> None:
        if self.sse is not None and self.sse not in SSE_MODES:
            raise ValueError(f"--sse must be one of {', '.join(SSE_MODES)}")
        if self.kms_key_id is not None and self.sse != "aws:kms":
            raise ValueError("--sse-kms-key-id needs --sse aws:kms")
        if self.customer_key is not None and self.sse is not None:
            raise ValueError("--sse-c-key-file and --sse are exclusive: an object has "
                             "one kind of server-side encryption")

    @property
    def encryption(self) -> str | None:
        """How objects are encrypted, for logs and metadata.json: never the key."""
        if self.customer_key is not None:
            return "SSE-C"
        return self.sse

    # request arguments, by kind of request
    def _customer(self, prefix: str = "") -> dict[str, Any]:
        if self.customer_key is None:
            return {}
        return {f"{prefix}SSECustomerAlgorithm": "AES256",
                f"{prefix}SSECustomerKey": self.customer_key.secret}

    def write(self) -> dict[str, Any]:
        """PutObject and CreateMultipartUpload: everything the new object carries."""
        args = self._customer()
        if self.sse is not None:
            args["ServerSideEncryption"] = self.sse
        if self.kms_key_id is not None:
            args["SSEKMSKeyId"] = self.kms_key_id
        if self.storage_class is not None:
            args["StorageClass"] = self.storage_class
        if self.tags is not None:
            args["Tagging"] = self.tags
        return args

    def copy(self) -> dict[str, Any]:
        """CopyObject: a new object (``write``) read from one of ours (its key). Tags
        are replaced, not copied, so the copy carries the policy's own."""
        args = {**self.write(), **self._customer("CopySource")}
        if self.tags is not None:
            args["TaggingDirective"] = "REPLACE"
        return args

    def part_copy(self) -> dict[str, Any]:
        """UploadPartCopy: the destination upload's key and the source chunk's."""
        return {**self._customer(), **self._customer("CopySource")}

    def read(self) -> dict[str, Any]:
        """HeadObject, GetObject, ListParts, CompleteMultipartUpload: the key only."""
        return self._customer()
