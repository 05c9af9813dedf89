"""The long-lived services of the bot, built from settings and closed together."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from bot.core.costs import PriceTable
from bot.core.memory_budget import (
    MIB,
    ImageMemoryBudget,
    give_back_free_memory,
    return_large_buffers_to_os,
)
from bot.core.openai_adapter import ClientConfig, OpenAIImageClient
from bot.core.options import ImageOptions
from bot.core.queue import SharedQueue
from bot.core.runner import RunnerConfig, TurnRunner
from bot.settings import Settings
from storage import open_store
from storage.base import Store
from storage.postgres import PostgresStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Services:
    """Everything a command needs: settings, storage, the OpenAI client and the turn runner."""

    settings: Settings
    store: Store
    client: OpenAIImageClient
    runner: TurnRunner
    prices: PriceTable

    @property
    def shared_queue(self) -> SharedQueue | None:
        """The job queue every process shares (PostgreSQL), or None (SQLite: one process)."""
        return self.store.tickets if isinstance(self.store, PostgresStore) else None

    @property
    def default_options(self) -> ImageOptions:
        """The options a turn gets when nobody chose otherwise."""
        return default_options(self.settings)


def default_options(settings: Settings) -> ImageOptions:
    """The defaults of `settings` as image options."""
    return ImageOptions(
        model=settings.image_model,
        size=settings.default_size,
        quality=settings.default_quality,
        format=settings.default_format,
        moderation=settings.default_moderation,
        partials=settings.default_partials,
    )


def client_config(settings: Settings) -> ClientConfig:
    """How to reach OpenAI, from settings (fails fast when the key is missing)."""
    if settings.openai_api_key is None or not settings.openai_api_key.get_secret_value():
        raise ValueError("OPENAI_API_KEY is not set")
    return ClientConfig(
        api_key=settings.openai_api_key.get_secret_value(),
        base_url=settings.openai_base_url,
        timeout=settings.openai_timeout_seconds,
        max_retries=settings.openai_max_retries,
        mainline_model=settings.mainline_model,
        stall_seconds=settings.stream_stall_seconds,
    )


@contextlib.asynccontextmanager
async def open_services(settings: Settings) -> AsyncIterator[Services]:
    """Open storage and the OpenAI client; close both on exit."""
    prices = PriceTable.from_json(settings.prices_json)
    # One budget for the image bytes of every turn in flight (IMAGE_MEMORY_BUDGET_MB); the
    # budget bounds what is alive, and the allocator must also give the freed bytes back.
    # What the heap keeps after a burst goes back to the system once no image is in flight.
    budget = ImageMemoryBudget(settings.image_memory_budget_mb * MIB, on_idle=give_back_free_memory)
    return_large_buffers_to_os()
    client = OpenAIImageClient(client_config(settings), budget=budget)
    store = await open_store(settings.database_url)
    try:
        runner = TurnRunner(
            client,
            prices,
            files=store,
            config=RunnerConfig(use_files_api=settings.use_files_api),
        )
        yield Services(settings=settings, store=store, client=client, runner=runner, prices=prices)
    finally:
        stats = budget.stats
        log.info(
            "image memory budget: peak %.1f of %d MiB, %d waits (%.1f s), previews decoded %d, "
            "dropped undecoded %d, repeated finals skipped %.1f MB",
            stats.peak / MIB,
            settings.image_memory_budget_mb,
            stats.waits,
            stats.wait_seconds,
            stats.partials_decoded,
            stats.partials_dropped,
            stats.skipped_bytes / 1e6,
        )
        await store.close()
        await client.close()
