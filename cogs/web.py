"""The web studio's Discord side: the Paint and Gallery buttons, and `/history`."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any, cast

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.errors import BotError
from cogs._translator import L
from cogs._ui import reply_error, requester_for_interaction, t

if TYPE_CHECKING:
    from cogs.app import ImagineBot

log = logging.getLogger(__name__)

ROW_ID = "[0-9]+"


def link_view(url: str, locale: str) -> discord.ui.View:
    """One link button that opens `url`."""
    view = discord.ui.View(timeout=None)
    view.add_item(discord.ui.Button(label=t(locale, "discord.open_link"), url=url))
    return view


def with_web_buttons(view: discord.ui.View, turn_id: int, locale: str) -> discord.ui.View:
    """The buttons under an image, with the web studio public: Paint in place of the grid's
    Edit region, and Gallery after the last button (whatever else the view holds stays)."""
    items = list(view.children)
    view.clear_items()
    buttons = [i for i, item in enumerate(items) if _custom_id(item).startswith("img:")]
    last_button = max(
        (i for i in buttons if isinstance(getattr(items[i], "item", items[i]), discord.ui.Button)),
        default=len(items) - 1,
    )
    for index, item in enumerate(items):
        if _custom_id(item).startswith("img:region:"):
            view.add_item(WebButton.make("paint", turn_id, locale))
        else:
            view.add_item(item)
        if index == last_button:
            view.add_item(WebButton.make("gallery", turn_id, locale))
    return view


def _custom_id(item: discord.ui.Item[Any]) -> str:
    inner = getattr(item, "item", item)
    return str(getattr(inner, "custom_id", "") or "")


class WebButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"img:(?P<action>paint|gallery):(?P<turn>{ROW_ID})",
):
    """Paint (a private painter link for this image) or Gallery (the thread's tree of images)."""

    def __init__(
        self, action: str, turn_id: int, button: discord.ui.Button[Any] | None = None
    ) -> None:
        super().__init__(button or discord.ui.Button(custom_id=f"img:{action}:{turn_id}"))
        self.action = action
        self.turn_id = turn_id

    @classmethod
    def make(cls, action: str, turn_id: int, locale: str) -> WebButton:
        """The button with its label."""
        label, emoji = (
            (t(locale, "button.paint"), "🖌️")
            if action == "paint"
            else (t(locale, "button.gallery"), "🖼️")
        )
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=label,
            emoji=emoji,
            style=discord.ButtonStyle.primary
            if action == "paint"
            else discord.ButtonStyle.secondary,
            custom_id=f"img:{action}:{turn_id}",
        )
        return cls(action, turn_id, button)

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> WebButton:
        assert isinstance(item, discord.ui.Button)
        return cls(match["action"], int(match["turn"]), item)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        requester = await requester_for_interaction(bot, interaction)
        locale = requester.locale
        try:
            # The same checks as every button: this channel's image, someone who may continue.
            turn = await bot.studio.button_turn(self.turn_id, requester)
            if self.action == "paint":
                url = bot.studio.paint_link(turn, requester)
                text = t(locale, "discord.paint_link", url=url)
            else:
                url = bot.studio.gallery_link(turn.channel_id, requester)
                text = t(locale, "discord.gallery_link", url=url)
        except BotError as exc:
            await reply_error(interaction, exc.localized(locale))
            return
        await interaction.response.send_message(
            text, view=link_view(url, locale), ephemeral=True, suppress_embeds=True
        )


class WebCog(commands.Cog):
    """`/history`: the gallery link of the thread it is used in."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name=L("cmd.history.name"), description=L("cmd.history.desc"))
    async def history(self, interaction: discord.Interaction[Any]) -> None:
        """A private link to this thread's images as a tree."""
        studio = self.bot.studio
        requester = await requester_for_interaction(self.bot, interaction)
        locale = requester.locale
        conversation = await studio.conversation(requester.channel_id)
        if conversation is None:
            await reply_error(interaction, t(locale, "discord.history_no_thread"))
            return
        try:
            studio.check_continue(conversation.owner_id, requester)
            url = studio.gallery_link(requester.channel_id, requester)
        except BotError as exc:
            await reply_error(interaction, exc.localized(locale))
            return
        await interaction.response.send_message(
            t(locale, "discord.gallery_link", url=url),
            view=link_view(url, locale),
            ephemeral=True,
            suppress_embeds=True,
        )


async def setup(bot: commands.Bot) -> None:
    """Register the persistent buttons and /history."""
    bot.add_dynamic_items(WebButton)
    await bot.add_cog(WebCog(cast("ImagineBot", bot)))
