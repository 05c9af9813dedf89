"""Two `python -m bot run` processes on different shards, sharing one PostgreSQL database.

Each runs one shard of two against the stand-ins: a guild's commands reach its shard's process
only; the state behind the buttons is in the shared database, so a button under an image that
a killed process posted works on the process that takes its shard over; and a job of a killed
process ends visibly on the live one once its heartbeat is stale.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest

from fakes.discord_api import FakeDiscord
from fakes.openai_api import FakeOpenAI, Timeline
from storage.urls import postgres_conninfo
from tests.conftest import wait_until
from tests.e2e import BotProcess, button, failures, finals

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
