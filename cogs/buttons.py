"""Buttons under every image (Reroll, Vary, Edit, Edit region, Delete) and Retry: persistent across restarts."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

import discord
from discord.ext import commands

from bot.core import images
from bot.core.errors import BotError
from bot.core.jobs import JobSpec, Requester
from cogs._ui import inert, reply_error, requester_for_interaction, t
from storage.base import Turn

if TYPE_CHECKING:
    from cogs.app import ImagineBot

log = logging.getLogger(__name__)

GRID_ROWS = 3
GRID_COLS = 3
# The ways to extend a canvas (bot.core.images.EXTENSIONS), in menu order.
EXTEND_CHOICES = (
    ("zoom15", "🔍"),
    ("zoom2", "🔎"),
    ("left", "⬅️"),
    ("right", "➡️"),
    ("up", "⬆️"),
    ("down", "⬇️"),
)
# ASCII digits only: \d would also match other scripts' digits, which int() reads as the same id.
ROW_ID = "[0-9]+"


def final_view(turn_id: int, locale: str, *, web: bool = False) -> discord.ui.View:
    """The buttons under a final image (with the web studio: Paint instead of the grid, Gallery)."""
    if web:
        from cogs.web import with_web_buttons

        return with_web_buttons(final_view(turn_id, locale), turn_id, locale)
    view = discord.ui.View(timeout=None)
    for item in (
        TurnButton.make(
            "reroll", turn_id, t(locale, "button.reroll"), "🔁", discord.ButtonStyle.secondary
        ),
        TurnButton.make(
            "vary", turn_id, t(locale, "button.vary"), "🎲", discord.ButtonStyle.secondary
        ),
        TurnButton.make(
            "edit", turn_id, t(locale, "button.edit"), "✏️", discord.ButtonStyle.primary
        ),
        TurnButton.make(
            "region", turn_id, t(locale, "button.region"), "🔲", discord.ButtonStyle.primary
        ),
        TurnButton.make(
            "delete", turn_id, t(locale, "button.delete"), "🗑️", discord.ButtonStyle.danger
        ),
    ):
        view.add_item(item)
    view.add_item(ExtendSelect.make(turn_id, locale))
    return view


def grid_view(turn_ids: Sequence[int], locale: str) -> discord.ui.View:
    """The U1-U4 buttons under several images of one job: each continues from its image."""
    view = discord.ui.View(timeout=None)
    for index, turn_id in enumerate(turn_ids, start=1):
        view.add_item(PickButton.make(index, turn_id, locale))
    return view


def cancel_view(job_id: int, locale: str) -> discord.ui.View:
    """The Cancel button under a queued or running job's progress."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_id, label=t(locale, "button.cancel")))
    return view


def retry_view(job_id: int, locale: str) -> discord.ui.View:
    """The Retry button under a failure."""
    view = discord.ui.View(timeout=None)
    view.add_item(RetryButton(job_id, label=t(locale, "button.retry")))
    return view


async def _turn_for(
    bot: ImagineBot, interaction: discord.Interaction[Any], turn_id: int
) -> tuple[Turn, Requester]:
    """The turn a button names, after checking the button really belongs where it was pressed."""
    requester = await requester_for_interaction(bot, interaction)
    return await bot.studio.button_turn(turn_id, requester), requester


async def _submit(
    bot: ImagineBot, interaction: discord.Interaction[Any], spec: JobSpec, requester: Requester
) -> None:
    """Check and queue a job through the same gates as a new command."""
    try:
        await bot.studio.submit(bot.studio.check(spec, requester))
    except BotError as exc:
        await reply_error(interaction, exc.localized(requester.locale))


class TurnButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"img:(?P<action>reroll|vary|edit|region|delete):(?P<turn>{ROW_ID})",
):
    """One of the buttons under an image; the action and turn id live in the custom_id."""

    def __init__(
        self, action: str, turn_id: int, button: discord.ui.Button[Any] | None = None
    ) -> None:
        super().__init__(button or discord.ui.Button(custom_id=f"img:{action}:{turn_id}"))
        self.action = action
        self.turn_id = turn_id

    @classmethod
    def make(
        cls, action: str, turn_id: int, label: str, emoji: str, style: discord.ButtonStyle
    ) -> TurnButton:
        """A button with its label."""
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=label, emoji=emoji, style=style, custom_id=f"img:{action}:{turn_id}"
        )
        return cls(action, turn_id, button)

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> TurnButton:
        assert isinstance(item, discord.ui.Button)
        return cls(match["action"], int(match["turn"]), item)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        try:
            turn, requester = await _turn_for(bot, interaction, self.turn_id)
        except BotError as exc:
            await reply_error(interaction, exc.localized(str(interaction.locale)))
            return
        locale = requester.locale
        if self.action == "edit":
            await interaction.response.send_modal(EditModal(turn.id, locale))
            return
        if self.action == "region":
            await self._region(bot, interaction, turn, locale)
            return
        if self.action == "delete":
            await self._delete(bot, interaction, turn, requester)
            return
        await interaction.response.defer()
        studio = bot.studio
        spec = studio.reroll_spec(turn) if self.action == "reroll" else studio.vary_spec(turn)
        await _submit(bot, interaction, spec, requester)

    async def _delete(
        self,
        bot: ImagineBot,
        interaction: discord.Interaction[Any],
        turn: Turn,
        requester: Requester,
    ) -> None:
        try:
            # The record goes first (and the conversation back to the image before this one):
            # once the image disappears from Discord, nothing is left to do.
            await bot.studio.delete_image(turn, requester)
        except BotError as exc:
            await reply_error(interaction, exc.localized(requester.locale))
            return
        await interaction.response.defer()
        if interaction.message is not None:
            try:
                await interaction.message.delete()
            except discord.NotFound:
                # A second click of a double-click, or a moderator was quicker: it is gone already.
                log.info("image message of turn %s was already deleted", turn.id)

    async def _region(
        self, bot: ImagineBot, interaction: discord.Interaction[Any], turn: Turn, locale: str
    ) -> None:
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await bot.studio.turn_image(turn)
        if data is None:
            await reply_error(interaction, t(locale, "studio.parent_image_missing"))
            return
        preview = await asyncio.to_thread(images.grid_overlay, data, rows=GRID_ROWS, cols=GRID_COLS)
        view = discord.ui.View(timeout=None)
        view.add_item(CellSelect.make(turn.id, locale))
        await interaction.followup.send(
            t(locale, "discord.region_pick"),
            file=discord.File(io.BytesIO(preview), filename="grid.png"),
            view=view,
            ephemeral=True,
        )


class PickButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"img:pick(?P<index>[1-4]):(?P<turn>{ROW_ID})",
):
    """U1-U4 under a grid: continue from this image. The conversation's head moves to it, and
    it is posted on its own with the usual buttons."""

    def __init__(
        self, index: int, turn_id: int, button: discord.ui.Button[Any] | None = None
    ) -> None:
        super().__init__(button or discord.ui.Button(custom_id=f"img:pick{index}:{turn_id}"))
        self.index = index
        self.turn_id = turn_id

    @classmethod
    def make(cls, index: int, turn_id: int, locale: str) -> PickButton:
        """The button for the `index`th image (1-based)."""
        button: discord.ui.Button[Any] = discord.ui.Button(
            label=t(locale, "button.pick", index=index),
            style=discord.ButtonStyle.secondary,
            custom_id=f"img:pick{index}:{turn_id}",
        )
        return cls(index, turn_id, button)

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> PickButton:
        assert isinstance(item, discord.ui.Button)
        return cls(int(match["index"]), int(match["turn"]), item)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        requester = await requester_for_interaction(bot, interaction)
        try:
            turn = await bot.studio.pick(self.turn_id, requester)
        except BotError as exc:
            await reply_error(interaction, exc.localized(requester.locale))
            return
        channel = interaction.channel
        grid = interaction.message
        if turn.message_id is not None and grid is not None and turn.message_id != grid.id:
            # Picked before (a second click, or a pick after another one): it is posted already.
            where = interaction.guild_id or "@me"
            link = f"https://discord.com/channels/{where}/{turn.channel_id}/{turn.message_id}"
            text = t(requester.locale, "discord.already_picked", index=self.index, link=link)
            await interaction.response.send_message(text, ephemeral=True)
            return
        await interaction.response.defer()
        data = await bot.studio.turn_image(turn)
        if data is None or channel is None:
            await reply_error(interaction, t(requester.locale, "studio.parent_image_missing"))
            return
        from cogs._sink import ImageUpload, upload_limit

        fmt = str(turn.options.get("format") or "png")
        fitted = await asyncio.to_thread(
            images.fit_to_limit, data, fmt, upload_limit(channel) - 64 * 1024
        )
        content = t(
            requester.locale,
            "discord.picked",
            index=self.index,
            user=interaction.user.mention,
            prompt=inert(turn.prompt, 300),
        )
        upload = ImageUpload(fitted.data)
        try:
            message = await channel.send(  # type: ignore[union-attr]
                content,
                file=discord.File(
                    upload,
                    filename=f"image.{fitted.format}",
                    spoiler=bot.studio.spoiler_for(requester),
                ),
                view=final_view(turn.id, requester.locale, web=bot.studio.web_links),
            )
        finally:
            upload.discard()
        url = message.attachments[0].url if message.attachments else None
        await bot.studio.picked(turn, message.id, url)


class _TurnSelect:
    """Mixed into a select that acts on one image; the turn id lives in its custom_id
    (`img:<action>:<id>`)."""

    action = ""

    def __init__(self, turn_id: int, select: discord.ui.Select[Any] | None = None) -> None:
        # DynamicItem comes next in the subclasses' MRO.
        super().__init__(  # type: ignore[call-arg]
            select or discord.ui.Select(custom_id=f"img:{self.action}:{turn_id}")
        )
        self.turn_id = turn_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Any:
        assert isinstance(item, discord.ui.Select)
        return cls(int(match["turn"]), item)


class CellSelect(
    _TurnSelect,
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=rf"img:cells:(?P<turn>{ROW_ID})",
):
    """The grid-cell picker of Edit region."""

    action = "cells"

    @classmethod
    def make(cls, turn_id: int, locale: str) -> CellSelect:
        """A multi-select over the numbered cells."""
        cells = GRID_ROWS * GRID_COLS
        select: discord.ui.Select[Any] = discord.ui.Select(
            custom_id=f"img:cells:{turn_id}",
            placeholder=t(locale, "discord.region_placeholder"),
            min_values=1,
            max_values=cells,
            options=[discord.SelectOption(label=str(i), value=str(i)) for i in range(1, cells + 1)],
        )
        return cls(turn_id, select)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        try:
            turn, requester = await _turn_for(bot, interaction, self.turn_id)
        except BotError as exc:
            await reply_error(interaction, exc.localized(str(interaction.locale)))
            return
        values = self.item.values
        cells = tuple(sorted({int(v) for v in values if str(v).isdigit()}))
        await interaction.response.send_modal(EditModal(turn.id, requester.locale, cells=cells))


class ExtendSelect(
    _TurnSelect,
    discord.ui.DynamicItem[discord.ui.Select[Any]],
    template=rf"img:extend:(?P<turn>{ROW_ID})",
):
    """Zoom out or pan: the image on a larger canvas, the new border drawn by the model."""

    action = "extend"

    @classmethod
    def make(cls, turn_id: int, locale: str) -> ExtendSelect:
        """A select of the ways to extend the canvas."""
        select: discord.ui.Select[Any] = discord.ui.Select(
            custom_id=f"img:extend:{turn_id}",
            placeholder=t(locale, "discord.extend_placeholder"),
            options=[
                discord.SelectOption(label=t(locale, f"extend.{how}"), value=how, emoji=emoji)
                for how, emoji in EXTEND_CHOICES
            ],
        )
        return cls(turn_id, select)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        try:
            turn, requester = await _turn_for(bot, interaction, self.turn_id)
            spec = bot.studio.extend_spec(turn, str(self.item.values[0]))
        except BotError as exc:
            await reply_error(interaction, exc.localized(str(interaction.locale)))
            return
        await interaction.response.defer()
        await _submit(bot, interaction, spec, requester)


def instruction_input(locale: str) -> discord.ui.TextInput[Any]:
    """The text field of the edit dialogs: what should change."""
    return discord.ui.TextInput(
        label=t(locale, "modal.edit_label"),
        style=discord.TextStyle.paragraph,
        placeholder=t(locale, "modal.edit_placeholder"),
        max_length=4000,
        custom_id="instruction",
    )


class EditModal(discord.ui.Modal):
    """Asks for an instruction; continues from the image (only inside the chosen cells, if any)."""

    def __init__(self, turn_id: int, locale: str, *, cells: tuple[int, ...] = ()) -> None:
        suffix = "-".join(str(c) for c in cells) or "all"
        super().__init__(
            title=t(locale, "modal.edit_title"),
            custom_id=f"img:editm:{turn_id}:{suffix}",
            timeout=900,
        )
        self.turn_id = turn_id
        self.cells = cells
        self.instruction = instruction_input(locale)
        self.add_item(self.instruction)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        try:
            turn, requester = await _turn_for(bot, interaction, self.turn_id)
        except BotError as exc:
            await reply_error(interaction, exc.localized(str(interaction.locale)))
            return
        await interaction.response.defer()
        spec = bot.studio.edit_spec(turn, self.instruction.value, self.cells)
        await _submit(bot, interaction, spec, requester)


class _JobButton:
    """Mixed into a button that acts on one job; the job id lives in its custom_id
    (`img:<action>:<id>`)."""

    action = ""
    emoji = ""
    style = discord.ButtonStyle.secondary

    def __init__(
        self, job_id: int, button: discord.ui.Button[Any] | None = None, *, label: str = ""
    ) -> None:
        # DynamicItem comes next in the subclasses' MRO.
        super().__init__(  # type: ignore[call-arg]
            button
            or discord.ui.Button(
                label=label or self.action.title(),
                emoji=self.emoji,
                style=self.style,
                custom_id=f"img:{self.action}:{job_id}",
            )
        )
        self.job_id = job_id

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> Any:
        assert isinstance(item, discord.ui.Button)
        return cls(int(match["job"]), item)


class RetryButton(
    _JobButton,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"img:retry:(?P<job>{ROW_ID})",
):
    """Runs a failed or interrupted job again."""

    action = "retry"
    emoji = "🔄"
    style = discord.ButtonStyle.primary

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        requester = await requester_for_interaction(bot, interaction)
        await interaction.response.defer()
        # The button goes first: the job's progress then takes over this message.
        await self._show_button(interaction, False)
        try:
            # The same gates as a new request: the server's rules and budgets as they are now.
            await bot.studio.retry(self.job_id, requester)
        except BotError as exc:
            await self._show_button(interaction, True, requester.locale)
            await reply_error(interaction, exc.localized(requester.locale))

    async def _show_button(
        self, interaction: discord.Interaction[Any], shown: bool, locale: str = "en"
    ) -> None:
        if interaction.message is None:
            return
        try:
            await interaction.message.edit(view=retry_view(self.job_id, locale) if shown else None)
        except discord.HTTPException:
            log.info("could not change the Retry button of job %s", self.job_id)


class CancelButton(
    _JobButton,
    discord.ui.DynamicItem[discord.ui.Button[Any]],
    template=rf"img:cancel:(?P<job>{ROW_ID})",
):
    """Cancels a queued or running job: free while queued, and nothing charged mid-drawing."""

    action = "cancel"
    emoji = "✖️"

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        requester = await requester_for_interaction(bot, interaction)
        try:
            cancelled = await bot.studio.cancel(self.job_id, requester)
        except BotError as exc:
            await reply_error(interaction, exc.localized(requester.locale))
            return
        if cancelled:
            await interaction.response.defer()
        else:
            await reply_error(interaction, t(requester.locale, "discord.cancel_too_late"))


async def setup(bot: commands.Bot) -> None:
    """Register the persistent items."""
    bot.add_dynamic_items(
        TurnButton, PickButton, CellSelect, ExtendSelect, RetryButton, CancelButton
    )
