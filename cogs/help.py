"""`/help`: how the bot works, in the caller's language."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

from cogs._translator import L
from cogs._ui import requester_for_interaction, t

if TYPE_CHECKING:
    from cogs.app import ImagineBot


class HelpCog(commands.Cog):
    """Explains the bot."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name=L("cmd.help.name"), description=L("cmd.help.desc"))
    async def help(self, interaction: discord.Interaction[Any]) -> None:
        """How it works."""
        locale = (await requester_for_interaction(self.bot, interaction)).locale
        # The web studio's part only where it is offered (a public address is configured).
        web = self.bot.studio.web_links
        embeds = [discord.Embed(description=t(locale, "help.web"))] if web else []
        await interaction.response.send_message(
            t(locale, "help.text"), embeds=embeds, ephemeral=True
        )


async def setup(bot: commands.Bot) -> None:
    """Add the cog."""
    await bot.add_cog(HelpCog(bot))  # type: ignore[arg-type]
