"""The Discord stand-in shards as Discord does, driven by the real discord.py client.

`GET /gateway/bot` recommends a shard count and says how many shards may identify at once; a
session identifying as `[id, n]` receives only the guilds with `(guild_id >> 22) % n == id`,
DMs go to shard 0, and a bad shard tuple is closed with 4010.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import discord
import pytest
from discord.ext import commands

from fakes._discord_model import shard_of
from fakes.discord_api import FakeDiscord


class ShardBot(commands.AutoShardedBot):
    """An AutoShardedBot that records the messages it receives, with the shard that brought them."""

    def __init__(self, **options: Any) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            guild_ready_timeout=0.05,
            **options,
        )
        self.received: list[tuple[str, int | None]] = []

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Identify at once: the stand-in does not hold shards to Discord's 5-second spacing."""

    async def on_message(self, message: discord.Message) -> None:
        """Remember what arrived, and on which shard (None for DMs)."""
        guild = message.guild
        self.received.append((message.content, guild.shard_id if guild is not None else None))


@contextlib.asynccontextmanager
async def serving(fake: FakeDiscord) -> AsyncIterator[FakeDiscord]:
    async with fake:
        fake.patch_discord_py()
        yield fake
        assert fake.unhandled == []
        assert fake.internal_errors == []


@contextlib.asynccontextmanager
async def running(fake: FakeDiscord, bot: ShardBot) -> AsyncIterator[ShardBot]:
    task = asyncio.create_task(bot.start(fake.token))
    try:
        await fake.wait_for(lambda: bot.is_ready() or task.done(), timeout=15)
        if task.done():
            task.result()
        yield bot
    finally:
        await bot.close()
        await asyncio.gather(task, return_exceptions=True)


def guild_ids(bot: discord.Client) -> set[int]:
    return {guild.id for guild in bot.guilds}


async def test_gateway_bot_recommends_shards_and_an_identify_concurrency() -> None:
    async with serving(FakeDiscord(shards=3, max_concurrency=2)) as fake:
        bot = ShardBot()
        async with running(fake, bot):
            # No shard count given: discord.py asks GET /gateway/bot and runs every shard.
            assert bot.shard_count == 3
            assert sorted(bot.shards) == [0, 1, 2]
            limits = await bot.fetch_session_start_limits()
            assert limits.max_concurrency == 2
            assert limits.remaining == limits.total - 3
            assert sorted(shard for _, shard in fake.gateway.identified) == [
                (0, 3),
                (1, 3),
                (2, 3),
            ]
            # Together the shards hold every guild, each guild on the shard it hashes to.
            assert guild_ids(bot) == set(fake.guild_ids())
            for guild in bot.guilds:
                assert guild.shard_id == shard_of(guild.id, 3)


async def test_each_shard_process_receives_only_its_guilds_and_shard_0_the_dms() -> None:
    async with serving(FakeDiscord(shards=2)) as fake:
        first = fake.add_guild("Shard zero", shard=(0, 2))
        second = fake.add_guild("Shard one", shard=(1, 2))
        zero = ShardBot(shard_ids=[0], shard_count=2)
        one = ShardBot(shard_ids=[1], shard_count=2)
        async with running(fake, zero), running(fake, one):
            on_zero = {g for g in fake.guild_ids() if shard_of(g, 2) == 0}
            assert guild_ids(zero) == on_zero and int(first["id"]) in on_zero
            assert guild_ids(one) == set(fake.guild_ids()) - on_zero
            assert int(second["id"]) in guild_ids(one)

            await fake.user_message(fake.guild_channels(first["id"])[0]["id"], "to zero")
            await fake.user_message(fake.guild_channels(second["id"])[0]["id"], "to one")
            dm = fake.dm_channel(fake.user)
            await fake.user_message(dm["id"], "a dm")
            await fake.wait_for(lambda: len(zero.received) == 2 and len(one.received) == 1)
            await fake.gateway.flush()
            assert sorted(zero.received, key=str) == sorted(
                [("to zero", 0), ("a dm", None)], key=str
            )
            assert one.received == [("to one", 1)]


@pytest.mark.parametrize(
    "shard",
    [[2, 2], [-1, 2], [0, 0], [1], ["0", 1], [0, 1, 2], None],
    ids=["id-past-count", "negative", "zero-count", "one-number", "string", "three", "null"],
)
async def test_a_bad_shard_tuple_is_closed_with_4010(shard: Any) -> None:
    async with (
        serving(FakeDiscord(shards=2)) as fake,
        aiohttp.ClientSession() as http,
        http.ws_connect(fake.gateway_url + "?v=10&encoding=json") as ws,
    ):
        assert (await ws.receive_json())["op"] == 10
        identify = {"token": fake.token, "intents": 0, "properties": {}, "shard": shard}
        await ws.send_json({"op": 2, "d": identify})
        closing = await ws.receive()
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4010
        assert fake.gateway.identifies == 0


async def test_discord_py_gives_up_on_a_shard_the_gateway_refuses() -> None:
    async with serving(FakeDiscord(shards=2)) as fake:
        bot = ShardBot(shard_ids=[3], shard_count=2)
        try:
            with pytest.raises(discord.ConnectionClosed) as closed:
                await asyncio.wait_for(bot.start(fake.token), 15)
            assert closed.value.code == 4010
        finally:
            await bot.close()
