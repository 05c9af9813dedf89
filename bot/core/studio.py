"""The studio: conversation rules, the durable job queue, budgets, and recording each turn.

The Discord layer hands it jobs and a way to show them (a `TurnSink` per job); the studio
decides when each job runs, what it continues from, and what it costs.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.core.costs import PriceTable
from bot.core.errors import BadInput, BotError, FailureKind
from bot.core.events import Completed, Failed, Partial, Queued, Started
from bot.core.options import (
    ImageOptions,
    InputImage,
    TurnRequest,
    validate_options,
    validate_request,
)
from bot.core.runner import TurnRunner
from storage.base import (
    Conversation,
    Job,
    JobStatus,
    NewJob,
    NewTurn,
    NewUsageEntry,
    Store,
    Turn,
    TurnStatus,
)

log = logging.getLogger(__name__)

MAX_PENDING_PER_USER = 5
CONTINUE_POLICIES = ("anyone", "author", "role")


class TurnSink(Protocol):
    """Shows one job's progress to people (a Discord thread, a terminal)."""

    async def queued(self, position: int) -> None: ...

    async def started(self, event: Started) -> None: ...

    async def partial(self, event: Partial) -> None: ...

    async def completed(self, event: Completed, turn: Turn) -> tuple[int | None, str | None]:
        """Show the final image; returns the message id and image URL it was posted as."""
        ...

    async def failed(self, event: Failed, job: Job) -> None: ...


SinkFactory = Callable[[Job], Awaitable[TurnSink]]


class ImageFetcher(Protocol):
    """Loads the final image of an earlier turn (from wherever it was posted)."""

    async def fetch_turn_image(self, turn: Turn) -> bytes | None: ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Budgets and concurrency; a server's /config can tighten the money limits."""

    global_concurrency: int = 4
    user_concurrency: int = 1
    user_daily_usd: float | None = None
    user_daily_images: int | None = None
    guild_monthly_usd: float | None = None
    guild_monthly_images: int | None = None


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks, and where."""

    user_id: int
    guild_id: int | None
    channel_id: int
    locale: str = "en"
    role_ids: tuple[int, ...] = ()
    is_admin: bool = False


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything a job needs to run, also after a restart (it is stored as the job payload)."""

    kind: str
    prompt: str
    options: Mapping[str, object] = field(default_factory=dict)
    images: tuple[InputImage, ...] = ()
    mask: bytes | None = None
    mask_cells: tuple[int, ...] = ()
    # "latest": continue the conversation's latest response when the job starts;
    # "response": continue `parent_response_id` (a reply, a button); "none": start fresh.
    parent: str = "latest"
    parent_response_id: str | None = None
    parent_turn_id: int | None = None
    engine: str | None = None

    def to_payload(self) -> dict[str, object]:
        """A JSON-ready dict (images as base64)."""
        return {
            "kind": self.kind,
            "prompt": self.prompt,
            "options": dict(self.options),
            "images": [
                {
                    "filename": i.filename,
                    "mime": i.mime,
                    "sha256": i.sha256,
                    "width": i.width,
                    "height": i.height,
                    "b64": base64.b64encode(i.data).decode(),
                }
                for i in self.images
            ],
            "mask": base64.b64encode(self.mask).decode() if self.mask else None,
            "mask_cells": list(self.mask_cells),
            "parent": self.parent,
            "parent_response_id": self.parent_response_id,
            "parent_turn_id": self.parent_turn_id,
            "engine": self.engine,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> JobSpec:
        """The spec stored in a job payload."""
        return cls(
            kind=str(payload["kind"]),
            prompt=str(payload["prompt"]),
            options=dict(payload.get("options") or {}),
            images=tuple(
                InputImage(
                    data=base64.b64decode(i["b64"]),
                    mime=i["mime"],
                    filename=i["filename"],
                    sha256=i["sha256"],
                    width=int(i.get("width") or 0),
                    height=int(i.get("height") or 0),
                )
                for i in payload.get("images") or []
            ),
            mask=base64.b64decode(payload["mask"]) if payload.get("mask") else None,
            mask_cells=tuple(int(c) for c in payload.get("mask_cells") or []),
            parent=str(payload.get("parent") or "latest"),
            parent_response_id=payload.get("parent_response_id"),
            parent_turn_id=payload.get("parent_turn_id"),
            engine=payload.get("engine"),
        )


def user_hash(user_id: int) -> str:
    """A stable, non-reversible id for OpenAI's `safety_identifier`."""
    return hashlib.sha256(f"discord:{user_id}".encode()).hexdigest()


def day_start(now: float) -> float:
    """Midnight UTC of the day of `now`."""
    d = datetime.fromtimestamp(now, UTC)
    return datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()


def month_start(now: float) -> float:
    """The first day of the month of `now`, at midnight UTC."""
    d = datetime.fromtimestamp(now, UTC)
    return datetime(d.year, d.month, 1, tzinfo=UTC).timestamp()


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
    """Remember a finished turn (so it can be continued) and charge its usage to the ledger."""
    turn = await store.add_turn(
        NewTurn(
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
        )
    )
    await store.record_usage(
        NewUsageEntry(
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
    )
    return turn


@dataclass
class _Waiting:
    job: Job
    sink: TurnSink
    position: int = 0


class Studio:
    """Runs image jobs: in order per conversation, within budgets and concurrency limits."""

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
    ) -> None:
        self.store = store
        self.runner = runner
        self.prices = prices
        self.defaults = defaults
        self.engine = engine
        self.limits = limits or Limits()
        self._sink_factory = sink_factory
        self._fetcher = fetcher
        self._clock = clock
        self._waiting: list[_Waiting] = []
        self._running_by_user: dict[int, int] = {}
        self._busy_channels: set[int] = set()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._finishing: set[asyncio.Future[None]] = set()
        self._closing = False

    # --- configuration ------------------------------------------------------------------

    async def guild_config(self, guild_id: int | None) -> dict[str, Any]:
        """A server's /config (empty for DMs)."""
        return dict(await self.store.get_guild_config(guild_id)) if guild_id else {}

    async def resolve_options(
        self, requester: Requester, overrides: Mapping[str, object] | None = None
    ) -> ImageOptions:
        """Defaults, then the server's defaults, the member's /settings and this command's options."""
        config = await self.guild_config(requester.guild_id)
        options = self.defaults.merged(config.get("defaults") or {})
        if config.get("moderation"):
            options = options.merged({"moderation": config["moderation"]})
        options = options.merged(await self.store.get_user_settings(requester.user_id))
        options = options.merged(overrides or {})
        if config.get("partials_enabled") is False:
            options = options.merged({"partials": 0})
        if config.get("moderation") == "auto" and options.moderation != "auto":
            # The server asked for the stricter level; members cannot loosen it.
            options = options.merged({"moderation": "auto"})
        validate_options(options, allowed_models=config.get("allowed_models") or None)
        return options

    async def engine_for(self, guild_id: int | None) -> str:
        """The engine a server uses."""
        config = await self.guild_config(guild_id)
        return str(config.get("engine") or self.engine)

    async def check_channel(self, requester: Requester, parent_channel_id: int | None) -> None:
        """BadInput when the server allows image commands elsewhere only."""
        config = await self.guild_config(requester.guild_id)
        allowed = config.get("allowed_channels") or []
        if not allowed:
            return
        if requester.channel_id in allowed or (parent_channel_id in allowed):
            return
        raise BadInput("studio.channel_not_allowed", channels=", ".join(f"<#{c}>" for c in allowed))

    async def may_continue(self, conversation: Conversation, requester: Requester) -> bool:
        """Whether `requester` may add turns to (or press buttons in) `conversation`."""
        if requester.is_admin or conversation.owner_id == requester.user_id:
            return True
        config = await self.guild_config(conversation.guild_id)
        policy = config.get("continue_policy") or "anyone"
        if policy == "author":
            return False
        if policy == "role":
            role = config.get("continue_role_id")
            return role is not None and int(str(role)) in requester.role_ids
        return True

    # --- budgets ------------------------------------------------------------------------

    async def effective_limits(self, guild_id: int | None) -> Limits:
        """The settings' limits, tightened (never loosened) by the server's /config."""
        config = await self.guild_config(guild_id)
        limits = self.limits
        changes: dict[str, Any] = {}
        for name in (
            "user_daily_usd",
            "user_daily_images",
            "guild_monthly_usd",
            "guild_monthly_images",
        ):
            value = config.get(name)
            if value is None:
                continue
            current = getattr(limits, name)
            changes[name] = value if current is None else min(current, value)
        return dataclasses.replace(limits, **changes)

    async def check_budget(self, requester: Requester, estimate: float) -> None:
        """BotError when this turn would go over a budget (checked before anything is sent)."""
        limits = await self.effective_limits(requester.guild_id)
        now = self._clock()
        if limits.user_daily_usd is not None or limits.user_daily_images is not None:
            used = await self.store.usage_totals(since=day_start(now), user_id=requester.user_id)
            if limits.user_daily_images is not None and used.images + 1 > limits.user_daily_images:
                raise BotError(
                    "fail.budget_user_images", used=used.images, limit=limits.user_daily_images
                )
            if (
                limits.user_daily_usd is not None
                and used.cost_usd + estimate > limits.user_daily_usd
            ):
                raise BotError(
                    "fail.budget_user_usd",
                    used=used.cost_usd,
                    limit=limits.user_daily_usd,
                    estimate=estimate,
                )
        if requester.guild_id is not None and (
            limits.guild_monthly_usd is not None or limits.guild_monthly_images is not None
        ):
            used = await self.store.usage_totals(
                since=month_start(now), guild_id=requester.guild_id
            )
            if (
                limits.guild_monthly_images is not None
                and used.images + 1 > limits.guild_monthly_images
            ):
                raise BotError(
                    "fail.budget_guild_images", used=used.images, limit=limits.guild_monthly_images
                )
            if (
                limits.guild_monthly_usd is not None
                and used.cost_usd + estimate > limits.guild_monthly_usd
            ):
                raise BotError(
                    "fail.budget_guild_usd", used=used.cost_usd, limit=limits.guild_monthly_usd
                )

    # --- jobs ---------------------------------------------------------------------------

    async def precheck(self, spec: JobSpec, requester: Requester) -> JobSpec:
        """The spec with its options resolved; BotError (nothing spent) when it cannot run."""
        options = await self.resolve_options(requester, spec.options)
        engine = spec.engine or await self.engine_for(requester.guild_id)
        spec = dataclasses.replace(spec, options=options.as_dict(), engine=engine)
        continues = spec.parent_response_id or (spec.parent == "latest" and spec.kind != "imagine")
        validate_request(
            TurnRequest(
                prompt=spec.prompt,
                options=options,
                images=spec.images,
                mask=spec.mask,
                previous_response_id=spec.parent_response_id or ("latest" if continues else None),
            )
        )
        pending = await self.store.count_active_jobs(requester.user_id)
        if pending >= MAX_PENDING_PER_USER:
            raise BotError("fail.too_many_jobs", count=pending)
        inputs = len(spec.images) + (1 if continues else 0)
        estimate = self.prices.estimate(
            options, prompt=spec.prompt, input_images=inputs, engine=engine
        )
        await self.check_budget(requester, estimate)
        return spec

    async def submit(
        self, spec: JobSpec, requester: Requester, *, progress_message_id: int | None = None
    ) -> Job:
        """Check and store a job, then schedule it; BotError (nothing spent) when it cannot run."""
        spec = await self.precheck(spec, requester)
        job = await self.store.enqueue_job(
            NewJob(
                kind=spec.kind,
                guild_id=requester.guild_id,
                channel_id=requester.channel_id,
                user_id=requester.user_id,
                payload=spec.to_payload(),
                locale=requester.locale,
            )
        )
        if progress_message_id is not None:
            await self.store.set_job_progress_message(job.id, progress_message_id)
            job = dataclasses.replace(job, progress_message_id=progress_message_id)
        await self._enqueue(job)
        return job

    async def retry(self, job_id: int) -> Job | None:
        """Queue a failed or interrupted job again."""
        job = await self.store.requeue_job(job_id)
        if job is not None:
            await self._enqueue(job)
        return job

    async def recover(self) -> tuple[list[Job], list[Job]]:
        """At start-up: report jobs that were running as interrupted, and resume queued ones."""
        interrupted = []
        for job in await self.store.interrupt_running_jobs():
            if job.progress_message_id is not None and (
                await self.store.get_turn_by_message(job.progress_message_id)
            ):
                # The final image was posted just before the stop: the job is done.
                await self.store.finish_job(job.id, JobStatus.DONE)
                continue
            interrupted.append(job)
        for job in interrupted:
            sink = await self._sink_factory(job)
            try:
                await sink.failed(Failed(FailureKind.INTERRUPTED, "fail.interrupted"), job)
            except Exception:
                log.exception("could not report interrupted job %s", job.id)
        queued = await self.store.queued_jobs()
        for job in queued:
            await self._enqueue(job)
        return interrupted, queued

    async def _enqueue(self, job: Job) -> None:
        sink = await self._sink_factory(job)
        self._waiting.append(_Waiting(job=job, sink=sink))
        await self._pump()

    async def _pump(self) -> None:
        """Start every waiting job that may run now; tell the others their new position."""
        if self._closing:
            return
        still: list[_Waiting] = []
        for waiting in self._waiting:
            job = waiting.job
            can_run = (
                self._running < self.limits.global_concurrency
                and self._running_by_user.get(job.user_id, 0) < self.limits.user_concurrency
                and job.channel_id not in self._busy_channels
            )
            if can_run:
                self._running += 1
                self._running_by_user[job.user_id] = self._running_by_user.get(job.user_id, 0) + 1
                self._busy_channels.add(job.channel_id)
                task = asyncio.create_task(self._run(waiting), name=f"job-{job.id}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                still.append(waiting)
        self._waiting = still
        for position, waiting in enumerate(self._waiting, start=1):
            if waiting.position != position:
                waiting.position = position
                try:
                    await waiting.sink.queued(position)
                except Exception:
                    log.exception("could not show the queue position of job %s", waiting.job.id)

    async def _run(self, waiting: _Waiting) -> None:
        job = waiting.job
        try:
            if not await self.store.start_job(job.id):
                return
            await self._execute(job, waiting.sink)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job %s crashed", job.id)
            await self.store.finish_job(job.id, JobStatus.FAILED, error=repr(exc))
            try:
                await waiting.sink.failed(
                    Failed(FailureKind.TRANSIENT, "fail.transient", detail=repr(exc)), job
                )
            except Exception:
                log.exception("could not report the failure of job %s", job.id)
        finally:
            self._running -= 1
            self._running_by_user[job.user_id] -= 1
            self._busy_channels.discard(job.channel_id)
            if not self._closing:
                await self._pump()

    async def _parent_turn(self, spec: JobSpec, conversation: Conversation | None) -> Turn | None:
        if spec.parent == "none":
            return None
        if spec.parent_turn_id is not None:
            return await self.store.get_turn(spec.parent_turn_id)
        if spec.parent == "response" and spec.parent_response_id:
            return await self.store.get_turn_by_response(spec.parent_response_id)
        if conversation is not None and conversation.latest_response_id:
            return await self.store.get_turn_by_response(conversation.latest_response_id)
        return None

    async def _turn_image(self, turn: Turn | None) -> InputImage | None:
        if turn is None or self._fetcher is None:
            return None
        data = await self._fetcher.fetch_turn_image(turn)
        if data is None:
            return None
        fmt = str(turn.options.get("format") or "png")
        return InputImage(
            data=data,
            mime=f"image/{fmt}",
            filename=f"parent.{fmt}",
            sha256=hashlib.sha256(data).hexdigest(),
        )

    async def build_request(self, job: Job) -> tuple[TurnRequest, str, Turn | None]:
        """The request a job sends, resolving its parent at the moment it starts."""
        spec = JobSpec.from_payload(job.payload)
        engine = spec.engine or self.engine
        conversation = await self.store.get_conversation(job.channel_id)
        parent = await self._parent_turn(spec, conversation)
        previous: str | None = None
        if spec.parent == "response":
            previous = spec.parent_response_id or (parent.response_id if parent else None)
        elif spec.parent == "latest" and conversation is not None:
            previous = conversation.latest_response_id
        parent_image: InputImage | None = None
        mask = spec.mask
        needs_image = engine == "images" or spec.kind in ("vary", "region")
        if previous is not None and needs_image:
            parent_image = await self._turn_image(parent)
        if spec.mask_cells and parent_image is not None:
            from bot.core.images import grid_mask, image_size

            width, height = image_size(parent_image.data)
            mask = await asyncio.to_thread(grid_mask, width, height, spec.mask_cells)
        if engine == "images" and previous is not None and parent_image is None:
            raise BadInput("studio.parent_image_missing")
        request = TurnRequest(
            prompt=spec.prompt,
            options=ImageOptions().merged(spec.options),
            images=spec.images,
            mask=mask,
            previous_response_id=previous if engine == "responses" else None,
            parent_image=parent_image if (engine == "images" or spec.kind == "region") else None,
            parent_prompt=parent.prompt if parent else None,
            user_hash=user_hash(job.user_id),
        )
        return request, engine, parent

    async def _execute(self, job: Job, sink: TurnSink) -> None:
        try:
            request, engine, parent = await self.build_request(job)
        except BotError as exc:
            await self.store.finish_job(job.id, JobStatus.FAILED, error=exc.key)
            await sink.failed(Failed(FailureKind.BAD_REQUEST, exc.key, dict(exc.params)), job)
            return

        async def reseed() -> tuple[InputImage, str] | None:
            turn = parent or await self.store.latest_turn(job.channel_id)
            image = await self._turn_image(turn)
            return (image, turn.prompt) if image is not None and turn is not None else None

        async for event in self.runner.run(request, engine=engine, reseed=reseed):
            if isinstance(event, Queued):
                await sink.queued(event.position)
            elif isinstance(event, Started):
                await sink.started(event)
            elif isinstance(event, Partial):
                await sink.partial(event)
            elif isinstance(event, Completed):
                # Once the image exists, posting and recording it must not be cut in half by a
                # shutdown: the finishing work runs to its end even if the job is cancelled.
                finishing = asyncio.ensure_future(self._complete(job, sink, request, event))
                self._finishing.add(finishing)
                finishing.add_done_callback(self._finishing.discard)
                await asyncio.shield(finishing)
                return
            else:
                await self.store.finish_job(job.id, JobStatus.FAILED, error=event.kind.value)
                await sink.failed(event, job)
                return

    async def _complete(
        self, job: Job, sink: TurnSink, request: TurnRequest, done: Completed
    ) -> None:
        spec = JobSpec.from_payload(job.payload)
        turn = await record_turn(
            self.store,
            done,
            options=request.options,
            prompt=spec.prompt,
            parent_response_id=request.previous_response_id or spec.parent_response_id,
            channel_id=job.channel_id,
            guild_id=job.guild_id,
            user_id=job.user_id,
        )
        message_id, url = await sink.completed(done, turn)
        if message_id is not None:
            await self.store.set_turn_message(turn.id, message_id, url)
        if done.response_id is not None:
            await self.store.advance_conversation(
                job.channel_id, response_id=done.response_id, message_id=message_id
            )
        await self.store.finish_job(job.id, JobStatus.DONE)

    async def wait_idle(self) -> None:
        """Wait until no job runs (tests, shutdown); wrap in asyncio.timeout for a deadline."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self, grace: float = 5.0) -> None:
        """Stop starting jobs; give running ones `grace` seconds, then cancel them.

        A cancelled job stays `running` in storage and is reported as interrupted (with Retry)
        at the next start; one whose image already arrived is posted and recorded first.
        """
        self._closing = True
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*list(self._finishing), return_exceptions=True)

    @property
    def running(self) -> int:
        """How many jobs run now."""
        return self._running

    def waiting_jobs(self) -> Sequence[Job]:
        """The jobs waiting to run, in order."""
        return [w.job for w in self._waiting]
