"""`/settings` (a member's defaults), `/usage` (spend, with a chart), `/config` (server admins), `/privacy`."""

from __future__ import annotations

import asyncio
import io
import re
import time
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import images
from bot.core.errors import BotError
from bot.core.options import ImageOptions, validate_options
from bot.core.studio import CONTINUE_POLICIES, day_start, month_start
from cogs._translator import L, choices
from cogs._ui import is_admin, locale_for, requester_for_interaction, t
from cogs.imagine import (
    MODERATIONS,
    model_autocomplete,
    output_option_params,
    output_options,
)

if TYPE_CHECKING:
    from bot.app import ImagineBot

LANGUAGES = ("en", "ko")
ENGINES = ("responses", "images")
CHART_DAYS = 30


def _format_options(values: dict[str, object], locale: str) -> str:
    if not values:
        return t(locale, "settings.none")
    return "\n".join(f"• `{k}` = `{v}`" for k, v in sorted(values.items()))


# Stored /config keys, and the option (catalog key `opt.<name>.name`) an admin types for each.
CONFIG_OPTIONS = {
    "user_daily_usd": "user_daily_usd",
    "user_daily_images": "user_daily_images",
    "guild_monthly_usd": "server_monthly_usd",
    "guild_monthly_images": "server_monthly_images",
    "allowed_channels": "allowed_channels",
    "defaults": "default_model",
    "allowed_models": "allowed_models",
    "moderation": "moderation",
    "continue_policy": "continue_policy",
    "continue_role_id": "continue_role",
    "partials_enabled": "partials_enabled",
    "engine": "engine",
}


def _format_config(config: dict[str, Any], locale: str) -> str:
    """A server's configuration under the option names admins type, with mentions for places."""
    shown: list[str] = []
    for key, option in CONFIG_OPTIONS.items():
        if key not in config:
            continue
        value = config[key]
        if key == "allowed_channels":
            text = " ".join(f"<#{c}>" for c in value) or "-"
        elif key == "continue_role_id":
            text = f"<@&{value}>"
        elif key == "defaults":
            text = f"`{value.get('model', '-')}`"
        elif isinstance(value, list):
            text = ", ".join(f"`{v}`" for v in value) or "-"
        else:
            text = f"`{value}`"
        shown.append(f"• **{t(locale, f'opt.{option}.name')}**: {text}")
    return "\n".join(shown) or t(locale, "settings.none")


class AdminCog(commands.Cog):
    """Per-member defaults, usage reports and per-server configuration."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name=L("cmd.settings.name"), description=L("cmd.settings.desc"))
    @app_commands.rename(
        language=L("opt.language.name"),
        reset=L("opt.reset.name"),
    )
    @app_commands.describe(
        language=L("opt.language.desc"),
        reset=L("opt.reset.desc"),
    )
    @app_commands.choices(language=choices("choice.language", LANGUAGES))
    @output_option_params
    async def settings(
        self,
        interaction: discord.Interaction[Any],
        size: str | None = None,
        quality: str | None = None,
        format: str | None = None,
        background: str | None = None,
        compression: app_commands.Range[int, 0, 100] | None = None,
        moderation: str | None = None,
        partials: app_commands.Range[int, 0, 3] | None = None,
        model: str | None = None,
        language: str | None = None,
        reset: bool = False,
    ) -> None:
        """Show or change your own defaults."""
        store = self.bot.services.store
        user_id = interaction.user.id
        current: dict[str, object] = {} if reset else dict(await store.get_user_settings(user_id))
        changes = output_options(
            size, quality, format, background, compression, moderation, partials, model
        )
        changes["language"] = language
        current.update({k: v for k, v in changes.items() if v is not None})
        locale = str(current.get("language") or interaction.locale)
        options_only = {k: v for k, v in current.items() if k != "language"}
        # The defaults must make a valid request on their own (e.g. not transparent + jpeg).
        validate_options(self.bot.services.default_options.merged(options_only))
        if reset or any(v is not None for v in changes.values()):
            await store.set_user_settings(user_id, current)
        await interaction.response.send_message(
            t(locale, "settings.current", values=_format_options(current, locale)), ephemeral=True
        )

    @app_commands.command(name=L("cmd.usage.name"), description=L("cmd.usage.desc"))
    async def usage(self, interaction: discord.Interaction[Any]) -> None:
        """Your images, tokens and estimated cost; the server's too, with a chart, for admins."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        requester = await requester_for_interaction(self.bot, interaction)
        store = self.bot.services.store
        locale = requester.locale
        now = time.time()
        today = await store.usage_totals(since=day_start(now), user_id=requester.user_id)
        month = await store.usage_totals(since=month_start(now), user_id=requester.user_id)
        lines = [
            t(
                locale,
                "usage.you_today",
                images=today.images,
                tokens=today.input_tokens + today.output_tokens,
                cost=today.cost_usd,
            ),
            t(
                locale,
                "usage.you_month",
                images=month.images,
                tokens=month.input_tokens + month.output_tokens,
                cost=month.cost_usd,
            ),
        ]
        limits = await self.bot.studio.effective_limits(requester.guild_id)
        if limits.user_daily_usd is not None:
            lines.append(t(locale, "usage.limit_daily_usd", limit=limits.user_daily_usd))
        if limits.user_daily_images is not None:
            lines.append(t(locale, "usage.limit_daily_images", limit=limits.user_daily_images))
        since = now - CHART_DAYS * 86400
        by_user: list[tuple[str, float]] | None = None
        if requester.guild_id is not None and requester.is_admin:
            server = await store.usage_totals(since=month_start(now), guild_id=requester.guild_id)
            lines.append(
                t(locale, "usage.server_month", images=server.images, cost=server.cost_usd)
            )
            if limits.guild_monthly_usd is not None:
                lines.append(t(locale, "usage.limit_monthly_usd", limit=limits.guild_monthly_usd))
            if limits.guild_monthly_images is not None:
                lines.append(
                    t(locale, "usage.limit_monthly_images", limit=limits.guild_monthly_images)
                )
            days = await store.usage_by_day(since=since, guild_id=requester.guild_id)
            users = await store.usage_by_user(since=since, guild_id=requester.guild_id)
            by_user = [(self._user_label(interaction, u.user_id), u.cost_usd) for u in users[:10]]
            title = t(locale, "usage.chart_server", days=CHART_DAYS)
        else:
            days = await store.usage_by_day(since=since, user_id=requester.user_id)
            title = t(locale, "usage.chart_you", days=CHART_DAYS)
        chart = await asyncio.to_thread(
            images.usage_chart, [(d.day, d.cost_usd) for d in days], title=title, per_user=by_user
        )
        await interaction.followup.send(
            "\n".join(lines),
            file=discord.File(io.BytesIO(chart), filename="usage.png"),
            ephemeral=True,
        )

    @staticmethod
    def _user_label(interaction: discord.Interaction[Any], user_id: int) -> str:
        member = interaction.guild.get_member(user_id) if interaction.guild else None
        return member.display_name if member else str(user_id)

    @app_commands.command(name=L("cmd.config.name"), description=L("cmd.config.desc"))
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @app_commands.checks.has_permissions(manage_guild=True)
    @app_commands.rename(
        user_daily_usd=L("opt.user_daily_usd.name"),
        user_daily_images=L("opt.user_daily_images.name"),
        server_monthly_usd=L("opt.server_monthly_usd.name"),
        server_monthly_images=L("opt.server_monthly_images.name"),
        allowed_channels=L("opt.allowed_channels.name"),
        default_model=L("opt.default_model.name"),
        allowed_models=L("opt.allowed_models.name"),
        moderation=L("opt.moderation.name"),
        continue_policy=L("opt.continue_policy.name"),
        continue_role=L("opt.continue_role.name"),
        partials=L("opt.partials_enabled.name"),
        engine=L("opt.engine.name"),
        reset=L("opt.reset.name"),
    )
    @app_commands.describe(
        user_daily_usd=L("opt.user_daily_usd.desc"),
        user_daily_images=L("opt.user_daily_images.desc"),
        server_monthly_usd=L("opt.server_monthly_usd.desc"),
        server_monthly_images=L("opt.server_monthly_images.desc"),
        allowed_channels=L("opt.allowed_channels.desc"),
        default_model=L("opt.default_model.desc"),
        allowed_models=L("opt.allowed_models.desc"),
        moderation=L("opt.server_moderation.desc"),
        continue_policy=L("opt.continue_policy.desc"),
        continue_role=L("opt.continue_role.desc"),
        partials=L("opt.partials_enabled.desc"),
        engine=L("opt.engine.desc"),
        reset=L("opt.reset_config.desc"),
    )
    @app_commands.choices(
        moderation=choices("choice.moderation", MODERATIONS),
        continue_policy=choices("choice.continue", CONTINUE_POLICIES),
        engine=choices("choice.engine", ENGINES),
    )
    @app_commands.autocomplete(default_model=model_autocomplete)
    async def config(
        self,
        interaction: discord.Interaction[Any],
        user_daily_usd: app_commands.Range[float, 0.0, 10000.0] | None = None,
        user_daily_images: app_commands.Range[int, 0, 100000] | None = None,
        server_monthly_usd: app_commands.Range[float, 0.0, 1000000.0] | None = None,
        server_monthly_images: app_commands.Range[int, 0, 10000000] | None = None,
        allowed_channels: str | None = None,
        default_model: str | None = None,
        allowed_models: str | None = None,
        moderation: str | None = None,
        continue_policy: str | None = None,
        continue_role: discord.Role | None = None,
        partials: bool | None = None,
        engine: str | None = None,
        reset: bool = False,
    ) -> None:
        """Show or change this server's configuration (Manage Server only)."""
        assert interaction.guild_id is not None
        if not is_admin(interaction.user, interaction.channel):
            raise app_commands.MissingPermissions(["manage_guild"])
        store = self.bot.services.store
        locale = await locale_for(self.bot, interaction.user.id, interaction.locale)
        config: dict[str, Any] = (
            {} if reset else dict(await store.get_guild_config(interaction.guild_id))
        )
        updates: dict[str, Any] = {
            "user_daily_usd": user_daily_usd,
            "user_daily_images": user_daily_images,
            "guild_monthly_usd": server_monthly_usd,
            "guild_monthly_images": server_monthly_images,
            "moderation": moderation,
            "continue_policy": continue_policy,
            "partials_enabled": partials,
            "engine": engine,
        }
        if continue_role is not None:
            updates["continue_role_id"] = continue_role.id
        if allowed_channels is not None:
            updates["allowed_channels"] = [
                int(c) for c in re.findall(r"\d{15,21}", allowed_channels)
            ]
        if allowed_models is not None:
            names = [m.strip() for m in re.split(r"[,\s]+", allowed_models) if m.strip()]
            for name in names:
                validate_options(ImageOptions(model=name))
            updates["allowed_models"] = names
        if default_model is not None:
            validate_options(ImageOptions(model=default_model))
            defaults = dict(config.get("defaults") or {})
            defaults["model"] = default_model
            updates["defaults"] = defaults
        changed = {k: v for k, v in updates.items() if v is not None}
        for key in (
            "user_daily_usd",
            "user_daily_images",
            "guild_monthly_usd",
            "guild_monthly_images",
        ):
            if changed.get(key) == 0:
                # 0 means "no limit" in the form; the stored config simply drops the key.
                changed.pop(key)
                config.pop(key, None)
        config.update(changed)
        if config.get("continue_policy") == "role" and not config.get("continue_role_id"):
            raise BotError("config.role_needed")
        if reset or changed or allowed_channels is not None:
            await store.set_guild_config(interaction.guild_id, config)
        await interaction.response.send_message(
            t(locale, "config.current", values=_format_config(config, locale)), ephemeral=True
        )

    @app_commands.command(name=L("cmd.privacy.name"), description=L("cmd.privacy.desc"))
    @app_commands.rename(confirm=L("opt.confirm.name"))
    @app_commands.describe(confirm=L("opt.confirm.desc"))
    async def privacy(self, interaction: discord.Interaction[Any], confirm: bool = False) -> None:
        """Delete everything the bot keeps about you."""
        locale = await locale_for(self.bot, interaction.user.id, interaction.locale)
        if not confirm:
            await interaction.response.send_message(t(locale, "privacy.explain"), ephemeral=True)
            return
        removed = await self.bot.services.store.delete_user_data(interaction.user.id)
        await interaction.response.send_message(
            t(locale, "privacy.done", count=removed), ephemeral=True
        )


async def setup(bot: commands.Bot) -> None:
    """Add the cog."""
    await bot.add_cog(AdminCog(bot))  # type: ignore[arg-type]
