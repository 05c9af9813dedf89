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
connection ends, so a crashed process never keeps a slot. A job waiting for a place is woken
when one is given back: at once in its own process, by a notification (`FREED_CHANNEL`) from
another; a long poll is only the net for a notification lost with a dropped connection.

Fetching: each process's worker claims several tickets in one statement (as many as it has
room for, up to `FETCH_BATCH`), and a ticket that ends wakes the worker of any process with a
ticket waiting on the same lock (the next turn of that thread), instead of leaving it to the
fallback poll.

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
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from importlib import resources
from typing import Any

import procrastinate
import psycopg
from procrastinate import jobs as procrastinate_jobs
from procrastinate import utils as procrastinate_utils
from procrastinate import worker as procrastinate_worker
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
# Where a process says it gave back a fleet place ("place:<sender>") or ended a ticket that
# another one waits behind ("lock:<sender>").
FREED_CHANNEL = "imagine_queue_freed"
# Most tickets one fetch claims: enough to keep up with a burst in one round trip, few enough
# that one process does not take what another, idle one could run.
FETCH_BATCH = 4
# How long a job waiting for a place sleeps without news before it asks again anyway.
PLACE_POLL_SECONDS = 2.0
# How often the worker looks for tickets without news (a notification lost with a connection).
FETCH_POLL_SECONDS = 2.0
# Claims up to %(most)s tickets, one procrastinate fetch after the other in one statement
# (each sees the ones before it, so two tickets of one lock are never both claimed), and stops
# at the first that finds nothing.
FETCH_TICKETS = """
WITH RECURSIVE fetched(n, job) AS (
    SELECT 1, procrastinate_fetch_job_v2(%(queues)s::varchar[], %(worker_id)s)
  UNION ALL
    SELECT n + 1, procrastinate_fetch_job_v2(%(queues)s::varchar[], %(worker_id)s)
    FROM fetched WHERE (job).id IS NOT NULL AND n < %(most)s
)
SELECT (job).id, (job).status, (job).task_name, (job).priority, (job).lock,
    (job).queueing_lock, (job).args, (job).scheduled_at, (job).queue_name, (job).attempts,
    (job).worker_id
FROM fetched WHERE (job).id IS NOT NULL ORDER BY n
"""

Connection = psycopg.AsyncConnection[TupleRow]
# Runs one ledger job; the callable says whether its requester cancelled it (from any process).
TicketRunner = Callable[[int, Callable[[], bool]], Awaitable[None]]


def queue_schema() -> str:
    """procrastinate's schema (tables, types, functions) for a database that has none yet."""
    return (resources.files("procrastinate.sql") / "schema.sql").read_text(encoding="utf-8")


def channel_lock(channel_id: int) -> str:
    """The procrastinate lock of a channel's tickets: one running turn per thread or DM."""
    return f"channel:{channel_id}"


def _pool_without_check(**kwargs: Any) -> AsyncConnectionPool[Any]:
    """procrastinate's pool without its liveness query before every use (one round trip per
    fetch, per ended ticket): a connection the server dropped fails its next query instead, is
    thrown away, and the worker that met it starts again (as the store's pool does)."""
    kwargs.pop("check", None)
    return AsyncConnectionPool(**kwargs)


class TicketQueue:
    """The procrastinate app of one database: defers tickets, runs a worker, aborts, slots."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self.app = procrastinate.App(
            connector=procrastinate.PsycopgConnector(
                conninfo=conninfo,
                min_size=1,
                max_size=6,
                name="imagine-queue",
                pool_factory=_pool_without_check,
            )
        )
        self._open = False
        self._slots: AsyncConnectionPool[Connection] | None = None
        # Who this queue is in the notifications it sends (it ignores its own).
        self._sender = secrets.token_hex(8)
        # Set (and replaced) whenever a place may have been given back.
        self._place_freed = asyncio.Event()
        # Jobs of this process asleep until a place is given back.
        self.place_waiters = 0
        self._listener: asyncio.Task[None] | None = None
        self._worker: _Worker | None = None

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
        listening = asyncio.Event()
        self._listener = asyncio.create_task(self._listen(listening), name="queue-listener")
        # The first LISTEN is in before `open` returns (until it is, waiters poll).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(listening.wait(), 10)
        self._open = True

    async def close(self) -> None:
        """Close what `open` opened."""
        if self._listener is not None:
            self._listener.cancel()
            await asyncio.gather(self._listener, return_exceptions=True)
            self._listener = None
        if not self._open:
            return
        self._open = False
        if self._slots is not None:
            await self._slots.close()
            self._slots = None
        await self.app.close_async()

    async def _listen(self, listening: asyncio.Event) -> None:
        """Receive the other processes' notices on `FREED_CHANNEL`, reconnecting when the
        connection drops (meanwhile, waiters fall back on their poll)."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self._conninfo, autocommit=True)
                async with conn:
                    await conn.execute(f"LISTEN {FREED_CHANNEL}")
                    listening.set()
                    async for notice in conn.notifies():
                        what, _, sender = notice.payload.partition(":")
                        if sender != self._sender:
                            self._freed(what)
            except psycopg.Error as exc:
                log.warning("the queue's notification connection failed: %s", exc)
            # Whatever was freed while the connection was down is found by the next poll.
            self._freed("place")
            await asyncio.sleep(PLACE_POLL_SECONDS)

    def _freed(self, what: str) -> None:
        """Something was given back: wake the jobs waiting for a place, or the worker."""
        if what == "place":
            self._place_freed.set()
            self._place_freed = asyncio.Event()
        elif what == "lock" and self._worker is not None:
            self._worker.wake()

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
        worker = _Worker(
            self,
            app=self.app,
            queues=[QUEUE],
            name=name,
            concurrency=concurrency,
            install_signal_handlers=False,
            delete_jobs=procrastinate_jobs.DeleteJobCondition.ALWAYS,
            update_heartbeat_interval=heartbeat_seconds,
            stalled_worker_timeout=stale_after_seconds,
            shutdown_graceful_timeout=graceful_seconds,
            # Notifications bring new tickets, freed threads and abort requests at once;
            # polling is the net.
            listen_notify=True,
            fetch_job_polling_interval=FETCH_POLL_SECONDS,
            abort_job_polling_interval=2.0,
        )
        self._worker = worker
        try:
            await worker.run()  # type: ignore[no-untyped-call]
        finally:
            if self._worker is worker:
                self._worker = None

    async def fetch(self, worker_id: int, most: int) -> list[procrastinate_jobs.Job]:
        """Claim up to `most` tickets for procrastinate worker `worker_id`, in one round trip."""
        rows = await self.app.connector.execute_query_all_async(
            FETCH_TICKETS, queues=[QUEUE], worker_id=worker_id, most=max(1, most)
        )
        return [procrastinate_jobs.Job.from_row(row) for row in rows]

    async def ticket_ended(self, lock: str) -> None:
        """A ticket of `lock` ended: if another one waits behind it, wake whoever may run it
        (this process at once; the others by a notification)."""
        async with self.app.connector.pool.connection() as conn:  # type: ignore[attr-defined]
            cursor = await conn.execute(
                "SELECT pg_notify(%s, %s) FROM procrastinate_jobs"
                " WHERE lock = %s AND status = 'todo' AND queue_name = %s LIMIT 1",
                (FREED_CHANNEL, f"lock:{self._sender}", lock, QUEUE),
            )
            waiting = cursor.rowcount > 0
        if waiting and self._worker is not None:
            self._worker.wake()

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

        Waits until both are free: woken when a place is given back (in this process or, by a
        notification, another), and asking again every `PLACE_POLL_SECONDS` without news. The
        places are session advisory locks on a connection held for the job: the server frees
        them if this process dies.
        """
        if self._slots is None:
            raise RuntimeError("the ticket queue is not open")
        fleet = [lock_key("fleet-slot", i) for i in range(max(1, global_cap))]
        mine = [lock_key(f"user-slot-{i}", user_id) for i in range(max(1, user_cap))]
        async with self._slots.connection() as conn:
            held: list[int] = []
            try:
                while True:
                    # Taken before asking: a place given back meanwhile sets this one.
                    freed = self._place_freed
                    held = await _take_places(conn, fleet, mine)
                    if held:
                        break
                    self.place_waiters += 1
                    try:
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(freed.wait(), PLACE_POLL_SECONDS)
                    finally:
                        self.place_waiters -= 1
                yield
            finally:
                if held:
                    with contextlib.suppress(psycopg.Error):
                        await conn.execute(
                            "SELECT pg_advisory_unlock(%s), pg_advisory_unlock(%s),"
                            " pg_notify(%s, %s)",
                            (held[0], held[1], FREED_CHANNEL, f"place:{self._sender}"),
                        )
                    self._freed("place")


class _Worker(procrastinate_worker.Worker):
    """procrastinate's worker (its heartbeats, aborts and ticket endings), fetching several
    tickets per round trip, and never missing a notification that comes during a fetch.

    It replaces the worker's fetch loop, so it is tied to the pinned procrastinate release.
    """

    def __init__(self, queue: TicketQueue, **options: Any) -> None:
        super().__init__(**options)
        self._queue = queue

    def wake(self) -> None:
        """Fetch again now (a ticket may have become free to run)."""
        self._new_job_event.set()

    async def _fetch_and_process_jobs(self) -> None:
        """Claim and start tickets while there are some and room to run them."""
        semaphore = self._job_semaphore
        while not self._stop_event.is_set():
            if semaphore.locked():
                room = asyncio.ensure_future(semaphore.acquire())
                await procrastinate_utils.wait_any(room, self._stop_event.wait())
                if self._stop_event.is_set():
                    if room.done() and not room.cancelled():
                        semaphore.release()
                    break
            else:
                await semaphore.acquire()
            places = 1
            while places < FETCH_BATCH and not semaphore.locked():
                await semaphore.acquire()
                places += 1
            # Cleared before the fetch: a ticket announced while it runs makes the next one.
            self._new_job_event.clear()
            assert self.worker_id is not None
            try:
                fetched = await self._queue.fetch(self.worker_id, places)
            except BaseException:
                for _ in range(places):
                    semaphore.release()
                raise
            for _ in range(places - len(fetched)):
                semaphore.release()
            for job in fetched:
                self._start(job)
            if len(fetched) < places:
                break

    def _start(self, job: procrastinate_jobs.Job) -> None:
        job_id = job.id

        def abort_reason() -> AbortReason | None:
            return self._job_ids_to_abort.get(job_id) if job_id else None

        context = JobContext(
            app=self.app,
            worker_name=self.worker_name,
            worker_queues=self.queues,
            additional_context=dict(self.additional_context or {}),
            job=job,
            abort_reason=abort_reason,
            start_timestamp=time.time(),
        )
        task = asyncio.create_task(
            self._process_job(context), name=f"process job {job.task_name}[{job.id}]"
        )
        self._running_jobs[task] = context
        task.add_done_callback(self._ended)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        del self._running_jobs[task]
        self._job_semaphore.release()

    async def _persist_job_status(
        self, job: procrastinate_jobs.Job, *args: Any, **kwargs: Any
    ) -> None:
        await super()._persist_job_status(job, *args, **kwargs)
        if job.lock is not None:
            with contextlib.suppress(psycopg.Error, procrastinate.exceptions.ConnectorException):
                await self._queue.ticket_ended(job.lock)


async def _take_places(conn: Connection, fleet: Sequence[int], mine: Sequence[int]) -> list[int]:
    """Take a free fleet place and a free place of the member's in one round trip (each the
    first free advisory lock of its keys, in a random order); both, or none (a lone one is
    given back)."""
    cursor = await conn.execute(
        f"SELECT ({_FIRST_FREE}), ({_FIRST_FREE})",
        (random.sample(list(fleet), len(fleet)), random.sample(list(mine), len(mine))),
    )
    row = await cursor.fetchone()
    taken = [int(key) for key in (row or ()) if key is not None]
    if len(taken) == 2:
        return taken
    for key in taken:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (key,))
    return []


# The first of an array of keys whose session advisory lock is free, taken. The scan stops at
# the first lock taken (LIMIT 1 pulls rows one at a time), so no other key is locked on the way.
_FIRST_FREE = (
    "SELECT key FROM unnest(%s::bigint[]) WITH ORDINALITY AS k(key, n)"
    " WHERE pg_try_advisory_lock(key) LIMIT 1"
)
