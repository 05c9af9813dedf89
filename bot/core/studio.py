"""The studio: the one front door of the core. The Discord side asks it everything.

It holds the conversation rules (who may continue, where a command starts), admits jobs into
the ledger (reserving their estimated cost in the transaction that checks every limit), runs
them, saves each image with its turn and usage before it is posted, and posts it with retries.

The money invariant: every image OpenAI billed is shown to its user at least once and charged
exactly once, and no limit is ever exceeded, whatever fails and whenever the process dies.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

from bot.core import i18n, images, logcontext, tokens, webstudio
from bot.core.budgets import Limits, admission_gate, day_window, month_window
from bot.core.config import ContinuePolicy, GuildConfig, UserSettings, resolve_options
from bot.core.costs import PriceTable
from bot.core.errors import BadInput, BotError, FailureKind
from bot.core.events import Completed, Failed, Partial, ResponseCreated, Started, Usage
from bot.core.jobs import MAX_COUNT, Engine, JobKind, JobSpec, ParentMode, Requester, user_hash
from bot.core.models import MODELS
from bot.core.options import ImageOptions, InputImage, TurnRequest, validate_request
from bot.core.queue import JobQueue, SharedQueue
from bot.core.runner import TurnRunner
from bot.core.usage import UsageReport, usage_report
from storage.base import (
    MAX_ROW_ID,
    Conversation,
    Job,
    JobStatus,
    NewImage,
    NewJob,
    NewTurn,
    NewUsageEntry,
    Orphans,
    StorageError,
    Store,
    Turn,
    TurnStatus,
)

log = logging.getLogger(__name__)

__all__ = [
    "CheckedRequest",
    "Engine",
    "InputLimits",
    "JobKind",
    "JobSpec",
    "Limits",
    "ParentMode",
    "PostingFailed",
    "Requester",
    "StartPlan",
    "Studio",
    "TurnSink",
    "record_turn",
]

# The ledger's steps, in order; `crash_at` kills the process right after one (kill tests).
CRASH_POINTS = ("admitted", "running", "received", "saved", "posted")


class PostingFailed(Exception):
    """Showing a final image failed for now (Discord down, rate limited): try again later."""


class TurnSink(Protocol):
    """Shows one job's progress to people (a Discord thread, a terminal).

    Progress calls never raise (a lost preview is not worth failing a paid turn over);
    `completed` raises PostingFailed when the image could not be shown yet.
    """

    async def queued(self, position: int) -> None: ...

    async def started(self, event: Started) -> None: ...

    async def partial(self, event: Partial) -> None: ...

    async def completed(self, event: Completed, turn: Turn) -> tuple[int | None, str | None]:
        """Show the final image; returns the message id and image URL it was posted as."""
        ...

    async def failed(self, event: Failed, job: Job) -> None: ...

    async def completed_grid(
        self, events: Sequence[Completed], turns: Sequence[Turn], failed: int
    ) -> tuple[int | None, str | None]:
        """Show the images of a job that drew several at once together, with a way to pick the
        one to continue from; `failed` drawings made no image. Returns the message id and the
        first image's URL; raises PostingFailed as `completed` does.
        """
        ...

    async def cancelled(self, job: Job) -> None:
        """Say the job was cancelled by its requester and nothing was charged for it."""
        ...


SinkFactory = Callable[[Job, JobSpec], Awaitable[TurnSink]]


class ImageFetcher(Protocol):
    """Loads the final image of a turn saved before the bot kept image bytes (from Discord)."""

    async def fetch_turn_image(self, turn: Turn) -> bytes | None: ...


class StartPlan(StrEnum):
    """Where a new /imagine or /edit goes."""

    # Inside a conversation (a bot thread): the command is its next turn.
    CONTINUE = "continue"
    # In a server text channel: a new thread is the conversation.
    NEW_THREAD = "new_thread"
    # In a DM: the DM starts afresh (its old head is dropped).
    FRESH_DM = "fresh_dm"
    # Anywhere else (a thread the bot did not create): the image is posted here and replies
    # to it continue, but ordinary chat in that thread never becomes a paid turn.
    IN_PLACE = "in_place"


@dataclass(frozen=True, slots=True)
class InputLimits:
    """The largest reference image or mask accepted, in bytes and in pixels (decoded)."""

    max_bytes: int = 50 * 1024 * 1024
    max_pixels: int = 40_000_000


@dataclass(frozen=True, slots=True)
class CheckedRequest:
    """A job that passed every check that needs no database: ready to be admitted."""

    spec: JobSpec
    requester: Requester
    options: ImageOptions
    # For every image the job draws (`spec.count` of them).
    estimate: float

    @property
    def images(self) -> int:
        """How many images the job draws (and reserves against the limits)."""
        return self.spec.count


def _usage_of(turn: Turn) -> Usage:
    fields = {f.name for f in dataclasses.fields(Usage)}
    return Usage(**{k: int(str(v)) for k, v in turn.usage.items() if k in fields})


def _sum_usage(usages: Sequence[Usage]) -> Usage | None:
    """Several drawings' usage added up; None when there is none."""
    if not usages:
        return None
    totals: dict[str, int] = {}
    for usage in usages:
        for name, value in usage.as_dict().items():
            totals[name] = totals.get(name, 0) + value
    return Usage(**totals)


def completed_from_turn(turn: Turn, image: bytes, image_format: str) -> Completed:
    """The Completed event of a saved turn, to post it again exactly as it first would have been."""
    result = turn.result

    def text(key: str) -> str | None:
        value = result.get(key)
        return str(value) if value is not None else None

    seconds = result.get("seconds")
    return Completed(
        image=image,
        format=image_format,
        response_id=turn.response_id,
        revised_prompt=turn.revised_prompt,
        usage=_usage_of(turn),
        cost=turn.cost_usd,
        text=text("text"),
        size=text("size"),
        quality=text("quality"),
        model=turn.model,
        engine=turn.engine,
        seconds=float(seconds) if isinstance(seconds, int | float) else 0.0,
        reseeded=bool(result.get("reseeded")),
        branched=bool(result.get("branched")),
        incomplete_reason=text("incomplete_reason"),
    )


def _result_of(done: Completed) -> dict[str, object]:
    return {
        "text": done.text,
        "size": done.size,
        "quality": done.quality,
        "seconds": round(done.seconds, 3),
        "reseeded": done.reseeded,
        "incomplete_reason": done.incomplete_reason,
    }


def _new_turn(
    done: Completed,
    *,
    options: ImageOptions,
    prompt: str,
    parent_response_id: str | None,
    channel_id: int,
    guild_id: int | None,
    user_id: int,
    image_url: str | None = None,
) -> tuple[NewTurn, NewUsageEntry]:
    turn = NewTurn(
        channel_id=channel_id,
        guild_id=guild_id,
        user_id=user_id,
        response_id=done.response_id,
        parent_response_id=parent_response_id,
        prompt=prompt,
        revised_prompt=done.revised_prompt,
        options=options.as_dict(),
        engine=done.engine,
        model=done.model,
        usage=dict(done.usage.as_dict()),
        cost_usd=done.cost,
        status=TurnStatus.COMPLETED,
        image_url=image_url,
        result=_result_of(done),
    )
    usage = NewUsageEntry(
        guild_id=guild_id,
        user_id=user_id,
        channel_id=channel_id or None,
        response_id=done.response_id,
        model=done.model,
        engine=done.engine,
        images=1,
        input_tokens=done.usage.input_tokens,
        output_tokens=done.usage.output_tokens,
        image_input_tokens=done.usage.image_input_tokens,
        image_output_tokens=done.usage.image_output_tokens,
        cost_usd=done.cost,
    )
    return turn, usage


async def record_turn(
    store: Store,
    done: Completed,
    *,
    options: ImageOptions,
    prompt: str,
    parent_response_id: str | None,
    channel_id: int,
    guild_id: int | None,
    user_id: int,
    image_url: str | None = None,
) -> Turn:
    """Save a turn made outside the queue (the CLI) with its image and usage, in one transaction."""
    turn, usage = _new_turn(
        done,
        options=options,
        prompt=prompt,
        parent_response_id=parent_response_id,
        channel_id=channel_id,
        guild_id=guild_id,
        user_id=user_id,
        image_url=image_url,
    )
    return await store.save_result(
        None, turn, image=done.image, image_format=done.format, usage=usage, advance=False
    )


class Studio:
    """The core's front door: conversation rules, settings, the ledger, the queue, usage."""

    def __init__(
        self,
        *,
        store: Store,
        runner: TurnRunner,
        prices: PriceTable,
        defaults: ImageOptions,
        engine: str = "responses",
        limits: Limits | None = None,
        sink_factory: SinkFactory,
        fetcher: ImageFetcher | None = None,
        clock: Callable[[], float] = time.time,
        crash_at: str | None = None,
        post_backoff: tuple[float, float] = (1.0, 60.0),
        input_limits: InputLimits | None = None,
        worker_id: str = "main",
        heartbeat_seconds: float = 10.0,
        stale_after_seconds: float = 60.0,
        shared_queue: SharedQueue | None = None,
        queue_concurrency: int | None = None,
    ) -> None:
        if crash_at is not None and crash_at not in CRASH_POINTS:
            raise ValueError(f"crash_at must be one of {', '.join(CRASH_POINTS)}")
        if not 0 < heartbeat_seconds * 2 <= stale_after_seconds:
            # A worker must miss at least two heartbeats before another one settles its jobs.
            raise ValueError("stale_after_seconds must be at least twice heartbeat_seconds")
        self._store = store
        self.runner = runner
        self.prices = prices
        self.defaults = defaults
        self.engine = Engine(engine)
        self.limits = limits or Limits()
        self._sink_factory = sink_factory
        self._fetcher = fetcher
        self._clock = clock
        self._crash_at = crash_at
        self._backoff = post_backoff
        self.input_limits = input_limits or InputLimits()
        self._queue: JobQueue[TurnSink] = JobQueue(
            run=self._run,
            global_concurrency=self.limits.global_concurrency,
            user_concurrency=self.limits.user_concurrency,
        )
        self._finishing: set[asyncio.Task[None]] = set()
        # This process in the database: the jobs it holds carry its id; other processes settle
        # them only once it has missed heartbeats for `stale_after_seconds`. A restart under the
        # same id settles its own previous run's jobs at once.
        self.worker_id = worker_id
        self._heartbeat_seconds = heartbeat_seconds
        self._stale_after = stale_after_seconds
        self._heartbeat: asyncio.Task[None] | None = None
        self._cancel_requests: set[int] = set()
        # Jobs whose image arrived: too late to cancel, they are saved and posted.
        self._arrived: set[int] = set()
        # With a shared queue (PostgreSQL), every process runs tickets of any process's jobs;
        # without one (SQLite), `_queue` runs this process's jobs from memory.
        self._shared = shared_queue
        # Tickets this process runs at once; 0: it only admits (the others run its jobs).
        self._queue_concurrency = (
            self.limits.global_concurrency if queue_concurrency is None else queue_concurrency
        )
        self._worker: asyncio.Task[None] | None = None
        self._tickets: dict[int, asyncio.Task[Any]] = {}
        self._user_cancelled: dict[int, Callable[[], bool]] = {}
        self._closing = False
        # How long running tickets get when the process stops (as `close`'s default).
        self._grace = 5.0

    # --- who asks, and what the bot keeps about them ---------------------------------------

    async def requester(
        self,
        *,
        user_id: int,
        guild_id: int | None,
        channel_id: int,
        client_locale: str | None,
        role_ids: tuple[int, ...] = (),
        is_admin: bool = False,
        parent_channel_id: int | None = None,
        channel_nsfw: bool = False,
    ) -> Requester:
        """The person behind a command, message or button, with their settings and server config."""
        settings = UserSettings.from_dict(await self._store.get_user_settings(user_id))
        config = (
            GuildConfig.from_dict(await self._store.get_guild_config(guild_id))
            if guild_id is not None
            else GuildConfig()
        )
        return Requester(
            user_id=user_id,
            guild_id=guild_id,
            channel_id=channel_id,
            locale=i18n.normalize_locale(settings.language or client_locale),
            role_ids=role_ids,
            is_admin=is_admin,
            parent_channel_id=parent_channel_id,
            channel_nsfw=channel_nsfw,
            settings=settings,
            config=config,
        )

    def limits_for(self, requester: Requester) -> Limits:
        """The settings' limits under the requester's server (its budgets and their tier)."""
        return self.limits.tightened_by(requester.config, requester.role_ids)

    def check_place(self, requester: Requester) -> None:
        """BadInput when the server allows image commands elsewhere only."""
        config = requester.config
        if not config.allows_channel(requester.channel_id, requester.parent_channel_id):
            raise BadInput(
                "studio.channel_not_allowed",
                channels=", ".join(f"<#{c}>" for c in config.allowed_channels),
            )

    def options_for(
        self, requester: Requester, overrides: Mapping[str, object] | None = None
    ) -> ImageOptions:
        """The options a request of this member gets; BadInput when the API or server refuses them."""
        return resolve_options(self.defaults, requester.config, requester.settings, overrides)

    @staticmethod
    def spoiler_for(requester: Requester) -> bool:
        """Whether the requester's images are posted behind a spoiler (server or own setting)."""
        return requester.config.spoilers or requester.settings.spoiler

    def engine_for(self, requester: Requester) -> Engine:
        """The engine the requester's server uses."""
        return Engine(requester.config.engine or self.engine)

    def may_continue(self, owner_id: int, requester: Requester) -> bool:
        """Whether `requester` may add turns to (or press buttons in) a conversation of `owner_id`."""
        if requester.is_admin or owner_id == requester.user_id:
            return True
        policy = requester.config.continue_policy
        if policy is ContinuePolicy.AUTHOR:
            return False
        if policy is ContinuePolicy.ROLE:
            role = requester.config.continue_role_id
            return role is not None and role in requester.role_ids
        return True

    async def update_settings(
        self, requester: Requester, changes: Mapping[str, object | None], *, reset: bool = False
    ) -> UserSettings:
        """Change a member's /settings (None values are left as they are); returns the result.

        The change is applied to what is saved at that moment, not to what the requester read
        earlier: two quick `/settings` changes both take effect.
        """
        if not reset and all(v is None for v in changes.values()):
            return requester.settings

        def change(saved: dict[str, object]) -> dict[str, object]:
            current = UserSettings() if reset else UserSettings.from_dict(saved)
            language = changes.get("language") or current.language
            spoiler = changes.get("spoiler")
            options = dict(current.options)
            options.update(
                {
                    k: v
                    for k, v in changes.items()
                    if k not in ("language", "spoiler") and v is not None
                }
            )
            updated = UserSettings(
                language=str(language) if language else None,
                options=options,
                spoiler=bool(spoiler) if spoiler is not None else current.spoiler,
            )
            # The defaults must make a valid request on their own (e.g. not transparent + jpeg).
            resolve_options(self.defaults, GuildConfig(), updated)
            return updated.to_dict()

        return UserSettings.from_dict(
            await self._store.update_user_settings(requester.user_id, change)
        )

    async def update_config(
        self, requester: Requester, changes: Mapping[str, Any], *, reset: bool = False
    ) -> GuildConfig:
        """Change a server's /config (None values are left as they are; 0 budgets mean no limit).

        Applied to the configuration saved at that moment (as `update_settings`): two admins
        changing different settings at once both keep their change.
        """
        if requester.guild_id is None or not requester.is_admin:
            raise BotError("studio.not_allowed_config")
        updates = {k: v for k, v in changes.items() if v is not None}
        for key in (
            "user_daily_usd",
            "user_daily_images",
            "guild_monthly_usd",
            "guild_monthly_images",
        ):
            if updates.get(key) == 0:
                updates[key] = None
        for model in (*updates.get("allowed_models", ()), updates.get("default_model")):
            if model:
                resolve_options(ImageOptions(model=str(model)), GuildConfig(), UserSettings())
        tier_role, tier_images = (
            updates.pop("tier_role_id", None),
            updates.pop("tier_daily_images", None),
        )
        if (tier_role is None) != (tier_images is None):
            raise BotError("config.tier_needs_both")
        tier = (int(tier_role), int(tier_images)) if tier_role is not None else None
        if "continue_policy" in updates:
            updates["continue_policy"] = ContinuePolicy(updates["continue_policy"])
        for key in ("allowed_channels", "allowed_models"):
            if key in updates:
                updates[key] = tuple(updates[key])
        if not (reset or updates or tier is not None or "allowed_channels" in changes):
            return requester.config

        def change(saved: dict[str, object]) -> dict[str, object]:
            config = GuildConfig() if reset else GuildConfig.from_dict(saved)
            if tier is not None:
                config = config.with_tier(*tier)
            config = config.replace(**updates)
            if config.continue_policy is ContinuePolicy.ROLE and config.continue_role_id is None:
                raise BotError("config.role_needed")
            return config.to_dict()

        return GuildConfig.from_dict(
            await self._store.update_guild_config(requester.guild_id, change)
        )

    async def usage(self, requester: Requester) -> UsageReport:
        """What /usage shows this member (and the server's usage to its admins)."""
        return await usage_report(
            self._store,
            user_id=requester.user_id,
            guild_id=requester.guild_id,
            is_admin=requester.is_admin,
            limits=self.limits_for(requester),
            now=self._clock(),
        )

    async def forget_user(self, user_id: int) -> int:
        """Erase what the bot keeps about a member (/privacy); returns the rows affected."""
        return await self._store.delete_user_data(user_id)

    # --- input images ------------------------------------------------------------------

    def check_declared_size(self, size: int) -> None:
        """BadInput for a file over the input limit, from its declared size (before download)."""
        limit = self.input_limits.max_bytes
        if size > limit:
            raise BadInput(
                "images.too_large_bytes",
                size=round(size / 1024 / 1024, 1),
                limit=round(limit / 1024 / 1024, 1),
            )

    async def prepare_image(self, data: bytes, filename: str) -> InputImage:
        """Checked, normalized image bytes as an input image (decoded off the event loop)."""
        limits = self.input_limits
        prepared = await asyncio.to_thread(
            images.prepare_input_image,
            data,
            filename=filename,
            max_bytes=limits.max_bytes,
            max_pixels=limits.max_pixels,
        )
        return images.as_input(prepared)

    async def prepare_mask(self, data: bytes, image: InputImage) -> bytes:
        """A mask file as the alpha mask the API wants, at `image`'s size (off the event loop)."""
        limits = self.input_limits
        return await asyncio.to_thread(
            images.prepare_mask,
            data,
            image,
            max_bytes=limits.max_bytes,
            max_pixels=limits.max_pixels,
        )

    # --- conversations -----------------------------------------------------------------

    async def conversation(self, channel_id: int) -> Conversation | None:
        """The conversation a channel holds, or None."""
        return await self._store.get_conversation(channel_id)

    async def start_plan(self, requester: Requester, *, in_dm: bool, in_thread: bool) -> StartPlan:
        """Where a new /imagine or /edit goes; BotError when the requester may not continue here."""
        if in_dm:
            return StartPlan.FRESH_DM
        conversation = await self._store.get_conversation(requester.channel_id)
        if conversation is not None:
            self.check_continue(conversation.owner_id, requester)
            return StartPlan.CONTINUE
        return StartPlan.IN_PLACE if in_thread else StartPlan.NEW_THREAD

    def new_conversation(
        self, requester: Requester, channel_id: int, spec: JobSpec
    ) -> Conversation:
        """The conversation a new thread (or a DM started afresh) holds."""
        now = self._clock()
        return Conversation(
            channel_id=channel_id,
            guild_id=requester.guild_id,
            owner_id=requester.user_id,
            parent_channel_id=requester.channel_id if channel_id != requester.channel_id else None,
            latest_response_id=None,
            latest_message_id=None,
            engine=self.engine_for(requester).value,
            options=dict(spec.options),
            created_at=now,
            updated_at=now,
        )

    async def message_target(
        self, channel_id: int, *, reply_to: int | None
    ) -> tuple[int, Turn | None] | None:
        """Whether a message is a turn: (whose conversation it continues, the replied-to turn).

        None for ordinary chat: outside a conversation, only a reply to one of the bot's
        images is a turn.
        """
        parent: Turn | None = None
        if reply_to is not None:
            parent = await self._store.get_turn_by_message(reply_to)
            if parent is not None and parent.channel_id != channel_id:
                parent = None
        conversation = await self._store.get_conversation(channel_id)
        if conversation is not None:
            return conversation.owner_id, parent
        if parent is not None:
            return parent.user_id, parent
        return None

    def check_continue(self, owner_id: int, requester: Requester) -> None:
        """BotError when `requester` may not continue a conversation of `owner_id`."""
        if not self.may_continue(owner_id, requester):
            raise BotError("studio.not_allowed_continue")

    async def button_turn(self, turn_id: int, requester: Requester) -> Turn:
        """The turn a button names, after checking it is in this channel and may be continued."""
        turn = await self._store.get_turn(turn_id) if 0 < turn_id <= MAX_ROW_ID else None
        # A crafted custom_id could name a turn elsewhere: it must be in this very channel.
        if turn is None or turn.channel_id != requester.channel_id:
            raise BotError("studio.unknown_image")
        conversation = await self._store.get_conversation(turn.channel_id)
        self.check_continue(conversation.owner_id if conversation else turn.user_id, requester)
        return turn

    async def pick(self, turn_id: int, requester: Requester) -> Turn:
        """Continue from one image of a grid (U1-U4): the conversation's head becomes this image.

        The same checks as the other buttons (this channel, who may continue); returns the turn.
        """
        turn = await self.button_turn(turn_id, requester)
        if turn.response_id is not None:
            await self._store.advance_conversation(
                turn.channel_id, response_id=turn.response_id, message_id=turn.message_id
            )
        return turn

    async def picked(self, turn: Turn, message_id: int, image_url: str | None) -> None:
        """Remember the message a picked image was posted as (replies to it continue from it)."""
        await self._store.set_turn_message(turn.id, message_id, image_url)
        conversation = await self._store.get_conversation(turn.channel_id)
        if (
            turn.response_id is not None
            and conversation is not None
            and conversation.latest_response_id == turn.response_id
        ):
            await self._store.advance_conversation(
                turn.channel_id, response_id=turn.response_id, message_id=message_id
            )

    async def delete_image(self, turn: Turn, requester: Requester) -> None:
        """Forget an image (its author or a moderator); the conversation goes back to its parent."""
        if turn.user_id != requester.user_id and not requester.is_admin:
            raise BotError("studio.not_allowed_delete")
        await self._store.delete_turn_rolling_back(turn.id)

    async def turn_image(self, turn: Turn) -> bytes | None:
        """The final image of a turn: from the database, else from where it was posted."""
        saved = await self._store.get_turn_image(turn.id)
        if saved is not None:
            return saved[0]
        if self._fetcher is None:
            return None
        return await self._fetcher.fetch_turn_image(turn)

    async def latest_image(self, channel_id: int) -> bytes | None:
        """The newest image of a conversation, or None."""
        conversation = await self._store.get_conversation(channel_id)
        if conversation is None or conversation.latest_response_id is None:
            return None
        turn = await self._store.get_turn_by_response(conversation.latest_response_id)
        return await self.turn_image(turn) if turn is not None else None

    async def remember_progress(self, job: Job, message_id: int) -> None:
        """Remember the message that shows a job, so a restart edits it instead of posting anew."""
        await self._store.set_job_progress_message(job.id, message_id)

    # --- specs for the buttons ---------------------------------------------------------

    @staticmethod
    def reroll_spec(turn: Turn) -> JobSpec:
        """The same prompt once more, from the same parent."""
        return JobSpec(
            kind=JobKind.REROLL,
            prompt=turn.prompt,
            options=turn.options,
            parent=ParentMode.RESPONSE if turn.parent_response_id else ParentMode.NONE,
            parent_response_id=turn.parent_response_id,
        )

    @staticmethod
    def vary_spec(turn: Turn) -> JobSpec:
        """A variation of this image."""
        return JobSpec(
            kind=JobKind.VARY,
            prompt=i18n.t("en", "prompt.vary"),
            options=turn.options,
            parent=ParentMode.RESPONSE,
            parent_response_id=turn.response_id,
            parent_turn_id=turn.id,
        )

    @staticmethod
    def edit_spec(turn: Turn, instruction: str, cells: tuple[int, ...] = ()) -> JobSpec:
        """An instruction that continues from this image (only inside `cells`, if any)."""
        return JobSpec(
            kind=JobKind.REGION if cells else JobKind.EDIT,
            prompt=instruction,
            options=turn.options,
            mask_cells=cells,
            parent=ParentMode.RESPONSE,
            parent_response_id=turn.response_id,
            parent_turn_id=turn.id,
        )

    @staticmethod
    def extend_spec(turn: Turn, how: str) -> JobSpec:
        """This image on a larger canvas (zoom out, or pan one way), the new border filled in."""
        if how not in images.EXTENSIONS:
            raise BotError("studio.unknown_extension")
        return JobSpec(
            kind=JobKind.EXTEND,
            prompt=i18n.t("en", "prompt.extend", prompt=turn.prompt),
            options=turn.options,
            parent=ParentMode.RESPONSE,
            parent_response_id=turn.response_id,
            parent_turn_id=turn.id,
            extend=how,
        )

    # --- admission -------------------------------------------------------------------

    def check(self, spec: JobSpec, requester: Requester) -> CheckedRequest:
        """Every check that needs no database; BotError (nothing spent) when it cannot run."""
        self.check_place(requester)
        options = self.options_for(requester, spec.options)
        config = requester.config
        if options.moderation == "low" and config.low_moderation_nsfw_only:
            if not requester.channel_nsfw:
                raise BadInput("bad.moderation_low_nsfw")
        engine = spec.engine or self.engine_for(requester)
        spoiler = spec.spoiler or self.spoiler_for(requester)
        if not 1 <= spec.count <= MAX_COUNT:
            raise BadInput("bad.count_range", value=spec.count, most=MAX_COUNT)
        if spec.count > 1:
            # One progress message cannot show several drawings' previews, and each preview
            # is billed: a job that draws several images at once streams none.
            options = options.merged({"partials": 0})
        spec = dataclasses.replace(spec, options=options.as_dict(), engine=engine, spoiler=spoiler)
        validate_request(
            TurnRequest(
                prompt=spec.prompt,
                options=options,
                images=spec.images,
                mask=spec.mask,
                previous_response_id=spec.parent_response_id
                or ("latest" if spec.continues else None),
            )
        )
        inputs = len(spec.images) + (1 if spec.continues else 0)
        estimate = spec.count * self.prices.estimate(
            options, prompt=spec.prompt, input_images=inputs, engine=engine.value
        )
        return CheckedRequest(spec=spec, requester=requester, options=options, estimate=estimate)

    def _windows_and_gate(self, checked: CheckedRequest) -> dict[str, Any]:
        now = self._clock()
        return {
            "user_window": day_window(now),
            "guild_window": month_window(now),
            "gate": admission_gate(
                self.limits_for(checked.requester),
                estimate=checked.estimate,
                images=checked.images,
            ),
        }

    async def admit(self, checked: CheckedRequest, *, dispatch: bool = False) -> Job:
        """Put a checked job in the ledger, reserving its estimate, without starting it yet
        (`place` queues it; with `dispatch`, the shared queue gets it at once).

        The limits are checked in the same transaction (BotError when one would be exceeded).
        """
        requester = checked.requester
        try:
            job = await self._admit(checked, dispatch=dispatch)
        except BotError:
            raise
        except Exception as exc:
            # A full disk or a database another process holds: nothing was started or charged.
            log.warning("could not admit a job of user %s: %r", requester.user_id, exc)
            raise BotError("studio.not_saved") from exc
        self._crashpoint("admitted")
        return job

    async def _admit(self, checked: CheckedRequest, *, dispatch: bool) -> Job:
        requester = checked.requester
        return await self._store.admit_job(
            NewJob(
                kind=checked.spec.kind.value,
                guild_id=requester.guild_id,
                channel_id=requester.channel_id,
                user_id=requester.user_id,
                payload=checked.spec.to_payload(),
                locale=requester.locale,
                reserved_usd=checked.estimate,
                reserved_images=checked.images,
                worker_id=self.worker_id,
                dispatch=dispatch,
            ),
            **self._windows_and_gate(checked),
        )

    async def place(
        self, job: Job, channel_id: int, conversation: Conversation | None = None
    ) -> Job:
        """Move an admitted job to where it is shown (opening a conversation there) and queue it."""
        if self._shared is not None:
            # One transaction moves the job, opens the conversation and defers its ticket.
            await self._store.place_job(job.id, channel_id, conversation)
            return dataclasses.replace(job, channel_id=channel_id)
        if channel_id != job.channel_id or conversation is not None:
            await self._store.place_job(job.id, channel_id, conversation)
            job = dataclasses.replace(job, channel_id=channel_id)
        await self._enqueue(job)
        return job

    async def abandon(self, job: Job) -> None:
        """Cancel an admitted job that could not be placed: its reservation is released."""
        await self._store.finish_job(job.id, JobStatus.CANCELLED, error="not placed")

    async def submit(self, checked: CheckedRequest) -> Job:
        """Admit a checked job and queue it where it was asked for."""
        job = await self.admit(checked, dispatch=True)
        if self._shared is None:
            await self._enqueue(job)
        return job

    async def retry(self, job_id: int, requester: Requester) -> Job:
        """Queue a failed or interrupted job again, through the same gates as a new request."""
        job = await self._store.get_job(job_id) if 0 < job_id <= MAX_ROW_ID else None
        if job is None or job.channel_id != requester.channel_id:
            raise BotError("studio.unknown_job")
        if job.user_id != requester.user_id and not requester.is_admin:
            raise BotError("studio.not_allowed_retry")
        # The server's rules and budgets as they are now apply, to the job's owner.
        owner = dataclasses.replace(requester, user_id=job.user_id)
        checked = self.check(JobSpec.from_payload(job.payload), owner)
        again = await self._store.readmit_job(
            job.id,
            reserved_usd=checked.estimate,
            reserved_images=checked.images,
            worker_id=self.worker_id,
            **self._windows_and_gate(checked),
        )
        if again is None:
            raise BotError("studio.unknown_job")
        if self._shared is None:
            await self._enqueue(again)
        return again

    async def cancel(self, job_id: int, requester: Requester) -> bool:
        """Cancel a queued or running job (its requester or a moderator).

        A queued job leaves the queue at no cost; a running one stops its stream and is charged
        nothing, since OpenAI reports usage only for finished responses. Returns False when it
        was too late: an image that already arrived is saved and posted as usual.
        """
        job = await self._store.get_job(job_id) if 0 < job_id <= MAX_ROW_ID else None
        if job is None or job.channel_id != requester.channel_id:
            raise BotError("studio.unknown_job")
        if job.user_id != requester.user_id and not requester.is_admin:
            raise BotError("studio.not_allowed_cancel")
        if job.id in self._arrived or job.status not in (JobStatus.QUEUED, JobStatus.RUNNING):
            return False
        if self._shared is not None:
            return await self._cancel_shared(job)
        if job.worker_id is not None and job.worker_id != self.worker_id:
            # Another process holds it: ending it here could leave that process unable to save
            # an image it has already paid for.
            raise BotError("studio.cancel_elsewhere")
        self._cancel_requests.add(job.id)
        if self._queue.stop(job.id):
            return True  # the job's own task ends it (see _run)
        self._cancel_requests.discard(job.id)
        await self._queue.remove(job.id)
        sink = await self._sink_factory(job, JobSpec.from_payload(job.payload))
        return await self._end_cancelled(job, sink)

    async def _cancel_shared(self, job: Job) -> bool:
        """Cancel a job of the shared queue, wherever it runs.

        Money: a queued job is ended only while it is still queued (`queued_only`), so a job
        another process has just started is never ended under it (its image would then be
        paid for and not saved); a running one is ended by its own runner, which the abort
        reaches in any process, and which saves and posts an image that already arrived.
        """
        if job.status == JobStatus.QUEUED:
            if await self._store.finish_job(
                job.id, JobStatus.CANCELLED, error="cancelled", queued_only=True
            ):
                # Its ticket finds the job no longer queued and does nothing.
                sink = await self._sink_factory(job, JobSpec.from_payload(job.payload))
                try:
                    await sink.cancelled(job)
                except Exception:
                    log.exception("could not show that job %s was cancelled", job.id)
                return True
            started = await self._store.get_job(job.id)
            if started is None or started.status != JobStatus.RUNNING:
                return False
        task = self._tickets.get(job.id)
        if task is not None:
            if job.id in self._arrived:
                return False
            self._cancel_requests.add(job.id)
            task.cancel()
            return True
        assert self._shared is not None
        return await self._shared.abort(job.id)

    async def _run_ticket(self, job_id: int, cancelled_by_user: Callable[[], bool]) -> None:
        """Run the ledger job a ticket names, if it is still queued (in this process)."""
        assert self._shared is not None
        job = await self._store.get_job(job_id)
        if job is None or job.status != JobStatus.QUEUED:
            return
        if self._closing:
            # Fetched as this process stops: another process gets a fresh ticket for it.
            await self._store.dispatch_job(job.id)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tickets[job.id] = task
        self._user_cancelled[job.id] = cancelled_by_user
        sink = await self._sink_factory(job, JobSpec.from_payload(job.payload))
        try:
            async with self._shared.slot(
                job.user_id,
                global_cap=self.limits.global_concurrency,
                user_cap=self.limits.user_concurrency,
            ):
                await self._run(job, sink)
        except asyncio.CancelledError:
            # Cancelled while waiting for a place: the job is still queued.
            if not self._cancelled(job.id):
                raise
            task.uncancel()
            await self._end_cancelled(job, sink, queued_only=True)
        finally:
            self._tickets.pop(job.id, None)
            self._user_cancelled.pop(job.id, None)

    def _cancelled(self, job_id: int) -> bool:
        """Whether a job's task was cancelled by Cancel (here or in another process)."""
        if job_id in self._cancel_requests:
            return True
        by_user = self._user_cancelled.get(job_id)
        return by_user is not None and by_user()

    async def _end_cancelled(self, job: Job, sink: TurnSink, *, queued_only: bool = False) -> bool:
        self._cancel_requests.discard(job.id)
        if not await self._store.finish_job(
            job.id, JobStatus.CANCELLED, error="cancelled", queued_only=queued_only
        ):
            return False
        try:
            await sink.cancelled(job)
        except Exception:
            log.exception("could not show that job %s was cancelled", job.id)
        return True

    async def _enqueue(self, job: Job) -> None:
        sink = await self._sink_factory(job, JobSpec.from_payload(job.payload))
        await self._queue.put(job, sink)

    # --- running ---------------------------------------------------------------------

    def _crashpoint(self, name: str) -> None:
        if self._crash_at == name:
            log.warning("crash_at=%s: killing the process", name)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _run(self, job: Job, sink: TurnSink) -> None:
        logcontext.bind_job(job.id, job.channel_id)
        try:
            started = await self._store.start_job(job.id, self.worker_id)
            if started is None:
                return
            job = started
            self._crashpoint("running")
            await self._execute(job, sink)
        except asyncio.CancelledError:
            if not self._cancelled(job.id):
                raise  # a shutdown: the job stays running and is reported at the next start
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            await self._end_cancelled(job, sink)
        except Exception as exc:
            log.exception("job %s crashed", job.id)
            await self._fail(
                job, sink, Failed(FailureKind.TRANSIENT, "fail.transient", detail=repr(exc))
            )

    async def _fail(self, job: Job, sink: TurnSink, event: Failed) -> None:
        """End a job without an image: charge what OpenAI billed, release the rest, say why."""
        billed: NewUsageEntry | None = None
        if event.usage is not None and event.usage != Usage():
            billed = self._billed_entry(job, JobSpec.from_payload(job.payload), event.usage)
        await self._store.finish_job(job.id, JobStatus.FAILED, error=event.kind.value, usage=billed)
        try:
            await sink.failed(event, job)
        except Exception:
            log.exception("could not report the failure of job %s", job.id)

    async def _parent_turn(self, spec: JobSpec, head: str | None) -> Turn | None:
        if spec.parent is ParentMode.NONE:
            return None
        if spec.parent_turn_id is not None:
            return await self._store.get_turn(spec.parent_turn_id)
        if spec.parent is ParentMode.RESPONSE and spec.parent_response_id:
            return await self._store.get_turn_by_response(spec.parent_response_id)
        if spec.parent is ParentMode.LATEST and head:
            return await self._store.get_turn_by_response(head)
        return None

    async def _input_of(self, turn: Turn | None) -> InputImage | None:
        if turn is None:
            return None
        data = await self.turn_image(turn)
        if data is None:
            return None
        fmt = str(turn.options.get("format") or "png")
        return InputImage(
            data=data,
            mime=f"image/{fmt}",
            filename=f"parent.{fmt}",
            sha256=hashlib.sha256(data).hexdigest(),
        )

    async def build_request(
        self, job: Job, spec: JobSpec
    ) -> tuple[TurnRequest, Engine, Turn | None]:
        """The request a job sends, resolving its parent at the moment it starts."""
        engine = spec.engine or self.engine
        parent = await self._parent_turn(spec, job.base_response_id)
        previous: str | None = None
        if spec.parent is ParentMode.RESPONSE:
            previous = spec.parent_response_id or (parent.response_id if parent else None)
        elif spec.parent is ParentMode.LATEST:
            # The head the job started from (recorded by start_job), which is also the one its
            # image may replace (compare-and-set in save_result).
            previous = job.base_response_id
        parent_image: InputImage | None = None
        mask = spec.mask
        # Jobs that edit the parent's pixels themselves send them, whatever the engine.
        edits_pixels = spec.kind in (JobKind.REGION, JobKind.EXTEND)
        needs_image = engine is Engine.IMAGES or edits_pixels or spec.kind is JobKind.VARY
        if previous is not None and needs_image:
            parent_image = await self._input_of(parent)
        if spec.mask_cells and parent_image is not None:
            width, height = images.image_size(parent_image.data)
            mask = await asyncio.to_thread(images.grid_mask, width, height, spec.mask_cells)
        if (engine is Engine.IMAGES or edits_pixels) and previous is not None and not parent_image:
            raise BadInput("studio.parent_image_missing")
        options = ImageOptions().merged(spec.options)
        if spec.extend is not None and parent_image is not None:
            canvas = await asyncio.to_thread(
                images.extend_canvas,
                parent_image.data,
                spec.extend,
                free_sizes=bool(getattr(MODELS.get(options.model), "free_sizes", False)),
            )
            parent_image = InputImage(
                data=canvas.image,
                mime="image/png",
                filename="canvas.png",
                sha256=hashlib.sha256(canvas.image).hexdigest(),
            )
            mask = canvas.mask
            options = options.merged({"size": canvas.size})
        request = TurnRequest(
            prompt=spec.prompt,
            options=options,
            images=spec.images,
            mask=mask,
            previous_response_id=previous if engine is Engine.RESPONSES else None,
            parent_image=parent_image if (engine is Engine.IMAGES or edits_pixels) else None,
            parent_prompt=parent.prompt if parent else None,
            user_hash=user_hash(job.user_id),
        )
        return request, engine, parent

    async def _execute(self, job: Job, sink: TurnSink) -> None:
        spec = JobSpec.from_payload(job.payload)
        try:
            request, engine, parent = await self.build_request(job, spec)
        except BotError as exc:
            await self._fail(job, sink, Failed(FailureKind.BAD_REQUEST, exc.key, dict(exc.params)))
            return

        async def reseed() -> tuple[InputImage, str] | None:
            turn = parent or await self._store.latest_turn(job.channel_id)
            image = await self._input_of(turn)
            return (image, turn.prompt) if image is not None and turn is not None else None

        if spec.count > 1:
            await self._execute_many(job, spec, sink, request, engine, parent, reseed)
            return
        stream = self.runner.run(request, engine=engine.value, reseed=reseed)
        try:
            async for event in stream:
                if isinstance(event, ResponseCreated):
                    # Known before anything is billed: a restart can fetch the finished image
                    # by it.
                    await self._store.set_job_response(job.id, event.response_id)
                elif isinstance(event, Started):
                    await sink.started(event)
                elif isinstance(event, Partial):
                    await sink.partial(event)
                elif isinstance(event, Completed):
                    self._arrived.add(job.id)
                    # From here the image is paid for: saving and posting it must not be cut in
                    # half by a shutdown, so they run in their own task that a cancelled job
                    # leaves alone.
                    parent_response_id = (
                        request.previous_response_id
                        or (parent.response_id if parent is not None else None)
                        or spec.parent_response_id
                    )
                    finishing = self._spawn(
                        self._save_and_post(job, spec, sink, request, event, parent_response_id)
                    )
                    await asyncio.shield(finishing)
                    return
                elif isinstance(event, Failed):
                    await self._fail(job, sink, event)
                    return
        finally:
            # Close the stream now rather than when the collector gets to it: until then its
            # frames (runner, adapter) hold the turn's last event, the final image included.
            close = getattr(stream, "aclose", None)
            if close is not None:
                await close()

    async def _execute_many(
        self,
        job: Job,
        spec: JobSpec,
        sink: TurnSink,
        request: TurnRequest,
        engine: Engine,
        parent: Turn | None,
        reseed: Callable[[], Awaitable[tuple[InputImage, str] | None]],
    ) -> None:
        """Draw a job's `count` images at once; save the ones that arrived together, then post
        them as one grid. Only when none arrived does the job fail (charging what was billed).
        """
        await sink.started(Started(engine=engine.value, model=request.options.model))

        async def created(response_id: str) -> None:
            # Known before anything is billed: a restart can fetch each finished image by it.
            await self._store.add_job_response(job.id, response_id)

        def arrived() -> None:
            # From the first image on, the job is paid for: too late to cancel.
            self._arrived.add(job.id)

        ended = await self.runner.run_many(
            request,
            count=spec.count,
            engine=engine.value,
            reseed=reseed,
            on_created=created,
            on_arrived=arrived,
        )
        done = [event for event in ended if isinstance(event, Completed)]
        failures = [event for event in ended if isinstance(event, Failed)]
        if not done:
            billed = [f.usage for f in failures if f.usage is not None and f.usage != Usage()]
            first = failures[0] if failures else Failed(FailureKind.TRANSIENT, "fail.stream_cut")
            await self._fail(job, sink, dataclasses.replace(first, usage=_sum_usage(billed)))
            return
        if failures:
            log.warning(
                "job %s: %d of %d drawings made no image (%s)",
                job.id,
                len(failures),
                spec.count,
                ", ".join(f.kind.value for f in failures),
            )
        parent_response_id = (
            request.previous_response_id
            or (parent.response_id if parent is not None else None)
            or spec.parent_response_id
        )
        finishing = self._spawn(
            self._save_and_post_many(job, spec, sink, request, done, failures, parent_response_id)
        )
        await asyncio.shield(finishing)

    async def _save_and_post_many(
        self,
        job: Job,
        spec: JobSpec,
        sink: TurnSink,
        request: TurnRequest,
        done: Sequence[Completed],
        failures: Sequence[Failed],
        parent_response_id: str | None,
    ) -> None:
        self._crashpoint("received")
        items: list[NewImage] = []
        for index, event in enumerate(done):
            turn, usage = _new_turn(
                event,
                options=request.options,
                prompt=spec.prompt,
                parent_response_id=parent_response_id,
                channel_id=job.channel_id,
                guild_id=job.guild_id,
                user_id=job.user_id,
            )
            if index == 0 and failures:
                # Kept with the first image, so a restart posts the grid with the same note.
                turn = dataclasses.replace(turn, result={**turn.result, "failed": len(failures)})
            items.append(
                NewImage(turn=turn, image=event.image, image_format=event.format, usage=usage)
            )
        billed = [
            self._billed_entry(job, spec, f.usage)
            for f in failures
            if f.usage is not None and f.usage != Usage()
        ]
        saved = await self._persist(
            f"save the images of job {job.id}",
            lambda: self._store.save_results(job.id, items, billed=billed, advance=True),
        )
        self._crashpoint("saved")
        shown = [
            dataclasses.replace(event, branched=bool(turn.result.get("branched")))
            for event, turn in zip(done, saved, strict=True)
        ]
        try:
            await self._post_grid(job, saved, shown, len(failures), sink)
        finally:
            self._arrived.discard(job.id)

    async def _post_grid(
        self,
        job: Job,
        turns: Sequence[Turn],
        done: Sequence[Completed],
        failed: int,
        sink: TurnSink,
    ) -> None:
        """Show a job's saved images as one grid, retrying until Discord takes it; then mark the
        job posted (replies to the grid continue from its first image until one is picked)."""
        await self._show_then_mark(
            job, turns[0].id, "images", lambda: sink.completed_grid(done, turns, failed)
        )

    def _billed_entry(self, job: Job, spec: JobSpec, usage: Usage) -> NewUsageEntry:
        """A usage row for tokens OpenAI billed for a drawing that made no image."""
        model = str(spec.options.get("model") or self.defaults.model)
        engine = (spec.engine or self.engine).value
        return NewUsageEntry(
            guild_id=job.guild_id,
            user_id=job.user_id,
            channel_id=job.channel_id or None,
            model=model,
            engine=engine,
            images=0,
            input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens,
            image_input_tokens=usage.image_input_tokens,
            image_output_tokens=usage.image_output_tokens,
            cost_usd=self.prices.cost(usage, model=model, engine=engine),
        )

    def _spawn(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._finishing.add(task)
        task.add_done_callback(self._finishing.discard)
        return task

    async def _save_and_post(
        self,
        job: Job,
        spec: JobSpec,
        sink: TurnSink,
        request: TurnRequest,
        done: Completed,
        parent_response_id: str | None,
    ) -> None:
        self._crashpoint("received")
        turn, usage = _new_turn(
            done,
            options=request.options,
            prompt=spec.prompt,
            parent_response_id=parent_response_id,
            channel_id=job.channel_id,
            guild_id=job.guild_id,
            user_id=job.user_id,
        )
        saved = await self._persist(
            f"save the image of job {job.id}",
            lambda: self._store.save_result(
                job.id, turn, image=done.image, image_format=done.format, usage=usage, advance=True
            ),
        )
        self._crashpoint("saved")
        if saved.result.get("branched"):
            # The thread moved on while this job ran: the image is shown, as a branch.
            done = dataclasses.replace(done, branched=True)
        try:
            await self._post(job, saved, done, sink)
        finally:
            self._arrived.discard(job.id)

    async def _persist(self, what: str, write: Callable[[], Awaitable[Any]]) -> Any:
        """Run a ledger write until the database takes it (locked, full or briefly gone)."""
        delay = self._backoff[0]
        while True:
            try:
                return await write()
            except (asyncio.CancelledError, StorageError):
                raise
            except Exception as exc:
                log.warning("could not %s (%r); trying again in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])

    async def _post(self, job: Job, turn: Turn, done: Completed, sink: TurnSink) -> None:
        """Show a saved image, retrying with backoff until Discord takes it; then mark it posted."""
        await self._show_then_mark(job, turn.id, "image", lambda: sink.completed(done, turn))

    async def _show_then_mark(
        self,
        job: Job,
        turn_id: int,
        what: str,
        show: Callable[[], Awaitable[tuple[int | None, str | None]]],
    ) -> None:
        """Run `show` until Discord takes the post (backoff between tries, never a new image);
        then record the job posted."""
        delay = self._backoff[0]
        while True:
            try:
                message_id, url = await show()
                break
            except PostingFailed as exc:
                log.warning(
                    "could not post the %s of job %s (%s); trying again in %.1fs",
                    what,
                    job.id,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])
        self._crashpoint("posted")
        await self._persist(
            f"mark job {job.id} posted",
            lambda: self._store.mark_posted(job.id, turn_id, message_id, url),
        )

    async def recover(self) -> tuple[list[Job], list[Job], list[Job]]:
        """At start-up, before anything new runs: settle the jobs this worker's previous run
        left behind, and those of other workers not seen for `stale_after_seconds`; then keep
        saying this worker is alive, and settle the jobs of workers that die later.

        Returns (interrupted, reposted, queued); see `_settle`.
        """
        await self._store.register_worker(self.worker_id)
        # Beat from now on: settling may take a while (fetching finished responses), and
        # meanwhile no other process may take this one for dead.
        if self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._keep_alive(), name="worker-heartbeat")
        if self._shared is not None:
            await self._shared.open(slots=self._queue_concurrency)
        orphans = await self._store.adopt_orphans(
            self.worker_id, stale_after=self._stale_after, own=True
        )
        self._say_adopted(orphans)
        settled = await self._settle(orphans)
        if self._shared is not None and self._worker is None and self._queue_concurrency > 0:
            log.info(
                "worker %s runs up to %d job(s) of the shared queue at once",
                self.worker_id,
                self._queue_concurrency,
            )
            self._worker = asyncio.create_task(self._work_shared(), name="queue-worker")
        return settled

    async def _work_shared(self) -> None:
        """Run the shared queue's tickets in this process until closed."""
        assert self._shared is not None
        while not self._closing:
            try:
                await self._shared.run_worker(
                    self._run_ticket,
                    name=self.worker_id,
                    # Each process may run as many as the whole fleet; the fleet-wide places
                    # (`slot`) keep the sum at GLOBAL_CONCURRENCY.
                    concurrency=self._queue_concurrency,
                    heartbeat_seconds=self._heartbeat_seconds,
                    stale_after_seconds=self._stale_after,
                    graceful_seconds=self._grace,
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("the queue worker of %s failed", self.worker_id)
            # It stops on its own only when a part of it failed (the database went away):
            # start it again, after a pause that a database down for longer does not spin.
            log.warning("restarting the queue worker of %s", self.worker_id)
            await asyncio.sleep(self._heartbeat_seconds)

    async def _keep_alive(self) -> None:
        """Every `heartbeat_seconds`: say this worker is alive, and settle dead workers' jobs."""
        while True:
            await asyncio.sleep(self._heartbeat_seconds)
            try:
                if not await self._store.heartbeat_worker(self.worker_id):
                    # Another process took this one for dead (a long pause, a lost database)
                    # and settled its jobs: come back to life and go on.
                    log.error("worker %s was taken for dead; registering again", self.worker_id)
                    await self._store.register_worker(self.worker_id)
                orphans = await self._store.adopt_orphans(
                    self.worker_id, stale_after=self._stale_after
                )
                if orphans.workers or orphans.running or orphans.saved or orphans.queued:
                    self._say_adopted(orphans)
                    await self._settle(orphans)
                if self._shared is not None:
                    # Tickets a silent process had fetched go back to the queue; run again,
                    # each does nothing unless its ledger job is still queued.
                    requeued = await self._shared.requeue_stalled(self._stale_after)
                    if requeued:
                        log.warning("requeued %d ticket(s) of stalled workers", requeued)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("worker %s: heartbeat or settling failed", self.worker_id)

    def _say_adopted(self, orphans: Orphans) -> None:
        """Log which stopped workers' jobs this one took over (at start-up or later alike)."""
        others = [w for w in orphans.workers if w != self.worker_id]
        if others:
            log.warning("took over the jobs of stopped worker(s) %s", ", ".join(others))

    async def _settle(self, orphans: Orphans) -> tuple[list[Job], list[Job], list[Job]]:
        """Handle adopted jobs as the ledger says; returns (interrupted, reposted, queued).

        A job cut off while running whose response finished at OpenAI anyway (it was billed)
        is saved and posted from that response; the others are reported as interrupted, with
        Retry. Saved images not posted yet are posted, never generated again. Queued jobs
        join this worker's queue.
        """
        interrupted: list[Job] = []
        reposted: list[Job] = list(orphans.saved)
        for job in orphans.running:
            if job.response_id is not None:
                try:
                    saved = await self._finish_lost_response(job)
                except Exception:
                    log.exception("job %s: could not fetch response %s", job.id, job.response_id)
                    saved = None
                if saved is not None:
                    reposted.append(saved)
                    continue
            if await self._store.finish_job(job.id, JobStatus.INTERRUPTED):
                interrupted.append(await self._store.get_job(job.id) or job)
        for job in interrupted:
            sink = await self._sink_factory(job, JobSpec.from_payload(job.payload))
            try:
                await sink.failed(Failed(FailureKind.INTERRUPTED, "fail.interrupted"), job)
            except Exception:
                log.exception("could not report interrupted job %s", job.id)
        reposted.sort(key=lambda job: job.id)
        for job in reposted:
            spec = JobSpec.from_payload(job.payload)
            if spec.count > 1:
                await self._repost_grid(job, spec)
                continue
            turn = await self._store.get_turn(job.turn_id) if job.turn_id is not None else None
            image = await self._store.get_turn_image(turn.id) if turn is not None else None
            if turn is None or image is None:
                log.error("job %s is saved but its turn or image is gone", job.id)
                continue
            sink = await self._sink_factory(job, JobSpec.from_payload(job.payload))
            self._spawn(self._post(job, turn, completed_from_turn(turn, *image), sink))
        if self._shared is not None:
            # The running tickets of the jobs just settled held their threads' locks for a
            # process that is gone.
            await self._shared.forget([job.id for job in (*orphans.running, *orphans.saved)])
        for job in orphans.queued:
            if self._shared is not None:
                await self._store.dispatch_job(job.id)
            else:
                await self._enqueue(job)
        return interrupted, reposted, list(orphans.queued)

    async def _repost_grid(self, job: Job, spec: JobSpec) -> None:
        """Post the saved images of a job that drew several at once, as they first would have been."""
        turns = await self._store.job_turns(job.id)
        done: list[Completed] = []
        for turn in turns:
            image = await self._store.get_turn_image(turn.id)
            if image is None:
                log.error("job %s is saved but the image of turn %s is gone", job.id, turn.id)
                return
            done.append(completed_from_turn(turn, *image))
        if not turns:
            log.error("job %s is saved but its turns are gone", job.id)
            return
        failed = turns[0].result.get("failed")
        sink = await self._sink_factory(job, spec)
        self._spawn(
            self._post_grid(job, turns, done, failed if isinstance(failed, int) else 0, sink)
        )

    async def _finish_lost_responses(self, job: Job, spec: JobSpec) -> Job | None:
        """Save, as one grid, the images of a cut-off job that drew several at once whose
        responses finished anyway; the saved job, or None when none of them did."""
        options = ImageOptions().merged(spec.options)
        finished = [await self.runner.finished(rid, options) for rid in job.response_ids]
        done = [event for event in finished if event is not None]
        if not done:
            return None
        log.info("job %s: %d of its responses finished while the bot was down", job.id, len(done))
        items: list[NewImage] = []
        for index, event in enumerate(done):
            turn, usage = _new_turn(
                event,
                options=options,
                prompt=spec.prompt,
                parent_response_id=spec.parent_response_id,
                channel_id=job.channel_id,
                guild_id=job.guild_id,
                user_id=job.user_id,
            )
            lost = spec.count - len(done)
            if index == 0 and lost:
                turn = dataclasses.replace(turn, result={**turn.result, "failed": lost})
            items.append(
                NewImage(turn=turn, image=event.image, image_format=event.format, usage=usage)
            )
        await self._store.save_results(job.id, items, advance=True)
        return await self._store.get_job(job.id)

    async def _finish_lost_response(self, job: Job) -> Job | None:
        """Save the image of a cut-off job whose response finished anyway; the saved job."""
        spec = JobSpec.from_payload(job.payload)
        if (spec.engine or self.engine) is not Engine.RESPONSES or job.response_id is None:
            return None
        if spec.count > 1:
            return await self._finish_lost_responses(job, spec)
        options = ImageOptions().merged(spec.options)
        done = await self.runner.finished(job.response_id, options)
        if done is None:
            return None
        log.info("job %s: response %s finished while the bot was down", job.id, job.response_id)
        turn, usage = _new_turn(
            done,
            options=options,
            prompt=spec.prompt,
            parent_response_id=spec.parent_response_id
            or (job.base_response_id if spec.parent is ParentMode.LATEST else None),
            channel_id=job.channel_id,
            guild_id=job.guild_id,
            user_id=job.user_id,
        )
        await self._store.save_result(
            job.id, turn, image=done.image, image_format=done.format, usage=usage, advance=True
        )
        return await self._store.get_job(job.id)

    async def wait_idle(self) -> None:
        """Wait until no job runs here and no image waits to be posted (tests, shutdown)."""
        while True:
            await self._queue.wait_idle()
            if self._tickets:
                await asyncio.gather(*list(self._tickets.values()), return_exceptions=True)
                continue
            if not self._finishing:
                return
            await asyncio.gather(*list(self._finishing), return_exceptions=True)

    async def close(self, grace: float = 5.0) -> None:
        """Stop starting jobs; give running ones `grace` seconds, then cancel them.

        A job cancelled while drawing stays `running` and is reported as interrupted (with
        Retry) at the next start; one whose image arrived is saved and posted first, and one
        whose posting is still being retried stays `saved` and is posted at the next start.
        """
        self._closing = True
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None
        if self._worker is not None:
            # The worker stops fetching, gives running tickets their grace, then cancels them.
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        if self._shared is not None:
            await self._shared.close()
        await self._queue.close(grace)
        finishing = list(self._finishing)
        if finishing:
            await asyncio.wait(finishing, timeout=grace)
        for task in finishing:
            task.cancel()
        await asyncio.gather(*finishing, return_exceptions=True)

    @property
    def running(self) -> int:
        """How many jobs run now (in this process)."""
        return self._queue.running + len(self._tickets)

    def waiting_jobs(self) -> Sequence[Job]:
        """The jobs waiting to run here, in order (a shared queue's wait in the database)."""
        return self._queue.waiting_jobs()

    async def queue_depth(self) -> int:
        """How many jobs wait to run: fleet-wide with a shared queue, else in this process."""
        if self._shared is not None:
            return await self._shared.depth()
        return len(self._queue.waiting_jobs())

    # --- web studio ---------------------------------------------------------------------
    # Signed links to the painter and the gallery, and what the web app needs to serve them.
    # Set up by `open_web`; without it no link is issued and every token is refused.

    _web: webstudio.WebAccess | None = None

    def open_web(self, base_url: str | None, *, key: bytes | None = None) -> None:
        """Start issuing web links under `base_url` (None: the pages exist, no link is offered)."""
        self._web = webstudio.WebAccess(
            tokens.TokenSigner(key, clock=self._clock),
            base_url.rstrip("/") if base_url else None,
        )

    @property
    def web_links(self) -> bool:
        """Whether the Paint and Gallery buttons are offered (a public URL is configured)."""
        return self._web is not None and self._web.base_url is not None

    def _web_access(self) -> webstudio.WebAccess:
        if self._web is None:
            raise tokens.TokenError("the web studio is not open")
        return self._web

    def _link(self, purpose: tokens.Purpose, subject: int, requester: Requester) -> str:
        web = self._web_access()
        if web.base_url is None:
            raise BotError("web.not_configured")
        ttl = webstudio.PAINT_TTL if purpose is tokens.Purpose.PAINT else webstudio.GALLERY_TTL
        token = web.signer.issue(purpose, subject, requester.user_id, ttl=ttl)
        claims = web.signer.verify(token, purpose)
        now = self._clock()
        for nonce in [n for n, (_r, expiry) in web.grants.items() if expiry <= now]:
            del web.grants[nonce]
        web.grants[claims.nonce] = (requester, claims.expires_at)
        # The gallery lives under a trailing slash: its images are then links relative to it.
        slash = "/" if purpose is tokens.Purpose.GALLERY else ""
        return f"{web.base_url}/{purpose.value}/{token}{slash}"

    def paint_link(self, turn: Turn, requester: Requester) -> str:
        """A private link to paint a mask on `turn`'s image: 10 minutes, once, for this person."""
        return self._link(tokens.Purpose.PAINT, turn.id, requester)

    def gallery_link(self, channel_id: int, requester: Requester) -> str:
        """A read-only link to the tree of a thread's images, for an hour."""
        return self._link(tokens.Purpose.GALLERY, channel_id, requester)

    def _claims(self, token: str, purpose: tokens.Purpose) -> tuple[tokens.Claims, Requester]:
        web = self._web_access()
        claims = web.signer.verify(token, purpose)
        grant = web.grants.get(claims.nonce)
        if grant is None or grant[0].user_id != claims.user_id:
            raise tokens.TokenError("no grant")
        return claims, grant[0]

    async def _paint_turn(self, token: str) -> tuple[tokens.Claims, Requester, Turn]:
        claims, requester = self._claims(token, tokens.Purpose.PAINT)
        turn = await self._store.get_turn(claims.subject)
        if turn is None:
            raise tokens.TokenError("the image is gone")
        return claims, requester, turn

    async def paint_page(self, token: str) -> webstudio.PaintPage:
        """What the painter shows for a valid paint token (TokenError otherwise)."""
        claims, requester, turn = await self._paint_turn(token)
        image = await self.turn_image(turn)
        if image is None:
            raise BotError("studio.parent_image_missing")
        width, height = images.image_size(image)
        return webstudio.PaintPage(
            turn_id=turn.id,
            width=width,
            height=height,
            prompt=turn.prompt,
            locale=requester.locale,
            expires_at=claims.expires_at,
        )

    async def paint_image(self, token: str) -> tuple[bytes, str]:
        """The image to paint on (bytes, format), from the database."""
        _claims, _requester, turn = await self._paint_turn(token)
        saved = await self._store.get_turn_image(turn.id)
        if saved is not None:
            return saved
        data = await self.turn_image(turn)
        if data is None:
            raise BotError("studio.parent_image_missing")
        return data, str(turn.options.get("format") or "png")

    async def paint_submit(self, token: str, layer: bytes, prompt: str) -> Job:
        """Queue the region edit a painted layer asks for, as its link's owner; spends the link.

        The token is spent before anything is awaited, so two submissions cannot both pass; a
        request refused for its content (nothing painted, an empty prompt, a budget) gives the
        link back, so the person can fix it and send again.
        """
        web = self._web_access()
        claims, granted, turn = await self._paint_turn(token)
        web.signer.spend(claims)
        try:
            # Settings and server rules as they are now; roles and rights as when the link was made.
            requester = await self.requester(
                user_id=granted.user_id,
                guild_id=granted.guild_id,
                channel_id=granted.channel_id,
                client_locale=granted.locale,
                role_ids=granted.role_ids,
                is_admin=granted.is_admin,
                parent_channel_id=granted.parent_channel_id,
            )
            turn = await self.button_turn(turn.id, requester)
            image = await self.turn_image(turn)
            if image is None:
                raise BotError("studio.parent_image_missing")
            width, height = images.image_size(image)
            mask = await asyncio.to_thread(
                webstudio.painted_layer_mask,
                layer,
                width,
                height,
                max_bytes=self.input_limits.max_bytes,
                max_pixels=self.input_limits.max_pixels,
            )
            spec = JobSpec(
                kind=JobKind.REGION,
                prompt=prompt,
                options=turn.options,
                mask=mask,
                parent=ParentMode.RESPONSE,
                parent_response_id=turn.response_id,
                parent_turn_id=turn.id,
            )
            job = await self.submit(self.check(spec, requester))
        except BaseException:
            web.signer.refund(claims)
            raise
        web.grants.pop(claims.nonce, None)
        return job

    async def gallery(self, token: str) -> tuple[list[webstudio.TurnNode], str]:
        """The tree of a thread's images for a gallery token, and the page's language."""
        claims, requester = self._claims(token, tokens.Purpose.GALLERY)
        turns = await self._store.list_turns(claims.subject, limit=webstudio.GALLERY_TURNS)
        return webstudio.turn_tree(turns), requester.locale

    async def gallery_image(self, token: str, turn_id: int, *, thumb: bool) -> tuple[bytes, str]:
        """One image of a gallery's thread (bytes, format), from the database."""
        claims, _requester = self._claims(token, tokens.Purpose.GALLERY)
        turn = await self._store.get_turn(turn_id) if 0 < turn_id <= MAX_ROW_ID else None
        if turn is None or turn.channel_id != claims.subject:
            raise tokens.TokenError("not in this gallery")
        saved = await self._store.get_turn_image(turn.id)
        if saved is None:
            raise BotError("studio.parent_image_missing")
        data, fmt = saved
        if thumb:
            return await asyncio.to_thread(webstudio.thumbnail, data), "png"
        return data, fmt

    async def readiness(self) -> dict[str, bool]:
        """Whether the database answers and the queue takes jobs (for /readyz)."""
        try:
            async with asyncio.timeout(2.0):
                await self._store.count_active_jobs()
            database = True
        except Exception:
            log.warning("readiness: the database did not answer", exc_info=True)
            database = False
        return {"database": database, "queue": not self._queue.closing and not self._closing}
