"""Source authentication: write keys and API keys, compared in constant time."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable

__all__ = ["KeyRing", "basic_auth_key", "bearer_key"]


class KeyRing:
    """Maps keys to source names without comparing secrets in variable time.

    Keys are indexed by their SHA-256 digest, so a lookup's timing depends only on a hash of the
    presented key; the stored key is then confirmed with :func:`hmac.compare_digest`.
    """

    def __init__(self, keys: Iterable[tuple[str, str]]) -> None:
        self._by_digest: dict[bytes, tuple[bytes, str]] = {}
        for key, source in keys:
            raw = key.encode()
            self._by_digest[hashlib.sha256(raw).digest()] = (raw, source)

    def source_for(self, key: str) -> str | None:
        """The source that owns ``key``, or ``None``."""
        # "surrogatepass": any str encodes (a configured key never holds surrogates, so a
        # header's undecodable bytes still match nothing).
        raw = key.encode("utf-8", "surrogatepass")
        entry = self._by_digest.get(hashlib.sha256(raw).digest())
        if entry is None or not hmac.compare_digest(entry[0], raw):
            return None
        return entry[1]

    def __len__(self) -> int:
        return len(self._by_digest)


def basic_auth_key(header: str) -> str | None:
    """The write key from ``Authorization: Basic base64("<key>:")``, or ``None`` if not Basic.

    Returns an empty string for a Basic header that does not decode.
    """
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except ValueError:  # not base64 (binascii.Error), not ASCII, or not UTF-8 once decoded
        return ""
    return decoded.partition(":")[0]


def bearer_key(header: str) -> str | None:
    """The token from ``Authorization: Bearer <token>``, or ``None`` if not Bearer."""
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return value.strip()
