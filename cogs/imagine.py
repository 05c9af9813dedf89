"""`/imagine`, `/edit`, and every message in a bot thread as the next turn of its conversation."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.errors import BadInput, BotError
from bot.core.models import MODELS, STANDARD_SIZES, canonical_size, size_rule_violation
from bot.core.options import OUTPUT_OPTIONS, InputImage, has_visible_text, validate_prompt
from bot.core.studio import JobSpec, Requester
from cogs._translator import L, choices
from cogs._ui import (
    clip,
    inert,
    parent_channel_id,
    prepare_bytes,
    read_image,
    read_mask,
    reply_error,
    requester_for_interaction,
    requester_for_message,
    t,
)
from storage.base import Conversation

if TYPE_CHECKING:
    from bot.app import ImagineBot

log = logging.getLogger(__name__)

QUALITIES = ("auto", "low", "medium", "high", "xhigh", "max")
FORMATS = ("png", "jpeg", "webp")
BACKGROUNDS = ("auto", "opaque", "transparent")
MODERATIONS = ("auto", "low")
EXTRA_SIZES = ("1536x864", "864x1536", "2048x2048", "2560x1440", "1440x2560", "3840x2160")
THREAD_NAME_LIMIT = 90


async def size_autocomplete(
    interaction: discord.Interaction[Any], current: str
) -> list[app_commands.Choice[str]]:
    """Sizes that start with what was typed (a typed free size is offered in the API's spelling)."""
    sizes = ["auto", *STANDARD_SIZES, *EXTRA_SIZES]
    typed = current.strip().lower() if current.isascii() else current
    found = [s for s in sizes if s.startswith(typed)]
    # Only what validation would take: ASCII digits, a lower-case x, within the size rules.
    size = canonical_size(current)
    if size != "auto" and size_rule_violation(size) is None and size not in found:
        found.insert(0, size)
    return [app_commands.Choice(name=s, value=s) for s in found[:25]]


async def model_autocomplete(
    interaction: discord.Interaction[Any], current: str
) -> list[app_commands.Choice[str]]:
    """Image models matching what was typed."""
    return [
        app_commands.Choice(name=f"{spec.label} ({name})"[:100], value=name)
        for name, spec in MODELS.items()
        if current.lower() in name
    ][:25]


F = TypeVar("F", bound=Callable[..., Any])


def output_option_params(func: F) -> F:
    """Names, descriptions, choices and autocomplete of the output options every command shares."""
    func = app_commands.rename(**{n: L(f"opt.{n}.name") for n in OUTPUT_OPTIONS})(func)
    func = app_commands.describe(**{n: L(f"opt.{n}.desc") for n in OUTPUT_OPTIONS})(func)
    func = app_commands.choices(
        quality=choices("choice.quality", QUALITIES),
        format=choices("choice.format", FORMATS),
        background=choices("choice.background", BACKGROUNDS),
        moderation=choices("choice.moderation", MODERATIONS),
    )(func)
    return app_commands.autocomplete(size=size_autocomplete, model=model_autocomplete)(func)


def output_options(
    size: str | None,
    quality: str | None,
    format: str | None,
    background: str | None,
    compression: int | None,
    moderation: str | None,
    partials: int | None,
    model: str | None,
) -> dict[str, object]:
    """The output options a command was given (a size in the API's spelling, see canonical_size)."""
    return {
        "size": canonical_size(size) if size is not None else None,
        "quality": quality,
        "format": format,
        "background": background,
        "compression": compression,
        "moderation": moderation,
        "partials": partials,
        "model": model,
    }


class ImagineCog(commands.Cog):
    """Starts conversations and continues them."""

    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    async def _start(
        self,
        interaction: discord.Interaction[Any],
        spec: JobSpec,
        requester: Requester,
    ) -> None:
        """Check the job, open (or reuse) its conversation, and queue it."""
        bot = self.bot
        store = bot.services.store
        channel = interaction.channel
        await bot.studio.precheck(spec, requester)
        conversation = await store.get_conversation(requester.channel_id)
        if conversation is not None:
            # /imagine inside a bot thread (or a DM conversation) continues it.
            if not await bot.studio.may_continue(conversation, requester):
                raise BotError("discord.not_allowed_continue")
            await interaction.followup.send(
                t(requester.locale, "discord.continuing"), ephemeral=True
            )
            await bot.studio.submit(spec, requester)
            return
        starter = await interaction.followup.send(
            t(
                requester.locale,
                "discord.starting",
                prompt=inert(spec.prompt, 1500),
                user=interaction.user.mention,
            ),
            wait=True,
        )
        target = requester.channel_id
        if isinstance(channel, discord.TextChannel):
            try:
                thread = await channel.create_thread(
                    name=clip(spec.prompt.replace("\n", " "), THREAD_NAME_LIMIT),
                    message=starter,
                    auto_archive_duration=1440,
                )
                target = thread.id
            except discord.Forbidden:
                # Without the permission to create threads, the image is posted in the channel;
                # replies to it still continue the conversation.
                log.info(
                    "no permission to create threads in %s; replying in the channel", channel.id
                )
                await interaction.followup.send(
                    t(requester.locale, "discord.no_thread_permission"), ephemeral=True
                )
                target = 0
        if target:
            now = time.time()
            await store.create_conversation(
                Conversation(
                    channel_id=target,
                    guild_id=requester.guild_id,
                    owner_id=requester.user_id,
                    parent_channel_id=requester.channel_id
                    if target != requester.channel_id
                    else None,
                    latest_response_id=None,
                    latest_message_id=None,
                    engine=await bot.studio.engine_for(requester.guild_id),
                    options=dict(spec.options),
                    created_at=now,
                    updated_at=now,
                )
            )
        else:
            target = requester.channel_id
        await bot.studio.submit(spec, _moved(requester, target))

    async def _read_inputs(
        self,
        requester: Requester,
        attachments: list[discord.Attachment | None],
        mask: discord.Attachment | None,
    ) -> tuple[tuple[Any, ...], bytes | None]:
        images = [await read_image(self.bot, a) for a in attachments if a is not None]
        mask_bytes = None
        if mask is not None:
            if not images:
                raise BadInput("bad.mask_without_image")
            mask_bytes = await read_mask(self.bot, mask, images[0])
        return tuple(images), mask_bytes

    @app_commands.command(name=L("cmd.imagine.name"), description=L("cmd.imagine.desc"))
    @app_commands.rename(
        prompt=L("opt.prompt.name"),
        image=L("opt.image.name"),
        image2=L("opt.image2.name"),
        image3=L("opt.image3.name"),
        mask=L("opt.mask.name"),
    )
    @app_commands.describe(
        prompt=L("opt.prompt.desc"),
        image=L("opt.image.desc"),
        image2=L("opt.image.desc"),
        image3=L("opt.image.desc"),
        mask=L("opt.mask.desc"),
    )
    @output_option_params
    async def imagine(
        self,
        interaction: discord.Interaction[Any],
        prompt: str,
        size: str | None = None,
        quality: str | None = None,
        format: str | None = None,
        background: str | None = None,
        compression: app_commands.Range[int, 0, 100] | None = None,
        moderation: str | None = None,
        partials: app_commands.Range[int, 0, 3] | None = None,
        model: str | None = None,
        image: discord.Attachment | None = None,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        mask: discord.Attachment | None = None,
    ) -> None:
        """Start a conversation: a thread whose every message edits the image."""
        await interaction.response.defer(thinking=True)
        requester = await requester_for_interaction(self.bot, interaction)
        try:
            text = validate_prompt(prompt)
            options = output_options(
                size, quality, format, background, compression, moderation, partials, model
            )
            # Place and options first: a mistake there is reported before any download.
            await self.bot.studio.check_channel(requester, parent_channel_id(interaction.channel))
            await self.bot.studio.resolve_options(requester, options)
            images, mask_bytes = await self._read_inputs(requester, [image, image2, image3], mask)
            spec = JobSpec(
                kind="imagine",
                prompt=text,
                options=options,
                images=images,
                mask=mask_bytes,
                parent="latest",
            )
            await self._start(interaction, spec, requester)
        except BotError as exc:
            await reply_error(interaction, exc.localized(requester.locale))
            return
        await _tell_conversions(interaction.followup.send, images, requester.locale, ephemeral=True)

    @app_commands.command(name=L("cmd.edit.name"), description=L("cmd.edit.desc"))
    @app_commands.rename(
        image=L("opt.image.name"),
        prompt=L("opt.instruction.name"),
        mask=L("opt.mask.name"),
    )
    @app_commands.describe(
        image=L("opt.edit_image.desc"),
        prompt=L("opt.instruction.desc"),
        mask=L("opt.mask.desc"),
    )
    @output_option_params
    async def edit(
        self,
        interaction: discord.Interaction[Any],
        image: discord.Attachment,
        prompt: str,
        mask: discord.Attachment | None = None,
        size: str | None = None,
        quality: str | None = None,
        format: str | None = None,
        background: str | None = None,
        compression: app_commands.Range[int, 0, 100] | None = None,
        moderation: str | None = None,
        partials: app_commands.Range[int, 0, 3] | None = None,
        model: str | None = None,
    ) -> None:
        """Edit an uploaded image; the thread it opens continues from the result."""
        await interaction.response.defer(thinking=True)
        requester = await requester_for_interaction(self.bot, interaction)
        try:
            text = validate_prompt(prompt)
            options = output_options(
                size, quality, format, background, compression, moderation, partials, model
            )
            # Place and options first: a mistake there is reported before any download.
            await self.bot.studio.check_channel(requester, parent_channel_id(interaction.channel))
            await self.bot.studio.resolve_options(requester, options)
            images, mask_bytes = await self._read_inputs(requester, [image], mask)
            spec = JobSpec(
                kind="edit_upload",
                prompt=text,
                options=options,
                images=images,
                mask=mask_bytes,
                parent="latest",
            )
            await self._start(interaction, spec, requester)
        except BotError as exc:
            await reply_error(interaction, exc.localized(requester.locale))
            return
        await _tell_conversions(interaction.followup.send, images, requester.locale, ephemeral=True)

    @commands.Cog.listener()
    async def on_message(self, message: discord.Message) -> None:
        """A message in a conversation (or a reply to one of its images) is its next turn."""
        if message.author.bot or message.webhook_id is not None:
            return
        if message.type not in (discord.MessageType.default, discord.MessageType.reply):
            return
        store = self.bot.services.store
        conversation = await store.get_conversation(message.channel.id)
        parent_turn = None
        if message.reference is not None and message.reference.message_id is not None:
            parent_turn = await store.get_turn_by_message(message.reference.message_id)
            if parent_turn is not None and parent_turn.channel_id != message.channel.id:
                parent_turn = None
        if conversation is None and parent_turn is None:
            return
        requester = await requester_for_message(self.bot, message)
        try:
            if conversation is not None and not await self.bot.studio.may_continue(
                conversation, requester
            ):
                raise BotError("discord.not_allowed_continue")
            if (
                conversation is None
                and parent_turn is not None
                and parent_turn.user_id != requester.user_id
            ):
                if not requester.is_admin:
                    raise BotError("discord.not_allowed_continue")
            spec = await self._spec_from_message(message, requester, parent_turn)
            await self.bot.studio.submit(spec, requester)
        except BotError as exc:
            try:
                await message.reply("⚠️ " + exc.localized(requester.locale), mention_author=False)
            except discord.HTTPException:
                log.warning("could not answer message %s", message.id)
            return
        await _tell_conversions(message.reply, spec.images, requester.locale, mention_author=False)

    async def _spec_from_message(
        self, message: discord.Message, requester: Requester, parent_turn: Any
    ) -> JobSpec:
        """Text = instruction, image attachments = references, an attachment named mask* = the mask."""
        if not message.content.strip() and not message.attachments:
            raise BadInput(
                "discord.empty_message" if not message.stickers else "discord.sticker_only"
            )
        refs: list[discord.Attachment] = []
        masks: list[discord.Attachment] = []
        for attachment in message.attachments:
            (masks if attachment.filename.lower().startswith("mask") else refs).append(attachment)
        if len(masks) > 1:
            # Which one was meant cannot be guessed; refused before anything is downloaded.
            raise BadInput("discord.several_masks", count=len(masks))
        mask_attachment = masks[0] if masks else None
        images = [await read_image(self.bot, a) for a in refs]
        mask = None
        if mask_attachment is not None:
            target = images[0] if images else None
            if target is None and parent_turn is None:
                # The mask applies to the conversation's latest image.
                latest = await self.bot.services.store.latest_turn(message.channel.id)
                parent_image = await self.bot.fetch_turn_image(latest) if latest else None
                if parent_image is None:
                    raise BadInput("bad.mask_without_image")
                target = await prepare_bytes(self.bot, parent_image, "parent.png")
            elif target is None:
                parent_image = await self.bot.fetch_turn_image(parent_turn)
                if parent_image is None:
                    raise BadInput("bad.mask_without_image")
                target = await prepare_bytes(self.bot, parent_image, "parent.png")
            mask = await read_mask(self.bot, mask_attachment, target)
        text = message.content.strip()
        if message.attachments and not has_visible_text(text):
            # Invisible characters alone say nothing: the attachments are the whole instruction.
            text = ""
        prompt = text or t("en", "prompt.use_references")
        validate_prompt(prompt)
        if parent_turn is not None:
            return JobSpec(
                kind="reply",
                prompt=prompt,
                images=tuple(images),
                mask=mask,
                parent="response",
                parent_response_id=parent_turn.response_id,
                parent_turn_id=parent_turn.id,
            )
        return JobSpec(
            kind="message", prompt=prompt, images=tuple(images), mask=mask, parent="latest"
        )


async def _tell_conversions(
    send: Any, images: Sequence[InputImage], locale: str, **kwargs: Any
) -> None:
    """Say which accepted images were converted (CMYK, 16-bit, format...) before being sent."""
    keys = list(dict.fromkeys(image.note for image in images if image.note))
    if not keys:
        return
    try:
        await send("ℹ️ " + " ".join(t(locale, key) for key in keys), **kwargs)
    except discord.HTTPException:
        log.warning("could not tell about converted input images")


def _moved(requester: Requester, channel_id: int) -> Requester:
    return dataclasses.replace(requester, channel_id=channel_id)


async def setup(bot: commands.Bot) -> None:
    """Add the cog."""
    await bot.add_cog(ImagineCog(bot))  # type: ignore[arg-type]
