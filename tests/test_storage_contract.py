"""Contract tests every Store backend must pass, then checks specific to SQLite."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import aiosqlite
import psycopg
import pytest

from storage import (
    ANONYMOUS_USER_ID,
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
    SqliteStore,
    StorageError,
    Store,
    Turn,
    TurnStatus,
    UsageTotals,
    UserUsage,
    Window,
    describe_database,
    open_store,
    redact_url,
    sqlite_path_from_url,
    url_passwords,
)
from storage.postgres import PostgresStore
from storage.postgres import migrate as postgres_migrate
from storage.postgres import packaged_migrations as postgres_migrations
from storage.postgres import schema_version as postgres_schema_version
from storage.sqlite import (
    CHECKPOINT_PAGES,
    PAGES_PER_COMMIT,
    WAL_BACKSTOP_PAGES,
    Migration,
    load_migrations,
    migrate,
    packaged_migrations,
    schema_version,
    split_statements,
)
from tests.conftest import PostgresServer, wait_until

T = TypeVar("T")

# 2026-01-01T00:00:00Z
NEW_YEAR = 1_767_225_600.0
DAY = 86_400.0
# The largest snowflake a signed 64-bit column holds; real ones are smaller.
BIG_ID = 2**63 - 1


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self, now: float = NEW_YEAR) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# Opens one more store (in the test's own event loop) on the test's database.
StoreOpener = Callable[[FakeClock], Awaitable[Store]]


def sqlite_database(request: pytest.FixtureRequest, tmp_path: Path) -> StoreOpener:
    """A fresh SQLite database file."""
    path = tmp_path / "store.db"

    async def open_sqlite(clock: FakeClock) -> Store:
        return await SqliteStore.open(path, clock=clock)

    return open_sqlite


def postgres_database(request: pytest.FixtureRequest, tmp_path: Path) -> StoreOpener:
    """A fresh database on the test session's PostgreSQL server."""
    url: str = request.getfixturevalue("postgres_url")

    async def open_postgres(clock: FakeClock) -> Store:
        return await PostgresStore.open(url, clock=clock)

    return open_postgres


# Each backend runs the whole contract suite; a new backend is one more line here.
BACKENDS = [
    pytest.param(sqlite_database, id="sqlite"),
    pytest.param(postgres_database, id="postgres"),
]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> StoreOpener:
    """How to open a store on this test's own, empty database (as often as a test likes)."""
    factory: Callable[[pytest.FixtureRequest, Path], StoreOpener] = request.param
    return factory(request, tmp_path)


@pytest.fixture
async def store(database: StoreOpener, clock: FakeClock) -> AsyncIterator[Store]:
    opened = await database(clock)
    try:
        yield opened
    finally:
        await opened.close()


def conversation(channel_id: int = 100, **changes: object) -> Conversation:
    base = Conversation(
        channel_id=channel_id,
        guild_id=1,
        owner_id=10,
        parent_channel_id=50,
        latest_response_id=None,
        latest_message_id=None,
        engine="responses",
        options={"size": "1024x1024"},
        created_at=NEW_YEAR - 60,
        updated_at=NEW_YEAR - 60,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def new_turn(channel_id: int = 100, **changes: object) -> NewTurn:
    base = NewTurn(
        channel_id=channel_id,
        guild_id=1,
        user_id=10,
        prompt="a cat in a hat",
        engine="responses",
        model="gpt-image-1",
        response_id="resp_1",
        options={"quality": "high"},
        usage={"input_tokens": 12, "output_tokens": 3400},
        cost_usd=0.17,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


WHOLE_TIME = Window(since=0.0, until=float("inf"))


def allow_all(occupancy: Occupancy) -> None:
    """An admission gate that refuses nothing."""


async def enqueue(store: Store, job: NewJob) -> Job:
    """Admit a job through a gate that refuses nothing."""
    return await store.admit_job(
        job, user_window=WHOLE_TIME, guild_window=WHOLE_TIME, gate=allow_all
    )


async def readmit(store: Store, job_id: int) -> Job | None:
    """Retry a job through a gate that refuses nothing."""
    return await store.readmit_job(
        job_id,
        reserved_usd=0.0,
        reserved_images=0,
        user_window=WHOLE_TIME,
        guild_window=WHOLE_TIME,
        gate=allow_all,
    )


def new_job(user_id: int = 10, **changes: object) -> NewJob:
    base = NewJob(
        kind="imagine",
        guild_id=1,
        channel_id=100,
        user_id=user_id,
        payload={"prompt": "a cat", "partials": 2},
        locale="en-US",
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def usage(user_id: int = 10, guild_id: int | None = 1, **changes: object) -> NewUsageEntry:
    base = NewUsageEntry(
        guild_id=guild_id,
        user_id=user_id,
        channel_id=100,
        response_id="resp_1",
        model="gpt-image-1",
        engine="responses",
        images=1,
        input_tokens=100,
        output_tokens=2000,
        image_input_tokens=0,
        image_output_tokens=1800,
        cost_usd=0.25,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


# Conversations


async def test_missing_conversation_is_none(store: Store) -> None:
    assert await store.get_conversation(123) is None


async def test_conversation_round_trips(store: Store) -> None:
    original = conversation(options={"size": "1536x1024", "nested": {"ko": "고양이"}})
    await store.create_conversation(original)
    assert await store.get_conversation(original.channel_id) == original


async def test_create_conversation_upserts_and_keeps_created_at(store: Store) -> None:
    await store.create_conversation(conversation())
    replacement = conversation(
        owner_id=11, engine="images", options={}, created_at=NEW_YEAR, updated_at=NEW_YEAR
    )
    await store.create_conversation(replacement)
    stored = await store.get_conversation(100)
    assert stored == dataclasses.replace(replacement, created_at=NEW_YEAR - 60)


async def test_advance_conversation_sets_latest_and_updated_at(
    store: Store, clock: FakeClock
) -> None:
    await store.create_conversation(conversation())
    clock.advance(30)
    assert await store.advance_conversation(100, response_id="resp_2", message_id=777)
    stored = await store.get_conversation(100)
    assert stored is not None
    assert (stored.latest_response_id, stored.latest_message_id) == ("resp_2", 777)
    assert stored.updated_at == clock.now
    assert stored.created_at == NEW_YEAR - 60


async def test_advance_missing_conversation_reports_false(store: Store) -> None:
    assert not await store.advance_conversation(5, response_id="resp", message_id=None)
    assert await store.get_conversation(5) is None


async def test_snowflakes_use_all_64_bits(store: Store) -> None:
    await store.create_conversation(
        conversation(BIG_ID, guild_id=BIG_ID - 1, owner_id=BIG_ID - 2, latest_message_id=BIG_ID - 3)
    )
    stored = await store.get_conversation(BIG_ID)
    assert stored is not None
    assert (stored.guild_id, stored.owner_id, stored.latest_message_id) == (
        BIG_ID - 1,
        BIG_ID - 2,
        BIG_ID - 3,
    )
    turn = await store.add_turn(new_turn(BIG_ID, user_id=BIG_ID, message_id=BIG_ID))
    assert await store.get_turn_by_message(BIG_ID) == turn


async def test_records_are_frozen(store: Store) -> None:
    await store.create_conversation(conversation())
    stored = await store.get_conversation(100)
    assert stored is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        stored.owner_id = 1  # type: ignore[misc]


# Turns


async def test_add_turn_returns_what_get_turn_reads(store: Store, clock: FakeClock) -> None:
    turn = await store.add_turn(new_turn(parent_response_id="resp_0", revised_prompt="a cat"))
    assert turn.id > 0
    assert turn.created_at == clock.now
    assert turn.status == TurnStatus.COMPLETED
    assert await store.get_turn(turn.id) == turn
    assert turn.usage == {"input_tokens": 12, "output_tokens": 3400}


async def test_returned_dicts_do_not_write_through(store: Store) -> None:
    turn = await store.add_turn(new_turn())
    turn.options["quality"] = "low"
    stored = await store.get_turn(turn.id)
    assert stored is not None
    assert stored.options == {"quality": "high"}


async def test_turn_ids_are_never_reused(store: Store) -> None:
    first = await store.add_turn(new_turn())
    second = await store.add_turn(new_turn())
    assert await store.delete_turn_rolling_back(second.id)
    third = await store.add_turn(new_turn())
    assert first.id < second.id < third.id


async def test_turn_lookups_by_message_and_response(store: Store) -> None:
    assert await store.get_turn_by_message(555) is None
    turn = await store.add_turn(
        new_turn(response_id="resp_a", message_id=555, image_url="https://cdn.example/a.png")
    )
    by_message = await store.get_turn_by_message(555)
    assert by_message == turn
    assert await store.get_turn_by_response("resp_a") == by_message
    assert await store.get_turn_by_response("resp_missing") is None


async def test_the_message_a_turn_was_posted_as_is_recorded(store: Store) -> None:
    turn = await store.add_turn(new_turn(response_id="resp_a"))
    assert await store.set_turn_message(turn.id, 555, "https://cdn.example/a.png")
    assert await store.get_turn_by_message(555) == dataclasses.replace(
        turn, message_id=555, image_url="https://cdn.example/a.png"
    )
    assert not await store.set_turn_message(turn.id + 1000, 1, None)


async def test_latest_turn_skips_failed_and_unposted_turns(store: Store) -> None:
    assert await store.latest_turn(100) is None
    await store.add_turn(
        new_turn(response_id="resp_posted", message_id=1, image_url="https://cdn.example/1.png")
    )
    unposted = await store.add_turn(new_turn(response_id="resp_unposted"))
    await store.add_turn(
        new_turn(response_id="resp_failed", status=TurnStatus.FAILED, message_id=3, image_url="x")
    )
    await store.add_turn(new_turn(200, response_id="resp_elsewhere", message_id=2))

    latest_image = await store.latest_turn(100)
    assert latest_image is not None
    assert latest_image.response_id == "resp_posted"
    assert await store.latest_turn(100, with_image=False) == unposted


async def test_list_turns_is_newest_first_per_channel(store: Store) -> None:
    ids = [(await store.add_turn(new_turn(response_id=f"resp_{i}"))).id for i in range(5)]
    await store.add_turn(new_turn(200))
    assert [turn.id for turn in await store.list_turns(100)] == ids[::-1]
    assert [turn.id for turn in await store.list_turns(100, limit=2)] == ids[:2:-1]
    assert await store.list_turns(999) == []


async def test_delete_turn(store: Store) -> None:
    turn = await store.add_turn(new_turn())
    assert await store.delete_turn_rolling_back(turn.id)
    assert await store.get_turn(turn.id) is None
    assert not await store.delete_turn_rolling_back(turn.id)


async def test_hot_path_with_many_turns(store: Store) -> None:
    channels = range(1000, 1010)
    for channel_id in channels:
        await store.create_conversation(conversation(channel_id))
    for step in range(150):
        for channel_id in channels:
            current = await store.get_conversation(channel_id)
            assert current is not None
            turn = await store.add_turn(
                new_turn(
                    channel_id,
                    response_id=f"resp_{channel_id}_{step}",
                    parent_response_id=current.latest_response_id,
                    message_id=channel_id * 1000 + step,
                    image_url=f"https://cdn.example/{channel_id}/{step}.png",
                )
            )
            await store.advance_conversation(
                channel_id, response_id=f"resp_{channel_id}_{step}", message_id=turn.message_id
            )

    for channel_id in channels:
        current = await store.get_conversation(channel_id)
        assert current is not None
        assert current.latest_response_id == f"resp_{channel_id}_149"
        latest = await store.latest_turn(channel_id)
        assert latest is not None
        assert latest.response_id == current.latest_response_id
        assert latest.parent_response_id == f"resp_{channel_id}_148"
        history = await store.list_turns(channel_id, limit=1000)
        assert len(history) == 150
        # Each turn continues from the one before it in its own thread.
        for newer, older in itertools.pairwise(history):
            assert newer.parent_response_id == older.response_id
        branch_point = await store.get_turn_by_message(channel_id * 1000 + 70)
        assert branch_point is not None
        assert branch_point.response_id == f"resp_{channel_id}_70"


# Jobs


async def test_enqueue_job_starts_queued(store: Store, clock: FakeClock) -> None:
    job = await enqueue(store, new_job(progress_message_id=42))
    assert job.status == JobStatus.QUEUED
    assert (job.attempts, job.error, job.started_at, job.finished_at) == (0, None, None, None)
    assert job.created_at == clock.now
    assert job.progress_message_id == 42
    assert job.payload == {"prompt": "a cat", "partials": 2}
    assert await store.get_job(job.id) == job
    assert await store.get_job(job.id + 1000) is None


async def test_start_job_moves_queued_to_running_once(store: Store, clock: FakeClock) -> None:
    job = await enqueue(store, new_job())
    clock.advance(5)
    assert await store.start_job(job.id)
    assert not await store.start_job(job.id)
    started = await store.get_job(job.id)
    assert started is not None
    assert (started.status, started.attempts, started.started_at) == (
        JobStatus.RUNNING,
        1,
        clock.now,
    )
    assert not await store.start_job(job.id + 1000)


async def test_only_one_of_many_racing_workers_starts_a_job(store: Store) -> None:
    job = await enqueue(store, new_job())
    results = await asyncio.gather(*(store.start_job(job.id) for _ in range(25)))
    assert sum(result is not None for result in results) == 1
    started = await store.get_job(job.id)
    assert started is not None
    assert started.attempts == 1


async def test_finish_job_records_outcome_once(store: Store, clock: FakeClock) -> None:
    job = await enqueue(store, new_job())
    await store.start_job(job.id)
    clock.advance(20)
    assert await store.finish_job(job.id, JobStatus.FAILED, "rate_limited")
    assert not await store.finish_job(job.id, JobStatus.DONE)
    finished = await store.get_job(job.id)
    assert finished is not None
    assert (finished.status, finished.error, finished.finished_at) == (
        "failed",
        "rate_limited",
        clock.now,
    )


async def test_queued_job_can_be_cancelled(store: Store) -> None:
    job = await enqueue(store, new_job())
    assert await store.finish_job(job.id, "cancelled")
    cancelled = await store.get_job(job.id)
    assert cancelled is not None and cancelled.status == "cancelled"
    assert not await store.start_job(job.id)


@pytest.mark.parametrize("status", ["running", "queued", "bogus"])
async def test_finish_job_rejects_non_final_status(store: Store, status: str) -> None:
    job = await enqueue(store, new_job())
    with pytest.raises(ValueError, match="cannot finish"):
        await store.finish_job(job.id, status)
    unchanged = await store.get_job(job.id)
    assert unchanged is not None
    assert unchanged.status == JobStatus.QUEUED


async def test_set_job_progress_message(store: Store) -> None:
    job = await enqueue(store, new_job())
    assert await store.set_job_progress_message(job.id, 9001)
    updated = await store.get_job(job.id)
    assert updated is not None
    assert updated.progress_message_id == 9001
    assert not await store.set_job_progress_message(job.id + 1000, 1)


async def test_count_active_jobs(store: Store) -> None:
    running = await enqueue(store, new_job(10))
    await store.start_job(running.id)
    await enqueue(store, new_job(10))
    finished = await enqueue(store, new_job(10))
    await store.finish_job(finished.id, "done")
    await enqueue(store, new_job(11))
    assert await store.count_active_jobs(10) == 2
    assert await store.count_active_jobs(11) == 1
    assert await store.count_active_jobs(12) == 0
    assert await store.count_active_jobs() == 3


async def test_requeue_puts_the_same_job_at_the_back(store: Store, clock: FakeClock) -> None:
    failed = await enqueue(store, new_job(10, progress_message_id=7))
    clock.advance(1)
    waiting = await enqueue(store, new_job(11))
    await store.start_job(failed.id)
    await store.finish_job(failed.id, "failed", "transient")
    clock.advance(1)

    retried = await readmit(store, failed.id)
    assert retried is not None
    assert retried.id == failed.id
    assert (retried.status, retried.error, retried.started_at, retried.finished_at) == (
        JobStatus.QUEUED,
        None,
        None,
        None,
    )
    assert (retried.payload, retried.progress_message_id, retried.attempts) == (
        failed.payload,
        7,
        1,
    )
    assert retried.created_at == failed.created_at
    # Ownerless queued jobs are adopted in queue order: the retried one comes last.
    orphans = await store.adopt_orphans("w-1", stale_after=60.0)
    assert [job.id for job in orphans.queued] == [waiting.id, failed.id]
    # A second click on Retry must not queue the request twice.
    assert await readmit(store, failed.id) is None

    assert await store.start_job(failed.id)
    again = await store.get_job(failed.id)
    assert again is not None
    assert again.attempts == 2


async def test_requeue_accepts_interrupted_jobs(store: Store) -> None:
    job = await enqueue(store, new_job())
    await store.start_job(job.id)
    assert await store.finish_job(job.id, "interrupted")
    retried = await readmit(store, job.id)
    assert retried is not None
    assert retried.status == JobStatus.QUEUED


@pytest.mark.parametrize("final", ["done", "cancelled"])
async def test_requeue_refuses_jobs_that_are_not_retryable(store: Store, final: str) -> None:
    queued = await enqueue(store, new_job())
    assert await readmit(store, queued.id) is None
    ended = await enqueue(store, new_job())
    await store.finish_job(ended.id, final)
    assert await readmit(store, ended.id) is None
    assert await readmit(store, ended.id + 1000) is None


# Uploaded-file cache


# The job ledger


class Refused(Exception):
    pass


def cap(max_images: int) -> Callable[[Occupancy], None]:
    """A gate that admits while the user's images (spent + reserved) stay under `max_images`."""

    def gate(occupancy: Occupancy) -> None:
        if occupancy.user_images + 1 > max_images:
            raise Refused(occupancy)

    return gate


async def test_admission_counts_spent_and_reserved_and_is_atomic(store: Store) -> None:
    await store.record_usage(usage(user_id=10, images=1, cost_usd=0.5))
    seen: list[Occupancy] = []

    def watch(occupancy: Occupancy) -> None:
        seen.append(occupancy)
        cap(3)(occupancy)

    async def admit() -> Job | None:
        try:
            return await store.admit_job(
                new_job(10, reserved_usd=0.25, reserved_images=1),
                user_window=WHOLE_TIME,
                guild_window=WHOLE_TIME,
                gate=watch,
            )
        except Refused:
            return None

    results = await asyncio.gather(*(admit() for _ in range(8)))
    # One image spent: only two more fit under a cap of three, however the burst interleaves.
    assert sum(r is not None for r in results) == 2
    assert seen[0] == Occupancy(
        user_pending=0, user_images=1, user_usd=0.5, guild_images=1, guild_usd=0.5
    )
    assert max(o.user_pending for o in seen) == 2
    assert max(o.user_usd for o in seen) == pytest.approx(1.0)


async def test_windows_bound_spent_usage_on_both_sides(store: Store, clock: FakeClock) -> None:
    clock.now = 1000.0
    await store.record_usage(usage(user_id=10, images=1))
    clock.now = 5000.0
    await store.record_usage(usage(user_id=10, images=1))
    seen: list[Occupancy] = []
    await store.admit_job(
        new_job(10),
        user_window=Window(since=2000.0, until=4000.0),
        guild_window=Window(since=0.0, until=1500.0),
        gate=seen.append,
    )
    assert seen[0].user_images == 0
    assert seen[0].guild_images == 1
    totals = await store.usage_totals(since=0, until=2000.0, user_id=10)
    assert totals.images == 1


async def test_reservations_end_with_the_job(store: Store) -> None:
    def held() -> Callable[[Occupancy], None]:
        def gate(occupancy: Occupancy) -> None:
            seen.append(occupancy)

        return gate

    seen: list[Occupancy] = []
    job = await store.admit_job(
        new_job(10, reserved_usd=1.0, reserved_images=1),
        user_window=WHOLE_TIME,
        guild_window=WHOLE_TIME,
        gate=held(),
    )
    assert job.reserved_usd == 1.0 and job.reserved_images == 1
    await store.start_job(job.id)
    billed = usage(user_id=10, images=0, cost_usd=0.3)
    assert await store.finish_job(job.id, "failed", "moderation", usage=billed)
    await store.admit_job(new_job(10), user_window=WHOLE_TIME, guild_window=WHOLE_TIME, gate=held())
    assert seen[-1].user_pending == 0
    assert seen[-1].user_usd == pytest.approx(0.3)
    assert seen[-1].user_images == 0


async def test_retry_passes_the_gate_again(store: Store) -> None:
    job = await enqueue(store, new_job(10, reserved_images=1))
    await store.start_job(job.id)
    await store.finish_job(job.id, "interrupted")
    with pytest.raises(Refused):
        await store.readmit_job(
            job.id,
            reserved_usd=0.1,
            reserved_images=1,
            user_window=WHOLE_TIME,
            guild_window=WHOLE_TIME,
            gate=cap(0),
        )
    assert (await store.get_job(job.id)).status == "interrupted"  # type: ignore[union-attr]
    again = await store.readmit_job(
        job.id,
        reserved_usd=0.1,
        reserved_images=1,
        user_window=WHOLE_TIME,
        guild_window=WHOLE_TIME,
        gate=cap(1),
    )
    assert again is not None and again.status == "queued" and again.reserved_usd == 0.1


async def test_a_large_image_and_an_empty_one_read_back_whole(store: Store) -> None:
    # Several database pages, so that the bytes cross page and overflow boundaries.
    big = random.Random(7).randbytes(300_001)
    await store.create_conversation(conversation(100))
    saved = []
    for response_id, image in (("resp_big", big), ("resp_empty", b"")):
        saved.append(
            await store.save_result(
                None,
                new_turn(100, response_id=response_id),
                image=image,
                image_format="png",
                usage=usage(user_id=10, images=1, cost_usd=0.21),
                advance=True,
            )
        )
    assert await store.get_turn_image(saved[0].id) == (big, "png")
    assert await store.get_turn_image(saved[1].id) == (b"", "png")


async def test_save_then_post(store: Store) -> None:
    await store.create_conversation(conversation(100))
    job = await enqueue(store, new_job(10, reserved_usd=0.2, reserved_images=1))
    assert await store.start_job(job.id)
    assert await store.set_job_response(job.id, "resp_1")
    turn = await store.save_result(
        job.id,
        new_turn(100, response_id="resp_1"),
        image=b"\x89PNG image",
        image_format="png",
        usage=usage(user_id=10, images=1, cost_usd=0.21),
        advance=True,
    )
    saved = await store.get_job(job.id)
    assert saved is not None
    assert (saved.status, saved.turn_id, saved.reserved_usd, saved.response_id) == (
        "saved",
        turn.id,
        0.0,
        "resp_1",
    )
    assert [j.id for j in await store.saved_jobs()] == [job.id]
    assert await store.get_turn_image(turn.id) == (b"\x89PNG image", "png")
    head = await store.get_conversation(100)
    assert head is not None and head.latest_response_id == "resp_1"
    assert head.latest_message_id is None
    assert (await store.usage_totals(since=0, user_id=10)).images == 1

    assert await store.mark_posted(job.id, turn.id, 555, "https://cdn/x.png")
    assert not await store.mark_posted(job.id, turn.id, 555, "https://cdn/x.png")
    done = await store.get_job(job.id)
    assert done is not None and done.status == "done"
    assert await store.saved_jobs() == []
    head = await store.get_conversation(100)
    assert head is not None and head.latest_message_id == 555
    posted = await store.get_turn(turn.id)
    assert posted is not None and posted.message_id == 555


async def test_a_result_is_saved_only_for_a_running_job(store: Store) -> None:
    job = await enqueue(store, new_job(10))
    with pytest.raises(StorageError):
        await store.save_result(
            job.id,
            new_turn(100, response_id="resp_x"),
            image=b"x",
            image_format="png",
            usage=usage(user_id=10, images=1),
            advance=False,
        )
    # Nothing of the refused save is left behind.
    assert await store.get_turn_by_response("resp_x") is None
    assert (await store.usage_totals(since=0, user_id=10)).images == 0


async def test_several_images_of_one_job_are_saved_together(store: Store) -> None:
    await store.create_conversation(conversation(100))
    job = await enqueue(store, new_job(10, reserved_usd=0.8, reserved_images=4))
    assert await store.start_job(job.id)
    for rid in ("resp_a", "resp_b", "resp_c"):
        assert await store.add_job_response(job.id, rid)
    running = await store.get_job(job.id)
    assert running is not None and running.response_ids == ("resp_a", "resp_b", "resp_c")
    images = [
        NewImage(
            turn=new_turn(100, response_id=rid),
            image=rid.encode(),
            image_format="png",
            usage=usage(user_id=10, images=1, cost_usd=0.2, response_id=rid),
        )
        for rid in ("resp_a", "resp_c")
    ]
    turns = await store.save_results(
        job.id, images, billed=[usage(user_id=10, images=0, cost_usd=0.01)], advance=True
    )
    assert [t.response_id for t in turns] == ["resp_a", "resp_c"]
    assert [t.id for t in await store.job_turns(job.id)] == [t.id for t in turns]
    assert [await store.get_turn_image(t.id) for t in turns] == [
        (b"resp_a", "png"),
        (b"resp_c", "png"),
    ]
    saved = await store.get_job(job.id)
    assert saved is not None
    assert (saved.status, saved.turn_id, saved.reserved_usd, saved.reserved_images) == (
        "saved",
        turns[0].id,
        0.0,
        0,
    )
    head = await store.get_conversation(100)
    assert head is not None and head.latest_response_id == "resp_a"
    totals = await store.usage_totals(since=0, user_id=10)
    assert totals.images == 2 and totals.cost_usd == pytest.approx(0.41)
    # Saving again (a second process, a retry) finds the job saved: nothing is doubled.
    with pytest.raises(StorageError):
        await store.save_results(job.id, images, advance=True)
    assert len(await store.job_turns(job.id)) == 2
    assert (await store.usage_totals(since=0, user_id=10)).images == 2
    assert not await store.add_job_response(job.id, "resp_d")
    assert await store.job_turns(job.id + 1000) == []
    with pytest.raises(ValueError):
        await store.save_results(job.id, [], advance=True)


async def save_job_turn(store: Store, job_id: int, response_id: str) -> Turn:
    return await store.save_result(
        job_id,
        new_turn(100, response_id=response_id),
        image=response_id.encode(),
        image_format="png",
        usage=usage(response_id=response_id),
        advance=True,
    )


async def test_a_job_records_the_head_it_starts_from(store: Store) -> None:
    await store.create_conversation(conversation(100, latest_response_id="resp_0"))
    job = await enqueue(store, new_job(10))
    started = await store.start_job(job.id, "w-1")
    assert started is not None and started.status == "running"
    assert (started.base_response_id, started.worker_id, started.attempts) == ("resp_0", "w-1", 1)
    fetched = await store.get_job(job.id)
    assert fetched is not None and fetched.base_response_id == "resp_0"
    elsewhere = await enqueue(store, new_job(10, channel_id=999))
    started = await store.start_job(elsewhere.id)
    assert started is not None and started.base_response_id is None


async def test_the_head_moves_only_from_the_head_the_job_started_from(store: Store) -> None:
    await store.create_conversation(conversation(100, latest_response_id="resp_0"))
    late = await enqueue(store, new_job(10))
    first = await enqueue(store, new_job(10))
    assert await store.start_job(late.id) and await store.start_job(first.id)
    # Both started from resp_0; the one that saves first moves the head.
    newer = await save_job_turn(store, first.id, "resp_new")
    assert "branched" not in newer.result
    head = await store.get_conversation(100)
    assert head is not None and head.latest_response_id == "resp_new"
    # The late one is saved in full (image, usage, job saved) as a branch, and the head stays.
    branch = await save_job_turn(store, late.id, "resp_late")
    assert branch.result.get("branched") is True
    head = await store.get_conversation(100)
    assert head is not None and head.latest_response_id == "resp_new"
    assert await store.get_turn_image(branch.id) == (b"resp_late", "png")
    saved = await store.get_job(late.id)
    assert saved is not None and (saved.status, saved.turn_id) == ("saved", branch.id)
    again = await store.get_turn(branch.id)
    assert again is not None and again.result.get("branched") is True
    assert (await store.usage_totals(since=0, user_id=10)).images == 2
    # Posting the branch does not point the head's message at it.
    assert await store.mark_posted(first.id, newer.id, 71, None)
    assert await store.mark_posted(late.id, branch.id, 72, None)
    head = await store.get_conversation(100)
    assert head is not None and head.latest_message_id == 71
    # A job started now bases on the newer head and moves it.
    following = await enqueue(store, new_job(10))
    started = await store.start_job(following.id)
    assert started is not None and started.base_response_id == "resp_new"
    await save_job_turn(store, following.id, "resp_next")
    head = await store.get_conversation(100)
    assert head is not None and head.latest_response_id == "resp_next"


async def test_a_job_without_a_conversation_is_no_branch(store: Store) -> None:
    job = await enqueue(store, new_job(10))
    assert await store.start_job(job.id)
    turn = await save_job_turn(store, job.id, "resp_1")
    assert "branched" not in turn.result
    assert await store.get_conversation(100) is None


async def test_racing_saves_from_one_head_move_it_once(
    database: StoreOpener, clock: FakeClock
) -> None:
    first, second = await database(clock), await database(clock)
    try:
        await first.create_conversation(conversation(100, latest_response_id="resp_0"))
        jobs = [await enqueue(first, new_job(10)) for _ in range(6)]
        for job in jobs:
            assert await first.start_job(job.id)
        turns = await asyncio.gather(
            *(
                save_job_turn(first if i % 2 else second, job.id, f"resp_{job.id}")
                for i, job in enumerate(jobs)
            )
        )
        movers = [turn for turn in turns if not turn.result.get("branched")]
        assert len(movers) == 1
        head = await second.get_conversation(100)
        assert head is not None and head.latest_response_id == movers[0].response_id
    finally:
        await first.close()
        await second.close()


async def test_deleting_the_head_turn_rolls_the_conversation_back(store: Store) -> None:
    await store.create_conversation(conversation(100))
    first = await store.save_result(
        None,
        new_turn(100, response_id="resp_1", message_id=11),
        image=b"1",
        image_format="png",
        usage=usage(),
        advance=True,
    )
    second = await store.save_result(
        None,
        new_turn(100, response_id="resp_2", parent_response_id="resp_1"),
        image=b"2",
        image_format="png",
        usage=usage(),
        advance=True,
    )
    assert await store.delete_turn_rolling_back(second.id)
    head = await store.get_conversation(100)
    assert head is not None
    assert (head.latest_response_id, head.latest_message_id) == ("resp_1", 11)
    assert await store.get_turn_image(second.id) is None
    assert not await store.delete_turn_rolling_back(second.id)
    assert await store.delete_turn_rolling_back(first.id)
    head = await store.get_conversation(100)
    assert head is not None and head.latest_response_id is None


async def test_deleting_an_old_turn_keeps_the_head(store: Store) -> None:
    await store.create_conversation(conversation(100))
    old = await store.save_result(
        None,
        new_turn(100, response_id="a"),
        image=b"a",
        image_format="png",
        usage=usage(),
        advance=True,
    )
    await store.save_result(
        None,
        new_turn(100, response_id="b"),
        image=b"b",
        image_format="png",
        usage=usage(),
        advance=True,
    )
    assert await store.delete_turn_rolling_back(old.id)
    head = await store.get_conversation(100)
    assert head is not None and head.latest_response_id == "b"


async def test_uploaded_file_cache(store: Store) -> None:
    digest = "ab" * 32
    assert await store.get_uploaded_file(digest) is None
    await store.put_uploaded_file(digest, "file-1", 1234)
    assert await store.get_uploaded_file(digest) == "file-1"
    await store.put_uploaded_file(digest, "file-2", 1234)
    assert await store.get_uploaded_file(digest) == "file-2"
    assert await store.get_uploaded_file("cd" * 32) is None


# Usage ledger


async def test_usage_totals_filter_by_time_user_and_guild(store: Store, clock: FakeClock) -> None:
    await store.record_usage(usage(10, 1, cost_usd=5.0))
    clock.advance(10)
    since = clock.now
    await store.record_usage(usage(10, 1, cost_usd=0.25))
    await store.record_usage(usage(10, None, cost_usd=0.5, images=2))
    await store.record_usage(usage(11, 2, cost_usd=1.0, input_tokens=7, output_tokens=9))

    assert await store.usage_totals(since=since) == UsageTotals(
        images=4, input_tokens=207, output_tokens=4009, cost_usd=1.75, image_tokens=5400
    )
    assert await store.usage_totals(since=since, user_id=10) == UsageTotals(
        images=3, input_tokens=200, output_tokens=4000, cost_usd=0.75, image_tokens=3600
    )
    assert await store.usage_totals(since=since, guild_id=1) == UsageTotals(
        images=1, input_tokens=100, output_tokens=2000, cost_usd=0.25, image_tokens=1800
    )
    assert await store.usage_totals(since=since, user_id=10, guild_id=2) == UsageTotals(
        images=0, input_tokens=0, output_tokens=0, cost_usd=0.0
    )
    assert (await store.usage_totals(since=since - 10)).cost_usd == pytest.approx(6.75)


async def test_usage_by_day_buckets_in_utc(store: Store, clock: FakeClock) -> None:
    clock.now = NEW_YEAR - 1  # 2025-12-31T23:59:59Z
    await store.record_usage(usage(cost_usd=1.0))
    clock.advance(1)  # midnight belongs to the new day
    await store.record_usage(usage(cost_usd=2.0))
    await store.record_usage(usage(11, 2, cost_usd=4.0, images=3))
    clock.advance(2 * DAY)
    await store.record_usage(usage(cost_usd=8.0))

    assert await store.usage_by_day(since=0) == [
        DayUsage(day="2025-12-31", images=1, cost_usd=1.0),
        DayUsage(day="2026-01-01", images=4, cost_usd=6.0),
        DayUsage(day="2026-01-03", images=1, cost_usd=8.0),
    ]
    assert await store.usage_by_day(since=NEW_YEAR, guild_id=1) == [
        DayUsage(day="2026-01-01", images=1, cost_usd=2.0),
        DayUsage(day="2026-01-03", images=1, cost_usd=8.0),
    ]
    assert await store.usage_by_day(since=0, user_id=11) == [
        DayUsage(day="2026-01-01", images=3, cost_usd=4.0)
    ]


async def test_usage_by_user_is_costliest_first(store: Store) -> None:
    await store.record_usage(usage(10, 1, cost_usd=1.0))
    await store.record_usage(usage(11, 1, cost_usd=3.0))
    await store.record_usage(usage(12, 1, cost_usd=0.5))
    await store.record_usage(usage(12, 1, cost_usd=0.5))
    await store.record_usage(usage(13, 2, cost_usd=99.0))
    assert await store.usage_by_user(since=0, guild_id=1) == [
        UserUsage(user_id=11, images=1, cost_usd=3.0),
        UserUsage(user_id=12, images=2, cost_usd=1.0),
        UserUsage(user_id=10, images=1, cost_usd=1.0),
    ]
    everyone = await store.usage_by_user(since=0, guild_id=None)
    assert [row.user_id for row in everyone] == [13, 11, 12, 10]


async def test_list_usage_is_newest_first(store: Store, clock: FakeClock) -> None:
    await store.record_usage(usage(response_id="resp_old"))
    clock.advance(1)
    await store.record_usage(usage(response_id="resp_new", image_input_tokens=5))
    clock.advance(1)
    await store.record_usage(usage(11, response_id="resp_other"))
    entries = await store.list_usage(since=0, user_id=10)
    assert [entry.response_id for entry in entries] == ["resp_new", "resp_old"]
    assert entries[0].at == NEW_YEAR + 1
    assert entries[0].image_input_tokens == 5
    assert len(await store.list_usage(since=0, limit=1)) == 1


# Settings


async def test_user_settings_are_replaced_by_the_change_of_what_is_saved(store: Store) -> None:
    assert await store.get_user_settings(10) == {}
    await store.update_user_settings(10, lambda _: {"size": "1024x1024", "partials": 2})
    seen: list[dict[str, object]] = []

    def change(saved: dict[str, object]) -> dict[str, object]:
        seen.append(dict(saved))
        return {"quality": "high"}

    assert await store.update_user_settings(10, change) == {"quality": "high"}
    assert seen == [{"size": "1024x1024", "partials": 2}]
    assert await store.get_user_settings(10) == {"quality": "high"}
    assert await store.get_user_settings(11) == {}


async def test_simultaneous_updates_are_never_lost(store: Store) -> None:
    def add(key: str) -> Callable[[dict[str, object]], dict[str, object]]:
        return lambda saved: {**saved, key: True}

    await asyncio.gather(
        *(store.update_guild_config(1, add(f"k{i}")) for i in range(20)),
        *(store.update_user_settings(10, add(f"k{i}")) for i in range(20)),
    )
    expected = {f"k{i}": True for i in range(20)}
    assert await store.get_guild_config(1) == expected
    assert await store.get_user_settings(10) == expected


async def test_a_change_that_raises_leaves_the_saved_value(store: Store) -> None:
    await store.update_guild_config(1, lambda _: {"engine": "images"})

    def refuse(saved: dict[str, object]) -> dict[str, object]:
        raise ValueError("no")

    with pytest.raises(ValueError):
        await store.update_guild_config(1, refuse)
    with pytest.raises(ValueError):
        await store.update_user_settings(10, refuse)
    assert await store.get_guild_config(1) == {"engine": "images"}
    assert await store.get_user_settings(10) == {}
    await store.update_guild_config(1, lambda saved: {**saved, "partials": False})
    assert await store.get_guild_config(1) == {"engine": "images", "partials": False}


async def test_guild_config_round_trips(store: Store) -> None:
    config: dict[str, object] = {
        "allowed_channels": [BIG_ID, 5],
        "budget": {"monthly_usd": 25.5},
        "partials": False,
        "note": "한국어 서버",
    }
    assert await store.get_guild_config(1) == {}
    await store.update_guild_config(1, lambda _: config)
    assert await store.get_guild_config(1) == config
    assert await store.get_guild_config(2) == {}


async def test_settings_reject_values_json_cannot_hold(store: Store) -> None:
    with pytest.raises(TypeError):
        await store.update_user_settings(10, lambda _: {"when": object()})
    assert await store.get_user_settings(10) == {}


# Privacy


async def test_delete_user_data(store: Store) -> None:
    gone, kept = 10, 11
    await store.update_user_settings(gone, lambda _: {"size": "auto"})
    await store.update_user_settings(kept, lambda _: {"size": "auto"})
    await store.create_conversation(conversation(100, owner_id=gone))
    await store.create_conversation(conversation(200, owner_id=kept))
    await store.add_turn(new_turn(100, user_id=gone))
    kept_turn_in_gone_thread = await store.add_turn(new_turn(100, user_id=kept))
    await store.add_turn(new_turn(200, user_id=gone))
    finished = await enqueue(store, new_job(gone))
    await store.finish_job(finished.id, "done")
    active = await enqueue(store, new_job(gone))
    await enqueue(store, new_job(kept))
    await store.record_usage(usage(gone, 1, cost_usd=2.0))
    await store.record_usage(usage(gone, None, cost_usd=1.0))
    await store.record_usage(usage(kept, 1, cost_usd=4.0))

    # settings 1 + turns 2 + finished jobs 1 + conversations 1 + usage rows 2
    assert await store.delete_user_data(gone) == 7

    assert await store.get_user_settings(gone) == {}
    assert await store.get_user_settings(kept) == {"size": "auto"}
    assert await store.get_conversation(100) is None
    assert await store.get_conversation(200) is not None
    assert await store.list_turns(100) == [kept_turn_in_gone_thread]
    assert await store.list_turns(200) == []
    assert await store.get_job(finished.id) is None
    assert await store.get_job(active.id) is not None
    assert await store.count_active_jobs(kept) == 1
    assert (await store.usage_totals(since=0, user_id=gone)).images == 0
    # The server's spending still counts what the user generated, now anonymously.
    assert (await store.usage_totals(since=0, guild_id=1)).cost_usd == 6.0
    assert await store.usage_by_user(since=0, guild_id=1) == [
        UserUsage(user_id=kept, images=1, cost_usd=4.0),
        UserUsage(user_id=ANONYMOUS_USER_ID, images=1, cost_usd=2.0),
    ]
    anonymous = await store.list_usage(since=0, user_id=ANONYMOUS_USER_ID)
    assert {(entry.channel_id, entry.response_id) for entry in anonymous} == {(None, None)}

    assert await store.delete_user_data(gone) == 0


# Many tasks on one store


async def test_concurrent_hot_paths_from_many_tasks(store: Store) -> None:
    async def thread(channel_id: int) -> None:
        await store.create_conversation(conversation(channel_id))
        for step in range(20):
            current = await store.get_conversation(channel_id)
            assert current is not None
            await store.add_turn(
                new_turn(
                    channel_id,
                    response_id=f"resp_{channel_id}_{step}",
                    parent_response_id=current.latest_response_id,
                    message_id=channel_id * 100 + step,
                )
            )
            await store.advance_conversation(
                channel_id, response_id=f"resp_{channel_id}_{step}", message_id=None
            )

    channels = range(1, 41)
    await asyncio.gather(*(thread(channel_id) for channel_id in channels))

    all_ids: set[int] = set()
    for channel_id in channels:
        history = await store.list_turns(channel_id, limit=100)
        assert [turn.response_id for turn in history] == [
            f"resp_{channel_id}_{step}" for step in reversed(range(20))
        ]
        assert history[-1].parent_response_id is None
        all_ids.update(turn.id for turn in history)
    assert len(all_ids) == 40 * 20


async def test_multi_statement_writes_interleave_with_other_writes(store: Store) -> None:
    async def busy_user(user_id: int) -> None:
        for step in range(10):
            await store.add_turn(new_turn(user_id=user_id, response_id=f"resp_{user_id}_{step}"))
            await store.record_usage(usage(user_id))

    async def forgetful_user(user_id: int) -> int:
        await store.update_user_settings(user_id, lambda _: {"size": "auto"})
        await store.add_turn(new_turn(user_id=user_id))
        return await store.delete_user_data(user_id)

    results = await asyncio.gather(
        *(busy_user(user_id) for user_id in range(1, 6)),
        *(forgetful_user(user_id) for user_id in range(100, 110)),
    )
    assert results[5:] == [2] * 10
    for user_id in range(1, 6):
        assert (await store.usage_totals(since=0, user_id=user_id)).images == 10
    assert len(await store.list_turns(100, limit=1000)) == 50


# Two store instances on one database (two processes, as the database sees them)


def within(*, user_images: int, guild_images: int) -> Callable[[Occupancy], None]:
    """A gate with a per-user and a per-server cap on images (spent + reserved)."""

    def gate(occupancy: Occupancy) -> None:
        if occupancy.user_images + 1 > user_images or occupancy.guild_images + 1 > guild_images:
            raise Refused(occupancy)

    return gate


async def test_admission_holds_across_two_store_instances(
    database: StoreOpener, clock: FakeClock
) -> None:
    first, second = await database(clock), await database(clock)
    try:
        gate = within(user_images=3, guild_images=5)

        async def admit(store: Store, user_id: int) -> Job | None:
            try:
                return await store.admit_job(
                    new_job(user_id, reserved_usd=0.1, reserved_images=1),
                    user_window=WHOLE_TIME,
                    guild_window=WHOLE_TIME,
                    gate=gate,
                )
            except Refused:
                return None

        attempts = [
            admit(store, user_id)
            for _ in range(8)
            for store in (first, second)
            for user_id in (10, 11)
        ]
        admitted = [job for job in await asyncio.gather(*attempts) if job is not None]
        # Two users of one server: three places each, five for the server.
        assert len(admitted) == 5
        per_user = {
            user_id: sum(job.user_id == user_id for job in admitted) for user_id in (10, 11)
        }
        assert sorted(per_user.values()) == [2, 3]
        assert await second.count_active_jobs() == await first.count_active_jobs() == 5
        assert len({job.id for job in admitted}) == 5
    finally:
        await first.close()
        await second.close()


async def test_a_retry_is_taken_once_across_two_store_instances(
    database: StoreOpener, clock: FakeClock
) -> None:
    first, second = await database(clock), await database(clock)
    try:
        job = await enqueue(first, new_job())
        await first.start_job(job.id)
        await first.finish_job(job.id, "interrupted")
        results = await asyncio.gather(
            *(readmit(store, job.id) for _ in range(6) for store in (first, second))
        )
        assert sum(result is not None for result in results) == 1
        again = await second.get_job(job.id)
        assert again is not None and again.status == "queued"
        assert await first.start_job(job.id) and not await second.start_job(job.id)
    finally:
        await first.close()
        await second.close()


# Workers: several bot processes sharing one database


async def test_start_job_records_the_worker_and_retry_moves_the_job_to_a_queue(
    store: Store,
) -> None:
    job = await enqueue(store, new_job(worker_id="w-admit"))
    assert job.worker_id == "w-admit"
    assert await store.start_job(job.id, "w-run")
    assert not await store.start_job(job.id, "w-other")
    running = await store.get_job(job.id)
    assert running is not None and running.worker_id == "w-run"
    await store.finish_job(job.id, "interrupted")
    again = await store.readmit_job(
        job.id,
        reserved_usd=0.0,
        reserved_images=0,
        user_window=WHOLE_TIME,
        guild_window=WHOLE_TIME,
        gate=allow_all,
        worker_id="w-retry",
    )
    assert again is not None and again.worker_id == "w-retry"


async def test_heartbeats_need_a_registered_worker(store: Store, clock: FakeClock) -> None:
    assert not await store.heartbeat_worker("w-1")
    await store.register_worker("w-1")
    clock.advance(5)
    assert await store.heartbeat_worker("w-1")
    # A restart under the same id registers again without complaint.
    await store.register_worker("w-1")


async def _jobs_of_two_workers(store: Store, clock: FakeClock) -> dict[str, Job]:
    """A dead worker's queued, running, saved and finished jobs, and a live worker's."""
    await store.register_worker("dead")
    await store.register_worker("live")
    jobs = {
        name: await enqueue(store, new_job(10 + i, worker_id=worker))
        for i, (name, worker) in enumerate(
            [
                ("dead_queued", "dead"),
                ("dead_running", "dead"),
                ("dead_saved", "dead"),
                ("dead_done", "dead"),
                ("live_queued", "live"),
                ("live_running", "live"),
            ]
        )
    }
    for name in ("dead_running", "dead_saved", "dead_done"):
        assert await store.start_job(jobs[name].id, "dead")
    assert await store.start_job(jobs["live_running"].id, "live")
    await store.save_result(
        jobs["dead_saved"].id,
        new_turn(100, response_id="resp_saved"),
        image=b"img",
        image_format="png",
        usage=usage(),
        advance=False,
    )
    await store.finish_job(jobs["dead_done"].id, "failed", "transient")
    return jobs


async def test_a_worker_adopts_only_the_unfinished_jobs_of_stale_workers(
    store: Store, clock: FakeClock
) -> None:
    jobs = await _jobs_of_two_workers(store, clock)
    clock.advance(10)
    assert await store.heartbeat_worker("live")
    # Nobody is stale yet: nothing changes hands.
    assert await store.adopt_orphans("live", stale_after=20) == Orphans()
    clock.advance(15)  # "dead" was last seen 25 s ago, "live" 15 s ago
    assert await store.heartbeat_worker("live")

    orphans = await store.adopt_orphans("live", stale_after=20)
    assert orphans.workers == ("dead",)
    assert [job.id for job in orphans.running] == [jobs["dead_running"].id]
    assert [job.id for job in orphans.saved] == [jobs["dead_saved"].id]
    assert [job.id for job in orphans.queued] == [jobs["dead_queued"].id]
    adopted = [*orphans.running, *orphans.saved, *orphans.queued]
    # Left as they were (the adopter decides), now the adopter's.
    assert [job.status for job in adopted] == ["running", "saved", "queued"]
    assert {job.worker_id for job in adopted} == {"live"}
    # The live worker's own jobs and the finished job are nobody's business.
    for name, expected in (
        ("live_queued", ("queued", "live")),
        ("live_running", ("running", "live")),
        ("dead_done", ("failed", "dead")),
    ):
        job = await store.get_job(jobs[name].id)
        assert job is not None and (job.status, job.worker_id) == expected
    # The dead worker is forgotten; a second look finds nothing more.
    assert not await store.heartbeat_worker("dead")
    assert await store.adopt_orphans("live", stale_after=20) == Orphans()


async def test_a_live_worker_is_never_adopted_from(store: Store, clock: FakeClock) -> None:
    jobs = await _jobs_of_two_workers(store, clock)
    clock.advance(100)
    await store.register_worker("third")
    assert await store.heartbeat_worker("live")
    orphans = await store.adopt_orphans("third", stale_after=20)
    assert orphans.workers == ("dead",)
    assert {job.id for job in (*orphans.running, *orphans.saved, *orphans.queued)} == {
        jobs["dead_queued"].id,
        jobs["dead_running"].id,
        jobs["dead_saved"].id,
    }
    for name in ("live_queued", "live_running"):
        job = await store.get_job(jobs[name].id)
        assert job is not None and job.worker_id == "live"


async def test_at_start_up_a_worker_takes_back_its_own_jobs(store: Store, clock: FakeClock) -> None:
    await store.register_worker("w-0")
    running = await enqueue(store, new_job(worker_id="w-0"))
    queued = await enqueue(store, new_job(11, worker_id="w-0"))
    assert await store.start_job(running.id, "w-0")
    clock.advance(1)
    await store.register_worker("w-0")  # the same process, restarted a second later
    assert await store.adopt_orphans("w-0", stale_after=60) == Orphans()
    orphans = await store.adopt_orphans("w-0", stale_after=60, own=True)
    assert orphans.workers == ()
    assert [job.id for job in orphans.running] == [running.id]
    assert [job.id for job in orphans.queued] == [queued.id]


async def test_jobs_of_no_known_worker_are_orphans(store: Store, clock: FakeClock) -> None:
    await store.register_worker("w-1")
    ownerless = await enqueue(store, new_job())
    assert await store.start_job(ownerless.id)
    vanished = await enqueue(store, new_job(11, worker_id="never-registered"))
    orphans = await store.adopt_orphans("w-1", stale_after=3600)
    assert [job.id for job in orphans.running] == [ownerless.id]
    assert [job.id for job in orphans.queued] == [vanished.id]


async def test_two_workers_adopting_at_once_never_share_a_job(
    database: StoreOpener, clock: FakeClock
) -> None:
    first, second = await database(clock), await database(clock)
    try:
        await first.register_worker("dead")
        jobs = [await enqueue(first, new_job(10 + i, worker_id="dead")) for i in range(12)]
        for job in jobs[:6]:
            assert await first.start_job(job.id, "dead")
        await first.register_worker("a")
        await second.register_worker("b")
        clock.advance(30)
        await first.heartbeat_worker("a")
        await second.heartbeat_worker("b")
        results = await asyncio.gather(
            *(
                store.adopt_orphans(worker, stale_after=20)
                for _ in range(4)
                for store, worker in ((first, "a"), (second, "b"))
            )
        )
        taken = [job.id for orphans in results for job in (*orphans.running, *orphans.queued)]
        assert sorted(taken) == sorted(job.id for job in jobs)
        assert sum(orphans.workers == ("dead",) for orphans in results) == 1
    finally:
        await first.close()
        await second.close()


# SQLite only


async def test_sqlite_uses_wal_and_records_schema_version(tmp_path: Path) -> None:
    store = await SqliteStore.open(tmp_path / "bot.db")
    await store.close()
    async with aiosqlite.connect(tmp_path / "bot.db") as conn:
        assert list(await conn.execute_fetchall("PRAGMA journal_mode")) == [("wal",)]
        assert await schema_version(conn) == packaged_migrations()[-1].version


async def test_sqlite_connection_pragmas(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / "bot.db", isolation_level=None) as conn:
        await SqliteStore(conn).setup()
        assert list(await conn.execute_fetchall("PRAGMA synchronous")) == [(1,)]  # NORMAL
        assert list(await conn.execute_fetchall("PRAGMA busy_timeout")) == [(5000,)]


async def test_sqlite_setup_is_idempotent_and_reopen_keeps_data(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    store = await SqliteStore.open(path)
    await store.setup()
    await store.setup()
    turn = await store.add_turn(new_turn())
    await store.close()

    async with await SqliteStore.open(path) as reopened:
        assert await reopened.get_turn(turn.id) == turn
    async with aiosqlite.connect(path) as conn:
        assert await schema_version(conn) == len(packaged_migrations())


async def test_sqlite_migrations_are_atomic(tmp_path: Path) -> None:
    first = Migration(1, "first", ("CREATE TABLE a (x INTEGER)",))
    broken = Migration(2, "broken", ("CREATE TABLE b (x INTEGER)", "CREATE TABLE a (x INTEGER)"))
    fixed = Migration(2, "fixed", ("CREATE TABLE b (x INTEGER)",))
    async with aiosqlite.connect(tmp_path / "m.db", isolation_level=None) as conn:
        with pytest.raises(sqlite3.OperationalError, match="already exists"):
            await migrate(conn, [first, broken])
        assert await schema_version(conn) == 1
        tables = await conn.execute_fetchall("SELECT name FROM sqlite_master WHERE type='table'")
        assert [row[0] for row in tables] == ["a"]
        assert not conn.in_transaction

        assert await migrate(conn, [first, fixed]) == 2
        assert await migrate(conn, [first, fixed]) == 2


async def test_sqlite_refuses_a_database_from_a_newer_bot(tmp_path: Path) -> None:
    async with aiosqlite.connect(tmp_path / "new.db", isolation_level=None) as conn:
        await conn.execute("PRAGMA user_version = 999")
        with pytest.raises(SchemaVersionError, match="999"):
            await SqliteStore(conn).setup()


def test_sqlite_migration_files_are_numbered_without_gaps(tmp_path: Path) -> None:
    (tmp_path / "0001_one.sql").write_text("CREATE TABLE a (x INTEGER);\n")
    (tmp_path / "0002_two.sql").write_text("CREATE TABLE b (x INTEGER);\n")
    (tmp_path / "README.md").write_text("not a migration")
    assert [m.version for m in load_migrations(tmp_path)] == [1, 2]

    (tmp_path / "0004_four.sql").write_text("CREATE TABLE d (x INTEGER);\n")
    with pytest.raises(StorageError, match="without gaps"):
        load_migrations(tmp_path)
    (tmp_path / "0004_four.sql").unlink()
    (tmp_path / "3_bad.sql").write_text("")
    with pytest.raises(StorageError, match="NNNN_name"):
        load_migrations(tmp_path)


def test_sqlite_statement_splitting() -> None:
    script = """
        -- a comment; with a semicolon
        CREATE TABLE t (x TEXT DEFAULT 'a;b');
        CREATE TRIGGER tr AFTER INSERT ON t BEGIN
            UPDATE t SET x = 'c;d';
        END;
        -- trailing comment
    """
    statements = split_statements(script)
    assert len(statements) == 2
    assert statements[1].endswith("END;")
    with pytest.raises(StorageError, match="unterminated"):
        split_statements("CREATE TABLE t (x INTEGER)")


async def test_sqlite_injected_connection_in_default_mode_commits(tmp_path: Path) -> None:
    path = tmp_path / "bot.db"
    # sqlite3's default mode opens transactions implicitly; the store must still commit.
    async with aiosqlite.connect(path) as conn:
        store = SqliteStore(conn)
        async with store:
            turn = await store.add_turn(new_turn())
            assert await store.start_job((await enqueue(store, new_job())).id)
            assert await store.delete_user_data(10) == 1
            await store.add_turn(new_turn(user_id=11))
        assert not conn.in_transaction
        # The store did not close a connection it does not own.
        assert list(await conn.execute_fetchall("SELECT 1")) == [(1,)]
        async with aiosqlite.connect(path) as other:
            rows = await other.execute_fetchall("SELECT id, user_id FROM turns")
            assert list(rows) == [(turn.id + 1, 11)]
            jobs = await other.execute_fetchall("SELECT status FROM jobs")
            assert list(jobs) == [("running",)]


async def test_sqlite_open_store_closes_its_connection(tmp_path: Path) -> None:
    store = await open_store(f"sqlite:///{tmp_path}/bot.db")
    await store.close()
    with pytest.raises(ValueError, match="Connection closed"):
        await store.get_conversation(1)


# PostgreSQL only


class StoreThread:
    """An event loop of its own in a thread of its own, for a store that must not share the
    test's loop: a gate that blocks it holds its transaction open, as a slow process would."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on this thread's loop and wait for it from the caller's loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, self.loop))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=30)
        self.loop.close()


def lock_waiters(observer: psycopg.Connection[Any]) -> int:
    """How many sessions wait for an advisory lock right now."""
    row = observer.execute(
        "SELECT COUNT(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    ).fetchone()
    return int(row[0]) if row is not None else 0


@pytest.mark.parametrize("contender", ["same user", "same server", "retry"])
async def test_postgres_admission_waits_for_a_holder_in_another_pool(
    postgres_url: str, clock: FakeClock, contender: str
) -> None:
    """While one process's admission holds the last place, another's waits for it to commit
    and then sees its reservation, for the same user, the same server, and a Retry."""
    holder, other = StoreThread(), StoreThread()
    inside, release = threading.Event(), threading.Event()
    seen: list[Occupancy] = []

    def one_place(occupancy: Occupancy) -> None:
        if occupancy.user_pending >= 1 or occupancy.guild_images >= 1:
            raise Refused(occupancy)

    def holding(occupancy: Occupancy) -> None:
        inside.set()
        assert release.wait(timeout=60), "the test never released the first admission"
        one_place(occupancy)

    def watching(occupancy: Occupancy) -> None:
        seen.append(occupancy)
        one_place(occupancy)

    first = await holder.call(PostgresStore.open(postgres_url, clock=clock))
    second = await other.call(PostgresStore.open(postgres_url, clock=clock))
    pending: list[asyncio.Future[Job | None]] = []
    try:
        retried: Job | None = None
        if contender == "retry":
            retried = await other.call(enqueue(second, new_job(10)))
            await other.call(second.start_job(retried.id))
            await other.call(second.finish_job(retried.id, "interrupted"))
        admitted: asyncio.Future[Job | None] = asyncio.ensure_future(
            holder.call(
                first.admit_job(
                    new_job(10, reserved_images=1),
                    user_window=WHOLE_TIME,
                    guild_window=WHOLE_TIME,
                    gate=holding,
                )
            )
        )
        pending.append(admitted)
        await wait_until(inside.is_set, what="the first admission to reach its gate")
        if retried is not None:
            contending = second.readmit_job(
                retried.id,
                reserved_usd=0.0,
                reserved_images=1,
                user_window=WHOLE_TIME,
                guild_window=WHOLE_TIME,
                gate=watching,
            )
        else:
            user_id = 10 if contender == "same user" else 11
            contending = second.admit_job(
                new_job(user_id, reserved_images=1),
                user_window=WHOLE_TIME,
                guild_window=WHOLE_TIME,
                gate=watching,
            )
        contended: asyncio.Future[Job | None] = asyncio.ensure_future(other.call(contending))
        pending.append(contended)
        with psycopg.connect(postgres_url, autocommit=True) as observer:
            await wait_until(
                lambda: lock_waiters(observer) == 1,
                what="the second admission to wait for the first one's lock",
            )
        # It read nothing while the first held the place.
        assert seen == [] and not contended.done()
        release.set()
        job = await admitted
        assert job is not None
        with pytest.raises(Refused):
            await contended
        assert len(seen) == 1
        if contender == "same server":
            assert (seen[0].user_pending, seen[0].guild_images) == (0, 1)
        else:
            assert seen[0].user_pending == 1
        assert await holder.call(first.count_active_jobs()) == 1
    finally:
        release.set()
        # Let both admissions end (however the test ended) before their loops go.
        if pending:
            await asyncio.wait(pending, timeout=60)
        await holder.call(first.close())
        await other.call(second.close())
        holder.stop()
        other.stop()


async def test_postgres_migrations_twin_the_sqlite_ones() -> None:
    twins = [(m.version, m.name) for m in postgres_migrations()]
    assert twins == [(m.version, m.name) for m in packaged_migrations()]
    assert all(migration.statements for migration in postgres_migrations())


async def test_postgres_setup_from_several_processes_at_once(
    postgres_url: str, clock: FakeClock
) -> None:
    # Four pools migrating one empty database together: each migration is applied once.
    stores = await asyncio.gather(
        *(PostgresStore.open(postgres_url, clock=clock) for _ in range(4))
    )
    try:
        turn = await stores[0].add_turn(new_turn())
        await stores[1].setup()
        assert await stores[3].get_turn(turn.id) == turn
    finally:
        for store in stores:
            await store.close()
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await postgres_schema_version(conn) == len(postgres_migrations())
        cursor = await conn.execute(
            "SELECT version, name, applied_at FROM schema_migrations ORDER BY version"
        )
        rows = await cursor.fetchall()
    assert [(row[0], row[1]) for row in rows] == [
        (m.version, m.name) for m in postgres_migrations()
    ]
    assert {row[2] for row in rows} == {clock.now}


async def test_postgres_migrations_are_atomic(postgres_url: str) -> None:
    first = Migration(1, "first", ("CREATE TABLE a (x INTEGER)",))
    broken = Migration(2, "broken", ("CREATE TABLE b (x INTEGER)", "CREATE TABLE a (x INTEGER)"))
    fixed = Migration(2, "fixed", ("CREATE TABLE b (x INTEGER)",))
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        assert await postgres_schema_version(conn) == 0
        with pytest.raises(psycopg.errors.DuplicateTable):
            await postgres_migrate(conn, [first, broken])
        assert await postgres_schema_version(conn) == 1
        cursor = await conn.execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename"
        )
        assert [row[0] for row in await cursor.fetchall()] == ["a", "schema_migrations"]
        assert await postgres_migrate(conn, [first, fixed]) == 2
        assert await postgres_migrate(conn, [first, fixed]) == 2


async def test_postgres_refuses_a_database_from_a_newer_bot(postgres_url: str) -> None:
    async with await PostgresStore.open(postgres_url):
        pass
    async with await psycopg.AsyncConnection.connect(postgres_url, autocommit=True) as conn:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, applied_at) VALUES (999, 'future', 0)"
        )
    with pytest.raises(SchemaVersionError, match="999"):
        await PostgresStore.open(postgres_url)


async def test_open_store_selects_postgresql(postgres_url: str) -> None:
    for url in (postgres_url, postgres_url.replace("postgresql://", "postgresql+psycopg://")):
        store = await open_store(url)
        try:
            assert isinstance(store, PostgresStore)
            await store.update_guild_config(1, lambda _: {"engine": "images"})
            assert await store.get_guild_config(1) == {"engine": "images"}
        finally:
            await store.close()


async def test_postgres_errors_never_show_the_password(
    postgres_server: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    right = postgres_server.url()
    wrong = right.replace(quote(postgres_server.password, safe=""), "wr%40ng:pass")
    assert wrong != right
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StorageError) as refused:
        await PostgresStore.open(wrong, connect_timeout=5)
    message = str(refused.value)
    assert "password authentication failed" in message
    assert "postgres:***@127.0.0.1" in message
    with pytest.raises(StorageError) as missing:
        await open_store(right.rsplit("/", 1)[0] + "/no_such_database")
    assert "no_such_database" in str(missing.value)
    everything = message + str(missing.value) + caplog.text
    for secret in ("wr@ng:pass", "wr%40ng:pass", postgres_server.password):
        assert secret not in everything


# DATABASE_URL


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("sqlite:///data/bot.db", "data/bot.db"),
        ("sqlite:////var/lib/bot/bot.db", "/var/lib/bot/bot.db"),
        ("sqlite:///:memory:", ":memory:"),
        ("sqlite://", ":memory:"),
        ("sqlite+aiosqlite:///bot.db", "bot.db"),
        ("SQLITE:///Bot.db", "Bot.db"),
    ],
)
def test_sqlite_urls_follow_sqlalchemy(url: str, path: str) -> None:
    assert sqlite_path_from_url(url) == path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgresql://bot:hunter2@db/bot", "names PostgreSQL"),
        ("postgresql+asyncpg://bot:hunter2@db/bot", "names PostgreSQL"),
        ("postgres://bot:hunter2@db/bot", "names PostgreSQL"),
        ("mysql://bot:hunter2@db/bot", "'mysql' is not supported"),
        ("data/bot.db", "not a database URL"),
        ("sqlite://data/bot.db", "three slashes"),
        ("sqlite:///bot.db?mode=ro", "query parameters"),
    ],
)
def test_other_database_urls_are_refused_clearly(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as raised:
        sqlite_path_from_url(url)
    assert "hunter2" not in str(raised.value)


async def test_open_store_creates_the_folder_for_a_relative_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    async with await open_store("sqlite:///data/nested/bot.db") as store:
        await store.update_guild_config(1, lambda _: {"engine": "images"})
    assert (tmp_path / "data" / "nested" / "bot.db").is_file()


async def test_open_store_absolute_path_and_memory(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "dir" / "bot.db"
    async with await open_store(f"sqlite:///{target}") as store:
        await store.update_user_settings(1, lambda _: {"a": 1})
    async with await open_store(f"sqlite:///{target}") as store:
        assert await store.get_user_settings(1) == {"a": 1}
    async with await open_store("sqlite:///:memory:") as memory:
        await memory.update_user_settings(1, lambda _: {"b": 2})
        assert await memory.get_user_settings(1) == {"b": 2}


async def test_open_store_refuses_other_databases_without_the_password() -> None:
    with pytest.raises(ValueError, match="'mysql' is not supported") as raised:
        await open_store("mysql://bot:hunter2@db/bot")
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "shown", "described"),
    [
        (
            "postgresql://bot:hu%40nter2@db:5432/bot?sslmode=require",
            "postgresql://bot:***@db:5432/bot?sslmode=require",
            "PostgreSQL postgresql://bot:***@db:5432/bot?sslmode=require",
        ),
        (
            "postgresql+psycopg://bot:hunter2@db/bot",
            "postgresql+psycopg://bot:***@db/bot",
            "PostgreSQL postgresql://bot:***@db/bot",
        ),
        (
            "postgres://db/bot?user=bot&password=hunter2",
            "postgres://db/bot?user=bot&password=***",
            "PostgreSQL postgresql://db/bot?user=bot&password=***",
        ),
        (
            "postgresql://bot@db/bot",
            "postgresql://bot@db/bot",
            "PostgreSQL postgresql://bot@db/bot",
        ),
        ("sqlite:///data/bot.db", "sqlite:///data/bot.db", "SQLite file data/bot.db"),
        ("sqlite://", "sqlite://", "SQLite in memory"),
    ],
)
def test_database_urls_are_shown_without_their_password(
    url: str, shown: str, described: str
) -> None:
    assert redact_url(url) == shown
    assert describe_database(url) == described
    for password in url_passwords(url):
        assert password not in shown


def test_url_passwords_lists_every_spelling() -> None:
    assert url_passwords("postgresql://bot:hu%40nter2@db/bot") == ["hu%40nter2", "hu@nter2"]
    assert url_passwords("postgresql://db/bot?password=a%2Fb") == ["a%2Fb", "a/b"]
    assert url_passwords("postgresql://bot@db/bot") == []


def _in_main_file(path: Path, turn_id: int) -> bool:
    """Whether a turn is in the database file itself (the WAL unread: `immutable`)."""
    conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
    try:
        return bool(conn.execute("SELECT 1 FROM turns WHERE id = ?", (turn_id,)).fetchall())
    except sqlite3.OperationalError:  # not even the schema is in the file yet
        return False
    finally:
        conn.close()


async def test_sqlite_checkpoints_off_the_write_path(tmp_path: Path) -> None:
    """Enough writes are checkpointed by the store's second connection, none inline."""
    path = tmp_path / "bot.db"
    store = await SqliteStore.open(path)
    try:
        # The store's own connection checkpoints only as a backstop, far above SQLite's 1000.
        rows = list(await store._conn.execute_fetchall("PRAGMA wal_autocheckpoint"))
        assert rows == [(WAL_BACKSTOP_PAGES,)]
        # Writes of about CHECKPOINT_PAGES pages, far below the backstop: they get into the file
        # only through the store's checkpointing connection, while the store stays open.
        for _ in range(CHECKPOINT_PAGES // PAGES_PER_COMMIT):
            turn = await store.add_turn(new_turn())
        await wait_until(lambda: _in_main_file(path, turn.id), what="a background checkpoint")
    finally:
        await store.close()
