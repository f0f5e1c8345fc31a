"""The SSE-C key the tests use, and every form in which it could leak.

A fixed, recognisable key (not a random one) so that the session-wide scan in
``tests/security/test_secrets.py`` can look for it in every artefact any test left.
botocore sends the key base64-encoded, with the base64 of its MD5; a careless log
line could also print it as hex or as Python's bytes repr.
"""

from __future__ import annotations

import base64
import hashlib

__all__ = ["SSE_C_TEST_KEY", "sse_c_forms"]

SSE_C_TEST_KEY = b"sse-c-test-key-never-log-it-0123"
assert len(SSE_C_TEST_KEY) == 32


def sse_c_forms(key: bytes) -> list[bytes]:
    """The raw key and its base64, hex and repr forms, and its MD5's base64 and hex."""
    md5 = hashlib.md5(key).digest()
    return [key, base64.b64encode(key), key.hex().encode(), repr(key).encode(),
            base64.b64encode(md5), md5.hex().encode()]
