"""The SQLite backend: one aiosqlite connection, WAL, numbered migrations."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from functools import cache
from importlib import resources
from types import TracebackType
from typing import Self

import aiosqlite

from storage._rows import (
    ACTIVE,
    CONVERSATION_COLUMNS,
    JOB_COLUMNS,
    TURN_COLUMNS,
    USAGE_COLUMNS,
    conversation_from_row,
    dump_json,
    job_from_row,
    load_json,
    orphans_from,
    turn_from_row,
    usage_entry_from_row,
    utc_day,
)
from storage.base import (
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
    Turn,
    TurnStatus,
    UsageEntry,
    UsageTotals,
    UserUsage,
    Window,
)
from storage.schema import Migration, load_migrations, split_statements

__all__ = [
    "Migration",
    "SqliteStore",
    "load_migrations",
    "migrate",
    "packaged_migrations",
    "schema_version",
    "split_statements",
]

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Row = sqlite3.Row

# Applied on every setup(); none of them is persistent except journal_mode.
_PRAGMAS = (
    # In WAL mode NORMAL never corrupts the database and loses nothing when the process dies (a
    # commit is in the WAL, in the OS's cache, when it returns); only a power cut or an OS crash
    # may lose the last commits, which is the price of not waiting for an fsync on every image.
    "PRAGMA synchronous = NORMAL",
    # A second process (`python -m bot doctor`, a backup) may hold the write lock briefly.
    "PRAGMA busy_timeout = 5000",
    # Images pass through the page cache as they are saved, so it is always full: at 32 MiB it
    # held 38 MiB of RSS after 100 saves of 2.7 MB, at 8 MiB 13 MiB. The index pages a turn
    # touches in a million turns fit in 8 MiB (bench storage: p50 and p99 unchanged).
    "PRAGMA cache_size = -8192",
    "PRAGMA temp_store = MEMORY",
)


async def _insert_image(conn: aiosqlite.Connection, turn_id: int, fmt: str, data: bytes) -> None:
    """Save an image's bytes with one copy, into the database's pages.

    Bound as a parameter, a blob is copied whole twice before it reaches a page (SQLite takes
    its own copy of the parameter, then builds the row in a buffer of its own): for a 2.7 MB
    image that is 5.4 MB of fresh memory per save, faulted in page by page and written while
    the GIL is held. Here the row is inserted with a zero-filled blob of the right length
    (the last column: SQLite writes its zeros without building them), which is then overwritten
    in place through SQLite's incremental blob I/O, in the connection's own thread.
    """
    await conn.execute(
        "INSERT INTO turn_images (turn_id, format, data) VALUES (?, ?, zeroblob(?))",
        (turn_id, fmt, len(data)),
    )
    if not data:
        return

    def write(db: sqlite3.Connection) -> None:
        with db.blobopen("turn_images", "data", turn_id) as blob:
            blob.write(data)

    # aiosqlite runs every call on the connection in its one thread; it has no wrapper for
    # blobs, so the write goes through the same queue as its own calls (pinned version).
    await conn._execute(write, conn._conn)  # type: ignore[no-untyped-call]


# A store opened on a file checkpoints the WAL from a second connection (its own thread) once
# about CHECKPOINT_PAGES were written, at most every CHECKPOINT_SECONDS: SQLite's automatic
# checkpoint would run inside the commit that crosses 1000 pages, with two fsyncs, and that
# write would wait for them (bench/results.md, storage). Pages are estimated (a few per commit,
# an image's size in pages), since SQLite does not tell; the automatic checkpoint stays as a
# backstop at WAL_BACKSTOP_PAGES, and a WAL file grown past JOURNAL_SIZE_LIMIT is cut back.
CHECKPOINT_PAGES = 1000
CHECKPOINT_SECONDS = 0.5
PAGES_PER_COMMIT = 4
PAGE_SIZE = 4096
WAL_BACKSTOP_PAGES = 16384
JOURNAL_SIZE_LIMIT = 64 * 1024 * 1024


class WalCheckpointer:
    """Runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection after writes, off their path.

    PASSIVE never blocks readers or writers (nor waits for them); what it cannot copy yet is
    copied by the next one.
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        every: float = CHECKPOINT_SECONDS,
        pages: int = CHECKPOINT_PAGES,
    ) -> None:
        self._conn = conn
        self._every = every
        self._threshold = pages
        self._pending = 0
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.checkpoints = 0

    @classmethod
    async def open(cls, path: str, *, every: float = CHECKPOINT_SECONDS) -> WalCheckpointer:
        """Connect to the database at `path` and start checkpointing."""
        conn = await aiosqlite.connect(path, isolation_level=None)
        checkpointer = cls(conn, every=every)
        checkpointer._task = asyncio.create_task(checkpointer._run(), name="sqlite-checkpoint")
        return checkpointer

    def wrote(self, pages: int = PAGES_PER_COMMIT) -> None:
        """Note a committed write of about `pages` pages; enough of them ask for a checkpoint."""
        self._pending += pages
        if self._pending >= self._threshold:
            self._dirty.set()

    async def _run(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self._pending = 0
            try:
                await self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                log.warning("WAL checkpoint failed (the automatic one remains): %s", exc)
            else:
                self.checkpoints += 1
            # At most one checkpoint per interval: each one costs two fsyncs.
            await asyncio.sleep(self._every)

    async def close(self) -> None:
        """Stop checkpointing and close the connection (the last close checkpoints anyway)."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self._conn.close()


# Migrations


@cache
def packaged_migrations() -> tuple[Migration, ...]:
    """Return the migrations shipped in `storage/migrations`."""
    return load_migrations(resources.files("storage") / "migrations")


async def schema_version(conn: aiosqlite.Connection) -> int:
    """Return the schema version recorded in the database (PRAGMA user_version)."""
    rows = list(await conn.execute_fetchall("PRAGMA user_version"))
    return int(rows[0][0])


async def migrate(conn: aiosqlite.Connection, migrations: Sequence[Migration]) -> int:
    """Apply the migrations the database lacks, each atomically; return the new version."""
    latest = migrations[-1].version if migrations else 0
    current = await schema_version(conn)
    if current > latest:
        raise SchemaVersionError(
            f"the database is at schema version {current} but this bot only knows up to "
            f"{latest}; upgrade the bot or restore an older database"
        )
    for migration in migrations:
        if migration.version <= current:
            continue
        # IMMEDIATE takes the write lock first, so two processes starting together cannot both
        # apply the same migration; the version is re-read under that lock.
        await conn.execute("BEGIN IMMEDIATE")
        try:
            current = await schema_version(conn)
            if migration.version <= current:
                await conn.rollback()
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            # PRAGMA takes no parameters; the version is an int parsed from a file name.
            await conn.execute(f"PRAGMA user_version = {migration.version:d}")
            await conn.commit()
        except BaseException:
            await conn.rollback()
            raise
        current = migration.version
        log.info("applied migration %04d_%s", migration.version, migration.name)
    return current


_ACTIVE = ACTIVE


def _usage_filter(
    since: float, user_id: int | None, guild_id: int | None, until: float | None = None
) -> tuple[str, list[object]]:
    """Build a WHERE clause for the usage ledger from fixed fragments and `?` parameters."""
    # Optional filters are left out rather than written as `(? IS NULL OR col = ?)`, which
    # would stop SQLite from using the (user_id, at) and (guild_id, at) indexes.
    clauses = ["at >= ?"]
    params: list[object] = [since]
    if until is not None:
        clauses.append("at < ?")
        params.append(until)
    if user_id is not None:
        clauses.append("user_id = ?")
        params.append(user_id)
    if guild_id is not None:
        clauses.append("guild_id = ?")
        params.append(guild_id)
    return " AND ".join(clauses), params


class SqliteStore:
    """The store on SQLite, through one aiosqlite connection.

    Every write is its own committed transaction. Writes share one asyncio lock because
    the connection is shared: without it a statement of one task could land inside another
    task's open transaction and be committed or rolled back with it.
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        clock: Clock = time.time,
        migrations: Sequence[Migration] | None = None,
        close_connection: bool = False,
    ) -> None:
        """Wrap a connection; `close_connection` hands its ownership to the store."""
        self._conn = conn
        self._clock = clock
        self._migrations = tuple(migrations) if migrations is not None else packaged_migrations()
        self._close_connection = close_connection
        self._write_lock = asyncio.Lock()
        self._ready = False
        self._checkpointer: WalCheckpointer | None = None

    @classmethod
    async def open(cls, path: str | os.PathLike[str], *, clock: Clock = time.time) -> SqliteStore:
        """Open (creating if needed) the database file at `path` and set it up."""
        # Autocommit mode: the store issues BEGIN itself where a transaction spans statements.
        conn = await aiosqlite.connect(os.fspath(path), isolation_level=None)
        store = cls(conn, clock=clock, close_connection=True)
        try:
            await store.setup()
            if os.fspath(path) != ":memory:":
                await store._conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_BACKSTOP_PAGES:d}")
                await store._conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT:d}")
                store._checkpointer = await WalCheckpointer.open(os.fspath(path))
        except BaseException:
            await conn.close()
            raise
        return store

    # Lifecycle

    async def setup(self) -> None:
        """Configure the connection and apply pending migrations; safe to call again."""
        async with self._write_lock:
            rows = list(await self._conn.execute_fetchall("PRAGMA journal_mode = WAL"))
            mode = str(rows[0][0]).lower()
            if mode not in ("wal", "memory"):
                log.warning("SQLite refused WAL mode and uses %r; writes will be slower", mode)
            for pragma in _PRAGMAS:
                await self._conn.execute(pragma)
            version = await migrate(self._conn, self._migrations)
        self._ready = True
        log.debug("SQLite store ready at schema version %d", version)

    async def close(self) -> None:
        """Close the connection if the store owns it (it does when made by `open`)."""
        checkpointer, self._checkpointer = self._checkpointer, None
        if checkpointer is not None:
            await checkpointer.close()
        if self._close_connection:
            await self._conn.close()

    async def __aenter__(self) -> Self:
        if not self._ready:
            await self.setup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # Plumbing

    async def _rows(self, sql: str, params: Sequence[object] = ()) -> list[Row]:
        """Run a read and return all its rows."""
        return list(await self._conn.execute_fetchall(sql, params))

    async def _row(self, sql: str, params: Sequence[object] = ()) -> Row | None:
        """Run a read and return its first row, or None."""
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def _write(self, sql: str, params: Sequence[object]) -> int:
        """Run one write statement as its own transaction; return how many rows it changed."""
        async with self._write_lock:
            try:
                cursor = await self._conn.execute(sql, params)
                await self._commit_implicit()
            except BaseException:
                await self._rollback_open()
                raise
            self._wrote()
            return cursor.rowcount

    async def _write_returning(self, sql: str, params: Sequence[object]) -> list[Row]:
        """Run one write statement with RETURNING as its own transaction; return its rows."""
        async with self._write_lock:
            try:
                rows = list(await self._conn.execute_fetchall(sql, params))
                await self._commit_implicit()
            except BaseException:
                await self._rollback_open()
                raise
            self._wrote()
            return rows

    def _wrote(self, pages: int = PAGES_PER_COMMIT) -> None:
        if self._checkpointer is not None:
            self._checkpointer.wrote(pages)

    async def _commit_implicit(self) -> None:
        """Commit a transaction that sqlite3's legacy mode opened on its own."""
        # Connections made by open() are in autocommit mode and skip this round trip; an
        # injected connection may use sqlite3's default mode, which begins implicitly.
        if self._conn.in_transaction:
            await self._conn.commit()

    async def _rollback_open(self) -> None:
        """Roll back whatever transaction a failed write left open."""
        if self._conn.in_transaction:
            await self._conn.rollback()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """Run several statements atomically under the write lock."""
        async with self._write_lock:
            await self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                await self._conn.rollback()
                raise
            await self._conn.commit()
            self._wrote()

    # Conversations

    async def get_conversation(self, channel_id: int) -> Conversation | None:
        """Return the conversation of a thread or DM channel, or None."""
        row = await self._row(
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE channel_id = ?",
            (channel_id,),
        )
        return conversation_from_row(row) if row is not None else None

    async def create_conversation(self, conversation: Conversation) -> None:
        """Insert a conversation, or replace it (keeping its original `created_at`)."""
        async with self._transaction() as conn:
            await self._upsert_conversation(conn, conversation)

    async def _upsert_conversation(
        self, conn: aiosqlite.Connection, conversation: Conversation
    ) -> None:
        await conn.execute(
            f"INSERT INTO conversations ({CONVERSATION_COLUMNS})"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (channel_id) DO UPDATE SET"
            " guild_id = excluded.guild_id,"
            " owner_id = excluded.owner_id,"
            " parent_channel_id = excluded.parent_channel_id,"
            " latest_response_id = excluded.latest_response_id,"
            " latest_message_id = excluded.latest_message_id,"
            " engine = excluded.engine,"
            " options = excluded.options,"
            " updated_at = excluded.updated_at",
            (
                conversation.channel_id,
                conversation.guild_id,
                conversation.owner_id,
                conversation.parent_channel_id,
                conversation.latest_response_id,
                conversation.latest_message_id,
                conversation.engine,
                dump_json(conversation.options),
                conversation.created_at,
                conversation.updated_at,
            ),
        )

    async def advance_conversation(
        self, channel_id: int, *, response_id: str, message_id: int | None
    ) -> bool:
        """Point a conversation at its newest response; return False if there is none."""
        changed = await self._write(
            "UPDATE conversations"
            " SET latest_response_id = ?, latest_message_id = ?, updated_at = ?"
            " WHERE channel_id = ?",
            (response_id, message_id, self._clock(), channel_id),
        )
        return changed > 0

    # Turns

    async def add_turn(self, turn: NewTurn) -> Turn:
        """Record a turn and return it with its id and creation time."""
        # One statement is atomic by itself: no BEGIN and COMMIT round trips to the thread.
        created_at = self._clock()
        rows = await self._write_returning(*self._turn_insert(turn, created_at))
        return self._turn_record(turn, rows[0][0], created_at)

    async def _insert_turn(
        self, conn: aiosqlite.Connection, turn: NewTurn, job_id: int | None = None
    ) -> Turn:
        created_at = self._clock()
        rows = await conn.execute_fetchall(*self._turn_insert(turn, created_at, job_id))
        return self._turn_record(turn, next(iter(rows))[0], created_at)

    @staticmethod
    def _turn_insert(
        turn: NewTurn, created_at: float, job_id: int | None = None
    ) -> tuple[str, tuple[object, ...]]:
        return (
            "INSERT INTO turns (channel_id, guild_id, user_id, message_id, response_id,"
            " parent_response_id, prompt, revised_prompt, options, engine, model, usage,"
            " cost_usd, status, image_url, created_at, result, job_id)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING id",
            (
                turn.channel_id,
                turn.guild_id,
                turn.user_id,
                turn.message_id,
                turn.response_id,
                turn.parent_response_id,
                turn.prompt,
                turn.revised_prompt,
                dump_json(turn.options),
                turn.engine,
                turn.model,
                dump_json(turn.usage),
                turn.cost_usd,
                str(turn.status),
                turn.image_url,
                created_at,
                dump_json(turn.result),
                job_id,
            ),
        )

    @staticmethod
    def _turn_record(turn: NewTurn, turn_id: int, created_at: float) -> Turn:
        return Turn(
            id=turn_id,
            channel_id=turn.channel_id,
            guild_id=turn.guild_id,
            user_id=turn.user_id,
            message_id=turn.message_id,
            response_id=turn.response_id,
            parent_response_id=turn.parent_response_id,
            prompt=turn.prompt,
            revised_prompt=turn.revised_prompt,
            # Copies, so the caller mutating its NewTurn cannot change the returned record.
            options=dict(turn.options),
            engine=turn.engine,
            model=turn.model,
            usage=dict(turn.usage),
            cost_usd=float(turn.cost_usd),
            status=str(turn.status),
            image_url=turn.image_url,
            created_at=created_at,
            result=dict(turn.result),
        )

    async def get_turn(self, turn_id: int) -> Turn | None:
        """Return a turn by id, or None."""
        row = await self._row(f"SELECT {TURN_COLUMNS} FROM turns WHERE id = ?", (turn_id,))
        return turn_from_row(row) if row is not None else None

    async def get_turn_by_message(self, message_id: int) -> Turn | None:
        """Return the newest turn posted as this Discord message, or None."""
        row = await self._row(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE message_id = ? ORDER BY id DESC LIMIT 1",
            (message_id,),
        )
        return turn_from_row(row) if row is not None else None

    async def get_turn_by_response(self, response_id: str) -> Turn | None:
        """Return the newest turn produced by this OpenAI response, or None."""
        row = await self._row(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE response_id = ? ORDER BY id DESC LIMIT 1",
            (response_id,),
        )
        return turn_from_row(row) if row is not None else None

    async def latest_turn(self, channel_id: int, *, with_image: bool = True) -> Turn | None:
        """Return the channel's newest completed turn (with an image unless told otherwise).

        A turn has an image once it was posted: it has a message id or an image URL.
        """
        posted = " AND (message_id IS NOT NULL OR image_url IS NOT NULL)" if with_image else ""
        row = await self._row(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE channel_id = ? AND status = ?{posted}"
            " ORDER BY id DESC LIMIT 1",
            (channel_id, TurnStatus.COMPLETED.value),
        )
        return turn_from_row(row) if row is not None else None

    async def set_turn_message(self, turn_id: int, message_id: int, image_url: str | None) -> bool:
        """Record the message (and attachment URL) a turn was posted as; False if no such turn."""
        changed = await self._write(
            "UPDATE turns SET message_id = ?, image_url = ? WHERE id = ?",
            (message_id, image_url, turn_id),
        )
        return changed > 0

    async def list_turns(self, channel_id: int, limit: int = 50) -> list[Turn]:
        """Return a channel's most recent turns, newest first."""
        rows = await self._rows(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE channel_id = ? ORDER BY id DESC LIMIT ?",
            (channel_id, limit),
        )
        return [turn_from_row(row) for row in rows]

    async def delete_turn_rolling_back(self, turn_id: int) -> bool:
        """Delete a turn and its image; a conversation whose head it was goes back to its parent.

        The parent is the turn's `parent_response_id` (and the message that showed it, if that
        turn is still known), or nothing for a first turn: the next message starts afresh.
        """
        async with self._transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    "SELECT channel_id, response_id, parent_response_id FROM turns WHERE id = ?",
                    (turn_id,),
                )
            )
            if not rows:
                return False
            channel_id, response_id, parent_response_id = rows[0]
            await conn.execute("DELETE FROM turn_images WHERE turn_id = ?", (turn_id,))
            await conn.execute("DELETE FROM turns WHERE id = ?", (turn_id,))
            if response_id is not None:
                parent_message = list(
                    await conn.execute_fetchall(
                        "SELECT message_id FROM turns WHERE response_id = ? AND channel_id = ?"
                        " ORDER BY id DESC LIMIT 1",
                        (parent_response_id, channel_id),
                    )
                )
                await conn.execute(
                    "UPDATE conversations SET latest_response_id = ?, latest_message_id = ?,"
                    " updated_at = ? WHERE channel_id = ? AND latest_response_id = ?",
                    (
                        parent_response_id,
                        parent_message[0][0] if parent_message else None,
                        self._clock(),
                        channel_id,
                        response_id,
                    ),
                )
            return True

    # Jobs

    async def _insert_job(self, conn: aiosqlite.Connection, job: NewJob) -> Job:
        now = self._clock()
        rows = list(
            await conn.execute_fetchall(
                "INSERT INTO jobs (kind, status, guild_id, channel_id, user_id, payload, locale,"
                " progress_message_id, attempts, created_at, queued_at, reserved_usd,"
                " reserved_images, worker_id) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?, ?, ?)"
                f" RETURNING {JOB_COLUMNS}",
                (
                    job.kind,
                    JobStatus.QUEUED.value,
                    job.guild_id,
                    job.channel_id,
                    job.user_id,
                    dump_json(job.payload),
                    job.locale,
                    job.progress_message_id,
                    now,
                    now,
                    job.reserved_usd,
                    job.reserved_images,
                    job.worker_id,
                ),
            )
        )
        return job_from_row(rows[0])

    async def _occupancy(
        self,
        conn: aiosqlite.Connection,
        *,
        user_id: int,
        guild_id: int | None,
        user_window: Window,
        guild_window: Window,
    ) -> Occupancy:
        """Spent usage in the windows plus the reservations of active jobs (inside a transaction)."""
        # One statement (one round trip to the connection's thread), each part a one-row query.
        parts = [
            "SELECT COALESCE(SUM(images), 0), COALESCE(SUM(cost_usd), 0.0) FROM usage_ledger"
            " WHERE user_id = ? AND at >= ? AND at < ?",
            "SELECT COUNT(*), COALESCE(SUM(reserved_images), 0), COALESCE(SUM(reserved_usd), 0.0)"
            " FROM jobs WHERE user_id = ? AND status IN (?, ?)",
        ]
        params: list[object] = [user_id, user_window.since, user_window.until, user_id, *_ACTIVE]
        if guild_id is not None:
            parts += [
                "SELECT COALESCE(SUM(images), 0), COALESCE(SUM(cost_usd), 0.0) FROM usage_ledger"
                " WHERE guild_id = ? AND at >= ? AND at < ?",
                "SELECT COALESCE(SUM(reserved_images), 0), COALESCE(SUM(reserved_usd), 0.0)"
                " FROM jobs WHERE guild_id = ? AND status IN (?, ?)",
            ]
            params += [guild_id, guild_window.since, guild_window.until, guild_id, *_ACTIVE]
        sql = "SELECT * FROM " + ", ".join(f"({part})" for part in parts)
        row = next(iter(await conn.execute_fetchall(sql, params)))
        spent_user, held_user = row[0:2], row[2:5]
        guild_images, guild_usd = 0, 0.0
        if guild_id is not None:
            guild_images = int(row[5]) + int(row[7])
            guild_usd = float(row[6]) + float(row[8])
        return Occupancy(
            user_pending=int(held_user[0]),
            user_images=int(spent_user[0]) + int(held_user[1]),
            user_usd=float(spent_user[1]) + float(held_user[2]),
            guild_images=guild_images,
            guild_usd=guild_usd,
        )

    async def admit_job(
        self,
        job: NewJob,
        *,
        user_window: Window,
        guild_window: Window,
        gate: AdmissionGate,
    ) -> Job:
        """Add a queued job with its reservation, atomically with the limit check."""
        async with self._transaction() as conn:
            gate(
                await self._occupancy(
                    conn,
                    user_id=job.user_id,
                    guild_id=job.guild_id,
                    user_window=user_window,
                    guild_window=guild_window,
                )
            )
            return await self._insert_job(conn, job)

    async def readmit_job(
        self,
        job_id: int,
        *,
        reserved_usd: float,
        reserved_images: int,
        user_window: Window,
        guild_window: Window,
        gate: AdmissionGate,
        worker_id: str | None = None,
    ) -> Job | None:
        """Put a failed or interrupted job back at the end of the queue (of `worker_id`),
        through the same gate.

        The same row is re-queued (same id, payload and progress message; error and times
        cleared; attempts kept and counted on), so a second click on Retry finds it already
        queued and returns None instead of running the request twice.
        """
        retryable = sorted(status.value for status in RETRYABLE_JOB_STATUSES)
        async with self._transaction() as conn:
            rows = list(
                await conn.execute_fetchall(
                    f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ? AND status IN (?, ?)",
                    (job_id, *retryable),
                )
            )
            if not rows:
                return None
            job = job_from_row(rows[0])
            gate(
                await self._occupancy(
                    conn,
                    user_id=job.user_id,
                    guild_id=job.guild_id,
                    user_window=user_window,
                    guild_window=guild_window,
                )
            )
            rows = list(
                await conn.execute_fetchall(
                    "UPDATE jobs SET status = ?, queued_at = ?, error = NULL, started_at = NULL,"
                    " finished_at = NULL, reserved_usd = ?, reserved_images = ?,"
                    f" response_id = NULL, worker_id = ? WHERE id = ? RETURNING {JOB_COLUMNS}",
                    (
                        JobStatus.QUEUED.value,
                        self._clock(),
                        reserved_usd,
                        reserved_images,
                        worker_id,
                        job_id,
                    ),
                )
            )
            return job_from_row(rows[0])

    async def get_job(self, job_id: int) -> Job | None:
        """Return a job by id, or None."""
        row = await self._row(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return job_from_row(row) if row is not None else None

    async def start_job(self, job_id: int, worker_id: str | None = None) -> Job | None:
        """Move a queued job to running, count the attempt, record the worker that runs it and
        the head it starts from; the running job, or None if it was not queued."""
        # One conditional UPDATE: of two workers racing for the same job, exactly one wins.
        rows = await self._write_returning(
            "UPDATE jobs SET status = ?, attempts = attempts + 1, started_at = ?,"
            " finished_at = NULL, worker_id = ?, base_response_id ="
            " (SELECT latest_response_id FROM conversations WHERE channel_id = jobs.channel_id)"
            f" WHERE id = ? AND status = ? RETURNING {JOB_COLUMNS}",
            (JobStatus.RUNNING.value, self._clock(), worker_id, job_id, JobStatus.QUEUED.value),
        )
        return job_from_row(rows[0]) if rows else None

    async def place_job(
        self, job_id: int, channel_id: int, conversation: Conversation | None
    ) -> bool:
        """Move a queued job to the channel it will be shown in, and open that channel's
        conversation (replacing one there), in one transaction; False if the job is not queued.
        """
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET channel_id = ? WHERE id = ? AND status = ?",
                (channel_id, job_id, JobStatus.QUEUED.value),
            )
            if cursor.rowcount == 0:
                return False
            if conversation is not None:
                await self._upsert_conversation(conn, conversation)
            return True

    async def dispatch_job(self, job_id: int) -> bool:
        """SQLite has no shared queue (one process runs its jobs from memory): always False."""
        return False

    async def finish_job(
        self,
        job_id: int,
        status: str,
        error: str | None = None,
        *,
        usage: NewUsageEntry | None = None,
        queued_only: bool = False,
    ) -> bool:
        """End a queued or running job with a final status, releasing its reservation; False if
        it had already ended (or, with `queued_only`, started). `usage` is charged in the same
        transaction.

        Raises ValueError for a status that is not final.
        """
        if status not in FINISHED_JOB_STATUSES:
            allowed = ", ".join(sorted(FINISHED_JOB_STATUSES))
            raise ValueError(f"a job cannot finish as {status!r}; use one of {allowed}")
        async with self._transaction() as conn:
            cursor = await conn.execute(
                "UPDATE jobs SET status = ?, error = ?, finished_at = ?, reserved_usd = 0,"
                " reserved_images = 0 WHERE id = ? AND status IN (?, ?)",
                (
                    str(status),
                    error,
                    self._clock(),
                    job_id,
                    *((JobStatus.QUEUED.value,) * 2 if queued_only else _ACTIVE),
                ),
            )
            if cursor.rowcount == 0:
                return False
            if usage is not None:
                await self._insert_usage(conn, usage)
            return True

    async def set_job_response(self, job_id: int, response_id: str) -> bool:
        """Remember the OpenAI response a running job streams; False if it is not running."""
        changed = await self._write(
            "UPDATE jobs SET response_id = ? WHERE id = ? AND status = ?",
            (response_id, job_id, JobStatus.RUNNING.value),
        )
        return changed > 0

    async def add_job_response(self, job_id: int, response_id: str) -> bool:
        """Remember one more OpenAI response a running job streams; False if it is not running."""
        changed = await self._write(
            "UPDATE jobs SET response_id = CASE WHEN response_id IS NULL THEN ?"
            " ELSE response_id || ' ' || ? END WHERE id = ? AND status = ?",
            (response_id, response_id, job_id, JobStatus.RUNNING.value),
        )
        return changed > 0

    async def save_result(
        self,
        job_id: int | None,
        turn: NewTurn,
        *,
        image: bytes,
        image_format: str,
        usage: NewUsageEntry,
        advance: bool,
    ) -> Turn:
        """Save a finished image, its turn, its usage and the new head in one transaction."""
        item = NewImage(turn=turn, image=image, image_format=image_format, usage=usage)
        async with self._transaction() as conn:
            saved = await self._save(conn, job_id, [item], (), advance)
        self._wrote(len(image) // PAGE_SIZE)
        return saved[0]

    async def save_results(
        self,
        job_id: int,
        images: Sequence[NewImage],
        *,
        billed: Sequence[NewUsageEntry] = (),
        advance: bool,
    ) -> list[Turn]:
        """Save every image of a job, their usage, the head and the job in one transaction."""
        if not images:
            raise ValueError("save_results needs at least one image")
        async with self._transaction() as conn:
            saved = await self._save(conn, job_id, images, billed, advance)
        self._wrote(sum(len(item.image) for item in images) // PAGE_SIZE)
        return saved

    async def _save(
        self,
        conn: aiosqlite.Connection,
        job_id: int | None,
        images: Sequence[NewImage],
        billed: Sequence[NewUsageEntry],
        advance: bool,
    ) -> list[Turn]:
        """The head moves (to the first image) only if it is still the one the job started
        from (compare-and-set); otherwise the turns are a branch and say so in
        `result["branched"]`."""
        branched = False
        lead = images[0].turn
        if advance and lead.response_id is not None:
            if job_id is None:
                moved = await conn.execute(
                    "UPDATE conversations SET latest_response_id = ?,"
                    " latest_message_id = NULL, updated_at = ? WHERE channel_id = ?",
                    (lead.response_id, self._clock(), lead.channel_id),
                )
            else:
                moved = await conn.execute(
                    "UPDATE conversations SET latest_response_id = ?,"
                    " latest_message_id = NULL, updated_at = ? WHERE channel_id = ?"
                    " AND latest_response_id IS"
                    " (SELECT base_response_id FROM jobs WHERE id = ?)",
                    (lead.response_id, self._clock(), lead.channel_id, job_id),
                )
            branched = moved.rowcount == 0 and await self._has_conversation(conn, lead.channel_id)
        saved: list[Turn] = []
        for item in images:
            new = item.turn
            if branched:
                new = dataclasses.replace(new, result={**new.result, "branched": True})
            turn = await self._insert_turn(conn, new, job_id)
            await _insert_image(conn, turn.id, item.image_format, item.image)
            await self._insert_usage(conn, item.usage)
            saved.append(turn)
        for entry in billed:
            await self._insert_usage(conn, entry)
        first = saved[0]
        if job_id is not None:
            # The job's progress message becomes the final image (the first, for several): a
            # reply to it continues from that turn even before the posting is recorded.
            await conn.execute(
                "UPDATE turns SET message_id ="
                " (SELECT progress_message_id FROM jobs WHERE id = ?)"
                " WHERE id = ? AND message_id IS NULL",
                (job_id, first.id),
            )
            cursor = await conn.execute(
                "UPDATE jobs SET status = ?, turn_id = ?, reserved_usd = 0,"
                " reserved_images = 0 WHERE id = ? AND status = ?",
                (JobStatus.SAVED.value, first.id, job_id, JobStatus.RUNNING.value),
            )
            if cursor.rowcount == 0:
                raise StorageError(f"job {job_id} is not running; its result was not saved")
        return saved

    async def job_turns(self, job_id: int) -> list[Turn]:
        """Return the turns a job saved, in the order it saved them."""
        rows = await self._rows(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE job_id = ? ORDER BY id", (job_id,)
        )
        return [turn_from_row(row) for row in rows]

    @staticmethod
    async def _has_conversation(conn: aiosqlite.Connection, channel_id: int) -> bool:
        rows = await conn.execute_fetchall(
            "SELECT 1 FROM conversations WHERE channel_id = ?", (channel_id,)
        )
        return bool(list(rows))

    async def mark_posted(
        self, job_id: int, turn_id: int, message_id: int | None, image_url: str | None
    ) -> bool:
        """Record where a saved job's image was posted and end the job (saved -> done)."""
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE turns SET message_id = ?, image_url = ? WHERE id = ?",
                (message_id, image_url, turn_id),
            )
            # The head's message follows only if the head is still this turn's response.
            await conn.execute(
                "UPDATE conversations SET latest_message_id = ? WHERE latest_response_id ="
                " (SELECT response_id FROM turns WHERE id = ?) AND channel_id ="
                " (SELECT channel_id FROM turns WHERE id = ?)",
                (message_id, turn_id, turn_id),
            )
            cursor = await conn.execute(
                "UPDATE jobs SET status = ?, finished_at = ? WHERE id = ? AND status = ?",
                (JobStatus.DONE.value, self._clock(), job_id, JobStatus.SAVED.value),
            )
            return cursor.rowcount > 0

    async def saved_jobs(self) -> list[Job]:
        """Return the jobs whose image is saved but not yet posted, oldest first."""
        rows = await self._rows(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = ? ORDER BY id",
            (JobStatus.SAVED.value,),
        )
        return [job_from_row(row) for row in rows]

    async def get_turn_image(self, turn_id: int) -> tuple[bytes, str] | None:
        """Return the saved image (bytes, format) of a turn, or None."""
        row = await self._row("SELECT data, format FROM turn_images WHERE turn_id = ?", (turn_id,))
        return (bytes(row[0]), str(row[1])) if row is not None else None

    async def set_job_progress_message(self, job_id: int, message_id: int) -> bool:
        """Remember the message that shows a job's progress; False if no such job."""
        changed = await self._write(
            "UPDATE jobs SET progress_message_id = ? WHERE id = ?", (message_id, job_id)
        )
        return changed > 0

    # Workers

    async def register_worker(self, worker_id: str) -> None:
        """Record that a worker starts now (a restart under the same id starts it again)."""
        now = self._clock()
        await self._write(
            "INSERT INTO workers (id, started_at, seen_at) VALUES (?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at,"
            " seen_at = excluded.seen_at",
            (worker_id, now, now),
        )

    async def heartbeat_worker(self, worker_id: str) -> bool:
        """Record that a worker is alive now; False if it is not registered (any more)."""
        changed = await self._write(
            "UPDATE workers SET seen_at = ? WHERE id = ?", (self._clock(), worker_id)
        )
        return changed > 0

    async def adopt_orphans(
        self, worker_id: str, *, stale_after: float, own: bool = False
    ) -> Orphans:
        """Take over the unfinished jobs of workers not seen for `stale_after` seconds."""
        unfinished = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.SAVED.value)
        async with self._transaction() as conn:
            dead = [
                str(row[0])
                for row in await conn.execute_fetchall(
                    "SELECT id FROM workers WHERE seen_at < ? AND id <> ? ORDER BY id",
                    (self._clock() - stale_after, worker_id),
                )
            ]
            owners = [*dead, worker_id] if own else dead
            marks = ", ".join("?" for _ in owners) or "NULL"
            adopted = [
                int(row[0])
                for row in await conn.execute_fetchall(
                    "UPDATE jobs SET worker_id = ? WHERE status IN (?, ?, ?) AND ("
                    f" worker_id IN ({marks}) OR worker_id IS NULL"
                    " OR worker_id NOT IN (SELECT id FROM workers)) RETURNING id",
                    (worker_id, *unfinished, *owners),
                )
            ]
            rows = (
                list(
                    await conn.execute_fetchall(
                        f"SELECT {JOB_COLUMNS} FROM jobs WHERE id IN"
                        f" ({', '.join('?' for _ in adopted)}) ORDER BY queued_at, id",
                        adopted,
                    )
                )
                if adopted
                else []
            )
            if dead:
                await conn.execute(
                    f"DELETE FROM workers WHERE id IN ({', '.join('?' for _ in dead)})", dead
                )
        return orphans_from(dead, [job_from_row(row) for row in rows])

    async def count_active_jobs(self, user_id: int | None = None) -> int:
        """Count queued and running jobs, of one user or of everyone."""
        params: list[object] = [JobStatus.QUEUED.value, JobStatus.RUNNING.value]
        sql = "SELECT COUNT(*) FROM jobs WHERE status IN (?, ?)"
        if user_id is not None:
            sql += " AND user_id = ?"
            params.append(user_id)
        row = await self._row(sql, params)
        return int(row[0]) if row is not None else 0

    # Uploaded-file cache

    async def get_uploaded_file(self, sha256: str) -> str | None:
        """Return the Files API id cached for this content hash, or None."""
        row = await self._row("SELECT file_id FROM uploaded_files WHERE sha256 = ?", (sha256,))
        return str(row[0]) if row is not None else None

    async def put_uploaded_file(self, sha256: str, file_id: str, bytes: int) -> None:
        """Cache the Files API id of an upload under its content hash (replacing an old one)."""
        await self._write(
            "INSERT INTO uploaded_files (sha256, file_id, size_bytes, created_at)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (sha256) DO UPDATE SET"
            " file_id = excluded.file_id, size_bytes = excluded.size_bytes,"
            " created_at = excluded.created_at",
            (sha256, file_id, bytes, self._clock()),
        )

    # Usage ledger

    async def record_usage(self, entry: NewUsageEntry) -> None:
        """Append what one request cost to the ledger."""
        async with self._transaction() as conn:
            await self._insert_usage(conn, entry)

    async def _insert_usage(self, conn: aiosqlite.Connection, entry: NewUsageEntry) -> None:
        at = self._clock()
        await conn.execute(
            "INSERT INTO usage_ledger (at, day, guild_id, user_id, channel_id, response_id,"
            " model, engine, images, input_tokens, output_tokens, image_input_tokens,"
            " image_output_tokens, cost_usd) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                at,
                utc_day(at),
                entry.guild_id,
                entry.user_id,
                entry.channel_id,
                entry.response_id,
                entry.model,
                entry.engine,
                entry.images,
                entry.input_tokens,
                entry.output_tokens,
                entry.image_input_tokens,
                entry.image_output_tokens,
                entry.cost_usd,
            ),
        )

    async def usage_totals(
        self,
        *,
        since: float,
        until: float | None = None,
        user_id: int | None = None,
        guild_id: int | None = None,
    ) -> UsageTotals:
        """Sum usage in [since, until), optionally for one user and/or one server."""
        where, params = _usage_filter(since, user_id, guild_id, until)
        row = await self._row(
            "SELECT COALESCE(SUM(images), 0), COALESCE(SUM(input_tokens), 0),"
            " COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_usd), 0.0),"
            " COALESCE(SUM(image_input_tokens + image_output_tokens), 0)"
            f" FROM usage_ledger WHERE {where}",
            params,
        )
        if row is None:
            return UsageTotals(images=0, input_tokens=0, output_tokens=0, cost_usd=0.0)
        return UsageTotals(
            images=int(row[0]),
            input_tokens=int(row[1]),
            output_tokens=int(row[2]),
            cost_usd=float(row[3]),
            image_tokens=int(row[4]),
        )

    async def usage_by_day(
        self, *, since: float, guild_id: int | None = None, user_id: int | None = None
    ) -> list[DayUsage]:
        """Sum usage per UTC day since a time, oldest day first (days without usage omitted)."""
        where, params = _usage_filter(since, user_id, guild_id)
        rows = await self._rows(
            "SELECT day, SUM(images), SUM(cost_usd) FROM usage_ledger"
            f" WHERE {where} GROUP BY day ORDER BY day",
            params,
        )
        return [DayUsage(day=row[0], images=int(row[1]), cost_usd=float(row[2])) for row in rows]

    async def usage_by_user(self, *, since: float, guild_id: int | None) -> list[UserUsage]:
        """Sum usage per user since a time (one server, or all if None), costliest first."""
        where, params = _usage_filter(since, None, guild_id)
        rows = await self._rows(
            "SELECT user_id, SUM(images) AS total_images, SUM(cost_usd) AS total_cost"
            f" FROM usage_ledger WHERE {where} GROUP BY user_id"
            " ORDER BY total_cost DESC, total_images DESC, user_id",
            params,
        )
        return [
            UserUsage(user_id=row[0], images=int(row[1]), cost_usd=float(row[2])) for row in rows
        ]

    async def list_usage(
        self,
        *,
        since: float,
        user_id: int | None = None,
        guild_id: int | None = None,
        limit: int = 100,
    ) -> list[UsageEntry]:
        """Return ledger rows since a time, newest first."""
        where, params = _usage_filter(since, user_id, guild_id)
        rows = await self._rows(
            f"SELECT {USAGE_COLUMNS} FROM usage_ledger WHERE {where}"
            " ORDER BY at DESC, id DESC LIMIT ?",
            [*params, limit],
        )
        return [usage_entry_from_row(row) for row in rows]

    # Settings

    async def get_user_settings(self, user_id: int) -> dict[str, object]:
        """Return a user's saved defaults ({} when none)."""
        row = await self._row("SELECT settings FROM user_settings WHERE user_id = ?", (user_id,))
        return load_json(row[0]) if row is not None else {}

    async def update_user_settings(
        self, user_id: int, change: Callable[[dict[str, object]], dict[str, object]]
    ) -> dict[str, object]:
        """Replace a user's saved defaults by `change(current)`, atomically."""
        return await self._update_json("user_settings", "user_id", "settings", user_id, change)

    async def get_guild_config(self, guild_id: int) -> dict[str, object]:
        """Return a server's configuration ({} when none)."""
        row = await self._row("SELECT config FROM guild_config WHERE guild_id = ?", (guild_id,))
        return load_json(row[0]) if row is not None else {}

    async def update_guild_config(
        self, guild_id: int, change: Callable[[dict[str, object]], dict[str, object]]
    ) -> dict[str, object]:
        """Replace a server's configuration by `change(current)`, atomically."""
        return await self._update_json("guild_config", "guild_id", "config", guild_id, change)

    async def _update_json(
        self,
        table: str,
        key: str,
        column: str,
        key_value: int,
        change: Callable[[dict[str, object]], dict[str, object]],
    ) -> dict[str, object]:
        # BEGIN IMMEDIATE takes the database's write lock before the read: no other process
        # or task can write between reading the current value and replacing it.
        async with self._transaction() as conn:
            cursor = await conn.execute(
                f"SELECT {column} FROM {table} WHERE {key} = ?", (key_value,)
            )
            row = await cursor.fetchone()
            updated = change(load_json(row[0]) if row is not None else {})
            await conn.execute(
                f"INSERT INTO {table} ({key}, {column}, updated_at) VALUES (?, ?, ?)"
                f" ON CONFLICT ({key}) DO UPDATE SET"
                f" {column} = excluded.{column}, updated_at = excluded.updated_at",
                (key_value, dump_json(updated), self._clock()),
            )
        return updated

    # Privacy

    async def delete_user_data(self, user_id: int) -> int:
        """Erase what the bot keeps about a user; return the number of rows affected.

        Deletes their settings, their turns, their finished jobs and the conversations they
        own. Their usage rows lose everything that points at them (user, channel, response)
        and are kept under ANONYMOUS_USER_ID, so a server's spending and budgets stay right.
        Queued and running jobs are left to finish.
        """
        finished = sorted(status.value for status in FINISHED_JOB_STATUSES)
        statements: list[tuple[str, Sequence[object]]] = [
            ("DELETE FROM user_settings WHERE user_id = ?", (user_id,)),
            (
                "DELETE FROM turn_images WHERE turn_id IN (SELECT id FROM turns WHERE user_id = ?)",
                (user_id,),
            ),
            ("DELETE FROM turns WHERE user_id = ?", (user_id,)),
            (
                "DELETE FROM jobs WHERE user_id = ? AND status IN (?, ?, ?, ?)",
                (user_id, *finished),
            ),
            ("DELETE FROM conversations WHERE owner_id = ?", (user_id,)),
            (
                "UPDATE usage_ledger SET user_id = ?, channel_id = NULL, response_id = NULL"
                " WHERE user_id = ?",
                (ANONYMOUS_USER_ID, user_id),
            ),
        ]
        affected = 0
        async with self._transaction() as conn:
            for sql, params in statements:
                cursor = await conn.execute(sql, params)
                affected += cursor.rowcount
        return affected
