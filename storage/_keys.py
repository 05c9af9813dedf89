"""Advisory-lock keys for PostgreSQL, the same in every process."""

from __future__ import annotations

import hashlib


def lock_key(kind: str, ident: int) -> int:
    """Return the advisory-lock key (a signed 64-bit int) of one user, server or other thing."""
    # A stable hash, the same in every process (Python's hash() is salted per process).
    digest = hashlib.blake2b(f"imagine-bot:{kind}:{ident}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)
