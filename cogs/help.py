"""`/help`: how the bot works, in the caller's language."""

from __future__ import annotations

from typing import Any

import discord
from discord import app_commands
from discord.ext import commands

from cogs._translator import L
from cogs._ui import t


class HelpCog(commands.Cog):
    """Explains the bot."""

    @app_commands.command(name=L("cmd.help.name"), description=L("cmd.help.desc"))
    async def help(self, interaction: discord.Interaction[Any]) -> None:
        """How it works."""
        await interaction.response.send_message(t(interaction.locale, "help.text"), ephemeral=True)


async def setup(bot: commands.Bot) -> None:
    """Add the cog."""
    await bot.add_cog(HelpCog())
