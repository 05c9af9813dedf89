"""The Discord bot: discord.py wired to the studio, and `python -m bot run`."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
from typing import Any

import discord
import yarl
from discord import app_commands
from discord.ext import commands

from bot.core import images
from bot.core.budgets import Limits
from bot.core.errors import BotError
from bot.core.jobs import JobSpec
from bot.core.metrics import Metrics
from bot.core.studio import InputLimits, Studio
from bot.loopmonitor import LoopLagMonitor
from bot.services import Services, open_services
from bot.settings import Settings
from cogs import _catalog  # noqa: F401  (the Discord side's sentences join the catalog)
from cogs._webapp import discord_status_trace, start_web
from storage.base import Job, Turn

log = logging.getLogger(__name__)

EXTENSIONS = ("cogs.imagine", "cogs.buttons", "cogs.admin", "cogs.help", "cogs.web")


def configure_discord_urls(api_base_url: str, gateway_url: str | None) -> None:
    """Point discord.py's REST routes (and the interaction webhooks) and gateway at the given URLs."""
    discord.http.Route.BASE = api_base_url.rstrip("/")
    if gateway_url:
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(gateway_url)


class ImagineTree(app_commands.CommandTree["ImagineBot"]):
    """The command tree: one place where command errors become a short, localized message."""

    async def on_error(
        self, interaction: discord.Interaction[ImagineBot], error: app_commands.AppCommandError
    ) -> None:
        from cogs._ui import reply_error

        original = getattr(error, "original", error)
        if isinstance(original, BotError):
            await reply_error(interaction, original.localized(str(interaction.locale)))
            return
        if isinstance(error, app_commands.CheckFailure):
            await reply_error(interaction, None, key="discord.not_allowed")
            return
        log.error(
            "command %s failed", interaction.command and interaction.command.name, exc_info=original
        )
        await reply_error(interaction, None, key="discord.internal_error")


class ImagineBot(commands.Bot):
    """The bot: receives its services through the constructor; cogs are thin glue over the studio."""

    def __init__(
        self,
        *,
        services: Services,
        gateway_url: str | None = None,
        dev_guild_id: int | None = None,
        **options: Any,
    ) -> None:
        intents = discord.Intents.default()
        intents.message_content = True
        self.metrics = Metrics()
        self.web: Any = None
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            tree_cls=ImagineTree,
            allowed_mentions=discord.AllowedMentions.none(),
            help_command=None,
            http_trace=discord_status_trace(self.metrics),
            **options,
        )
        settings = services.settings
        self.services = services
        self.settings = settings
        self.gateway_url = gateway_url
        self.dev_guild_id = dev_guild_id
        self.studio = Studio(
            store=services.store,
            runner=services.runner,
            prices=services.prices,
            defaults=services.default_options,
            engine=settings.engine,
            limits=Limits(
                global_concurrency=settings.global_concurrency,
                user_concurrency=settings.user_concurrency,
                user_daily_usd=settings.user_daily_usd,
                user_daily_images=settings.user_daily_images,
                guild_monthly_usd=settings.guild_monthly_usd,
                guild_monthly_images=settings.guild_monthly_images,
            ),
            sink_factory=self.make_sink,
            fetcher=self,
            crash_at=settings.test_crash_at,
            post_backoff=(settings.post_retry_seconds, 60.0),
            input_limits=InputLimits(
                max_bytes=settings.max_input_bytes, max_pixels=settings.max_input_pixels
            ),
            worker_id=settings.worker_name,
            heartbeat_seconds=settings.worker_heartbeat_seconds,
            stale_after_seconds=settings.worker_stale_seconds,
            shared_queue=services.shared_queue,
            queue_concurrency=settings.queue_concurrency,
        )
        self.metrics.watch_queue(
            lambda: len(self.studio.waiting_jobs()), lambda: self.studio.running
        )
        self.recovered = False
        self._frozen = False

    async def setup_hook(self) -> None:
        """Settle the ledger, load the cogs and persistent buttons, and sync the commands.

        Recovery runs before the gateway connects, so no command of this run can be running
        yet: only jobs cut off by the previous stop are reported as interrupted.
        """
        from cogs._translator import ImagineTranslator

        interrupted, reposted, queued = await self.studio.recover()
        if interrupted or reposted or queued:
            log.info(
                "recovered %d interrupted, %d saved and %d queued job(s)",
                len(interrupted),
                len(reposted),
                len(queued),
            )
        self.recovered = True
        if not await asyncio.to_thread(images.draws_hangul):
            log.warning(
                "no font with Hangul found: Korean labels in /usage charts would be empty boxes;"
                " install %s",
                images.CJK_FONT_PACKAGES,
            )
        self.web = await start_web(self)
        await self.tree.set_translator(ImagineTranslator())
        for extension in EXTENSIONS:
            await self.load_extension(extension)
        if self.dev_guild_id:
            guild = discord.Object(id=self.dev_guild_id)
            self.tree.copy_global_to(guild=guild)
            await self.tree.sync(guild=guild)
        else:
            await self.tree.sync()

    async def on_ready(self) -> None:
        """Keep resumes on the configured gateway."""
        if self.gateway_url and self.ws is not None:
            self.ws.gateway = yarl.URL(self.gateway_url)
        log.info("ready as %s in %d server(s)", self.user, len(self.guilds))
        if not self._frozen:
            # Start-up objects live as long as the bot: keep them out of full collections,
            # whose pauses otherwise show up as event-loop lag under load.
            gc.freeze()
            self._frozen = True

    async def on_resumed(self) -> None:
        """RESUME replaces the socket: keep it on the configured gateway."""
        if self.gateway_url and self.ws is not None:
            self.ws.gateway = yarl.URL(self.gateway_url)

    async def on_shard_ready(self, shard_id: int) -> None:
        """Keep a shard's resumes on the configured gateway (sharded runs)."""
        self._pin_shard_gateway(shard_id)

    async def on_shard_resumed(self, shard_id: int) -> None:
        """A shard's RESUME replaces its socket: keep it on the configured gateway."""
        self._pin_shard_gateway(shard_id)

    def _pin_shard_gateway(self, shard_id: int) -> None:
        get_shard = getattr(self, "get_shard", None)
        info = get_shard(shard_id) if self.gateway_url and get_shard is not None else None
        # discord.py keeps a shard's socket on its ShardInfo's parent, with no public accessor.
        ws = getattr(getattr(info, "_parent", None), "ws", None)
        if ws is not None and self.gateway_url:
            ws.gateway = yarl.URL(self.gateway_url)

    async def make_sink(self, job: Job, spec: JobSpec) -> Any:
        """The Discord sink that shows `job` in its channel."""
        from cogs._sink import DiscordTurnSink

        return self.metrics.metered(await DiscordTurnSink.for_job(self, job, spec), job)

    async def resolve_channel(self, channel_id: int) -> Any:
        """A channel or thread by id, from the cache or from Discord."""
        channel = self.get_channel(channel_id)
        if channel is None:
            try:
                channel = await self.fetch_channel(channel_id)
            except discord.HTTPException:
                return None
        return channel

    async def fetch_turn_image(self, turn: Turn) -> bytes | None:
        """The final image of a turn saved before images were kept, read back from Discord."""
        if turn.message_id is None:
            return None
        channel = await self.resolve_channel(turn.channel_id)
        if channel is None:
            return None
        try:
            message = await channel.fetch_message(turn.message_id)
        except discord.HTTPException:
            return None
        for attachment in message.attachments:
            if (attachment.content_type or "").startswith("image/"):
                data: bytes = await attachment.read()
                return data
        return None

    async def close(self) -> None:
        """Stop the studio first, so running jobs are left to be reported as interrupted."""
        if self.web is not None:
            await self.web.close()
        await self.studio.close()
        await super().close()


class ShardedImagineBot(ImagineBot, commands.AutoShardedBot):
    """The bot on some of the shards (SHARD_IDS of SHARD_COUNT), one socket per shard.

    discord.py identifies this process's shards one after the other, 5 seconds apart, which
    keeps within any `max_concurrency`. Processes do not coordinate their identifies: see the
    README ("Several processes") for how to start them.
    """


def make_bot(settings: Settings, services: Services) -> ImagineBot:
    """The bot the settings ask for: sharded when SHARD_IDS or SHARD_COUNT is set."""
    options: dict[str, Any] = {
        "services": services,
        "gateway_url": settings.discord_gateway_url,
        "dev_guild_id": settings.discord_dev_guild_id,
    }
    if settings.shard_ids is None and settings.shard_count is None:
        return ImagineBot(**options)
    shards = settings.shards
    log.info(
        "running shard(s) %s of %s as worker %s",
        ",".join(map(str, shards)) if shards is not None else "all",
        settings.shard_count,
        settings.worker_name,
    )
    return ShardedImagineBot(
        shard_ids=list(shards) if shards is not None else None,
        shard_count=settings.shard_count,
        **options,
    )


async def run_bot(settings: Settings) -> int:
    """Run the bot until it is stopped (Ctrl-C or SIGTERM)."""
    if settings.discord_token is None:
        log.error("DISCORD_TOKEN is not set; see .env.example")
        print("error: DISCORD_TOKEN is not set (see .env.example)")
        return 2
    configure_discord_urls(settings.discord_api_base_url, settings.discord_gateway_url)
    try:
        services_cm = open_services(settings)
        services = await services_cm.__aenter__()
    except ValueError as exc:
        print(f"error: {exc}")
        return 2
    monitor = LoopLagMonitor(settings.loop_lag_file) if settings.loop_lag_file else None
    if monitor is not None:
        monitor.start()
    try:
        bot = make_bot(settings, services)
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        async with bot:
            runner = asyncio.create_task(bot.start(settings.discord_token.get_secret_value()))
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait({runner, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if runner in done:
                stopper.cancel()
                error = runner.exception()
                if error is not None:
                    log.error("the bot stopped: %r", error)
                    return 1
                return 0
            log.info("stopping")
            await bot.close()
            await asyncio.gather(runner, return_exceptions=True)
        return 0
    finally:
        if monitor is not None:
            await monitor.stop()
        await services_cm.__aexit__(None, None, None)
