"""The shared job queue on PostgreSQL (procrastinate): tickets, locks, places, Cancel, stalls.

Two Studios on one database in one event loop stand for two bot processes: each has its own
store, its own procrastinate worker and its own worker id, as separate processes would.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
from collections.abc import AsyncIterator, Callable
from typing import Any

import psycopg
import pytest

from bot.core.budgets import Limits
from bot.core.costs import PriceTable
from bot.core.jobs import JobKind, JobSpec, ParentMode
from bot.core.options import ImageOptions, TurnRequest
from bot.core.runner import TurnRunner
from bot.core.studio import Studio
from storage import pgqueue
from storage._keys import KeyedLocks
from storage.base import Conversation, Job, NewJob, Occupancy, StorageError, Window
from storage.postgres import PostgresStore
from storage.urls import postgres_conninfo
from tests.conftest import wait_until
from tests.test_studio import Backend, Sink, requester

WHOLE_TIME = Window(since=0.0, until=float("inf"))


def allow_all(occupancy: Occupancy) -> None:
    """An admission gate that refuses nothing."""


def refuse_all(occupancy: Occupancy) -> None:
    raise StorageError("full")


def new_job(channel_id: int = 100, **changes: Any) -> NewJob:
    job = NewJob(
        kind="imagine",
        guild_id=1,
        channel_id=channel_id,
        user_id=7,
        payload={"prompt": "a cat"},
        locale="en",
    )
    return dataclasses.replace(job, **changes)


def job_statuses(url: str, ids: list[int]) -> list[str]:
    """The ledger status of each job, in the order of `ids`."""
    with psycopg.connect(postgres_conninfo(url)) as conn:
        rows = dict(conn.execute("SELECT id, status FROM jobs WHERE id = ANY(%s)", (ids,)))
    return [str(rows.get(i)) for i in ids]


def tickets(url: str) -> list[tuple[str, str, int]]:
    """(status, lock, ledger job id) of every ticket, oldest first."""
    with psycopg.connect(postgres_conninfo(url)) as conn:
        rows = conn.execute(
            "SELECT status, lock, (args->>'job_id')::bigint FROM procrastinate_jobs ORDER BY id"
        ).fetchall()
    return [(str(s), str(lock), int(j)) for s, lock, j in rows]


def test_the_queue_schema_is_the_pinned_procrastinate_release() -> None:
    # Migration 0006 applies this release's schema; a new release needs its migrations added.
    assert importlib.metadata.version("procrastinate") == pgqueue.PROCRASTINATE_VERSION


async def test_a_ticket_is_deferred_in_the_transaction_that_queues_the_job(
    postgres_url: str,
) -> None:
    store = await PostgresStore.open(postgres_url)
    try:
        admit = {"user_window": WHOLE_TIME, "guild_window": WHOLE_TIME}
        with pytest.raises(StorageError):
            await store.admit_job(new_job(), gate=refuse_all, **admit)
        assert tickets(postgres_url) == []  # a refused admission leaves no ticket
        job = await store.admit_job(new_job(), gate=allow_all, **admit)
        assert tickets(postgres_url) == [("todo", "channel:100", job.id)]
        # Placed later: no ticket until it is placed, then one with the new channel's lock.
        later = await store.admit_job(new_job(dispatch=False), gate=allow_all, **admit)
        assert len(tickets(postgres_url)) == 1
        assert await store.place_job(later.id, 200, None)
        assert tickets(postgres_url)[-1] == ("todo", "channel:200", later.id)
        # A retried job gets a new ticket; a job that is not queued gets none.
        assert await store.start_job(job.id)
        assert not await store.dispatch_job(job.id)
        assert await store.finish_job(job.id, "interrupted")
        again = await store.readmit_job(
            job.id, reserved_usd=0.0, reserved_images=1, gate=allow_all, **admit
        )
        assert again is not None
        assert tickets(postgres_url)[-1] == ("todo", "channel:100", job.id)
        assert await store.dispatch_job(later.id)
        assert len(tickets(postgres_url)) == 4
    finally:
        await store.close()


async def test_a_queued_job_is_cancelled_only_while_it_is_still_queued(
    postgres_url: str,
) -> None:
    store = await PostgresStore.open(postgres_url)
    try:
        admit = {"user_window": WHOLE_TIME, "guild_window": WHOLE_TIME}
        job = await store.admit_job(new_job(), gate=allow_all, **admit)
        assert await store.start_job(job.id, "elsewhere")
        assert not await store.finish_job(job.id, "cancelled", queued_only=True)
        running = await store.get_job(job.id)
        assert running is not None and running.status == "running"
    finally:
        await store.close()


async def test_a_place_takes_one_lock_of_each_kind_and_gives_them_back(postgres_url: str) -> None:
    queue = pgqueue.TicketQueue(postgres_conninfo(postgres_url))
    await queue.open(slots=2)

    def advisory_locks() -> int:
        with psycopg.connect(postgres_conninfo(postgres_url), autocommit=True) as admin:
            row = admin.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            ).fetchone()
            return int(row[0]) if row else 0

    try:
        async with queue.slot(7, global_cap=8, user_cap=3):
            # One fleet place and one of the member's: free keys met on the way stay free.
            assert advisory_locks() == 2
            async with queue.slot(7, global_cap=8, user_cap=3):
                assert advisory_locks() == 4
        assert advisory_locks() == 0
    finally:
        await queue.close()


@dataclasses.dataclass
class Occupant:
    """A job that takes the only fleet place of a queue, and leaves when told."""

    task: asyncio.Task[None]
    inside: asyncio.Event
    leave: asyncio.Event


def occupy(queue: pgqueue.TicketQueue, user_id: int, *, stay: bool = True) -> Occupant:
    inside, leave = asyncio.Event(), asyncio.Event()
    if not stay:
        leave.set()

    async def occupant() -> None:
        async with queue.slot(user_id, global_cap=1, user_cap=1):
            inside.set()
            await leave.wait()

    return Occupant(asyncio.create_task(occupant()), inside, leave)


async def test_a_fleet_place_is_freed_when_its_holder_dies(postgres_url: str) -> None:
    first, second = (
        pgqueue.TicketQueue(postgres_conninfo(postgres_url)),
        pgqueue.TicketQueue(postgres_conninfo(postgres_url)),
    )
    await first.open(slots=1)
    await second.open(slots=1)
    try:
        holder = occupy(first, 7)
        await asyncio.wait_for(holder.inside.wait(), 5)
        waiter = occupy(second, 8, stay=False)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(waiter.inside.wait()), 0.3)
        # The holder's process dies: the server ends its session, and the place is free.
        with psycopg.connect(postgres_conninfo(postgres_url), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_locks"
                " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
            )
        await asyncio.wait_for(waiter.inside.wait(), 10)
        await asyncio.wait_for(waiter.task, 5)
        holder.leave.set()
        await asyncio.gather(holder.task, return_exceptions=True)
    finally:
        await first.close()
        await second.close()


@pytest.mark.parametrize("across_processes", [False, True], ids=["same process", "another"])
async def test_a_place_given_back_wakes_a_waiter(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch, across_processes: bool
) -> None:
    # No poll within the test's deadline: only the wake-up (in the process, or a notification
    # from another) can let the waiter in.
    monkeypatch.setattr(pgqueue, "PLACE_POLL_SECONDS", 3600.0)
    first = pgqueue.TicketQueue(postgres_conninfo(postgres_url))
    second = pgqueue.TicketQueue(postgres_conninfo(postgres_url)) if across_processes else first
    await first.open(slots=2)
    await second.open(slots=2)
    try:
        holder = occupy(first, 7)
        await asyncio.wait_for(holder.inside.wait(), 5)
        waiter = occupy(second, 8, stay=False)
        # It asked once, found the place taken, and sleeps until woken.
        await wait_until(lambda: second.place_waiters == 1, what="a waiter")
        assert not waiter.inside.is_set()
        holder.leave.set()
        await asyncio.wait_for(waiter.inside.wait(), 10)
        await asyncio.wait_for(asyncio.gather(holder.task, waiter.task), 5)
        assert second.place_waiters == 0
    finally:
        await first.close()
        await second.close()


async def test_a_fetch_claims_several_tickets_in_order_one_per_lock(postgres_url: str) -> None:
    store = await PostgresStore.open(postgres_url)
    queue = store.tickets
    try:
        await queue.open(slots=1)
        admit = {"user_window": WHOLE_TIME, "guild_window": WHOLE_TIME, "gate": allow_all}
        jobs = [
            await store.admit_job(new_job(channel_id=channel, user_id=10 + i), **admit)
            for i, channel in enumerate([100, 100, 200, 300, 400])
        ]
        worker_id = await queue.app.job_manager.register_worker()
        first = await queue.fetch(worker_id, 3)
        # The thread 100's second ticket waits for its first: 100, 200, 300, oldest first.
        assert [job.task_kwargs["job_id"] for job in first] == [jobs[i].id for i in (0, 2, 3)]
        assert [job.lock for job in first] == ["channel:100", "channel:200", "channel:300"]
        rest = await queue.fetch(worker_id, 3)
        assert [job.task_kwargs["job_id"] for job in rest] == [jobs[4].id]
        assert await queue.fetch(worker_id, 3) == []
        assert [status for status, _l, _j in tickets(postgres_url)] == [
            "doing", "todo", "doing", "doing", "doing"
        ]  # fmt: skip
    finally:
        await queue.close()
        await store.close()


async def test_admissions_of_one_server_wait_in_the_process_not_on_a_connection() -> None:
    locks = KeyedLocks()
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def admit(name: str, keys: list[int]) -> None:
        async with locks.hold(keys):
            order.append(name)
            if name == "first":
                first_in.set()
                await release.wait()

    first = asyncio.create_task(admit("first", [3, 1]))
    await asyncio.wait_for(first_in.wait(), 5)
    # Same server (key 1), another user: it waits; another server and user go ahead.
    second = asyncio.create_task(admit("second", [1, 2]))
    other = asyncio.create_task(admit("other", [4, 5]))
    await asyncio.wait_for(other, 5)
    assert order == ["first", "other"]
    release.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert order == ["first", "other", "second"]
    assert len(locks) == 0  # nothing kept once no one holds or waits


async def test_concurrent_admissions_in_one_server_keep_the_limit(postgres_url: str) -> None:
    store = await PostgresStore.open(postgres_url)
    try:

        def at_most_three(occupancy: Occupancy) -> None:
            if occupancy.guild_images >= 3:
                raise StorageError("the server is full")

        admit = {"user_window": WHOLE_TIME, "guild_window": WHOLE_TIME, "gate": at_most_three}
        results = await asyncio.gather(
            *(
                store.admit_job(
                    new_job(channel_id=100 + i, user_id=10 + i, reserved_images=1), **admit
                )
                for i in range(8)
            ),
            return_exceptions=True,
        )
        admitted = [r for r in results if isinstance(r, Job)]
        assert len(admitted) == 3
        assert all(isinstance(r, StorageError) for r in results if not isinstance(r, Job))
        assert len(tickets(postgres_url)) == 3
    finally:
        await store.close()


async def test_the_tickets_of_a_silent_worker_go_back_to_the_queue(postgres_url: str) -> None:
    store = await PostgresStore.open(postgres_url)
    queue = store.tickets
    await queue.open(slots=1)
    try:
        admit = {"user_window": WHOLE_TIME, "guild_window": WHOLE_TIME}
        job = await store.admit_job(new_job(), gate=allow_all, **admit)
        with psycopg.connect(postgres_conninfo(postgres_url), autocommit=True) as conn:
            # A worker fetched the ticket, then fell silent a minute ago.
            conn.execute(
                "INSERT INTO procrastinate_workers (last_heartbeat)"
                " VALUES (now() - interval '60 seconds')"
            )
            conn.execute(
                "UPDATE procrastinate_jobs SET status = 'doing',"
                " worker_id = (SELECT max(id) FROM procrastinate_workers)"
            )
        assert await queue.requeue_stalled(30.0) == 1
        assert tickets(postgres_url) == [("todo", "channel:100", job.id)]
        assert await queue.requeue_stalled(30.0) == 0
    finally:
        await queue.close()
        await store.close()


async def test_a_job_left_queued_without_a_ticket_gets_one(postgres_url: str) -> None:
    store = await PostgresStore.open(postgres_url)
    queue = store.tickets
    await queue.open(slots=1)
    try:
        admit = {"user_window": WHOLE_TIME, "guild_window": WHOLE_TIME}
        # Admitted to be placed later, and its process stopped before placing it.
        job = await store.admit_job(new_job(dispatch=False), gate=allow_all, **admit)
        assert tickets(postgres_url) == []
        assert await queue.requeue_stalled(3600.0) == 0  # not queued that long yet
        assert await queue.requeue_stalled(0.0) == 1
        assert tickets(postgres_url) == [("todo", "channel:100", job.id)]
        assert await queue.requeue_stalled(0.0) == 0
    finally:
        await queue.close()
        await store.close()


# Two "processes" (Studios with their own stores and workers) on one database.


@dataclasses.dataclass
class Process:
    studio: Studio
    store: PostgresStore
    backend: Backend
    log: list[tuple[int, str]]

    def shown(self, what: str) -> list[int]:
        return [job for job, entry in self.log if entry.startswith(what)]


class RecordingBackend(Backend):
    """A Backend that records how many of its responses (in any process) run at once."""

    def __init__(self, prefix: str, running: list[int], peak: list[int]) -> None:
        super().__init__(prefix)
        self._running = running
        self._peak = peak

    async def _play(self, request: TurnRequest) -> AsyncIterator[Any]:
        self._running[0] += 1
        self._peak[0] = max(self._peak[0], self._running[0])
        try:
            async for event in super()._play(request):
                yield event
        finally:
            self._running[0] -= 1


@pytest.fixture
async def processes(postgres_url: str) -> AsyncIterator[Callable[..., Any]]:
    made: list[Process] = []
    running, peak = [0], [0]

    async def build(name: str, **limits: Any) -> Process:
        store = await PostgresStore.open(postgres_url)
        backend = RecordingBackend(name, running, peak)
        log: list[tuple[int, str]] = []

        async def sink_factory(job: Job, spec: JobSpec) -> Sink:
            return Sink(log, job, 0)

        studio = Studio(
            store=store,
            runner=TurnRunner(backend, PriceTable()),
            prices=PriceTable(),
            defaults=ImageOptions(model="gpt-image-2"),
            limits=Limits(**limits),
            sink_factory=sink_factory,
            post_backoff=(0.001, 0.01),
            worker_id=name,
            heartbeat_seconds=0.25,
            stale_after_seconds=2.0,
            shared_queue=store.tickets,
        )
        await studio.recover()
        process = Process(studio, store, backend, log)
        made.append(process)
        return process

    build.peak = peak  # type: ignore[attr-defined]
    yield build
    for process in made:
        await process.studio.close(grace=0.5)
    for process in made:
        await process.store.close()


def message(prompt: str) -> JobSpec:
    return JobSpec(kind=JobKind.MESSAGE, prompt=prompt, parent=ParentMode.LATEST)


async def thread(store: PostgresStore, channel_id: int = 200) -> None:
    await store.create_conversation(
        Conversation(channel_id, 1, 7, 100, None, None, "responses", {}, 0.0, 0.0)
    )


async def test_two_quick_messages_in_a_thread_chain_across_processes(
    processes: Any, postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No poll for tickets within the test: the second turn runs because the end of the first
    # wakes whichever process may run it.
    monkeypatch.setattr(pgqueue, "FETCH_POLL_SECONDS", 3600.0)
    a: Process = await processes("a")
    b: Process = await processes("b")
    await thread(a.store)
    who = await requester(a.studio, channel_id=200)
    a.backend.gate = asyncio.Event()
    b.backend.gate = asyncio.Event()
    first = await a.studio.submit(a.studio.check(message("a fox"), who))
    second = await b.studio.submit(b.studio.check(message("now at night"), who))
    # Whichever process fetched the first ticket runs it; the second waits for the thread's lock.
    await wait_until(lambda: len(a.backend.requests) + len(b.backend.requests) == 1, what="one")
    a.backend.gate.set()
    b.backend.gate.set()
    await wait_until(
        lambda: len(a.shown("posted")) + len(b.shown("posted")) == 2, what="both posted"
    )
    turns = {turn.prompt: turn for turn in await a.store.list_turns(200)}
    requests = {r.prompt: r for r in a.backend.requests + b.backend.requests}
    assert requests["a fox"].previous_response_id is None
    assert requests["now at night"].previous_response_id == turns["a fox"].response_id
    assert turns["now at night"].parent_response_id == turns["a fox"].response_id
    head = await a.store.get_conversation(200)
    assert head is not None and head.latest_response_id == turns["now at night"].response_id
    # The posting is recorded just after the sink shows it.
    await wait_until(
        lambda: job_statuses(postgres_url, [first.id, second.id]) == ["done", "done"],
        what="both jobs done",
    )


async def test_cancel_on_one_process_stops_a_job_running_on_the_other(processes: Any) -> None:
    a: Process = await processes("a")
    who = await requester(a.studio, channel_id=300)
    a.backend.gate = asyncio.Event()
    job = await a.studio.submit(a.studio.check(message("a slow one"), who))
    await wait_until(lambda: a.shown("started"), what="the job to start on a")
    b: Process = await processes("b")
    assert await b.studio.cancel(job.id, await requester(b.studio, channel_id=300))
    await wait_until(lambda: a.shown("cancelled"), what="a to stop and say so")
    ended = await a.store.get_job(job.id)
    assert ended is not None and ended.status == "cancelled" and ended.reserved_usd == 0
    assert (await a.store.usage_totals(since=0)).images == 0
    assert b.log == []
    # A queued job is cancelled from any process at once.
    a.backend.gate = asyncio.Event()
    b.backend.gate = asyncio.Event()
    blocker = await a.studio.submit(a.studio.check(message("first"), who))
    queued = await a.studio.submit(a.studio.check(message("second"), who))

    def requests() -> list[TurnRequest]:
        return a.backend.requests + b.backend.requests

    await wait_until(lambda: len(requests()) == 2, what="the blocker to run (either process)")
    assert await b.studio.cancel(queued.id, await requester(b.studio, channel_id=300))
    assert b.shown("cancelled") == [queued.id]
    a.backend.gate.set()
    b.backend.gate.set()
    await wait_until(
        lambda: a.shown("posted") + b.shown("posted") == [blocker.id], what="the blocker posted"
    )
    assert [r.prompt for r in requests()] == ["a slow one", "first"]  # the cancelled one never ran


async def test_the_fleet_never_runs_more_than_the_global_cap(
    processes: Any, postgres_url: str
) -> None:
    a: Process = await processes("a", global_concurrency=2, user_concurrency=5)
    b: Process = await processes("b", global_concurrency=2, user_concurrency=5)
    a.backend.gate = asyncio.Event()
    b.backend.gate = asyncio.Event()
    jobs = []
    for i, process in enumerate([a, b] * 4):
        who = await requester(process.studio, user_id=10 + i, channel_id=1000 + i)
        jobs.append(await process.studio.submit(process.studio.check(message(f"n{i}"), who)))
    # Each process fetches as many tickets as the cap (4 in all), but only 2 get a place.
    await wait_until(
        lambda: sum(status == "doing" for status, _l, _j in tickets(postgres_url)) == 4,
        what="both processes to fetch tickets",
    )
    await wait_until(lambda: processes.peak[0] == 2, what="two jobs running")
    assert processes.peak[0] == 2
    a.backend.gate.set()
    b.backend.gate.set()
    await wait_until(
        lambda: len(a.shown("posted")) + len(b.shown("posted")) == len(jobs),
        timeout=30,
        what="every job posted",
    )
    assert processes.peak[0] == 2
