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
    NewImage,
    NewJob,
    NewTurn,
    NewUsageEntry,
    Occupancy,
    Orphans,
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
from storage.urls import (
    MEMORY,
    database_backend,
    describe_database,
    redact_url,
    sqlite_path_from_url,
    url_passwords,
)

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
    "NewImage",
    "NewJob",
    "NewTurn",
    "NewUsageEntry",
    "Occupancy",
    "Orphans",
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
    "database_backend",
    "describe_database",
    "open_store",
    "redact_url",
    "sqlite_path_from_url",
    "url_passwords",
]


async def open_store(database_url: str) -> Store:
    """Open the store a DATABASE_URL names, migrating it; a SQLite file and its folder are
    created if needed, a PostgreSQL database must exist."""
    if database_backend(database_url) == "postgresql":
        # Imported here: a SQLite deployment never loads psycopg.
        from storage.postgres import PostgresStore

        return await PostgresStore.open(database_url)
    path = sqlite_path_from_url(database_url)
    if path != MEMORY:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    return await SqliteStore.open(path)
