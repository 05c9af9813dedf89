"""`/settings` (a member's defaults), `/usage` (spend, with a chart), `/config` (server admins), `/privacy`."""

from __future__ import annotations

import asyncio
import io
import re
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from bot.core import images
from bot.core.config import ContinuePolicy, GuildConfig
from bot.core.usage import CHART_DAYS
from cogs._translator import L, choices
from cogs._ui import inert, is_admin, requester_for_interaction, t
from cogs.imagine import (
    MODERATIONS,
    model_autocomplete,
    output_option_params,
    output_options,
)
from storage.base import ANONYMOUS_USER_ID

if TYPE_CHECKING:
    from cogs.app import ImagineBot

LANGUAGES = ("en", "ko")
ENGINES = ("responses", "images")
# The values of ContinuePolicy, written out for the catalog check (tests/test_i18n.py).
CONTINUE_POLICIES = ("anyone", "author", "role")
assert CONTINUE_POLICIES == tuple(p.value for p in ContinuePolicy)


def _format_options(values: dict[str, object], locale: str) -> str:
    if not values:
        return t(locale, "settings.none")
    return "\n".join(f"• `{k}` = `{v}`" for k, v in sorted(values.items()))


# /config fields, and the option (catalog key `opt.<name>.name`) an admin types for each.
CONFIG_OPTIONS = {
    "user_daily_usd": "user_daily_usd",
    "user_daily_images": "user_daily_images",
    "guild_monthly_usd": "server_monthly_usd",
    "guild_monthly_images": "server_monthly_images",
    "allowed_channels": "allowed_channels",
    "default_model": "default_model",
    "allowed_models": "allowed_models",
    "moderation": "moderation",
    "continue_policy": "continue_policy",
    "continue_role_id": "continue_role",
    "partials_enabled": "partials_enabled",
    "engine": "engine",
    "role_tiers": "tier_role",
    "low_moderation_nsfw_only": "low_moderation_nsfw_only",
    "spoilers": "spoilers",
}


def _format_config(config: GuildConfig, locale: str) -> str:
    """A server's configuration under the option names admins type, with mentions for places."""
    stored = config.to_dict()
    shown: list[str] = []
    for key, option in CONFIG_OPTIONS.items():
        value = getattr(config, key)
        if key not in stored and not (key == "default_model" and value):
            continue
        if key == "allowed_channels":
            text = " ".join(f"<#{c}>" for c in value) or "-"
        elif key == "continue_role_id":
            text = f"<@&{value}>"
        elif key == "role_tiers":
            text = ", ".join(f"<@&{role}> {images}/day" for role, images in value) or "-"
        elif isinstance(value, tuple):
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
        spoiler=L("opt.spoiler.name"),
        reset=L("opt.reset.name"),
    )
    @app_commands.describe(
        language=L("opt.language.desc"),
        spoiler=L("opt.spoiler.desc"),
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
        spoiler: bool | None = None,
        reset: bool = False,
    ) -> None:
        """Show or change your own defaults."""
        requester = await requester_for_interaction(self.bot, interaction)
        changes: dict[str, object | None] = {
            **output_options(
                size, quality, format, background, compression, moderation, partials, model
            ),
            "language": language,
            "spoiler": spoiler,
        }
        updated = await self.bot.studio.update_settings(requester, changes, reset=reset)
        locale = updated.language or requester.locale
        await interaction.response.send_message(
            t(locale, "settings.current", values=_format_options(updated.to_dict(), locale)),
            ephemeral=True,
        )

    @app_commands.command(name=L("cmd.usage.name"), description=L("cmd.usage.desc"))
    async def usage(self, interaction: discord.Interaction[Any]) -> None:
        """Your images, tokens and estimated cost; the server's too, with a chart, for admins."""
        await interaction.response.defer(ephemeral=True, thinking=True)
        requester = await requester_for_interaction(self.bot, interaction)
        locale = requester.locale
        report = await self.bot.studio.usage(requester)
        today, month, limits = report.today, report.month, report.limits
        lines = [
            t(
                locale,
                "usage.you_today",
                images=today.images,
                image_tokens=today.image_tokens,
                tokens=today.input_tokens + today.output_tokens,
                cost=today.cost_usd,
            ),
            t(
                locale,
                "usage.you_month",
                images=month.images,
                image_tokens=month.image_tokens,
                tokens=month.input_tokens + month.output_tokens,
                cost=month.cost_usd,
            ),
        ]
        if limits.user_daily_usd is not None:
            lines.append(t(locale, "usage.limit_daily_usd", limit=limits.user_daily_usd))
        if limits.user_daily_images is not None:
            lines.append(t(locale, "usage.limit_daily_images", limit=limits.user_daily_images))
        if limits.tier_role_id is not None:
            lines.append(t(locale, "usage.tier", role=f"<@&{limits.tier_role_id}>"))
        by_user: list[tuple[str, float]] | None = None
        if report.server_month is not None:
            server = report.server_month
            lines.append(
                t(locale, "usage.server_month", images=server.images, cost=server.cost_usd)
            )
            if limits.guild_monthly_usd is not None:
                lines.append(t(locale, "usage.limit_monthly_usd", limit=limits.guild_monthly_usd))
            if limits.guild_monthly_images is not None:
                lines.append(
                    t(locale, "usage.limit_monthly_images", limit=limits.guild_monthly_images)
                )
            by_user = [
                (await self._user_label(interaction, u.user_id, locale), u.cost_usd)
                for u in report.top_users or []
            ]
            if by_user:
                users = ", ".join(f"{inert(name, 40)} ≈${cost:.2f}" for name, cost in by_user[:5])
                lines.append(t(locale, "usage.top_users", users=users))
            title = t(locale, "usage.chart_server", days=CHART_DAYS)
        else:
            title = t(locale, "usage.chart_you", days=CHART_DAYS)
        chart = await asyncio.to_thread(
            images.usage_chart,
            [(d.day, d.cost_usd) for d in report.days],
            title=title,
            per_user=by_user,
        )
        await interaction.followup.send(
            "\n".join(lines),
            file=discord.File(io.BytesIO(chart), filename="usage.png"),
            ephemeral=True,
        )

    async def _user_label(
        self, interaction: discord.Interaction[Any], user_id: int, locale: str
    ) -> str:
        """A member's name as the server shows it, fetched (the bot keeps no member cache)."""
        if user_id == ANONYMOUS_USER_ID:
            return t(locale, "usage.anonymous")
        guild = interaction.guild
        try:
            if guild is not None:
                return (guild.get_member(user_id) or await guild.fetch_member(user_id)).display_name
        except discord.NotFound:
            pass  # no longer a member: the account's own name
        except discord.HTTPException:
            return t(locale, "usage.unknown_member")
        try:
            return (self.bot.get_user(user_id) or await self.bot.fetch_user(user_id)).display_name
        except discord.HTTPException:
            return t(locale, "usage.unknown_member")

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
        tier_role=L("opt.tier_role.name"),
        tier_daily_images=L("opt.tier_daily_images.name"),
        low_moderation_nsfw_only=L("opt.low_moderation_nsfw_only.name"),
        spoilers=L("opt.spoilers.name"),
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
        tier_role=L("opt.tier_role.desc"),
        tier_daily_images=L("opt.tier_daily_images.desc"),
        low_moderation_nsfw_only=L("opt.low_moderation_nsfw_only.desc"),
        spoilers=L("opt.spoilers.desc"),
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
        tier_role: discord.Role | None = None,
        tier_daily_images: app_commands.Range[int, 0, 100000] | None = None,
        low_moderation_nsfw_only: bool | None = None,
        spoilers: bool | None = None,
        reset: bool = False,
    ) -> None:
        """Show or change this server's configuration (Manage Server only)."""
        assert interaction.guild_id is not None
        if not is_admin(interaction.user, interaction.channel):
            raise app_commands.MissingPermissions(["manage_guild"])
        requester = await requester_for_interaction(self.bot, interaction)
        changes: dict[str, Any] = {
            "user_daily_usd": user_daily_usd,
            "user_daily_images": user_daily_images,
            "guild_monthly_usd": server_monthly_usd,
            "guild_monthly_images": server_monthly_images,
            "moderation": moderation,
            "continue_policy": continue_policy,
            "continue_role_id": continue_role.id if continue_role is not None else None,
            "partials_enabled": partials,
            "engine": engine,
            "default_model": default_model,
            "low_moderation_nsfw_only": low_moderation_nsfw_only,
            "spoilers": spoilers,
            "tier_role_id": tier_role.id if tier_role is not None else None,
            "tier_daily_images": tier_daily_images,
        }
        if allowed_channels is not None:
            changes["allowed_channels"] = [
                int(c) for c in re.findall(r"\d{15,21}", allowed_channels)
            ]
        if allowed_models is not None:
            changes["allowed_models"] = [
                m.strip() for m in re.split(r"[,\s]+", allowed_models) if m.strip()
            ]
        config = await self.bot.studio.update_config(requester, changes, reset=reset)
        await interaction.response.send_message(
            t(requester.locale, "config.current", values=_format_config(config, requester.locale)),
            ephemeral=True,
        )

    @app_commands.command(name=L("cmd.privacy.name"), description=L("cmd.privacy.desc"))
    @app_commands.rename(confirm=L("opt.confirm.name"))
    @app_commands.describe(confirm=L("opt.confirm.desc"))
    async def privacy(self, interaction: discord.Interaction[Any], confirm: bool = False) -> None:
        """Delete everything the bot keeps about you."""
        locale = (await requester_for_interaction(self.bot, interaction)).locale
        if not confirm:
            await interaction.response.send_message(t(locale, "privacy.explain"), ephemeral=True)
            return
        removed = await self.bot.studio.forget_user(interaction.user.id)
        await interaction.response.send_message(
            t(locale, "privacy.done", count=removed), ephemeral=True
        )


async def setup(bot: commands.Bot) -> None:
    """Add the cog."""
    await bot.add_cog(AdminCog(bot))  # type: ignore[arg-type]
