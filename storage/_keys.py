"""Advisory-lock keys for PostgreSQL, the same in every process."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager


def lock_key(kind: str, ident: int) -> int:
    """Return the advisory-lock key (a signed 64-bit int) of one user, server or other thing."""
    # A stable hash, the same in every process (Python's hash() is salted per process).
    digest = hashlib.blake2b(f"imagine-bot:{kind}:{ident}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class _Entry:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0


class KeyedLocks:
    """In-process locks by key, taken in ascending order (no deadlocks), kept only while used.

    Put in front of the server's advisory locks, they make the tasks of one process that want
    the same key wait here, holding no connection, instead of each holding a pooled
    connection while the server makes it wait (and starving every other query of the pool).
    """

    def __init__(self) -> None:
        self._entries: dict[int, _Entry] = {}

    def __len__(self) -> int:
        """How many keys are held or waited for."""
        return len(self._entries)

    @asynccontextmanager
    async def hold(self, keys: Iterable[int]) -> AsyncIterator[None]:
        """Hold every key of `keys` (waiting for the tasks of this process that hold one)."""
        registered: list[_Entry] = []
        acquired: list[asyncio.Lock] = []
        try:
            for key in sorted(set(keys)):
                entry = self._entries.get(key)
                if entry is None:
                    entry = self._entries[key] = _Entry()
                entry.users += 1
                registered.append(entry)
                await entry.lock.acquire()
                acquired.append(entry.lock)
            yield
        finally:
            for lock in reversed(acquired):
                lock.release()
            for entry in registered:
                entry.users -= 1
            for key in [k for k, e in self._entries.items() if e.users == 0]:
                del self._entries[key]
