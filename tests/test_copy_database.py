"""`python -m bot copy-database`: a SQLite database copied into PostgreSQL keeps every record and
every id, refuses a target that holds data unless told, and never shows the password."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from bot.doctor import check_database
from bot.settings import Settings
from fakes.openai_api import FakeOpenAI
from storage import JobStatus, SqliteStore, Store
from storage.copy import TargetNotEmpty, copy_sqlite_to_postgres
from storage.postgres import PostgresStore
from tests.conftest import PostgresServer, cli_env, run_cli
from tests.test_storage_contract import (
    BIG_ID,
    DAY,
    WHOLE_TIME,
    FakeClock,
    allow_all,
    conversation,
    enqueue,
    new_job,
    new_turn,
    usage,
)

IMAGE = bytes(range(256)) * 40  # every byte value, as a PNG has


async def fill(store: Store, clock: FakeClock) -> dict[str, list[int]]:
    """Put one of everything in a store (with gaps in the ids); return the ids it holds."""
    await store.create_conversation(conversation(100, latest_response_id="resp_2"))
    await store.create_conversation(conversation(BIG_ID, guild_id=None, options={"ko": "고양이"}))
    turns = [
        await store.add_turn(new_turn(100, response_id=f"resp_{n}", message_id=9000 + n))
        for n in range(3)
    ]
    # The newest turn is deleted: SQLite's AUTOINCREMENT mark stays past the largest id left.
    assert await store.delete_turn_rolling_back(turns[-1].id)
    jobs = [await enqueue(store, new_job(10, progress_message_id=700 + n)) for n in range(5)]
    await store.start_job(jobs[1].id)
    await store.start_job(jobs[2].id)
    await store.set_job_response(jobs[2].id, "resp_saved")
    saved = await store.save_result(
        jobs[2].id,
        new_turn(100, response_id="resp_saved", prompt="ünïcode ✓", result={"seconds": 1.5}),
        image=IMAGE,
        image_format="png",
        usage=usage(10),
        advance=True,
    )
    await store.start_job(jobs[3].id)
    await store.finish_job(jobs[3].id, "failed", "rate_limited", usage=usage(10, images=0))
    clock.advance(DAY)
    await store.admit_job(
        new_job(BIG_ID, guild_id=None, reserved_usd=0.5, reserved_images=1),
        user_window=WHOLE_TIME,
        guild_window=WHOLE_TIME,
        gate=allow_all,
    )
    await store.record_usage(usage(BIG_ID, guild_id=None, cost_usd=1.25))
    await store.update_user_settings(10, lambda _: {"size": "1024x1024", "locale": "ko"})
    await store.update_guild_config(1, lambda _: {"budget": {"usd": 30.0}, "channels": [1, 2]})
    await store.put_uploaded_file("ab" * 32, "file-123", 4096)
    return {
        "turns": [turn.id for turn in turns[:-1]] + [saved.id],
        "jobs": [job.id for job in jobs] + [jobs[-1].id + 1],
        "conversations": [100, BIG_ID],
    }


async def snapshot(store: Store, ids: dict[str, list[int]]) -> dict[str, object]:
    """Everything the bot can read back through the Store protocol."""
    return {
        "turns": [await store.get_turn(turn_id) for turn_id in ids["turns"]],
        "images": [await store.get_turn_image(turn_id) for turn_id in ids["turns"]],
        "jobs": [await store.get_job(job_id) for job_id in ids["jobs"]],
        "conversations": [await store.get_conversation(c) for c in ids["conversations"]],
        "saved": await store.saved_jobs(),
        "usage": await store.list_usage(since=0, limit=1000),
        "by_day": await store.usage_by_day(since=0),
        "by_user": await store.usage_by_user(since=0, guild_id=None),
        "settings": await store.get_user_settings(10),
        "config": await store.get_guild_config(1),
        "file": await store.get_uploaded_file("ab" * 32),
        "pending": await store.count_active_jobs(),
    }


async def make_source(tmp_path: Path) -> tuple[Path, dict[str, list[int]], dict[str, object]]:
    path = tmp_path / "bot.db"
    clock = FakeClock()
    source = await SqliteStore.open(path, clock=clock)
    try:
        ids = await fill(source, clock)
        before = await snapshot(source, ids)
    finally:
        await source.close()
    return path, ids, before


async def test_a_copy_keeps_every_record_and_id(tmp_path: Path, postgres_url: str) -> None:
    path, ids, before = await make_source(tmp_path)
    copied = {table.name: table for table in await copy_sqlite_to_postgres(path, postgres_url)}
    assert copied["turns"].rows == 3 and copied["jobs"].rows == 6
    assert copied["turn_images"].next_id is None  # no id column there

    clock = FakeClock(2_000_000_000.0)
    target = await PostgresStore.open(postgres_url, clock=clock)
    try:
        after = await snapshot(target, ids)
        assert after == before
        assert [job.status for job in after["jobs"]] == [  # type: ignore[attr-defined]
            "queued", "running", "saved", "failed", "queued", "queued",
        ]  # fmt: skip
        # New rows continue past every id the old database handed out, deleted ones included.
        deleted_turn = max(ids["turns"][:2]) + 1
        turn = await target.add_turn(new_turn(100))
        assert turn.id > max(*ids["turns"], deleted_turn)
        assert turn.id == copied["turns"].next_id
        job = await enqueue(target, new_job())
        assert job.id == max(ids["jobs"]) + 1 == copied["jobs"].next_id
        # The ledger goes on where it was: the reservation copied still counts.
        assert await target.count_active_jobs(BIG_ID) == 1
        assert await target.finish_job(ids["jobs"][-1], JobStatus.CANCELLED)
    finally:
        await target.close()


async def test_a_target_that_holds_data_is_refused_unless_told(
    tmp_path: Path, postgres_url: str
) -> None:
    path, ids, before = await make_source(tmp_path)
    await copy_sqlite_to_postgres(path, postgres_url)
    target = await PostgresStore.open(postgres_url)
    try:
        await target.update_user_settings(10, lambda _: {"changed": True})
    finally:
        await target.close()

    with pytest.raises(TargetNotEmpty, match="3 in turns"):
        await copy_sqlite_to_postgres(path, postgres_url)
    target = await PostgresStore.open(postgres_url)
    try:
        assert await target.get_user_settings(10) == {"changed": True}  # untouched
    finally:
        await target.close()

    await copy_sqlite_to_postgres(path, postgres_url, overwrite=True)
    target = await PostgresStore.open(postgres_url)
    try:
        assert await snapshot(target, ids) == before  # replaced, not doubled
    finally:
        await target.close()


async def test_a_missing_source_is_not_created(tmp_path: Path, postgres_url: str) -> None:
    with pytest.raises(Exception, match="no SQLite database"):
        await copy_sqlite_to_postgres(tmp_path / "nothing.db", postgres_url)
    assert not (tmp_path / "nothing.db").exists()


async def test_the_copy_database_command(
    tmp_path: Path, postgres_server: PostgresServer, postgres_url: str, fake_openai: FakeOpenAI
) -> None:
    path, _ids, _before = await make_source(tmp_path)
    env = cli_env(fake_openai, tmp_path, {"DATABASE_URL": f"sqlite:///{path}"})
    password = postgres_server.password

    done = await run_cli(["copy-database", "--to", postgres_url], env, tmp_path)
    assert done.code == 0, done.stderr
    assert "turns: 3 rows (next id 5)" in done.stdout
    assert "postgres:***@127.0.0.1" in done.stdout

    again = await run_cli(["copy-database", "--to", postgres_url], env, tmp_path)
    assert again.code == 2
    assert "already holds rows" in again.stdout and "--overwrite" in again.stdout

    replaced = await run_cli(
        ["copy-database", "--from", f"sqlite:///{path}", "--to", postgres_url, "--overwrite"],
        {**env, "DATABASE_URL": "sqlite:////nonexistent/never/used.db"},
        tmp_path,
    )
    assert replaced.code == 0, replaced.stderr
    with psycopg.connect(postgres_url) as conn:
        row = conn.execute("SELECT COUNT(*) FROM turns").fetchone()
        assert row is not None and row[0] == 3

    wrong = await run_cli(["copy-database", "--to", f"sqlite:///{tmp_path}/x.db"], env, tmp_path)
    assert wrong.code == 2 and "postgresql://" in wrong.stdout

    refused = await run_cli(
        ["copy-database", "--to", postgres_url.replace("@127.0.0.1", "x@127.0.0.1")],
        env,
        tmp_path,
    )
    assert refused.code == 1 and "password authentication failed" in refused.stdout
    for result in (done, again, replaced, refused):
        assert password not in result.stdout + result.stderr


async def test_doctor_names_the_backend_and_hides_the_password(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    ok = await check_database(Settings(database_url=postgres_url))
    assert ok.ok and ok.text.startswith("PostgreSQL postgresql://postgres:***@127.0.0.1:")
    wrong = postgres_url.replace("@127.0.0.1", "x@127.0.0.1")
    refused = await check_database(Settings(database_url=wrong))
    assert not refused.ok and "password authentication failed" in refused.text
    local = await check_database(Settings(database_url=f"sqlite:///{tmp_path}/bot.db"))
    assert local.ok and local.text == f"SQLite file {tmp_path}/bot.db opens and is up to date"
    for result in (ok, refused):
        assert postgres_server.password not in result.text
