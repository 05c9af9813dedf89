"""Wiring of the web studio into the bot: metrics of Discord's REST answers, start and stop."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp

from bot.core.metrics import Metrics
from web.app import WebStudio

if TYPE_CHECKING:
    from cogs.app import ImagineBot

log = logging.getLogger(__name__)


def discord_status_trace(metrics: Metrics) -> aiohttp.TraceConfig:
    """A trace for discord.py's HTTP session that counts every REST answer by status (429s)."""
    trace = aiohttp.TraceConfig()

    async def on_request_end(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: Any
    ) -> None:
        metrics.discord_status(params.response.status)

    trace.on_request_end.append(on_request_end)
    return trace


async def start_web(bot: ImagineBot) -> WebStudio | None:
    """Serve the web studio when WEB_PORT is set; offer its links when PUBLIC_BASE_URL is too."""
    settings = bot.settings
    if settings.web_port is None:
        if settings.public_base_url:
            log.warning("PUBLIC_BASE_URL is set but WEB_PORT is not: the web studio is off")
        return None
    bot.studio.open_web(settings.public_base_url)
    studio = WebStudio(
        bot.studio,
        bot.metrics,
        gateway_ready=lambda: bot.is_ready() and not bot.is_closed(),
        host=settings.web_host,
        port=settings.web_port,
        max_upload_bytes=settings.max_input_bytes,
    )
    await studio.start()
    return studio
