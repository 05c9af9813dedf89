"""`/imagine`, `/edit`, and every message in a bot thread as the next turn of its conversation."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot.core.errors import BadInput, BotError
from bot.core.jobs import MAX_COUNT, JobKind, JobSpec, ParentMode, Requester
from bot.core.models import (
    MODELS,
    SIZE_PRESETS,
    STANDARD_SIZES,
    canonical_size,
    size_rule_violation,
)
from bot.core.options import OUTPUT_OPTIONS, InputImage, has_visible_text, validate_prompt
from bot.core.studio import StartPlan
from cogs._translator import L, choices
from cogs._ui import (
    clip,
    inert,
    read_image,
    read_mask,
    reply_error,
    requester_for_interaction,
    requester_for_message,
    t,
)
from storage.base import Job

if TYPE_CHECKING:
    from cogs.app import ImagineBot

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
    sizes = ["auto", *SIZE_PRESETS, *STANDARD_SIZES, *EXTRA_SIZES]
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
        # Context menus cannot be methods of a cog: registered on the tree, removed on unload.
        self.edit_menu = app_commands.ContextMenu(
            name=L("ctx.edit.name"), callback=self.edit_any_image
        )
        bot.tree.add_command(self.edit_menu)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.edit_menu.name, type=self.edit_menu.type)

    async def edit_any_image(
        self, interaction: discord.Interaction[Any], message: discord.Message
    ) -> None:
        """ "Edit with imagine" on any message with an image: the edit dialog, then a new thread."""
        attachment = next(
            (a for a in message.attachments if (a.content_type or "").startswith("image/")), None
        )
        locale = str(interaction.locale)
        if attachment is None:
            await reply_error(interaction, t(locale, "discord.no_image_to_edit"))
            return
        await interaction.response.send_modal(UploadEditModal(self, attachment, locale))

    async def edit_upload(
        self, interaction: discord.Interaction[Any], attachment: discord.Attachment, prompt: str
    ) -> None:
        """Start an edit of someone's posted image as /edit would."""
        await interaction.response.defer(thinking=True)
        requester = await requester_for_interaction(self.bot, interaction)
        images: tuple[InputImage, ...] = ()
        try:
            text = validate_prompt(prompt)
            self.bot.studio.check_place(requester)
            self.bot.studio.options_for(requester)
            images, _mask = await self._read_inputs(requester, [attachment], None)
            spec = JobSpec(kind=JobKind.EDIT_UPLOAD, prompt=text, images=images)
            await self._start(interaction, spec, requester)
        except BotError as exc:
            await reply_error(interaction, exc.localized(requester.locale))
            return
        await _tell_conversions(interaction.followup.send, images, requester.locale, ephemeral=True)

    async def _start(
        self,
        interaction: discord.Interaction[Any],
        spec: JobSpec,
        requester: Requester,
    ) -> None:
        """Admit the job (its cost reserved within every limit), then open its place and queue it.

        Nothing is posted before the admission succeeds; if opening the place fails after it,
        the job is cancelled (its reservation released) and the starter message says so.
        """
        studio = self.bot.studio
        channel = interaction.channel
        plan = await studio.start_plan(
            requester,
            in_dm=interaction.guild_id is None,
            in_thread=isinstance(channel, discord.Thread),
        )
        if plan is not StartPlan.CONTINUE:
            spec = dataclasses.replace(spec, parent=ParentMode.NONE)
        job = await studio.admit(studio.check(spec, requester))
        starter: discord.Message | None = None
        try:
            if plan is StartPlan.CONTINUE:
                await _quietly(
                    interaction.followup.send(
                        t(requester.locale, "discord.continuing"), ephemeral=True
                    )
                )
                await studio.place(job, requester.channel_id)
                return
            starter = await self._starter(interaction, spec, requester)
            if plan is StartPlan.NEW_THREAD and isinstance(channel, discord.TextChannel):
                thread = await self._open_thread(interaction, channel, starter, spec, requester)
                if thread is not None:
                    conversation = studio.new_conversation(requester, thread.id, spec)
                    await studio.place(job, thread.id, conversation)
                    return
            elif plan is StartPlan.FRESH_DM:
                conversation = studio.new_conversation(requester, requester.channel_id, spec)
                await studio.place(job, requester.channel_id, conversation)
                return
            # A thread the bot did not create, or no thread could be opened: the image is posted
            # here and replies to it continue it, but ordinary chat here is not a conversation.
            await studio.place(job, requester.channel_id)
        except Exception:
            await self._abandon(job, starter, requester)
            raise

    async def _abandon(
        self, job: Job, starter: discord.Message | None, requester: Requester
    ) -> None:
        """Cancel a job that could not be placed, and leave no "asked for" message behind."""
        try:
            await self.bot.studio.abandon(job)
        except Exception:
            log.exception("could not cancel job %s", job.id)
        if starter is not None:
            await _quietly(starter.edit(content=t(requester.locale, "discord.start_failed")))

    async def _starter(
        self, interaction: discord.Interaction[Any], spec: JobSpec, requester: Requester
    ) -> discord.Message:
        """The public "asked for" message; a plain channel message if the interaction is gone."""
        text = t(
            requester.locale,
            "discord.starting",
            prompt=inert(spec.prompt, 1500),
            user=interaction.user.mention,
        )
        try:
            return await interaction.followup.send(text, wait=True)
        except discord.HTTPException as exc:
            # 50027 (the interaction token expired) or 10015: the work never depends on it.
            log.info("follow-up refused (%s); posting the starter in the channel", exc.code)
            assert interaction.channel is not None
            message: discord.Message = await interaction.channel.send(text)  # type: ignore[union-attr]
            return message

    async def _open_thread(
        self,
        interaction: discord.Interaction[Any],
        channel: discord.TextChannel,
        starter: discord.Message,
        spec: JobSpec,
        requester: Requester,
    ) -> discord.Thread | None:
        """A thread on the starter message; None (and the user is told) when Discord refuses."""
        try:
            return await channel.create_thread(
                name=clip(spec.prompt.replace("\n", " "), THREAD_NAME_LIMIT),
                message=starter,
                auto_archive_duration=1440,
            )
        except discord.HTTPException as exc:
            # Without the permission (or with Discord refusing for another reason) the image is
            # posted in the channel; replies to it still continue the conversation.
            log.info(
                "no thread in %s (%s %s); replying in the channel", channel.id, exc.status, exc.code
            )
            key = (
                "discord.no_thread_permission"
                if isinstance(exc, discord.Forbidden)
                else "discord.no_thread"
            )
            await _quietly(interaction.followup.send(t(requester.locale, key), ephemeral=True))
            return None

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
        count=L("opt.count.name"),
    )
    @app_commands.describe(
        prompt=L("opt.prompt.desc"),
        image=L("opt.image.desc"),
        image2=L("opt.image.desc"),
        image3=L("opt.image.desc"),
        mask=L("opt.mask.desc"),
        count=L("opt.count.desc"),
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
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
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
            self.bot.studio.check_place(requester)
            self.bot.studio.options_for(requester, options)
            images, mask_bytes = await self._read_inputs(requester, [image, image2, image3], mask)
            spec = JobSpec(
                kind=JobKind.IMAGINE,
                prompt=text,
                options=options,
                images=images,
                mask=mask_bytes,
                count=count or 1,
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
            self.bot.studio.check_place(requester)
            self.bot.studio.options_for(requester, options)
            images, mask_bytes = await self._read_inputs(requester, [image], mask)
            spec = JobSpec(
                kind=JobKind.EDIT_UPLOAD,
                prompt=text,
                options=options,
                images=images,
                mask=mask_bytes,
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
        studio = self.bot.studio
        reply_to = message.reference.message_id if message.reference is not None else None
        target = await studio.message_target(message.channel.id, reply_to=reply_to)
        if target is None:
            return
        owner_id, parent_turn = target
        requester = await requester_for_message(self.bot, message)
        try:
            studio.check_continue(owner_id, requester)
            spec = await self._spec_from_message(message, requester, parent_turn)
            await studio.submit(studio.check(spec, requester))
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
            if target is None:
                # The mask applies to the image replied to, else the conversation's latest.
                studio = self.bot.studio
                parent_image = await (
                    studio.turn_image(parent_turn)
                    if parent_turn is not None
                    else studio.latest_image(message.channel.id)
                )
                if parent_image is None:
                    raise BadInput("bad.mask_without_image")
                target = await studio.prepare_image(parent_image, "parent.png")
            mask = await read_mask(self.bot, mask_attachment, target)
        text = message.content.strip()
        if message.attachments and not has_visible_text(text):
            # Invisible characters alone say nothing: the attachments are the whole instruction.
            text = ""
        prompt = text or t("en", "prompt.use_references")
        validate_prompt(prompt)
        if parent_turn is not None:
            return JobSpec(
                kind=JobKind.REPLY,
                prompt=prompt,
                images=tuple(images),
                mask=mask,
                parent=ParentMode.RESPONSE,
                parent_response_id=parent_turn.response_id,
                parent_turn_id=parent_turn.id,
            )
        return JobSpec(kind=JobKind.MESSAGE, prompt=prompt, images=tuple(images), mask=mask)


class UploadEditModal(discord.ui.Modal):
    """Asks what to change in an image picked from any message."""

    def __init__(self, cog: ImagineCog, attachment: discord.Attachment, locale: str) -> None:
        super().__init__(title=t(locale, "modal.edit_title"), timeout=900)
        from cogs.buttons import instruction_input

        self.cog = cog
        self.attachment = attachment
        self.instruction = instruction_input(locale)
        self.add_item(self.instruction)

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await self.cog.edit_upload(interaction, self.attachment, self.instruction.value)


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


async def _quietly(send: Awaitable[Any]) -> None:
    """Send a courtesy message whose loss changes nothing (e.g. after the token expired)."""
    try:
        await send
    except discord.HTTPException as exc:
        log.info("a courtesy message was refused (%s %s)", exc.status, exc.code)


async def setup(bot: commands.Bot) -> None:
    """Add the cog."""
    await bot.add_cog(ImagineCog(bot))  # type: ignore[arg-type]
