"""Two `python -m bot run` processes on different shards, sharing one PostgreSQL database.

Each runs one shard of two against the stand-ins: a guild's commands reach its shard's process
only; the state behind the buttons is in the shared database, so a button under an image that
a killed process posted works on the process that takes its shard over; and a job of a killed
process ends visibly on the live one once its heartbeat is stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cogs._catalog import DISCORD_MESSAGES
from fakes.discord_api import FakeDiscord
from fakes.openai_api import FakeOpenAI, Timeline
from storage.urls import postgres_conninfo
from tests.conftest import wait_until
from tests.e2e import BotProcess, button, custom_ids, failures, finals

# Short heartbeats: a killed process counts as dead two seconds after its last word.
FAST_WORKERS = {"WORKER_HEARTBEAT_SECONDS": "0.25", "WORKER_STALE_SECONDS": "2"}
STALE_AFTER = 2.0


@dataclass
class Fleet:
    discord: FakeDiscord
    openai: FakeOpenAI
    database_url: str
    tmp_path: Path
    guilds: tuple[dict[str, Any], dict[str, Any]]  # the guild on shard 0, the one on shard 1
    processes: list[BotProcess]

    def process(self, name: str, shard_ids: str, env: dict[str, str] | None = None) -> BotProcess:
        bot = BotProcess(
            self.discord,
            self.openai,
            self.tmp_path / name,
            shard_ids=shard_ids,
            shard_count=2,
            database_url=self.database_url,
            env={**FAST_WORKERS, **(env or {})},
        )
        self.processes.append(bot)
        return bot

    def channel(self, shard: int) -> Any:
        return self.discord.guild_channels(self.guilds[shard]["id"])[0]["id"]

    def jobs(self) -> list[tuple[int, str, str | None]]:
        """(guild id, status, worker) of every job, oldest first."""
        with psycopg.connect(postgres_conninfo(self.database_url)) as conn:
            rows = conn.execute("SELECT guild_id, status, worker_id FROM jobs ORDER BY id")
            return [(int(g), str(s), w) for g, s, w in rows.fetchall()]


@pytest.fixture
async def fleet(tmp_path: Path, postgres_url: str) -> AsyncIterator[Fleet]:
    async with FakeDiscord(shards=2) as discord, FakeOpenAI() as openai:
        guilds = (
            discord.add_guild("Shard zero", shard=(0, 2)),
            discord.add_guild("Shard one", shard=(1, 2)),
        )
        fleet = Fleet(discord, openai, postgres_url, tmp_path, guilds, [])
        try:
            yield fleet
        finally:
            for bot in fleet.processes:
                if bot.process is not None:
                    with contextlib.suppress(ProcessLookupError):
                        bot.process.kill()
                    await bot.process.wait()
        for bot in fleet.processes:
            assert "Traceback" not in bot.log, bot.log[-4000:]
        assert discord.unhandled == []


async def first_thread(d: FakeDiscord, channel_id: Any) -> dict[str, Any]:
    thread: dict[str, Any] = await d.wait_for(
        lambda: (d.threads(channel_id) or [None])[0], timeout=30
    )
    return thread


async def test_a_guild_is_served_by_its_shard_and_buttons_outlive_the_process_that_posted(
    fleet: Fleet,
) -> None:
    d = fleet.discord
    zero, one = fleet.process("zero", "0"), fleet.process("one", "1")
    await zero.start()
    await one.start()
    g0, g1 = (int(g["id"]) for g in fleet.guilds)

    await d.slash("imagine", {"prompt": "a red fox", "partials": 1}, channel_id=fleet.channel(0))
    await d.slash("imagine", {"prompt": "a blue jay", "partials": 1}, channel_id=fleet.channel(1))
    thread0 = await first_thread(d, fleet.channel(0))
    thread1 = await first_thread(d, fleet.channel(1))
    image0 = await d.wait_for(lambda: (finals(d, thread0["id"]) or [None])[0], timeout=30)
    await d.wait_for(lambda: finals(d, thread1["id"]) or None, timeout=30)
    # Each guild's command reached the process that has its shard; the shared queue ran each
    # job in whichever process fetched it first (the job is done once the posting is recorded,
    # just after Discord shows the image).
    both = {"shards-0-of-2", "shards-1-of-2"}
    await wait_until(
        lambda: sorted((g, s) for g, s, _w in fleet.jobs()) == [(g0, "done"), (g1, "done")],
        timeout=10,
        what="both jobs done",
    )
    assert {w for _g, _s, w in fleet.jobs()} <= both

    # The process that posted the fox dies; another one takes shard 0 over. The button's state
    # is in the database, so it works there.
    assert await zero.stop(signal.SIGKILL) == -signal.SIGKILL
    spare = fleet.process("spare", "0", {"WORKER_ID": "spare"})
    await spare.start()
    await d.click(image0["id"], button(image0, "vary"))
    await d.wait_for(lambda: len(finals(d, thread0["id"])) >= 2 or None, timeout=30)
    await wait_until(
        lambda: fleet.jobs()[-1][:2] == (g0, "done"), timeout=10, what="the Vary job done"
    )
    assert fleet.jobs()[-1][2] in {"spare", "shards-1-of-2"}
    assert await spare.stop() == 0
    assert await one.stop() == 0


@pytest.mark.parametrize("point", ["running", "saved"])
async def test_a_job_of_a_killed_process_ends_visibly_on_the_live_one(
    fleet: Fleet, point: str
) -> None:
    d, openai = fleet.discord, fleet.openai
    openai.set_timeline(Timeline(first_partial=0.05, between_partials=0.05, final=0.05))
    zero, one = fleet.process("zero", "0"), fleet.process("one", "1")
    await zero.start({"TEST_CRASH_AT": point})

    await d.slash("imagine", {"prompt": "a lighthouse", "partials": 1}, channel_id=fleet.channel(0))
    assert await zero.exited() == -signal.SIGKILL
    killed = time.monotonic()
    # The other process starts once the job is cut off (else the shared queue might give the
    # job to it, not to the process that dies).
    await one.start()
    thread = await first_thread(d, fleet.channel(0))
    if point == "running":
        # Cut off before anything was asked of OpenAI: reported interrupted, with Retry.
        failure = await d.wait_for(lambda: (failures(d, thread["id"]) or [None])[0], timeout=30)
        assert "restarted" in failure["content"]
        assert button(failure, "retry")
        expected = "interrupted"
    else:
        # The image was saved (and paid for) before the kill: it is posted, not drawn again.
        await d.wait_for(lambda: finals(d, thread["id"]) or None, timeout=30)
        assert failures(d, thread["id"]) == []
        assert len(openai.stored_responses) == 1
        expected = "done"
    # Not before the dead process's heartbeat went stale (it beat at most 0.25 s before dying).
    assert time.monotonic() - killed >= STALE_AFTER - 0.5
    settled = [(int(fleet.guilds[0]["id"]), expected, "shards-1-of-2")]
    await wait_until(lambda: fleet.jobs() == settled, timeout=10, what="the job settled")
    assert "took over the jobs of stopped worker(s) shards-0-of-2" in one.log
    assert await one.stop() == 0


def turns_of(fleet: Fleet, channel_id: Any) -> list[tuple[str, str | None, bool]]:
    """(response id, parent response id, branched) of a thread's turns, oldest first."""
    with psycopg.connect(postgres_conninfo(fleet.database_url)) as conn:
        rows = conn.execute(
            "SELECT response_id, parent_response_id, result FROM turns WHERE channel_id = %s"
            " ORDER BY id",
            (int(channel_id),),
        ).fetchall()
    return [(str(r), p, bool(json.loads(res or "{}").get("branched"))) for r, p, res in rows]


def head_of(fleet: Fleet, channel_id: Any) -> str | None:
    with psycopg.connect(postgres_conninfo(fleet.database_url)) as conn:
        row = conn.execute(
            "SELECT latest_response_id FROM conversations WHERE channel_id = %s",
            (int(channel_id),),
        ).fetchone()
    return row[0] if row else None


async def test_quick_messages_in_a_thread_chain_whichever_process_runs_them(
    fleet: Fleet,
) -> None:
    d, openai = fleet.discord, fleet.openai
    openai.set_timeline(Timeline(first_partial=0.1, between_partials=0.1, final=0.2))
    zero, one = fleet.process("zero", "0"), fleet.process("one", "1")
    await zero.start()
    await one.start()
    await d.slash("imagine", {"prompt": "a harbour", "partials": 1}, channel_id=fleet.channel(0))
    thread = await first_thread(d, fleet.channel(0))
    await d.wait_for(lambda: finals(d, thread["id"]) or None, timeout=30)
    # Three quick messages: each becomes a ticket with the thread's lock, fetched by either
    # process; each must start from the turn before it, never fork from the same parent.
    for text in ("now at dusk", "add a boat", "make it snow"):
        await d.user_message(thread["id"], text)
    await d.wait_for(lambda: len(finals(d, thread["id"])) >= 4 or None, timeout=60)
    await wait_until(
        lambda: [s for _g, s, _w in fleet.jobs()] == ["done"] * 4, timeout=10, what="jobs done"
    )
    turns = turns_of(fleet, thread["id"])
    assert len(turns) == 4
    for (previous, _p, _b), (_r, parent, branched) in itertools.pairwise(turns):
        assert parent == previous and not branched
    assert head_of(fleet, thread["id"]) == turns[-1][0]
    sent = [
        r.json.get("previous_response_id")
        for r in openai.requests
        if r.path == "/v1/responses" and r.json is not None
    ]
    assert sent == [None, *(t[0] for t in turns[:-1])]
    assert await zero.stop() == 0
    assert await one.stop() == 0


async def test_cancel_pressed_on_one_process_stops_a_job_running_on_the_other(
    fleet: Fleet,
) -> None:
    d, openai = fleet.discord, fleet.openai
    openai.set_timeline(Timeline(first_partial=0.2, between_partials=3.0, final=20.0))
    # The process with the guild's shard admits jobs but runs none: the other one runs them.
    zero = fleet.process("zero", "0", {"QUEUE_CONCURRENCY": "0"})
    one = fleet.process("one", "1")
    await zero.start()
    await one.start()
    await d.slash(
        "imagine", {"prompt": "a slow glacier", "partials": 2}, channel_id=fleet.channel(0)
    )
    thread = await first_thread(d, fleet.channel(0))
    progress = await d.wait_for(
        lambda: next(
            (
                m
                for m in d.messages(thread["id"])
                if any(c.startswith("img:cancel:") for c in custom_ids(m))
            ),
            None,
        ),
        timeout=30,
    )
    await d.wait_for(lambda: openai.requests or None, timeout=30)
    await wait_until(
        lambda: fleet.jobs() == [(int(fleet.guilds[0]["id"]), "running", "shards-1-of-2")],
        what="the job running on the other process",
    )
    # Discord delivers the click to the shard's process; the job stops on the other one.
    await d.click(progress["id"], button(progress, "cancel"))
    await wait_until(
        lambda: fleet.jobs() == [(int(fleet.guilds[0]["id"]), "cancelled", "shards-1-of-2")],
        timeout=10,
        what="the job cancelled",
    )
    await d.wait_for(
        lambda: (
            DISCORD_MESSAGES["discord.cancelled"]["en"] in d.message(progress["id"])["content"]
            or None
        ),
        timeout=10,
    )
    assert finals(d, thread["id"]) == [] and failures(d, thread["id"]) == []
    with psycopg.connect(postgres_conninfo(fleet.database_url)) as conn:
        assert conn.execute("SELECT count(*) FROM usage_ledger").fetchone() == (0,)
    assert "Traceback" not in zero.log and "Traceback" not in one.log
    assert await zero.stop() == 0
    assert await one.stop() == 0


async def test_simultaneous_commands_on_both_processes_never_exceed_a_users_budget(
    fleet: Fleet,
) -> None:
    d = fleet.discord
    budget = {"USER_DAILY_IMAGES": "3"}
    zero, one = fleet.process("zero", "0", budget), fleet.process("one", "1", budget)
    await zero.start()
    await one.start()
    # The same member, four commands in each guild at once: each process admits its own.
    interactions = await asyncio.gather(
        *(
            d.slash("imagine", {"prompt": f"cat {i}"}, channel_id=fleet.channel(i % 2))
            for i in range(8)
        )
    )
    await d.wait_for(
        lambda: (
            all(i.original_message_id is not None or i.followup_ids for i in interactions) or None
        ),
        timeout=30,
    )
    await wait_until(
        lambda: [s for _g, s, _w in fleet.jobs()] == ["done"] * 3, timeout=30, what="3 jobs done"
    )
    with psycopg.connect(postgres_conninfo(fleet.database_url)) as conn:
        assert conn.execute("SELECT count(*), sum(images) FROM usage_ledger").fetchone() == (3, 3)
    assert len(fleet.jobs()) == 3
    assert await zero.stop() == 0
    assert await one.stop() == 0
