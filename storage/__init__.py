"""Persistence for the bot: the `Store` protocol, its records, and the backends behind it."""

from __future__ import annotations

from pathlib import Path

from storage.base import (
    ACTIVE_JOB_STATUSES,
    ANONYMOUS_USER_ID,
    FINISHED_JOB_STATUSES,
    RETRYABLE_JOB_STATUSES,
    AdmissionGate,
    Conversation,
    DayUsage,
    Job,
    JobStatus,
    NewJob,
    NewTurn,
    NewUsageEntry,
    Occupancy,
    SchemaVersionError,
    StorageError,
    Store,
    Turn,
    TurnStatus,
    UsageEntry,
    UsageTotals,
    UserUsage,
    Window,
)
from storage.sqlite import SqliteStore

__all__ = [
    "ACTIVE_JOB_STATUSES",
    "ANONYMOUS_USER_ID",
    "FINISHED_JOB_STATUSES",
    "RETRYABLE_JOB_STATUSES",
    "AdmissionGate",
    "Conversation",
    "DayUsage",
    "Job",
    "JobStatus",
    "NewJob",
    "NewTurn",
    "NewUsageEntry",
    "Occupancy",
    "SchemaVersionError",
    "SqliteStore",
    "StorageError",
    "Store",
    "Turn",
    "TurnStatus",
    "UsageEntry",
    "UsageTotals",
    "UserUsage",
    "Window",
    "open_store",
    "sqlite_path_from_url",
]

MEMORY = ":memory:"
_EXAMPLES = "sqlite:///relative/path.db or sqlite:////absolute/path.db"


def sqlite_path_from_url(database_url: str) -> str:
    """Return the file path (or ':memory:') that a SQLAlchemy-style sqlite URL names.

    Raises ValueError for anything else. Messages name the scheme but never repeat the URL,
    which may carry a password.
    """
    scheme, separator, rest = database_url.strip().partition("://")
    if not separator:
        raise ValueError(f"DATABASE_URL is not a database URL; expected {_EXAMPLES}")
    scheme = scheme.lower()
    if scheme.split("+", 1)[0] in ("postgresql", "postgres"):
        raise ValueError(
            "PostgreSQL support is not available yet; set DATABASE_URL to a sqlite URL, "
            "e.g. sqlite:///data/bot.db"
        )
    if scheme not in ("sqlite", "sqlite+aiosqlite"):
        raise ValueError(f"DATABASE_URL scheme {scheme!r} is not supported; expected {_EXAMPLES}")
    if rest == "":
        return MEMORY
    # SQLAlchemy's form is sqlite://<empty host>/<path>: three slashes, then the path.
    if not rest.startswith("/"):
        raise ValueError(
            f"a sqlite DATABASE_URL has three slashes before a relative path; expected {_EXAMPLES}"
        )
    path = rest[1:]
    if "?" in path:
        raise ValueError("query parameters in a sqlite DATABASE_URL are not supported")
    return path or MEMORY


async def open_store(database_url: str) -> Store:
    """Open the store a DATABASE_URL names, creating the database and its folder if needed."""
    path = sqlite_path_from_url(database_url)
    if path != MEMORY:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return await SqliteStore.open(path)
