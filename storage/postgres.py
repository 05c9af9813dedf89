"""The PostgreSQL backend: a psycopg 3 connection pool, the same numbered migrations.

Several bot processes may share one database, so every rule the ledger needs holds across
processes, not only across the tasks of one: admission reads the occupancy and inserts the job
under a transaction-scoped advisory lock per user and per server; state changes are conditional
UPDATEs (of two processes racing for a job, exactly one wins); migrations run under an advisory
lock too, so two processes starting together apply each one once.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cache
from importlib import resources
from types import TracebackType
from typing import Self

import psycopg
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from storage import pgqueue
from storage._keys import KeyedLocks, lock_key
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
from storage.schema import Migration, load_migrations
from storage.urls import postgres_conninfo, redact_url, scrub

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Connection = psycopg.AsyncConnection[TupleRow]
Pool = AsyncConnectionPool[Connection]


_MIGRATION_LOCK = lock_key("migrations", 0)


# Migrations


@cache
def packaged_migrations() -> tuple[Migration, ...]:
    """Return the migrations shipped in `storage/migrations/postgres`, the job queue's schema
    (procrastinate's own SQL, one multi-statement script) appended to `0006_job_queue`."""
    migrations = load_migrations(resources.files("storage") / "migrations" / "postgres")
    return tuple(
        dataclasses.replace(m, statements=(*m.statements, pgqueue.queue_schema()))
        if m.name == "job_queue"
        else m
        for m in migrations
    )


# The level is the highest version in this table (SQLite keeps it in PRAGMA user_version); a row
# per migration also says when each was applied.
_CREATE_SCHEMA_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL,"
    " applied_at DOUBLE PRECISION NOT NULL)"
)


async def schema_version(conn: Connection) -> int:
    """Return the schema version recorded in the database (0 for an empty one)."""
    cursor = await conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL")
    exists = await cursor.fetchone()
    if exists is None or not exists[0]:
        return 0
    cursor = await conn.execute("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else 0


async def migrate(
    conn: Connection, migrations: Sequence[Migration], *, clock: Clock = time.time
) -> int:
    """Apply the migrations the database lacks, each atomically; return the new version.

    `conn` must be in autocommit mode: each migration is its own transaction.
    """
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
        async with conn.transaction():
            # Two processes starting together: the second waits here, then finds the version
            # already applied. DDL is transactional, so a failed migration leaves no trace.
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            await conn.execute(_CREATE_SCHEMA_TABLE)
            current = await schema_version(conn)
            if migration.version <= current:
                continue
            for statement in migration.statements:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, applied_at) VALUES (%s, %s, %s)",
                (migration.version, migration.name, clock()),
            )
        current = migration.version
        log.info("applied migration %04d_%s", migration.version, migration.name)
    return current


def _usage_filter(
    since: float, user_id: int | None, guild_id: int | None, until: float | None = None
) -> tuple[str, list[object]]:
    """Build a WHERE clause for the usage ledger from fixed fragments and `%s` parameters."""
    # Optional filters are left out rather than written as `(%s IS NULL OR col = %s)`, which
    # would hide the (user_id, at) and (guild_id, at) indexes from the planner.
    clauses = ["at >= %s"]
    params: list[object] = [since]
    if until is not None:
        clauses.append("at < %s")
        params.append(until)
    if user_id is not None:
        clauses.append("user_id = %s")
        params.append(user_id)
    if guild_id is not None:
        clauses.append("guild_id = %s")
        params.append(guild_id)
    return " AND ".join(clauses), params


class PostgresStore:
    """The store on PostgreSQL, through a pool of psycopg connections in autocommit mode.

    A single write is one statement (committed on its own); several statements that must hold
    together run in an explicit transaction on one pooled connection.
    """

    def __init__(
        self,
        pool: Pool,
        *,
        clock: Clock = time.time,
        migrations: Sequence[Migration] | None = None,
        close_pool: bool = False,
    ) -> None:
        """Wrap an open pool whose connections are in autocommit mode; `close_pool` hands its
        ownership to the store."""
        self._pool = pool
        self._clock = clock
        self._migrations = tuple(migrations) if migrations is not None else packaged_migrations()
        self._close_pool = close_pool
        self._ready = False
        # Admissions of one user or server in this process wait for each other here, before
        # taking a connection (see `_admission_locks`).
        self._admitting = KeyedLocks()
        # Connections of their own for admissions (set by `open`): one server's admissions run
        # one at a time, and each must not queue for a connection behind every other query.
        self._admission_pool: Pool | None = None
        # The shared job queue: every queued job has a ticket there, deferred in the
        # transaction that queues it (see storage/pgqueue.py).
        conninfo = pool.conninfo
        if not isinstance(conninfo, str):
            raise TypeError("the pool must be made from a connection string")
        self.tickets = pgqueue.TicketQueue(conninfo)

    @classmethod
    async def open(
        cls,
        database_url: str,
        *,
        clock: Clock = time.time,
        min_connections: int = 1,
        max_connections: int = 10,
        connect_timeout: float = 10.0,
    ) -> PostgresStore:
        """Connect to the database a postgresql:// URL names, migrate it, and return the store.

        Raises StorageError when the server cannot be reached or refuses the credentials; the
        message names the URL with its password hidden.
        """
        conninfo = postgres_conninfo(database_url)
        where = redact_url(conninfo)
        # One connection first: a wrong password or host fails at once with libpq's own words
        # (the pool would retry in the background until its timeout).
        try:
            probe = await psycopg.AsyncConnection.connect(
                conninfo, autocommit=True, connect_timeout=max(1, round(connect_timeout))
            )
        except psycopg.Error as exc:
            # Raised without the original: libpq may quote pieces of a malformed URL.
            raise StorageError(
                f"cannot connect to {where}: {scrub(str(exc), database_url)}"
            ) from None
        await probe.close()
        pool: Pool = AsyncConnectionPool(
            conninfo,
            min_size=min_connections,
            max_size=max_connections,
            kwargs={"autocommit": True},
            open=False,
            name="imagine-store",
            timeout=30.0,
        )
        store: PostgresStore | None = None
        try:
            await pool.open(wait=True, timeout=connect_timeout)
            store = cls(pool, clock=clock, close_pool=True)
            store._admission_pool = AsyncConnectionPool(
                conninfo,
                min_size=1,
                max_size=2,
                kwargs={"autocommit": True},
                open=False,
                name="imagine-admissions",
                timeout=30.0,
            )
            await store._admission_pool.open(wait=True, timeout=connect_timeout)
            await store.setup()
        except BaseException as exc:
            if store is not None:
                await store.close()
            await pool.close()
            if isinstance(exc, psycopg.Error | TimeoutError):
                raise StorageError(f"cannot use {where}: {scrub(str(exc), database_url)}") from None
            raise
        return store

    # Lifecycle

    async def setup(self) -> None:
        """Apply pending migrations; safe to call again and from several processes at once."""
        async with self._pool.connection() as conn:
            version = await migrate(conn, self._migrations, clock=self._clock)
        self._ready = True
        log.debug("PostgreSQL store ready at schema version %d", version)

    async def close(self) -> None:
        """Close the pool if the store owns it (it does when made by `open`)."""
        if self._admission_pool is not None:
            await self._admission_pool.close()
            self._admission_pool = None
        if self._close_pool:
            await self._pool.close()

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

    async def _rows(self, sql: str, params: Sequence[object] = ()) -> list[TupleRow]:
        """Run a read and return all its rows."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

    async def _row(self, sql: str, params: Sequence[object] = ()) -> TupleRow | None:
        """Run a read and return its first row, or None."""
        rows = await self._rows(sql, params)
        return rows[0] if rows else None

    async def _write(self, sql: str, params: Sequence[object]) -> int:
        """Run one write statement (committed on its own); return how many rows it changed."""
        async with self._pool.connection() as conn:
            cursor = await conn.execute(sql, params)
            return cursor.rowcount

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        """Run several statements atomically on one connection (rolled back on any error)."""
        async with self._pool.connection() as conn, conn.transaction():
            yield conn

    @staticmethod
    async def _fetch(
        conn: Connection, sql: str, params: Sequence[object] | Mapping[str, object]
    ) -> list[TupleRow]:
        cursor = await conn.execute(sql, params)
        return await cursor.fetchall()

    @staticmethod
    async def _lock(conn: Connection, keys: Sequence[int]) -> None:
        """Take transaction-scoped advisory locks, always in ascending order (no deadlocks)."""
        for key in sorted(set(keys)):
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (key,))

    # Conversations

    async def get_conversation(self, channel_id: int) -> Conversation | None:
        """Return the conversation of a thread or DM channel, or None."""
        row = await self._row(
            f"SELECT {CONVERSATION_COLUMNS} FROM conversations WHERE channel_id = %s",
            (channel_id,),
        )
        return conversation_from_row(row) if row is not None else None

    async def create_conversation(self, conversation: Conversation) -> None:
        """Insert a conversation, or replace it (keeping its original `created_at`)."""
        async with self._pool.connection() as conn:
            await self._upsert_conversation(conn, conversation)

    async def _upsert_conversation(self, conn: Connection, conversation: Conversation) -> None:
        await conn.execute(
            f"INSERT INTO conversations ({CONVERSATION_COLUMNS})"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
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
            " SET latest_response_id = %s, latest_message_id = %s, updated_at = %s"
            " WHERE channel_id = %s",
            (response_id, message_id, self._clock(), channel_id),
        )
        return changed > 0

    # Turns

    async def add_turn(self, turn: NewTurn) -> Turn:
        """Record a turn and return it with its id and creation time."""
        async with self._pool.connection() as conn:
            return await self._insert_turn(conn, turn)

    async def _insert_turn(
        self, conn: Connection, turn: NewTurn, job_id: int | None = None
    ) -> Turn:
        created_at = self._clock()
        rows = await self._fetch(
            conn,
            "INSERT INTO turns (channel_id, guild_id, user_id, message_id, response_id,"
            " parent_response_id, prompt, revised_prompt, options, engine, model, usage,"
            " cost_usd, status, image_url, created_at, result, job_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
            " RETURNING id",
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
                float(turn.cost_usd),
                str(turn.status),
                turn.image_url,
                created_at,
                dump_json(turn.result),
                job_id,
            ),
        )
        return Turn(
            id=int(rows[0][0]),
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
        row = await self._row(f"SELECT {TURN_COLUMNS} FROM turns WHERE id = %s", (turn_id,))
        return turn_from_row(row) if row is not None else None

    async def get_turn_by_message(self, message_id: int) -> Turn | None:
        """Return the newest turn posted as this Discord message, or None."""
        row = await self._row(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE message_id = %s ORDER BY id DESC LIMIT 1",
            (message_id,),
        )
        return turn_from_row(row) if row is not None else None

    async def get_turn_by_response(self, response_id: str) -> Turn | None:
        """Return the newest turn produced by this OpenAI response, or None."""
        row = await self._row(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE response_id = %s ORDER BY id DESC LIMIT 1",
            (response_id,),
        )
        return turn_from_row(row) if row is not None else None

    async def latest_turn(self, channel_id: int, *, with_image: bool = True) -> Turn | None:
        """Return the channel's newest completed turn (with an image unless told otherwise).

        A turn has an image once it was posted: it has a message id or an image URL.
        """
        posted = " AND (message_id IS NOT NULL OR image_url IS NOT NULL)" if with_image else ""
        row = await self._row(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE channel_id = %s AND status = %s{posted}"
            " ORDER BY id DESC LIMIT 1",
            (channel_id, TurnStatus.COMPLETED.value),
        )
        return turn_from_row(row) if row is not None else None

    async def set_turn_message(self, turn_id: int, message_id: int, image_url: str | None) -> bool:
        """Record the message (and attachment URL) a turn was posted as; False if no such turn."""
        changed = await self._write(
            "UPDATE turns SET message_id = %s, image_url = %s WHERE id = %s",
            (message_id, image_url, turn_id),
        )
        return changed > 0

    async def list_turns(self, channel_id: int, limit: int = 50) -> list[Turn]:
        """Return a channel's most recent turns, newest first."""
        rows = await self._rows(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE channel_id = %s ORDER BY id DESC LIMIT %s",
            (channel_id, limit),
        )
        return [turn_from_row(row) for row in rows]

    async def delete_turn_rolling_back(self, turn_id: int) -> bool:
        """Delete a turn and its image; a conversation whose head it was goes back to its parent.

        The parent is the turn's `parent_response_id` (and the message that showed it, if that
        turn is still known), or nothing for a first turn: the next message starts afresh.
        """
        async with self._transaction() as conn:
            rows = await self._fetch(
                conn,
                "DELETE FROM turns WHERE id = %s"
                " RETURNING channel_id, response_id, parent_response_id",
                (turn_id,),
            )
            if not rows:
                return False
            channel_id, response_id, parent_response_id = rows[0]
            await conn.execute("DELETE FROM turn_images WHERE turn_id = %s", (turn_id,))
            if response_id is not None:
                parent_message = await self._fetch(
                    conn,
                    "SELECT message_id FROM turns WHERE response_id = %s AND channel_id = %s"
                    " ORDER BY id DESC LIMIT 1",
                    (parent_response_id, channel_id),
                )
                await conn.execute(
                    "UPDATE conversations SET latest_response_id = %s, latest_message_id = %s,"
                    " updated_at = %s WHERE channel_id = %s AND latest_response_id = %s",
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

    async def _insert_job(self, conn: Connection, job: NewJob) -> Job:
        cursor = await self._send_insert_job(conn, job)
        return job_from_row((await cursor.fetchall())[0])

    async def _send_insert_job(
        self, conn: Connection, job: NewJob
    ) -> psycopg.AsyncCursor[TupleRow]:
        """Send the INSERT of a queued job (RETURNING it); in pipeline mode, without waiting."""
        now = self._clock()
        return await conn.execute(
            "INSERT INTO jobs (kind, status, guild_id, channel_id, user_id, payload, locale,"
            " progress_message_id, attempts, created_at, queued_at, reserved_usd,"
            " reserved_images, worker_id)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 0, %s, %s, %s, %s, %s)"
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
                float(job.reserved_usd),
                job.reserved_images,
                job.worker_id,
            ),
        )

    async def _occupancy(
        self,
        conn: Connection,
        *,
        user_id: int,
        guild_id: int | None,
        user_window: Window,
        guild_window: Window,
    ) -> Occupancy:
        """Spent usage in the windows plus the reservations of active jobs, read in one
        statement (inside the admission transaction, after its locks)."""
        rows = await self._fetch(
            conn,
            "SELECT"
            " (SELECT COUNT(*) FROM jobs WHERE user_id = %(user)s AND status = ANY(%(active)s)),"
            " (SELECT COALESCE(SUM(images), 0) FROM usage_ledger"
            "   WHERE user_id = %(user)s AND at >= %(user_since)s AND at < %(user_until)s)"
            " + (SELECT COALESCE(SUM(reserved_images), 0) FROM jobs"
            "   WHERE user_id = %(user)s AND status = ANY(%(active)s)),"
            " (SELECT COALESCE(SUM(cost_usd), 0) FROM usage_ledger"
            "   WHERE user_id = %(user)s AND at >= %(user_since)s AND at < %(user_until)s)"
            " + (SELECT COALESCE(SUM(reserved_usd), 0) FROM jobs"
            "   WHERE user_id = %(user)s AND status = ANY(%(active)s)),"
            " (SELECT COALESCE(SUM(images), 0) FROM usage_ledger"
            "   WHERE guild_id = %(guild)s AND at >= %(guild_since)s AND at < %(guild_until)s)"
            " + (SELECT COALESCE(SUM(reserved_images), 0) FROM jobs"
            "   WHERE guild_id = %(guild)s AND status = ANY(%(active)s)),"
            " (SELECT COALESCE(SUM(cost_usd), 0) FROM usage_ledger"
            "   WHERE guild_id = %(guild)s AND at >= %(guild_since)s AND at < %(guild_until)s)"
            " + (SELECT COALESCE(SUM(reserved_usd), 0) FROM jobs"
            "   WHERE guild_id = %(guild)s AND status = ANY(%(active)s))",
            {
                "user": user_id,
                # A DM (no server) matches no row: `guild_id = NULL` is never true.
                "guild": guild_id,
                "active": list(ACTIVE),
                "user_since": user_window.since,
                "user_until": user_window.until,
                "guild_since": guild_window.since,
                "guild_until": guild_window.until,
            },
        )
        user_pending, user_images, user_usd, guild_images, guild_usd = rows[0]
        return Occupancy(
            user_pending=int(user_pending),
            user_images=int(user_images),
            user_usd=float(user_usd),
            guild_images=int(guild_images),
            guild_usd=float(guild_usd),
        )

    async def _pass_gate(
        self,
        conn: Connection,
        gate: AdmissionGate,
        job: NewJob | Job,
        user_window: Window,
        guild_window: Window,
    ) -> None:
        """Let `gate` refuse the job (raising) on the occupancy of its member and server."""
        gate(
            await self._occupancy(
                conn,
                user_id=job.user_id,
                guild_id=job.guild_id,
                user_window=user_window,
                guild_window=guild_window,
            )
        )

    @staticmethod
    def _admission_keys(user_id: int, guild_id: int | None) -> list[int]:
        keys = [lock_key("user", user_id)]
        if guild_id is not None:
            keys.append(lock_key("guild", guild_id))
        return keys

    async def _admission_locks(self, conn: Connection, user_id: int, guild_id: int | None) -> None:
        """Serialize admissions that share a user or a server, across every process.

        Held until the transaction ends, so the next admission reads an occupancy that already
        counts this one's reservation.
        """
        await self._lock(conn, self._admission_keys(user_id, guild_id))

    async def admit_job(
        self,
        job: NewJob,
        *,
        user_window: Window,
        guild_window: Window,
        gate: AdmissionGate,
    ) -> Job:
        """Add a queued job with its reservation, atomically with the limit check."""
        # A burst of commands in one server would otherwise hold every pooled connection
        # waiting for the server's lock, and stall every other query of this process.
        # Admissions of one server run one after the other, fleet-wide: in pipeline mode, the
        # BEGIN and the locks travel with the occupancy read, and the INSERT with the COMMIT,
        # so the section under the lock is two round trips (three with the ticket).
        keys = self._admission_keys(job.user_id, job.guild_id)
        async with (
            self._admitting.hold(keys),
            (self._admission_pool or self._pool).connection() as conn,
            conn.pipeline(),
        ):
            async with conn.transaction():
                await self._admission_locks(conn, job.user_id, job.guild_id)
                await self._pass_gate(conn, gate, job, user_window, guild_window)
                inserted = await self._send_insert_job(conn, job)
                if job.dispatch:
                    admitted = job_from_row((await inserted.fetchall())[0])
                    await self.tickets.defer(conn, admitted.id, admitted.channel_id)
                    return admitted
            return job_from_row((await inserted.fetchall())[0])

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
        cleared; attempts kept and counted on), so a second click on Retry, on this process or
        another, finds it already queued and returns None instead of running the request twice.
        """
        retryable = sorted(status.value for status in RETRYABLE_JOB_STATUSES)
        async with self._transaction() as conn:
            owners = await self._fetch(
                conn, "SELECT user_id, guild_id FROM jobs WHERE id = %s", (job_id,)
            )
            if not owners:
                return None
            await self._admission_locks(conn, int(owners[0][0]), owners[0][1])
            rows = await self._fetch(
                conn,
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s AND status = ANY(%s) FOR UPDATE",
                (job_id, retryable),
            )
            if not rows:
                return None
            job = job_from_row(rows[0])
            await self._pass_gate(conn, gate, job, user_window, guild_window)
            rows = await self._fetch(
                conn,
                "UPDATE jobs SET status = %s, queued_at = %s, error = NULL, started_at = NULL,"
                " finished_at = NULL, reserved_usd = %s, reserved_images = %s,"
                f" response_id = NULL, worker_id = %s WHERE id = %s RETURNING {JOB_COLUMNS}",
                (
                    JobStatus.QUEUED.value,
                    self._clock(),
                    float(reserved_usd),
                    reserved_images,
                    worker_id,
                    job_id,
                ),
            )
            again = job_from_row(rows[0])
            await self.tickets.defer(conn, again.id, again.channel_id)
            return again

    async def get_job(self, job_id: int) -> Job | None:
        """Return a job by id, or None."""
        row = await self._row(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s", (job_id,))
        return job_from_row(row) if row is not None else None

    async def start_job(self, job_id: int, worker_id: str | None = None) -> Job | None:
        """Move a queued job to running, count the attempt, record the worker that runs it and
        the head it starts from; the running job, or None if it was not queued."""
        # One conditional UPDATE: of two workers racing for the same job (in any process), the
        # second waits for the first's row lock, then finds the status changed.
        rows = await self._rows(
            "UPDATE jobs SET status = %s, attempts = attempts + 1, started_at = %s,"
            " finished_at = NULL, worker_id = %s, base_response_id ="
            " (SELECT latest_response_id FROM conversations WHERE channel_id = jobs.channel_id)"
            f" WHERE id = %s AND status = %s RETURNING {JOB_COLUMNS}",
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
                "UPDATE jobs SET channel_id = %s WHERE id = %s AND status = %s",
                (channel_id, job_id, JobStatus.QUEUED.value),
            )
            if cursor.rowcount == 0:
                return False
            if conversation is not None:
                await self._upsert_conversation(conn, conversation)
            await self.tickets.defer(conn, job_id, channel_id)
            return True

    async def dispatch_job(self, job_id: int) -> bool:
        """Hand a queued job to the shared queue (a ticket); False if it is not queued.

        A job may end up with two tickets (its admitting process died after deferring one):
        the second finds the job no longer queued and does nothing.
        """
        async with self._transaction() as conn:
            rows = await self._fetch(
                conn,
                "SELECT channel_id FROM jobs WHERE id = %s AND status = %s FOR UPDATE",
                (job_id, JobStatus.QUEUED.value),
            )
            if not rows:
                return False
            await self.tickets.defer(conn, job_id, int(rows[0][0]))
            return True

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
                "UPDATE jobs SET status = %s, error = %s, finished_at = %s, reserved_usd = 0,"
                " reserved_images = 0 WHERE id = %s AND status = ANY(%s)",
                (
                    str(status),
                    error,
                    self._clock(),
                    job_id,
                    [JobStatus.QUEUED.value] if queued_only else list(ACTIVE),
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
            "UPDATE jobs SET response_id = %s WHERE id = %s AND status = %s",
            (response_id, job_id, JobStatus.RUNNING.value),
        )
        return changed > 0

    async def add_job_response(self, job_id: int, response_id: str) -> bool:
        """Remember one more OpenAI response a running job streams; False if it is not running."""
        changed = await self._write(
            "UPDATE jobs SET response_id = CASE WHEN response_id IS NULL THEN %s"
            " ELSE response_id || ' ' || %s END WHERE id = %s AND status = %s",
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
        return (await self._save(job_id, [item], (), advance))[0]

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
        return await self._save(job_id, images, billed, advance)

    async def _save(
        self,
        job_id: int | None,
        images: Sequence[NewImage],
        billed: Sequence[NewUsageEntry],
        advance: bool,
    ) -> list[Turn]:
        """The head moves (to the first image) only if it is still the one the job started
        from (compare-and-set); otherwise the turns are a branch and say so in
        `result["branched"]`."""
        async with self._transaction() as conn:
            if job_id is not None:
                # First, so a job another process already ended saves nothing at all.
                locked = await self._fetch(
                    conn,
                    "SELECT progress_message_id, base_response_id FROM jobs"
                    " WHERE id = %s AND status = %s FOR UPDATE",
                    (job_id, JobStatus.RUNNING.value),
                )
                if not locked:
                    raise StorageError(f"job {job_id} is not running; its result was not saved")
            branched = False
            lead = images[0].turn
            if advance and lead.response_id is not None:
                # Under READ COMMITTED a conditional UPDATE re-checks its condition on the row
                # as another transaction left it: of two racing saves from the same head,
                # exactly one moves it.
                cas = "" if job_id is None else " AND latest_response_id IS NOT DISTINCT FROM %s"
                params: list[object] = [lead.response_id, self._clock(), lead.channel_id]
                if job_id is not None:
                    params.append(locked[0][1])
                moved = await conn.execute(
                    "UPDATE conversations SET latest_response_id = %s, latest_message_id = NULL,"
                    " updated_at = %s WHERE channel_id = %s" + cas,
                    params,
                )
                branched = moved.rowcount == 0 and bool(
                    await self._fetch(
                        conn,
                        "SELECT 1 FROM conversations WHERE channel_id = %s",
                        (lead.channel_id,),
                    )
                )
            saved: list[Turn] = []
            for item in images:
                new = item.turn
                if branched:
                    new = dataclasses.replace(new, result={**new.result, "branched": True})
                turn = await self._insert_turn(conn, new, job_id)
                await conn.execute(
                    "INSERT INTO turn_images (turn_id, format, data) VALUES (%s, %s, %s)",
                    (turn.id, item.image_format, item.image),
                )
                await self._insert_usage(conn, item.usage)
                saved.append(turn)
            for entry in billed:
                await self._insert_usage(conn, entry)
            first = saved[0]
            if job_id is not None:
                # The job's progress message becomes the final image (the first, for several):
                # a reply to it continues from that turn even before the posting is recorded.
                await conn.execute(
                    "UPDATE turns SET message_id = %s WHERE id = %s AND message_id IS NULL",
                    (locked[0][0], first.id),
                )
                await conn.execute(
                    "UPDATE jobs SET status = %s, turn_id = %s, reserved_usd = 0,"
                    " reserved_images = 0 WHERE id = %s",
                    (JobStatus.SAVED.value, first.id, job_id),
                )
            return saved

    async def job_turns(self, job_id: int) -> list[Turn]:
        """Return the turns a job saved, in the order it saved them."""
        rows = await self._rows(
            f"SELECT {TURN_COLUMNS} FROM turns WHERE job_id = %s ORDER BY id", (job_id,)
        )
        return [turn_from_row(row) for row in rows]

    async def mark_posted(
        self, job_id: int, turn_id: int, message_id: int | None, image_url: str | None
    ) -> bool:
        """Record where a saved job's image was posted and end the job (saved -> done)."""
        async with self._transaction() as conn:
            await conn.execute(
                "UPDATE turns SET message_id = %s, image_url = %s WHERE id = %s",
                (message_id, image_url, turn_id),
            )
            # The head's message follows only if the head is still this turn's response.
            await conn.execute(
                "UPDATE conversations SET latest_message_id = %s FROM turns"
                " WHERE turns.id = %s AND conversations.channel_id = turns.channel_id"
                " AND conversations.latest_response_id = turns.response_id",
                (message_id, turn_id),
            )
            cursor = await conn.execute(
                "UPDATE jobs SET status = %s, finished_at = %s WHERE id = %s AND status = %s",
                (JobStatus.DONE.value, self._clock(), job_id, JobStatus.SAVED.value),
            )
            return cursor.rowcount > 0

    async def saved_jobs(self) -> list[Job]:
        """Return the jobs whose image is saved but not yet posted, oldest first."""
        rows = await self._rows(
            f"SELECT {JOB_COLUMNS} FROM jobs WHERE status = %s ORDER BY id",
            (JobStatus.SAVED.value,),
        )
        return [job_from_row(row) for row in rows]

    async def get_turn_image(self, turn_id: int) -> tuple[bytes, str] | None:
        """Return the saved image (bytes, format) of a turn, or None."""
        row = await self._row("SELECT data, format FROM turn_images WHERE turn_id = %s", (turn_id,))
        return (bytes(row[0]), str(row[1])) if row is not None else None

    async def set_job_progress_message(self, job_id: int, message_id: int) -> bool:
        """Remember the message that shows a job's progress; False if no such job."""
        changed = await self._write(
            "UPDATE jobs SET progress_message_id = %s WHERE id = %s", (message_id, job_id)
        )
        return changed > 0

    # Workers

    async def register_worker(self, worker_id: str) -> None:
        """Record that a worker starts now (a restart under the same id starts it again)."""
        now = self._clock()
        await self._write(
            "INSERT INTO workers (id, started_at, seen_at) VALUES (%s, %s, %s)"
            " ON CONFLICT (id) DO UPDATE SET started_at = excluded.started_at,"
            " seen_at = excluded.seen_at",
            (worker_id, now, now),
        )

    async def heartbeat_worker(self, worker_id: str) -> bool:
        """Record that a worker is alive now; False if it is not registered (any more)."""
        changed = await self._write(
            "UPDATE workers SET seen_at = %s WHERE id = %s", (self._clock(), worker_id)
        )
        return changed > 0

    async def adopt_orphans(
        self, worker_id: str, *, stale_after: float, own: bool = False
    ) -> Orphans:
        """Take over the unfinished jobs of workers not seen for `stale_after` seconds.

        Two processes adopting at once: a dead worker's row is locked by the first (the second
        skips it), and each job row by the first UPDATE that reaches it (the second then finds
        it owned by a live worker and leaves it).
        """
        unfinished = [JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.SAVED.value]
        async with self._transaction() as conn:
            dead = [
                str(row[0])
                for row in await self._fetch(
                    conn,
                    "SELECT id FROM workers WHERE seen_at < %s AND id <> %s ORDER BY id"
                    " FOR UPDATE SKIP LOCKED",
                    (self._clock() - stale_after, worker_id),
                )
            ]
            owners = [*dead, worker_id] if own else dead
            adopted = [
                int(row[0])
                for row in await self._fetch(
                    conn,
                    "UPDATE jobs SET worker_id = %s WHERE status = ANY(%s) AND ("
                    " worker_id = ANY(%s) OR worker_id IS NULL"
                    " OR NOT EXISTS (SELECT 1 FROM workers w WHERE w.id = jobs.worker_id))"
                    " RETURNING id",
                    (worker_id, unfinished, owners),
                )
            ]
            rows = await self._fetch(
                conn,
                f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ANY(%s) ORDER BY queued_at, id",
                (adopted,),
            )
            if dead:
                await conn.execute("DELETE FROM workers WHERE id = ANY(%s)", (dead,))
        return orphans_from(dead, [job_from_row(row) for row in rows])

    async def count_active_jobs(self, user_id: int | None = None) -> int:
        """Count queued and running jobs, of one user or of everyone."""
        params: list[object] = [list(ACTIVE)]
        sql = "SELECT COUNT(*) FROM jobs WHERE status = ANY(%s)"
        if user_id is not None:
            sql += " AND user_id = %s"
            params.append(user_id)
        row = await self._row(sql, params)
        return int(row[0]) if row is not None else 0

    # Uploaded-file cache

    async def get_uploaded_file(self, sha256: str) -> str | None:
        """Return the Files API id cached for this content hash, or None."""
        row = await self._row("SELECT file_id FROM uploaded_files WHERE sha256 = %s", (sha256,))
        return str(row[0]) if row is not None else None

    async def put_uploaded_file(self, sha256: str, file_id: str, bytes: int) -> None:
        """Cache the Files API id of an upload under its content hash (replacing an old one)."""
        await self._write(
            "INSERT INTO uploaded_files (sha256, file_id, size_bytes, created_at)"
            " VALUES (%s, %s, %s, %s) ON CONFLICT (sha256) DO UPDATE SET"
            " file_id = excluded.file_id, size_bytes = excluded.size_bytes,"
            " created_at = excluded.created_at",
            (sha256, file_id, bytes, self._clock()),
        )

    # Usage ledger

    async def record_usage(self, entry: NewUsageEntry) -> None:
        """Append what one request cost to the ledger."""
        async with self._pool.connection() as conn:
            await self._insert_usage(conn, entry)

    async def _insert_usage(self, conn: Connection, entry: NewUsageEntry) -> None:
        at = self._clock()
        await conn.execute(
            "INSERT INTO usage_ledger (at, day, guild_id, user_id, channel_id, response_id,"
            " model, engine, images, input_tokens, output_tokens, image_input_tokens,"
            " image_output_tokens, cost_usd)"
            " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
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
                float(entry.cost_usd),
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
            " COALESCE(SUM(output_tokens), 0), COALESCE(SUM(cost_usd), 0),"
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
        return [
            DayUsage(day=str(row[0]), images=int(row[1]), cost_usd=float(row[2])) for row in rows
        ]

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
            UserUsage(user_id=int(row[0]), images=int(row[1]), cost_usd=float(row[2]))
            for row in rows
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
            " ORDER BY at DESC, id DESC LIMIT %s",
            [*params, limit],
        )
        return [usage_entry_from_row(row) for row in rows]

    # Settings

    async def get_user_settings(self, user_id: int) -> dict[str, object]:
        """Return a user's saved defaults ({} when none)."""
        row = await self._row("SELECT settings FROM user_settings WHERE user_id = %s", (user_id,))
        return load_json(row[0]) if row is not None else {}

    async def update_user_settings(
        self, user_id: int, change: Callable[[dict[str, object]], dict[str, object]]
    ) -> dict[str, object]:
        """Replace a user's saved defaults by `change(current)`, atomically."""
        return await self._update_json("user_settings", "user_id", "settings", user_id, change)

    async def get_guild_config(self, guild_id: int) -> dict[str, object]:
        """Return a server's configuration ({} when none)."""
        row = await self._row("SELECT config FROM guild_config WHERE guild_id = %s", (guild_id,))
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
        # The row is created first if missing, so that FOR UPDATE always has a row to lock:
        # a second updater waits for this transaction and then reads its result.
        async with self._transaction() as conn:
            await conn.execute(
                f"INSERT INTO {table} ({key}, {column}, updated_at) VALUES (%s, %s, %s)"
                f" ON CONFLICT ({key}) DO NOTHING",
                (key_value, dump_json({}), self._clock()),
            )
            rows = await self._fetch(
                conn, f"SELECT {column} FROM {table} WHERE {key} = %s FOR UPDATE", (key_value,)
            )
            updated = change(load_json(rows[0][0]))
            await conn.execute(
                f"UPDATE {table} SET {column} = %s, updated_at = %s WHERE {key} = %s",
                (dump_json(updated), self._clock(), key_value),
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
            ("DELETE FROM user_settings WHERE user_id = %s", (user_id,)),
            (
                "DELETE FROM turn_images WHERE turn_id IN"
                " (SELECT id FROM turns WHERE user_id = %s)",
                (user_id,),
            ),
            ("DELETE FROM turns WHERE user_id = %s", (user_id,)),
            ("DELETE FROM jobs WHERE user_id = %s AND status = ANY(%s)", (user_id, finished)),
            ("DELETE FROM conversations WHERE owner_id = %s", (user_id,)),
            (
                "UPDATE usage_ledger SET user_id = %s, channel_id = NULL, response_id = NULL"
                " WHERE user_id = %s",
                (ANONYMOUS_USER_ID, user_id),
            ),
        ]
        affected = 0
        async with self._transaction() as conn:
            for sql, params in statements:
                cursor = await conn.execute(sql, params)
                affected += cursor.rowcount
        return affected
