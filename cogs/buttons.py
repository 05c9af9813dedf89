"""Buttons under every image (Reroll, Vary, Edit, Edit region, Delete) and Retry: persistent across restarts."""

from __future__ import annotations

import asyncio
import io
import logging
import re
from typing import TYPE_CHECKING, Any, cast

import discord
from discord.ext import commands

from bot.core import images
from bot.core.errors import BotError
from bot.core.studio import JobSpec, Requester
from cogs._ui import reply_error, requester_for_interaction, t
from storage.base import Turn

if TYPE_CHECKING:
    from bot.app import ImagineBot

log = logging.getLogger(__name__)

GRID_ROWS = 3
GRID_COLS = 3
# Ids in custom_ids are database row ids: a crafted one past a signed 64-bit integer cannot name
# anything, and SQLite refuses to even look it up (OverflowError) rather than finding nothing.
MAX_ROW_ID = 2**63 - 1
# ASCII digits only: \d would also match other scripts' digits, which int() reads as the same id.
ROW_ID = "[0-9]+"


def final_view(turn_id: int, locale: str) -> discord.ui.View:
    """The buttons under a final image."""
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
    turn = await bot.services.store.get_turn(turn_id) if 0 < turn_id <= MAX_ROW_ID else None
    # A crafted custom_id could name a turn elsewhere: it must be in this very channel.
    if turn is None or turn.channel_id != interaction.channel_id:
        raise BotError("discord.unknown_image")
    requester = await requester_for_interaction(bot, interaction)
    conversation = await bot.services.store.get_conversation(turn.channel_id)
    if conversation is not None and not await bot.studio.may_continue(conversation, requester):
        raise BotError("discord.not_allowed_continue")
    if conversation is None and turn.user_id != requester.user_id and not requester.is_admin:
        raise BotError("discord.not_allowed_continue")
    return turn, requester


async def _submit(
    bot: ImagineBot, interaction: discord.Interaction[Any], spec: JobSpec, requester: Requester
) -> None:
    try:
        await bot.studio.submit(spec, requester)
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
        if self.action == "reroll":
            spec = JobSpec(
                kind="reroll",
                prompt=turn.prompt,
                options=turn.options,
                parent="response" if turn.parent_response_id else "none",
                parent_response_id=turn.parent_response_id,
            )
        else:
            spec = JobSpec(
                kind="vary",
                prompt=t("en", "prompt.vary"),
                options=turn.options,
                parent="response",
                parent_response_id=turn.response_id,
                parent_turn_id=turn.id,
            )
        await _submit(bot, interaction, spec, requester)

    async def _delete(
        self,
        bot: ImagineBot,
        interaction: discord.Interaction[Any],
        turn: Turn,
        requester: Requester,
    ) -> None:
        if turn.user_id != requester.user_id and not requester.is_admin:
            await reply_error(interaction, t(requester.locale, "discord.not_allowed_delete"))
            return
        await interaction.response.defer()
        # The record goes first: once the image disappears from Discord, nothing is left to do.
        await bot.services.store.delete_turn(turn.id)
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
        data = await bot.fetch_turn_image(turn)
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


class CellSelect(
    discord.ui.DynamicItem[discord.ui.Select[Any]], template=rf"img:cells:(?P<turn>{ROW_ID})"
):
    """The grid-cell picker of Edit region."""

    def __init__(self, turn_id: int, select: discord.ui.Select[Any] | None = None) -> None:
        super().__init__(select or discord.ui.Select(custom_id=f"img:cells:{turn_id}"))
        self.turn_id = turn_id

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

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Item[Any],
        match: re.Match[str],
        /,
    ) -> CellSelect:
        assert isinstance(item, discord.ui.Select)
        return cls(int(match["turn"]), item)

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
        self.instruction: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
            label=t(locale, "modal.edit_label"),
            style=discord.TextStyle.paragraph,
            placeholder=t(locale, "modal.edit_placeholder"),
            max_length=4000,
            custom_id="instruction",
        )
        self.add_item(self.instruction)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        try:
            turn, requester = await _turn_for(bot, interaction, self.turn_id)
        except BotError as exc:
            await reply_error(interaction, exc.localized(str(interaction.locale)))
            return
        await interaction.response.defer()
        spec = JobSpec(
            kind="region" if self.cells else "edit",
            prompt=self.instruction.value,
            options=turn.options,
            mask_cells=self.cells,
            parent="response",
            parent_response_id=turn.response_id,
            parent_turn_id=turn.id,
        )
        await _submit(bot, interaction, spec, requester)


class RetryButton(
    discord.ui.DynamicItem[discord.ui.Button[Any]], template=rf"img:retry:(?P<job>{ROW_ID})"
):
    """Runs a failed or interrupted job again."""

    def __init__(
        self, job_id: int, button: discord.ui.Button[Any] | None = None, *, label: str = "Retry"
    ) -> None:
        super().__init__(
            button
            or discord.ui.Button(
                label=label,
                emoji="🔄",
                style=discord.ButtonStyle.primary,
                custom_id=f"img:retry:{job_id}",
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
    ) -> RetryButton:
        assert isinstance(item, discord.ui.Button)
        return cls(int(match["job"]), item)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        bot = cast("ImagineBot", interaction.client)
        requester = await requester_for_interaction(bot, interaction)
        job = await bot.services.store.get_job(self.job_id) if self.job_id <= MAX_ROW_ID else None
        if job is None or job.channel_id != interaction.channel_id:
            await reply_error(interaction, t(requester.locale, "discord.unknown_job"))
            return
        if job.user_id != requester.user_id and not requester.is_admin:
            await reply_error(interaction, t(requester.locale, "discord.not_allowed_retry"))
            return
        await interaction.response.defer()
        if interaction.message is not None:
            try:
                await interaction.message.edit(view=None)
            except discord.HTTPException:
                log.info("could not remove the Retry button of job %s", job.id)
        new_job = await bot.studio.retry(job.id)
        if new_job is None:
            await reply_error(interaction, t(requester.locale, "discord.unknown_job"))


async def setup(bot: commands.Bot) -> None:
    """Register the persistent items."""
    bot.add_dynamic_items(TurnButton, CellSelect, RetryButton)
