"""Numbered migration files: reading, checking and splitting them, for every backend.

Each backend keeps its own folder of `NNNN_name.sql` files (SQLite's in `storage/migrations`,
PostgreSQL's twins in `storage/migrations/postgres`); the numbers and names match one to one.
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass
from importlib.resources.abc import Traversable

from storage.base import StorageError

_MIGRATION_NAME = re.compile(r"^(\d{4})_(\w+)\.sql$")


@dataclass(frozen=True, slots=True)
class Migration:
    """One numbered schema change; its statements run in order inside one transaction."""

    version: int
    name: str
    statements: tuple[str, ...]


def split_statements(script: str) -> tuple[str, ...]:
    """Split an SQL script into statements that each end at the end of a line."""
    statements: list[str] = []
    buffer = ""
    for line in script.splitlines(keepends=True):
        buffer += line
        # SQLite's own tokenizer knows about strings, comments and trigger bodies.
        if sqlite3.complete_statement(buffer):
            statements.append(buffer.strip())
            buffer = ""
    leftover = [
        line for line in buffer.splitlines() if line.strip() and not line.strip().startswith("--")
    ]
    if leftover:
        raise StorageError(f"unterminated SQL statement: {leftover[0].strip()!r}")
    return tuple(statements)


def load_migrations(directory: Traversable) -> tuple[Migration, ...]:
    """Read `NNNN_name.sql` files from a directory, checking they are numbered 1, 2, 3, ..."""
    found: dict[int, Migration] = {}
    for entry in directory.iterdir():
        if not entry.name.endswith(".sql"):
            continue
        match = _MIGRATION_NAME.match(entry.name)
        if match is None:
            raise StorageError(f"migration file {entry.name!r} is not named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise StorageError(f"two migration files have number {version:04d}")
        script = entry.read_text(encoding="utf-8")
        found[version] = Migration(version, match.group(2), split_statements(script))
    versions = sorted(found)
    if versions != list(range(1, len(versions) + 1)):
        raise StorageError(f"migrations must be numbered 0001, 0002, ... without gaps: {versions}")
    return tuple(found[version] for version in versions)
