"""Small helpers shared by the cogs: who is asking, reading attachments, replying with errors."""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, Any

import discord

import cogs._catalog  # noqa: F401  (registers the Discord side's sentences)
from bot.core import i18n
from bot.core.jobs import Requester
from bot.core.options import InputImage

if TYPE_CHECKING:
    from cogs.app import ImagineBot

log = logging.getLogger(__name__)


def t(locale: object, key: str, /, **params: object) -> str:
    """The catalog sentence `key` in a Discord locale."""
    return i18n.t(str(locale) if locale is not None else None, key, **params)


def parent_channel_id(channel: Any) -> int | None:
    """The parent of a thread, else None."""
    return getattr(channel, "parent_id", None) if isinstance(channel, discord.Thread) else None


def is_nsfw(channel: Any) -> bool:
    """Whether a channel (or a thread's parent) is age-restricted."""
    check = getattr(channel, "is_nsfw", None)
    return bool(check()) if callable(check) else False


def is_admin(user: discord.abc.User, channel: Any) -> bool:
    """Whether `user` manages this server (or is in a DM)."""
    if not isinstance(user, discord.Member):
        return False
    perms = (
        channel.permissions_for(user)
        if hasattr(channel, "permissions_for")
        else user.guild_permissions
    )
    return bool(perms.manage_guild or perms.manage_messages or perms.administrator)


async def requester_for_interaction(
    bot: ImagineBot, interaction: discord.Interaction[Any]
) -> Requester:
    """The requester behind an interaction (their own language, else their client's)."""
    user = interaction.user
    channel = interaction.channel
    return await bot.studio.requester(
        user_id=user.id,
        guild_id=interaction.guild_id,
        channel_id=interaction.channel_id or 0,
        client_locale=str(interaction.locale),
        role_ids=tuple(r.id for r in getattr(user, "roles", [])),
        is_admin=is_admin(user, channel) if channel else False,
        parent_channel_id=parent_channel_id(channel),
        channel_nsfw=is_nsfw(channel),
    )


async def requester_for_message(bot: ImagineBot, message: discord.Message) -> Requester:
    """The requester behind a message (their own language, else the server's)."""
    guild_locale = message.guild.preferred_locale if message.guild else None
    return await bot.studio.requester(
        user_id=message.author.id,
        guild_id=message.guild.id if message.guild else None,
        channel_id=message.channel.id,
        client_locale=str(guild_locale) if guild_locale else None,
        role_ids=tuple(r.id for r in getattr(message.author, "roles", [])),
        is_admin=is_admin(message.author, message.channel),
        parent_channel_id=parent_channel_id(message.channel),
        channel_nsfw=is_nsfw(message.channel),
    )


async def read_image(bot: ImagineBot, attachment: discord.Attachment) -> InputImage:
    """An attachment as an input image: its size checked before download, decoded off the loop."""
    bot.studio.check_declared_size(attachment.size)
    return await bot.studio.prepare_image(await attachment.read(), attachment.filename)


async def read_mask(bot: ImagineBot, attachment: discord.Attachment, image: InputImage) -> bytes:
    """A mask attachment turned into the alpha mask the API wants, at `image`'s size."""
    bot.studio.check_declared_size(attachment.size)
    return await bot.studio.prepare_mask(await attachment.read(), image)


async def reply_error(
    interaction: discord.Interaction[Any], text: str | None, *, key: str | None = None
) -> None:
    """Tell the user what went wrong, privately, whether or not the interaction was answered."""
    message = text if text is not None else t(interaction.locale, key or "discord.internal_error")
    message = "⚠️ " + message[:1900]
    try:
        if interaction.response.is_done():
            await _drop_thinking(interaction)
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)
    except discord.HTTPException as exc:
        # The interaction can no longer answer (its token expired, 50027, or it is unknown):
        # the user still hears why, in the channel, addressed to them.
        log.info("error reply for interaction %s refused (%s)", interaction.id, exc.code)
        channel = interaction.channel
        if channel is None or not hasattr(channel, "send"):
            return
        try:
            await channel.send(f"{interaction.user.mention} {message}")
        except discord.HTTPException:
            log.warning("could not tell the user of interaction %s what went wrong", interaction.id)


async def _drop_thinking(interaction: discord.Interaction[Any]) -> None:
    """Delete a public "thinking…" message that nothing has filled in yet.

    Discord turns the first follow-up after a deferred response into an edit of that message,
    keeping its visibility and ignoring `ephemeral`: without this, an error meant for one user
    would be shown to the whole channel.
    """
    if interaction.response.type is not discord.InteractionResponseType.deferred_channel_message:
        return
    try:
        original = await interaction.original_response()
        if original.flags.loading and not original.flags.ephemeral:
            await original.delete()
    except discord.HTTPException:
        log.info("could not remove the thinking message of interaction %s", interaction.id)


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


# Signs that format text anywhere in a Discord message: emphasis, strike, spoilers, code spans and
# fences, masked links, mentions, channel links, timestamps and custom emoji (`<…>`), the colon
# of a URL (a link in an echoed prompt would be live and fetch an embed), and the backslash
# itself, so that text ending in one cannot escape what follows it.
_INLINE_MARKUP = re.compile(r"([\\*_~|`\[\]<>@:])")
# Signs that format a line they start: headings, subtext (-#), quotes, lists.
_LINE_MARKUP = re.compile(r"^([ \t]*)([#>+-])", re.MULTILINE)
_NUMBERED_ITEM = re.compile(r"^([ \t]*[0-9]+)([.)])", re.MULTILINE)


def inert(text: str, limit: int) -> str:
    """User text, cut to `limit` characters, made to show exactly as typed in a Discord message.

    Every sign Discord would read as markdown gets a backslash, which Discord hides: a prompt
    can then neither make a masked link, nor open a code fence that swallows the rest of the
    message, nor ping or render a mention (as a second line of defence behind allowed_mentions).
    """
    # Cut first: cutting after escaping could leave a lone backslash escaping the bot's own text.
    text = _INLINE_MARKUP.sub(r"\\\1", clip(text, limit))
    text = _LINE_MARKUP.sub(r"\1\\\2", text)
    return _NUMBERED_ITEM.sub(r"\1\\\2", text)
