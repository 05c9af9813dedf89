"""Shows one job in Discord: a progress message edited in place with each partial, then the final."""

from __future__ import annotations

import asyncio
import io
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import aiohttp
import discord

from bot.core import images
from bot.core.events import Completed, Failed, Partial, Started
from bot.core.jobs import JobSpec
from bot.core.studio import PostingFailed
from cogs._ui import clip, inert, t
from storage.base import Job, Turn

if TYPE_CHECKING:
    from cogs.app import ImagineBot

log = logging.getLogger(__name__)

DM_UPLOAD_LIMIT = 10 * 1024 * 1024
# How many times a final image that Discord refused as too large is made smaller and sent again.
MAX_REFUSED_UPLOADS = 6
# Discord errors that mean the destination is gone or closed to the bot: posting there again
# cannot help (Unknown Channel, Missing Access, thread archived/locked).
GONE_CODES = frozenset({10003, 50001, 50083, 160005})
# Errors of a request that may work later: Discord or the network is down for now.
TRANSIENT_ERRORS = (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError)


class ImageUpload(io.BytesIO):
    """Image bytes for one upload, read from the caller's `bytes` without a copy of their own.

    A `BytesIO` made from `bytes` shares them until someone asks for its buffer, and aiohttp's
    payload asks (`getbuffer()`, only to learn the size): that unshares, a copy of the whole image
    per upload. Here the buffer is the shared bytes, read-only. `discard()` drops them once the
    upload is over (discord.py makes `close()` a no-op on files it did not open, and aiohttp's
    request may outlive the upload).
    """

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self._data: bytes | None = data

    def getbuffer(self) -> memoryview:
        """The shared bytes (read-only): what aiohttp measures, without unsharing them."""
        if self._data is None:
            raise ValueError("I/O operation on closed file.")
        return memoryview(self._data)

    def discard(self) -> None:
        """Let go of the image (the upload is over)."""
        self._data = None
        io.BytesIO.close(self)


def upload_limit(channel: Any) -> int:
    """The largest file the bot may upload in `channel`."""
    guild = getattr(channel, "guild", None)
    if isinstance(guild, discord.Guild):
        return guild.filesize_limit
    return DM_UPLOAD_LIMIT


def rewritten(prompt: str, revised: str | None) -> bool:
    """Whether the model drew from a prompt of its own, not just the user's with other spacing."""
    if not revised:
        return False
    return " ".join(revised.split()).casefold() != " ".join(prompt.split()).casefold()


def footer(done: Completed, locale: str) -> str:
    """The small line under a final image: size, quality, model, seconds, estimated cost."""
    parts = [
        done.size or "auto",
        done.quality or "auto",
        done.model,
        t(locale, "discord.seconds", seconds=done.seconds),
        t(locale, "discord.cost", cost=done.cost),
    ]
    return "-# " + " · ".join(parts)


class DiscordTurnSink:
    """One progress message per turn; partials replace each other (latest wins), the final replaces them."""

    def __init__(self, bot: ImagineBot, job: Job, spec: JobSpec, channel: Any) -> None:
        self.bot = bot
        self.job = job
        self.channel = channel
        self.locale = job.locale
        self.spec = spec
        self.message: discord.Message | None = None
        self._message_lock = asyncio.Lock()
        self._pending: Partial | None = None
        self._uploader: asyncio.Task[None] | None = None
        self._final = False

    @classmethod
    async def for_job(cls, bot: ImagineBot, job: Job, spec: JobSpec) -> DiscordTurnSink:
        """The sink for `job`, in its channel."""
        channel = await bot.resolve_channel(job.channel_id)
        sink = cls(bot, job, spec, channel)
        if job.progress_message_id is not None and channel is not None:
            sink.message = channel.get_partial_message(job.progress_message_id)
        return sink

    def _header(self) -> str:
        who = f"<@{self.job.user_id}>"
        return f"**{inert(self.spec.prompt, 300)}** — {who}"

    async def _ensure_message(self, content: str) -> discord.Message | None:
        """Create the progress message once (with its Cancel button), or update its text."""
        from cogs.buttons import cancel_view

        if self.channel is None:
            return None
        async with self._message_lock:
            if self.message is None:
                self.message = await self.channel.send(
                    content, view=cancel_view(self.job.id, self.locale)
                )
                await self.bot.studio.remember_progress(self.job, self.message.id)
            else:
                await self._edit(content=content)
        return self.message

    async def _edit(self, **fields: Any) -> None:
        """Edit the progress message; when it is gone or too old to edit, post a new one."""
        assert self.message is not None
        try:
            self.message = await self.message.edit(**fields)
        except discord.HTTPException as exc:
            replaceable = exc.code == 10008 or exc.code == 30046
            if not replaceable or exc.status == 413:
                # No permission, a file over the upload limit, Discord down: posting anew
                # cannot help now (the caller decides whether to try again later).
                raise
            log.info("editing progress message failed (%s); posting a new one", exc.code)
            content = fields.pop("content", None)
            files = fields.pop("attachments", [])
            for file in files:
                # The refused request read the files to their end: send them from the start.
                file.reset()
            view = fields.pop("view", None)
            kwargs: dict[str, Any] = {"content": content, "files": files}
            if view is not None:
                kwargs["view"] = view
            stale, self.message = self.message, await self.channel.send(**kwargs)
            await self.bot.studio.remember_progress(self.job, self.message.id)
            try:
                # Do not leave a "Drawing…" message behind the one that replaces it.
                await stale.delete()
            except discord.HTTPException:
                log.info("could not delete the old progress message of job %s", self.job.id)

    async def _progress(self, content: str) -> None:
        """Show progress text; a failure only costs the progress line, never the turn."""
        try:
            await self._ensure_message(content)
        except TRANSIENT_ERRORS as exc:
            log.warning("could not show the progress of job %s: %r", self.job.id, exc)

    async def queued(self, position: int) -> None:
        await self._progress(
            self._header() + "\n" + t(self.locale, "discord.queued", position=position)
        )

    async def started(self, event: Started) -> None:
        if event.reseeded:
            line = t(self.locale, "discord.reseeding")
        elif self.spec.count > 1:
            line = t(self.locale, "discord.drawing_many", count=self.spec.count)
        else:
            line = t(self.locale, "discord.drawing")
        await self._progress(self._header() + "\n" + line)

    async def partial(self, event: Partial) -> None:
        if self._final:
            return
        # Counted in the memory budget until its upload ends or a newer preview replaces it
        # (each path below releases it).
        event.hold()
        self._drop_pending()
        self._pending = event
        if self._uploader is None or self._uploader.done():
            self._uploader = asyncio.create_task(self._drain())

    def _drop_pending(self) -> None:
        """Forget the preview waiting to upload (a newer one or the final replaces it)."""
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.release()

    async def _drain(self) -> None:
        """Upload the newest partial, then any newer one that arrived meanwhile."""
        while self._pending is not None and not self._final:
            event, self._pending = self._pending, None
            content = (
                self._header()
                + "\n"
                + t(
                    self.locale,
                    "discord.partial",
                    index=event.index + 1,
                    total=max(1, self.spec_partials),
                )
            )
            upload = ImageUpload(await event.load())
            file = discord.File(
                upload, filename=f"partial-{event.index}.{event.format}", spoiler=self.spec.spoiler
            )
            try:
                if self.message is None:
                    await self._ensure_message(content)
                async with self._message_lock:
                    await self._edit(content=content, attachments=[file])
            except TRANSIENT_ERRORS as exc:
                # A lost preview is not worth failing the turn over.
                log.warning(
                    "could not show partial %d of job %s: %s", event.index, self.job.id, exc
                )
            finally:
                # Shown or lost, this preview is done with: its bytes need not wait for the
                # turn's next event (the runner and the studio still hold the event until then).
                upload.discard()
                event.release()
                del event, file, upload

    @property
    def spec_partials(self) -> int:
        value = self.spec.options.get("partials")
        return value if isinstance(value, int) else 0

    async def completed(self, event: Completed, turn: Turn) -> tuple[int | None, str | None]:
        """Show the final image in place of the progress; elsewhere if the channel is gone.

        Raises PostingFailed when Discord refuses for now: the studio tries again later.
        """
        return await self._show_final(
            lambda: self._post_final(event, turn),
            lambda: self._deliver_elsewhere(event),
            turn,
            "image",
        )

    async def _show_final(
        self,
        post: Callable[[], Awaitable[None]],
        elsewhere: Callable[[], Awaitable[tuple[int | None, str | None]]],
        turn: Turn,
        what: str,
    ) -> tuple[int | None, str | None]:
        """Run `post` (the final message in place of the progress), or `elsewhere` when the
        channel is gone; PostingFailed when Discord refuses for now. Returns the message id and
        its first attachment's URL."""
        self._final = True
        self._drop_pending()
        if self._uploader is not None:
            # An upload in flight finishes first (it cannot be recalled); then the final replaces it.
            await asyncio.gather(self._uploader, return_exceptions=True)
        try:
            if self.channel is None:
                raise _Gone("the channel is gone")
            try:
                await post()
            except discord.HTTPException as exc:
                if exc.code in GONE_CODES or (exc.status == 404 and exc.code != 10008):
                    raise _Gone(f"{exc.status} {exc.code}") from exc
                raise
        except _Gone as gone:
            log.warning("job %s: %s; posting its %s elsewhere", self.job.id, gone, what)
            return await elsewhere()
        except TRANSIENT_ERRORS as exc:
            raise PostingFailed(repr(exc)) from exc
        assert self.message is not None
        url = self.message.attachments[0].url if self.message.attachments else None
        self.bot.dispatch("turn_posted", self.job, turn, self.message, time.monotonic())
        return self.message.id, url

    def _final_content(self, event: Completed, fitted: images.FittedImage, refused: int) -> str:
        lines = [self._header()]
        if rewritten(self.spec.prompt, event.revised_prompt):
            assert event.revised_prompt is not None
            lines.append(
                t(self.locale, "discord.revised_prompt", prompt=inert(event.revised_prompt, 600))
            )
        if event.text:
            lines.append(inert(event.text, 800))
        if event.reseeded:
            lines.append(t(self.locale, "note.reseeded"))
        if event.incomplete_reason:
            lines.append(t(self.locale, "note.incomplete"))
        if event.branched:
            lines.append(t(self.locale, "note.branched"))
        if fitted.reencoded:
            size = round(len(fitted.data) / 1024 / 1024, 1)
            if refused:
                # The limit discord.py reports was not the real one: it is not known here.
                note = t(self.locale, "discord.reencoded_refused", format=fitted.format, size=size)
            else:
                limit_mb = round(upload_limit(self.channel) / 1024 / 1024, 1)
                note = t(
                    self.locale,
                    "discord.reencoded",
                    format=fitted.format,
                    size=size,
                    limit=limit_mb,
                )
            lines.append(note)
        lines.append(footer(event, self.locale))
        return clip("\n".join(lines), 2000)

    async def _post_final(self, event: Completed, turn: Turn) -> None:
        from cogs.buttons import final_view

        target = upload_limit(self.channel) - 64 * 1024
        refused = 0
        while True:
            fitted = await asyncio.to_thread(images.fit_to_limit, event.image, event.format, target)
            content = self._final_content(event, fitted, refused)
            upload = ImageUpload(fitted.data)
            file = discord.File(
                upload, filename=f"image.{fitted.format}", spoiler=self.spec.spoiler
            )
            view = final_view(turn.id, self.locale, web=self.bot.studio.web_links)
            try:
                if self.message is None:
                    self.message = await self.channel.send(content, file=file, view=view)
                    await self.bot.studio.remember_progress(self.job, self.message.id)
                else:
                    async with self._message_lock:
                        await self._edit(content=content, attachments=[file], view=view)
                return
            except discord.HTTPException as exc:
                # 413: this channel's real limit is below what discord.py derives from the
                # server's boost tier. Halve the file until Discord takes it.
                if exc.status != 413 or refused >= MAX_REFUSED_UPLOADS:
                    raise
                refused += 1
                target = len(fitted.data) // 2
                log.info(
                    "final image of job %s (%d bytes) is over the upload limit; trying %d",
                    self.job.id,
                    len(fitted.data),
                    target,
                )
            finally:
                upload.discard()

    async def completed_grid(
        self, events: Sequence[Completed], turns: Sequence[Turn], failed: int
    ) -> tuple[int | None, str | None]:
        """Show several images of one job in one message (Discord lays them out as a grid) with
        a row of U1-U4 buttons, in place of the progress; elsewhere if the channel is gone.

        Raises PostingFailed when Discord refuses for now: the studio tries again later.
        """
        return await self._show_final(
            lambda: self._post_grid(events, turns, failed),
            lambda: self._deliver_elsewhere(*events, failed=failed),
            turns[0],
            "images",
        )

    def _grid_content(
        self, events: Sequence[Completed], fitted: Sequence[images.FittedImage], failed: int
    ) -> str:
        lines = [self._header(), t(self.locale, "discord.grid", count=len(events))]
        if failed:
            lines.append(
                t(self.locale, "discord.grid_failed", failed=failed, asked=len(events) + failed)
            )
        if any(f.reencoded for f in fitted):
            lines.append(t(self.locale, "discord.grid_reencoded"))
        if any(event.branched for event in events):
            lines.append(t(self.locale, "note.branched"))
        first = events[0]
        total = sum(event.cost for event in events)
        seconds = max(event.seconds for event in events)
        parts = [
            first.size or "auto",
            first.quality or "auto",
            first.model,
            t(self.locale, "discord.seconds", seconds=seconds),
            t(self.locale, "discord.cost", cost=total),
        ]
        lines.append("-# " + " · ".join(parts))
        return clip("\n".join(lines), 2000)

    async def _fit_all(self, events: Sequence[Completed], limit: int) -> list[images.FittedImage]:
        # Discord's upload limit applies to each file of a message, not to their sum.
        return list(
            await asyncio.gather(
                *(
                    asyncio.to_thread(images.fit_to_limit, event.image, event.format, limit)
                    for event in events
                )
            )
        )

    async def _post_grid(
        self, events: Sequence[Completed], turns: Sequence[Turn], failed: int
    ) -> None:
        from cogs.buttons import grid_view

        target = upload_limit(self.channel) - 64 * 1024
        refused = 0
        while True:
            fitted = await self._fit_all(events, target)
            content = self._grid_content(events, fitted, failed)
            uploads = [ImageUpload(f.data) for f in fitted]
            files = [
                discord.File(
                    upload, filename=f"image-{index}.{f.format}", spoiler=self.spec.spoiler
                )
                for index, (upload, f) in enumerate(zip(uploads, fitted, strict=True), start=1)
            ]
            view = grid_view([turn.id for turn in turns], self.locale)
            try:
                if self.message is None:
                    self.message = await self.channel.send(content, files=files, view=view)
                    await self.bot.studio.remember_progress(self.job, self.message.id)
                else:
                    async with self._message_lock:
                        await self._edit(content=content, attachments=files, view=view)
                return
            except discord.HTTPException as exc:
                # 413: this channel's real limit is below what discord.py reports.
                if exc.status != 413 or refused >= MAX_REFUSED_UPLOADS:
                    raise
                refused += 1
                target = max(len(f.data) for f in fitted) // 2
                log.info(
                    "images of job %s are over the upload limit; trying %d", self.job.id, target
                )
            finally:
                for upload in uploads:
                    upload.discard()

    async def _deliver_elsewhere(
        self, *events: Completed, failed: int = 0
    ) -> tuple[int | None, str | None]:
        """Show an image whose channel is gone where its requester can still see it: the parent
        channel of its thread, else a DM. (None, None) when Discord refuses both for good.
        """
        places: list[Any] = []
        conversation = await self.bot.studio.conversation(self.job.channel_id)
        parent_id = conversation.parent_channel_id if conversation is not None else None
        if parent_id is not None:
            parent = await self.bot.resolve_channel(parent_id)
            if parent is not None:
                places.append(parent)
        try:
            user = await self.bot.fetch_user(self.job.user_id)
            places.append(await user.create_dm())
        except discord.NotFound:
            log.info("job %s: its requester is unknown to Discord", self.job.id)
        for place in places:
            self.channel = place
            fitted = await self._fit_all(events, upload_limit(place) - 64 * 1024)
            shown = (
                self._final_content(events[0], fitted[0], 0)
                if len(events) == 1
                else self._grid_content(events, fitted, failed)
            )
            content = clip(
                f"<@{self.job.user_id}> "
                + t(self.locale, "discord.delivered_elsewhere")
                + "\n"
                + shown,
                2000,
            )
            uploads = [ImageUpload(f.data) for f in fitted]
            files = [
                discord.File(
                    upload,
                    filename=f"image.{f.format}" if len(events) == 1 else f"image-{i}.{f.format}",
                    spoiler=self.spec.spoiler,
                )
                for i, (upload, f) in enumerate(zip(uploads, fitted, strict=True), start=1)
            ]
            try:
                message = await place.send(content, files=files)
            except (discord.Forbidden, discord.NotFound) as exc:
                log.info("job %s: cannot post in %s either (%s)", self.job.id, place.id, exc.code)
                continue
            finally:
                for upload in uploads:
                    upload.discard()
            url = message.attachments[0].url if message.attachments else None
            return message.id, url
        log.warning("job %s: nowhere left to show its image; it stays saved", self.job.id)
        return None, None

    async def cancelled(self, job: Job) -> None:
        """Replace the progress with a note that the job was cancelled, at no cost."""
        self._final = True
        self._drop_pending()
        if self._uploader is not None:
            await asyncio.gather(self._uploader, return_exceptions=True)
        content = clip(self._header() + "\n" + t(self.locale, "discord.cancelled"), 2000)
        if self.channel is None:
            return
        try:
            if self.message is None:
                self.message = await self.channel.send(content)
            else:
                async with self._message_lock:
                    await self._edit(content=content, attachments=[], view=None)
        except TRANSIENT_ERRORS as exc:
            log.warning("could not show that job %s was cancelled: %r", job.id, exc)

    async def failed(self, event: Failed, job: Job) -> None:
        from cogs.buttons import retry_view

        self._final = True
        self._drop_pending()
        if self._uploader is not None:
            await asyncio.gather(self._uploader, return_exceptions=True)
        if event.detail:
            log.info("job %s failed (%s): %s", job.id, event.kind.value, event.detail)
        content = clip(self._header() + "\n⚠️ " + event.localized(self.locale), 2000)
        view = retry_view(job.id, self.locale)
        if self.channel is None:
            log.warning("job %s failed and its channel is gone", job.id)
            return
        try:
            if self.message is None:
                self.message = await self.channel.send(content, view=view)
            else:
                async with self._message_lock:
                    await self._edit(content=content, attachments=[], view=view)
        except TRANSIENT_ERRORS as exc:
            log.warning("could not report the failure of job %s: %r", job.id, exc)


class _Gone(Exception):
    """The job's channel is gone or closed to the bot."""
