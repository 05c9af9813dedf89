"""The money invariant, end to end: every image OpenAI billed is shown to its user at least once
and charged exactly once, and no limit is ever exceeded, whatever fails and whenever the
process dies.

The kill tests run `python -m bot run` as its own process with TEST_CRASH_AT set, so it
SIGKILLs itself right after one ledger step (admitted, running, received, saved, posted); a
second run without it must settle the job. Then the stand-ins and the database are read:
each response the OpenAI stand-in completed (= billed) has exactly one usage row and a final
image in Discord, no job is left open, and no paid generation happened that nobody asked for.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bot.core.studio import CRASH_POINTS
from bot.sandbox import Sandbox, sandbox
from fakes.discord_api import FakeDiscord
from fakes.openai_api import FakeOpenAI, Timeline
from storage.urls import postgres_conninfo
from tests.e2e import BotProcess, button, custom_ids, failures, finals

FAST = Timeline(first_partial=0.05, between_partials=0.05, final=0.05)


def billed(openai: FakeOpenAI) -> list[str]:
    """Responses the OpenAI stand-in completed with an image: what the operator pays for."""
    return [
        rid
        for rid, response in openai.stored_responses.items()
        if response.get("status") == "completed"
        and any(item.get("result") for item in response.get("output", []))
    ]


def all_finals(d: FakeDiscord) -> list[dict[str, Any]]:
    """Final images anywhere: the channel and every thread."""
    channel = d.channel["id"]
    found = finals(d, channel)
    for thread in d.threads(channel):
        found += finals(d, thread["id"])
    return found


def is_grid(message: dict[str, Any]) -> bool:
    """Whether a message shows several images of one job (it carries the U1-U4 buttons)."""
    return any(c.startswith("img:pick") for c in custom_ids(message))


def all_grids(d: FakeDiscord) -> list[dict[str, Any]]:
    """Messages anywhere that show several images of one job."""
    channel = d.channel["id"]
    places = [channel, *(thread["id"] for thread in d.threads(channel))]
    return [m for place in places for m in d.messages(place) if is_grid(m)]


def all_failures(d: FakeDiscord) -> list[dict[str, Any]]:
    channel = d.channel["id"]
    found = failures(d, channel)
    for thread in d.threads(channel):
        found += failures(d, thread["id"])
    return found


def _read(database: Path | str, sql: str) -> list[Any]:
    """Rows of one query, from a SQLite file or a PostgreSQL URL."""
    if isinstance(database, str):
        with psycopg.connect(postgres_conninfo(database)) as conn:
            return [tuple(row) for row in conn.execute(sql).fetchall()]
    with contextlib.closing(sqlite3.connect(database)) as db:
        return list(db.execute(sql).fetchall())


def check_invariant(d: FakeDiscord, openai: FakeOpenAI, database: Path | str) -> dict[str, Any]:
    """Assert the invariant against the stand-ins and the database; return what was counted."""
    usage = _read(database, "SELECT response_id, images FROM usage_ledger")
    turns = dict(_read(database, "SELECT response_id, id FROM turns"))
    open_jobs = _read(
        database, "SELECT id, status FROM jobs WHERE status IN ('queued', 'running', 'saved')"
    )
    # A final image names its turn in its buttons; a grid, each of its images in U1-U4 (one
    # attachment per button).
    shown_turns = {
        int(custom_id.rsplit(":", 1)[1])
        for message in all_finals(d) + all_grids(d)
        if message.get("attachments")
        for custom_id in custom_ids(message)
        if custom_id.startswith(("img:reroll:", "img:pick"))
    }
    for grid in all_grids(d):
        assert len(grid["attachments"]) == sum(c.startswith("img:pick") for c in custom_ids(grid))
    for rid in billed(openai):
        rows = [row for row in usage if row[0] == rid]
        assert len(rows) == 1 and rows[0][1] == 1, f"{rid} charged {rows}"
        assert rid in turns, f"{rid} was billed but never saved"
        assert turns[rid] in shown_turns, f"{rid} was billed but never shown"
    assert open_jobs == []
    return {"billed": len(billed(openai)), "charged": sum(r[1] for r in usage)}


@pytest.fixture(params=["sqlite", "postgres"])
async def killed(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[FakeDiscord, FakeOpenAI, BotProcess, Path | str]]:
    """The stand-ins and a bot process on SQLite, or on PostgreSQL (its shared job queue)."""
    url: str | None = (
        request.getfixturevalue("postgres_url") if request.param == "postgres" else None
    )
    async with FakeDiscord() as discord, FakeOpenAI() as openai:
        bot = BotProcess(discord, openai, tmp_path, database_url=url)
        try:
            yield discord, openai, bot, url if url is not None else tmp_path / "bot.db"
        finally:
            if bot.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    bot.process.kill()
                await bot.process.wait()
        assert "Traceback" not in bot.log, bot.log[-4000:]
        assert discord.unhandled == []


@pytest.mark.parametrize("count", [1, 4])
@pytest.mark.parametrize("point", CRASH_POINTS)
async def test_a_kill_at_every_ledger_step_keeps_the_invariant(
    killed: tuple[FakeDiscord, FakeOpenAI, BotProcess, Path | str], point: str, count: int
) -> None:
    """With `count` 4 the invariant holds for each of the job's four images: the four are
    saved in one transaction, so a kill leaves all or none of them saved; a restart fetches
    the four finished responses (never draws them again) and posts them as one grid."""
    d, openai, bot, database = killed
    openai.set_timeline(FAST)

    def shown() -> list[dict[str, Any]]:
        return all_finals(d) if count == 1 else all_grids(d)

    await bot.start({"TEST_CRASH_AT": point})
    options: dict[str, Any] = {"prompt": "a lighthouse at dusk", "partials": 1}
    if count > 1:
        options["count"] = count
    await d.slash("imagine", options)
    assert await bot.exited() == -signal.SIGKILL
    shown_before = len(shown())
    requests_before = len(openai.requests)

    await bot.start()
    settled = await d.wait_for(lambda: shown() or all_failures(d) or None, timeout=30)
    if point == "running":
        # Killed before the request was sent: nothing was billed; the user is told, with Retry.
        failure = all_failures(d)[0]
        assert "restarted" in failure["content"]
        assert billed(openai) == []
        await d.click(failure["id"], button(failure, "retry"))
        await d.wait_for(lambda: shown() or None, timeout=30)
    else:
        assert all_failures(d) == [], settled
    await d.wait_for(lambda: not bot.log.count("could not"), timeout=5)
    assert await bot.stop() == 0

    counted = check_invariant(d, openai, database)
    # `count` pictures asked for, as many paid for and charged, shown once.
    assert counted == {"billed": count, "charged": count}
    assert len(shown()) == 1
    if count > 1:
        assert len(shown()[0]["attachments"]) == count
        assert all_finals(d) == []
    if point in ("received", "saved", "posted"):
        # Everything was drawn before the kill: the restart asked OpenAI for no new image.
        drawn = [r for r in openai.requests[requests_before:] if r.method == "POST"]
        assert drawn == []
    if point == "posted":
        # Discord showed it before the kill: the restart posts it again in the same message.
        assert shown_before == 1


async def test_a_burst_of_commands_cannot_pass_a_daily_limit_of_one(tmp_path: Path) -> None:
    async with sandbox(tmp_path, settings={"user_daily_images": 1}, timeline=FAST) as box:
        d = box.discord
        await asyncio.gather(*(d.slash("imagine", {"prompt": f"fox {i}"}) for i in range(20)))
        await d.wait_for(lambda: all_finals(d) or None, timeout=30)
        await d.wait_for(
            lambda: sum("of today's 1 images" in t for t in ephemeral_texts(box)) >= 19 or None,
            timeout=30,
        )
        await box.wait_idle()
        assert len(billed(box.openai)) == 1
        assert len(all_finals(d)) == 1
        # Retry of a refused request, Reroll and Vary meet the same gate.
        final = all_finals(d)[0]
        await d.click(final["id"], button(final, "reroll"))
        await d.wait_for(
            lambda: sum("of today's 1 images" in t for t in ephemeral_texts(box)) >= 20 or None,
            timeout=30,
        )
        await box.wait_idle()
        assert len(billed(box.openai)) == 1
    check_invariant(d, box.openai, tmp_path / "bot.db")


def ephemeral_texts(box: Sandbox) -> list[str]:
    d = box.discord
    channels = [d.channel["id"], *(t["id"] for t in d.threads(d.channel["id"]))]
    return [
        m["content"]
        for channel in channels
        for m in d.messages(channel)
        if int(m.get("flags") or 0) & 64
    ]


async def test_a_burst_never_holds_more_than_the_pending_cap(tmp_path: Path) -> None:
    slow = Timeline(first_partial=0.3, between_partials=0.3, final=2.0)
    async with sandbox(tmp_path, timeline=slow) as box:
        d = box.discord
        await asyncio.gather(*(d.slash("imagine", {"prompt": f"owl {i}"}) for i in range(20)))
        await d.wait_for(
            lambda: sum("in progress" in t for t in ephemeral_texts(box)) >= 15 or None,
            timeout=30,
        )
        await d.wait_for(lambda: len(all_finals(d)) >= 5 or None, timeout=60)
        await box.wait_idle(60)
        assert len(billed(box.openai)) == 5
        assert len(all_finals(d)) == 5
    check_invariant(d, box.openai, tmp_path / "bot.db")


async def test_a_burst_cannot_pass_a_daily_dollar_limit(tmp_path: Path) -> None:
    async with sandbox(tmp_path, timeline=FAST) as box:
        studio = box.bot.studio
        requester = await studio.requester(
            user_id=int(box.discord.user["id"]),
            guild_id=int(box.discord.guild["id"]),
            channel_id=int(box.discord.channel["id"]),
            client_locale="en",
        )
    from bot.core.jobs import JobKind, JobSpec

    estimate = studio.check(JobSpec(kind=JobKind.IMAGINE, prompt="a heron 10"), requester).estimate
    limit = round(estimate * 2.5, 4)
    async with sandbox(
        tmp_path / "limited", settings={"user_daily_usd": limit}, timeline=FAST
    ) as box:
        d = box.discord
        await asyncio.gather(*(d.slash("imagine", {"prompt": f"a heron {i}"}) for i in range(20)))
        await d.wait_for(
            lambda: sum("today's limit" in t for t in ephemeral_texts(box)) >= 18 or None,
            timeout=30,
        )
        await d.wait_for(lambda: len(all_finals(d)) >= 2 or None, timeout=30)
        await box.wait_idle()
        assert len(billed(box.openai)) == 2
        with contextlib.closing(sqlite3.connect(tmp_path / "limited" / "bot.db")) as db:
            (spent,) = db.execute("SELECT SUM(cost_usd) FROM usage_ledger").fetchone()
        assert spent <= limit
    check_invariant(d, box.openai, tmp_path / "limited" / "bot.db")
