"""The shared job queue on PostgreSQL, on procrastinate: the only module that imports it.

The ledger (`jobs`) stays the source of truth for state and money. A procrastinate job is a
*ticket* that says "run ledger job N"; it is deferred in the very transaction that admits (or
places, or retries) the ledger job, so a ledger job is never queued without a ticket, and a
ticket never outlives a refused admission. Tickets carry a lock per channel (thread or DM):
procrastinate runs one ticket per lock at a time, oldest first, in whichever process fetches
it, so turns in one thread run in order across processes. A ticket whose ledger job is no
longer queued (cancelled meanwhile, already run, a duplicate) does nothing: `Store.start_job`'s
conditional update decides which worker runs a job, never the ticket.

Fleet-wide concurrency: a running job holds one of `global_cap` (and one of `user_cap` for its
user) session advisory locks on a connection of its own. The server releases them when that
connection ends, so a crashed process never keeps a slot.

Stalled workers: procrastinate's workers beat (`procrastinate_workers`) with the bot's own
heartbeat interval; a ticket held by a worker silent for the bot's stale limit goes back to
`todo` (`requeue_stalled`), where it runs again and does nothing unless its ledger job is still
queued. Ledger jobs of dead processes are settled by the bot's `workers` table as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources

import procrastinate
import psycopg
from procrastinate import jobs as procrastinate_jobs
from procrastinate.job_context import AbortReason, JobContext
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool

from storage._keys import lock_key

log = logging.getLogger(__name__)

# The procrastinate release whose schema migration 0006 applies; a new release brings its own
# numbered migrations (procrastinate/sql/migrations), to add as ours.
PROCRASTINATE_VERSION = "3.10.0"
QUEUE = "imagine"
TASK = "imagine.run_job"

Connection = psycopg.AsyncConnection[TupleRow]
# Runs one ledger job; the callable says whether its requester cancelled it (from any process).
TicketRunner = Callable[[int, Callable[[], bool]], Awaitable[None]]


def queue_schema() -> str:
    """procrastinate's schema (tables, types, functions) for a database that has none yet."""
    return (resources.files("procrastinate.sql") / "schema.sql").read_text(encoding="utf-8")


def channel_lock(channel_id: int) -> str:
    """The procrastinate lock of a channel's tickets: one running turn per thread or DM."""
    return f"channel:{channel_id}"


class TicketQueue:
    """The procrastinate app of one database: defers tickets, runs a worker, aborts, slots."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=conninfo,
                min_size=1,
                max_size=4,
                name="imagine-queue",
            )
        )
        self._open = False
        self._slots: AsyncConnectionPool[Connection] | None = None

    async def defer(self, conn: Connection, job_id: int, channel_id: int) -> None:
        """Defer the ticket of ledger job `job_id` on `conn`, inside the caller's transaction."""
        deferrer = self.app.configure_task(
            TASK, queue=QUEUE, lock=channel_lock(channel_id), connection=conn
        )
        await deferrer.defer_async(job_id=job_id)

    async def open(self, *, slots: int) -> None:
        """Open the connections the worker, aborts and `slots` running jobs need."""
        if self._open:
            return
        await self.app.open_async()
        self._slots = AsyncConnectionPool(
            self._conninfo,
            min_size=1,
            max_size=max(1, slots),
            kwargs={"autocommit": True},
            open=False,
            name="imagine-slots",
            # Never waited for: this process runs at most `slots` tickets at once.
            timeout=60.0,
        )
        await self._slots.open(wait=True)
        self._open = True

    async def close(self) -> None:
        """Close what `open` opened."""
        if not self._open:
            return
        self._open = False
        if self._slots is not None:
            await self._slots.close()
            self._slots = None
        await self.app.close_async()

    async def run_worker(
        self,
        runner: TicketRunner,
        *,
        name: str,
        concurrency: int,
        heartbeat_seconds: float,
        stale_after_seconds: float,
        graceful_seconds: float,
    ) -> None:
        """Run tickets with `runner` until cancelled; running ones get `graceful_seconds`."""

        async def run_job(context: JobContext, job_id: int) -> None:
            def cancelled_by_user() -> bool:
                return context.abort_reason() is AbortReason.USER_REQUEST

            await runner(job_id, cancelled_by_user)

        self.app.tasks.pop(TASK, None)
        self.app.task(name=TASK, queue=QUEUE, pass_context=True)(run_job)
        await self.app.run_worker_async(
            queues=[QUEUE],
            name=name,
            concurrency=concurrency,
            install_signal_handlers=False,
            delete_jobs=procrastinate_jobs.DeleteJobCondition.ALWAYS,
            update_heartbeat_interval=heartbeat_seconds,
            stalled_worker_timeout=stale_after_seconds,
            shutdown_graceful_timeout=graceful_seconds,
            # Notifications bring new tickets and abort requests at once; polling is the net.
            listen_notify=True,
            fetch_job_polling_interval=2.0,
            abort_job_polling_interval=2.0,
        )

    async def _tickets_of(self, job_id: int, status: str) -> list[int]:
        async with self.app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            cursor = await conn.execute(
                "SELECT id FROM procrastinate_jobs WHERE task_name = %s AND status = %s"
                " AND (args->>'job_id')::bigint = %s",
                (TASK, status, job_id),
            )
            return [int(row[0]) for row in await cursor.fetchall()]

    async def abort(self, job_id: int) -> bool:
        """Ask the worker running ledger job `job_id` (in any process) to cancel it."""
        aborted = False
        for ticket in await self._tickets_of(job_id, "doing"):
            aborted |= await self.app.job_manager.cancel_job_by_id_async(ticket, abort=True)
        return aborted

    async def forget(self, job_ids: Sequence[int]) -> int:
        """Drop the running tickets of ledger jobs this process's previous run held (it is gone,
        and their ledger jobs are settled), so their threads' next tickets may run at once."""
        dropped = 0
        for job_id in job_ids:
            for ticket in await self._tickets_of(job_id, "doing"):
                with contextlib.suppress(procrastinate.exceptions.ConnectorException):
                    await self.app.job_manager.finish_job_by_id_async(
                        ticket, procrastinate_jobs.Status.FAILED, delete_job=True
                    )
                    dropped += 1
        return dropped

    async def requeue_stalled(self, stale_after_seconds: float) -> int:
        """Put back to `todo` the tickets of workers silent for `stale_after_seconds`."""
        stalled = await self.app.job_manager.get_stalled_jobs(
            queue=QUEUE, seconds_since_heartbeat=stale_after_seconds
        )
        now = datetime.datetime.now(datetime.UTC)
        count = 0
        for ticket in stalled:
            assert ticket.id is not None
            with contextlib.suppress(procrastinate.exceptions.ConnectorException):
                await self.app.job_manager.retry_job_by_id_async(ticket.id, retry_at=now)
                count += 1
        await self.app.job_manager.prune_stalled_workers(stale_after_seconds)
        return count + await self._reticket_lost(stale_after_seconds)

    async def _reticket_lost(self, stale_after_seconds: float) -> int:
        """Give a ticket to every ledger job queued for `stale_after_seconds` without a live one
        (its ticket was dropped while its process stopped, say): a queued job always runs."""
        async with self.app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            async with conn.transaction():
                cursor = await conn.execute(
                    "SELECT j.id, j.channel_id FROM jobs j WHERE j.status = 'queued'"
                    " AND j.queued_at < %s AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs p"
                    " WHERE p.task_name = %s AND p.status IN ('todo', 'doing')"
                    " AND (p.args->>'job_id')::bigint = j.id)"
                    " ORDER BY j.queued_at, j.id FOR UPDATE OF j SKIP LOCKED",
                    (time.time() - stale_after_seconds, TASK),
                )
                lost = [(int(row[0]), int(row[1])) for row in await cursor.fetchall()]
                for job_id, channel_id in lost:
                    await self.defer(conn, job_id, channel_id)
        return len(lost)

    async def depth(self) -> int:
        """How many tickets wait to be fetched, in every process."""
        async with self.app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            cursor = await conn.execute(
                "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = %s AND status = 'todo'",
                (QUEUE,),
            )
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

    @contextlib.asynccontextmanager
    async def slot(self, user_id: int, *, global_cap: int, user_cap: int) -> AsyncIterator[None]:
        """Hold one of `global_cap` fleet-wide places and one of `user_cap` for the user.

        Waits (polling with backoff) until both are free. The places are session advisory locks
        on a connection held for the job: the server frees them if this process dies.
        """
        if self._slots is None:
            raise RuntimeError("the ticket queue is not open")
        fleet = [lock_key("fleet-slot", i) for i in range(max(1, global_cap))]
        mine = [lock_key(f"user-slot-{i}", user_id) for i in range(max(1, user_cap))]
        async with self._slots.connection() as conn:
            held: list[int] = []
            delay = 0.02
            try:
                while True:
                    first = await _take_one(conn, fleet)
                    if first is not None:
                        second = await _take_one(conn, mine)
                        if second is not None:
                            held = [first, second]
                            break
                        await conn.execute("SELECT pg_advisory_unlock(%s)", (first,))
                    # Another process may free a place at any moment: poll, with jitter so
                    # waiting workers do not ask in lockstep.
                    await asyncio.sleep(delay * (0.5 + random.random()))
                    delay = min(delay * 2, 0.2)
                yield
            finally:
                for key in held:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


async def _take_one(conn: Connection, keys: Sequence[int]) -> int | None:
    """Take the first free advisory lock of `keys` (session-level), in a random order, in one
    round trip; None if all are held. The scan stops at the first lock taken (LIMIT 1 pulls
    rows one at a time), so no other key is locked on the way."""
    order = random.sample(list(keys), len(keys))
    cursor = await conn.execute(
        "SELECT key FROM unnest(%s::bigint[]) WITH ORDINALITY AS k(key, n)"
        " WHERE pg_try_advisory_lock(key) LIMIT 1",
        (order,),
    )
    row = await cursor.fetchone()
    return int(row[0]) if row is not None else None
