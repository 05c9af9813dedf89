"""Copy a SQLite database into PostgreSQL, keeping every id (button custom ids name them)."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite
import psycopg
from psycopg import sql

from storage.base import StorageError
from storage.postgres import Connection, PostgresStore
from storage.sqlite import SqliteStore
from storage.urls import postgres_conninfo, redact_url, scrub

log = logging.getLogger(__name__)

# Bookkeeping of each backend, not data: each side keeps its own. The workers are the processes
# of the old database: their jobs, without them, are orphans that the first process adopts.
_NOT_COPIED = frozenset({"schema_migrations", "sqlite_sequence", "workers"})
# The shared job queue's tables (PostgreSQL only): queued jobs copied over get their tickets
# when a process adopts them.
_QUEUE_TABLES = "procrastinate_"


class TargetNotEmpty(StorageError):
    """The PostgreSQL database already holds data and the caller did not allow replacing it."""


@dataclass(frozen=True, slots=True)
class CopiedTable:
    """What one table's copy moved."""

    name: str
    rows: int
    # The id the next inserted row gets (tables with an id sequence), past every copied id and
    # past SQLite's own high-water mark, so a deleted row's id is never handed out again.
    next_id: int | None


async def copy_sqlite_to_postgres(
    sqlite_path: str | os.PathLike[str],
    postgres_url: str,
    *,
    overwrite: bool = False,
    batch_rows: int = 1000,
) -> list[CopiedTable]:
    """Copy every table of a SQLite database into a PostgreSQL one, in one transaction.

    Both are migrated to the current schema first (as the bot would at start-up). The source is
    read in one read transaction, so a bot still writing to it cannot tear the copy (but what it
    writes afterwards is not copied: stop it first). Raises TargetNotEmpty when the target
    holds data, unless `overwrite`, which empties it first; StorageError when the schemas
    differ or a database cannot be reached. Messages never show the URL's password.
    """
    if not os.path.isfile(sqlite_path):
        raise StorageError(f"there is no SQLite database at {os.fspath(sqlite_path)}")
    # Migrations first, on both sides, each with its own store's rules.
    await (await SqliteStore.open(sqlite_path)).close()
    await (await PostgresStore.open(postgres_url)).close()
    try:
        async with (
            aiosqlite.connect(os.fspath(sqlite_path), isolation_level=None) as source,
            await psycopg.AsyncConnection.connect(postgres_conninfo(postgres_url)) as target,
        ):
            await source.execute("BEGIN")  # one snapshot of the whole source
            try:
                async with target.transaction():
                    return await _copy(source, target, overwrite=overwrite, batch_rows=batch_rows)
            finally:
                await source.rollback()
    except psycopg.Error as exc:
        raise StorageError(
            f"copying into {redact_url(postgres_url)} failed: {scrub(str(exc), postgres_url)}"
        ) from None


async def _copy(
    source: aiosqlite.Connection,
    target: Connection,
    *,
    overwrite: bool,
    batch_rows: int,
) -> list[CopiedTable]:
    target_columns = await _target_columns(target)
    source_columns = await _source_columns(source)
    if set(source_columns) != set(target_columns):
        raise StorageError(
            f"the two databases have different tables: {sorted(source_columns)} in SQLite, "
            f"{sorted(target_columns)} in PostgreSQL"
        )
    for table, columns in target_columns.items():
        if set(source_columns[table]) != {name for name, _type in columns}:
            raise StorageError(f"table {table} has different columns in the two databases")

    held = {table: await _count(target, table) for table in target_columns}
    if any(held.values()):
        if not overwrite:
            listed = ", ".join(f"{rows} in {table}" for table, rows in held.items() if rows)
            raise TargetNotEmpty(f"the PostgreSQL database already holds rows ({listed})")
        every = sql.SQL(", ").join(sql.Identifier(table) for table in target_columns)
        await target.execute(sql.SQL("TRUNCATE {} RESTART IDENTITY").format(every))
        log.warning("emptied the target database before copying: %s", held)

    high_water = await _sqlite_sequences(source)
    copied: list[CopiedTable] = []
    for table, columns in target_columns.items():
        names = [name for name, _type in columns]
        rows = await _copy_table(source, target, table, names, [t for _n, t in columns], batch_rows)
        next_id = None
        if "id" in names:
            next_id = await _advance_sequence(target, table, high_water.get(table, 0))
        copied.append(CopiedTable(table, rows, next_id))
        log.info("copied %d rows of %s", rows, table)
    return copied


async def _target_columns(
    target: Connection,
) -> dict[str, list[tuple[str, str]]]:
    """Every copied table of the target with its (column, type) pairs, in table order."""
    cursor = await target.execute(
        "SELECT c.table_name, c.column_name, c.data_type FROM information_schema.columns c"
        " JOIN information_schema.tables t"
        " ON t.table_schema = c.table_schema AND t.table_name = c.table_name"
        " WHERE c.table_schema = current_schema() AND t.table_type = 'BASE TABLE'"
        " ORDER BY c.table_name, c.ordinal_position"
    )
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in await cursor.fetchall():
        if str(table) not in _NOT_COPIED and not str(table).startswith(_QUEUE_TABLES):
            tables.setdefault(str(table), []).append((str(column), str(data_type)))
    return tables


async def _source_columns(source: aiosqlite.Connection) -> dict[str, list[str]]:
    tables = await source.execute_fetchall(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
    )
    columns: dict[str, list[str]] = {}
    for (table,) in tables:
        if table in _NOT_COPIED:
            continue
        # table_xinfo names come from sqlite_master, not from user input.
        info = await source.execute_fetchall(f'PRAGMA table_info("{table}")')
        columns[str(table)] = [str(row[1]) for row in info]
    return columns


async def _count(target: Connection, table: str) -> int:
    cursor = await target.execute(sql.SQL("SELECT COUNT(*) FROM {}").format(sql.Identifier(table)))
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def _sqlite_sequences(source: aiosqlite.Connection) -> dict[str, int]:
    """AUTOINCREMENT's high-water marks: ids up to them were handed out, maybe deleted since."""
    exists = await source.execute_fetchall(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
    )
    if not list(exists):
        return {}
    rows = await source.execute_fetchall("SELECT name, seq FROM sqlite_sequence")
    return {str(name): int(seq) for name, seq in rows}


async def _copy_table(
    source: aiosqlite.Connection,
    target: Connection,
    table: str,
    columns: Sequence[str],
    types: Sequence[str],
    batch_rows: int,
) -> int:
    """Stream one table with COPY (which writes identity columns as given); return its rows."""
    listed = ", ".join(f'"{column}"' for column in columns)
    copy_sql = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(sql.Identifier(c) for c in columns)
    )
    rows = 0
    async with target.cursor() as cursor, cursor.copy(copy_sql) as copy:
        copy.set_types(list(types))
        reader = await source.execute(f'SELECT {listed} FROM "{table}"')
        while batch := list(await reader.fetchmany(batch_rows)):
            for row in batch:
                await copy.write_row(tuple(row))
            rows += len(batch)
        await reader.close()
    return rows


async def _advance_sequence(target: Connection, table: str, high_water: int) -> int | None:
    """Set a table's id sequence past its largest id and SQLite's mark; return the next id."""
    cursor = await target.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,))
    row = await cursor.fetchone()
    if row is None or row[0] is None:
        return None
    sequence = str(row[0])
    cursor = await target.execute(
        sql.SQL("SELECT COALESCE(MAX(id), 0) FROM {}").format(sql.Identifier(table))
    )
    found = await cursor.fetchone()
    last = max(int(found[0]) if found is not None else 0, high_water)
    if last > 0:
        await target.execute("SELECT setval(%s, %s, true)", (sequence, last))
    else:
        await target.execute("SELECT setval(%s, 1, false)", (sequence,))
    return last + 1
