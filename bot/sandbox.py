"""The bot, in this process, against the built-in Discord and OpenAI stand-ins (demo, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bot.services import Services, open_services
from bot.settings import Settings
from cogs.app import ImagineBot
from fakes.discord_api import FakeDiscord
from fakes.openai_api import FakeOpenAI, Timeline

SANDBOX_KEY = "sk-sandbox-local-only"


@dataclass
class Sandbox:
    """Both stand-ins and the bot connected to them."""

    discord: FakeDiscord
    openai: FakeOpenAI
    bot: ImagineBot
    services: Services
    settings: Settings

    async def wait_idle(self, seconds: float = 30.0) -> None:
        """Wait until the bot runs no job."""
        async with asyncio.timeout(seconds):
            await self.bot.studio.wait_idle()


def sandbox_settings(
    data_dir: Path,
    discord: FakeDiscord,
    openai: FakeOpenAI,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Settings that point at the stand-ins and keep the database in `data_dir`."""
    values: dict[str, Any] = {
        "discord_token": discord.token,
        "openai_api_key": SANDBOX_KEY,
        "openai_base_url": openai.base_url,
        "discord_api_base_url": discord.api_base,
        "discord_gateway_url": discord.gateway_url,
        "database_url": f"sqlite:///{(data_dir / 'bot.db').resolve()}",
        "openai_max_retries": 0,
    }
    values.update(overrides or {})
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@contextlib.asynccontextmanager
async def sandbox(
    data_dir: Path,
    *,
    settings: Mapping[str, Any] | None = None,
    timeline: Timeline | None = None,
    prerender: bool = False,
    discord: FakeDiscord | None = None,
) -> AsyncIterator[Sandbox]:
    """Start both stand-ins and the bot; stop everything on exit.

    A `discord` stand-in passed in that is already running is left running on exit (so a
    restart keeps it); one not started yet is started and stopped like the built-in one.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    async with contextlib.AsyncExitStack() as stack:
        fake_discord = discord if discord is not None else FakeDiscord()
        if not fake_discord.port:
            await stack.enter_async_context(fake_discord)
        fake_openai = await stack.enter_async_context(FakeOpenAI(prerender=prerender))
        if timeline is not None:
            fake_openai.set_timeline(timeline)
        # Route.BASE and the default gateway are process-wide; the stand-in restores them on close.
        fake_discord.patch_discord_py()
        config = sandbox_settings(data_dir, fake_discord, fake_openai, settings)
        async with open_services(config) as services:
            bot = ImagineBot(
                services=services,
                gateway_url=config.discord_gateway_url,
                guild_ready_timeout=0.05,
            )
            task = asyncio.create_task(bot.start(fake_discord.token), name="sandbox-bot")
            try:
                await fake_discord.wait_for(lambda: bot.is_ready() and bot.recovered, timeout=30)
                yield Sandbox(fake_discord, fake_openai, bot, services, config)
            finally:
                await bot.close()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
