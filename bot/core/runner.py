"""The turn runner: streams one conversation turn and yields typed events to a sink."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bot.core.costs import PriceTable, estimate_usage
from bot.core.errors import FailureKind
from bot.core.events import (
    Completed,
    Failed,
    Partial,
    ResponseCreated,
    Started,
    TurnEvent,
    TurnFailure,
    Usage,
)
from bot.core.options import ImageOptions, InputImage, TurnRequest

log = logging.getLogger(__name__)


class ImageBackend(Protocol):
    """What the runner needs from the OpenAI adapter."""

    async def upload_file(self, image: InputImage) -> str: ...

    def stream_responses(
        self, request: TurnRequest, *, file_ids: dict[str, str] | None = None
    ) -> AsyncIterator[ResponseCreated | Partial | Completed | Failed]: ...

    async def finished_image(self, response_id: str, options: ImageOptions) -> Completed | None: ...

    def stream_images(
        self, request: TurnRequest
    ) -> AsyncIterator[Partial | Completed | Failed]: ...

    async def images_many(self, request: TurnRequest, n: int) -> list[Completed] | Failed: ...


class FileCache(Protocol):
    """Where uploaded Files API ids are remembered by content hash."""

    async def get_uploaded_file(self, sha256: str) -> str | None: ...

    async def put_uploaded_file(self, sha256: str, file_id: str, size: int) -> None: ...


# Loads the image (and its prompt) to re-seed a turn whose conversation OpenAI has forgotten.
ReseedSource = Callable[[], Awaitable[tuple[InputImage, str] | None]]

RESEED_PROMPT = (
    "Continue from the attached image, which was made from this prompt: {parent}\n\nNow: {prompt}"
)


@dataclass(frozen=True, slots=True)
class RunnerConfig:
    """How the runner behaves around the API."""

    use_files_api: bool = False
    rate_limit_retries: int = 2
    max_retry_wait: float = 30.0
    default_retry_wait: float = 2.0


class TurnRunner:
    """Runs turns against one backend, with the same events for both engines."""

    def __init__(
        self,
        backend: ImageBackend,
        prices: PriceTable,
        *,
        files: FileCache | None = None,
        config: RunnerConfig | None = None,
    ) -> None:
        self._backend = backend
        self._prices = prices
        self._files = files
        self._config = config or RunnerConfig()

    async def _file_ids(self, request: TurnRequest) -> dict[str, str]:
        """Upload each input image once, reusing ids cached by content hash."""
        if not self._config.use_files_api or self._files is None:
            return {}
        ids: dict[str, str] = {}
        images = [*request.images, *([request.parent_image] if request.parent_image else [])]
        for image in images:
            cached = await self._files.get_uploaded_file(image.sha256)
            if cached is None:
                cached = await self._backend.upload_file(image)
                await self._files.put_uploaded_file(image.sha256, cached, len(image.data))
            ids[image.sha256] = cached
        return ids

    def _engine_stream(
        self, request: TurnRequest, engine: str, file_ids: dict[str, str]
    ) -> AsyncIterator[ResponseCreated | Partial | Completed | Failed]:
        if engine == "images":
            return self._backend.stream_images(request)
        return self._backend.stream_responses(request, file_ids=file_ids)

    def _priced(
        self, done: Completed, request: TurnRequest, engine: str, reseeded: bool
    ) -> Completed:
        usage = done.usage
        if usage == Usage() or usage.image_output_tokens == 0:
            inputs = len(request.images) + (1 if request.parent_image else 0)
            estimate = estimate_usage(
                request.options, prompt=request.prompt, input_images=inputs, engine=engine
            )
            if usage == Usage():
                # The stream ended before the usage arrived: charge the estimate, not nothing.
                usage = estimate
            else:
                # An image was made but its tokens went unreported (e.g. a response that ended
                # early without `tool_usage`): charge the image part at the estimate.
                usage = dataclasses.replace(
                    usage,
                    image_input_tokens=estimate.image_input_tokens,
                    image_input_text_tokens=estimate.image_input_text_tokens,
                    image_output_tokens=estimate.image_output_tokens,
                )
        cost = self._prices.cost(usage, model=request.options.model, engine=engine)
        return dataclasses.replace(done, usage=usage, cost=cost, reseeded=reseeded)

    async def finished(self, response_id: str, options: ImageOptions) -> Completed | None:
        """The priced image of a response that completed while its stream was lost, or None."""
        done = await self._backend.finished_image(response_id, options)
        if done is None:
            return None
        request = TurnRequest(prompt="", options=options)
        return self._priced(done, request, "responses", reseeded=False)

    async def run(
        self, request: TurnRequest, *, engine: str = "responses", reseed: ReseedSource | None = None
    ) -> AsyncIterator[TurnEvent]:
        """Stream one turn: Started, Partial*, then exactly one Completed or Failed."""
        reseeded = False
        attempt = 0
        try:
            file_ids = await self._file_ids(request)
        except TurnFailure as exc:
            yield exc.failed
            return
        yield Started(engine=engine, model=request.options.model)
        while True:
            partials = 0
            retry: Failed | None = None
            async for event in self._engine_stream(request, engine, file_ids):
                if isinstance(event, ResponseCreated):
                    yield event
                elif isinstance(event, Partial):
                    partials += 1
                    yield event
                elif isinstance(event, Completed):
                    yield self._priced(event, request, engine, reseeded)
                    return
                else:
                    retry = event
                    break
            failed = retry or Failed(FailureKind.TRANSIENT, "fail.stream_cut")
            if failed.kind is FailureKind.CONTEXT_EXPIRED and not reseeded:
                source = await reseed() if reseed is not None else None
                if source is not None:
                    image, parent_prompt = source
                    log.info(
                        "previous response %s is gone; re-seeding", request.previous_response_id
                    )
                    request = dataclasses.replace(
                        request,
                        previous_response_id=None,
                        parent_image=image,
                        parent_prompt=parent_prompt,
                        prompt=RESEED_PROMPT.format(parent=parent_prompt, prompt=request.prompt),
                    )
                    reseeded = True
                    yield Started(engine=engine, model=request.options.model, reseeded=True)
                    continue
            if (
                failed.kind is FailureKind.RATE_LIMITED
                and partials == 0
                and attempt < self._config.rate_limit_retries
            ):
                attempt += 1
                wait = min(
                    failed.retry_after or self._config.default_retry_wait,
                    self._config.max_retry_wait,
                )
                log.info("rate limited; retry %d in %.1fs", attempt, wait)
                await asyncio.sleep(wait)
                continue
            yield failed
            return

    async def run_many(
        self,
        request: TurnRequest,
        *,
        count: int,
        engine: str = "responses",
        reseed: ReseedSource | None = None,
        on_created: Callable[[str], Awaitable[None]] | None = None,
        on_arrived: Callable[[], None] | None = None,
    ) -> Sequence[Completed | Failed]:
        """Draw `count` images from one request: the Image API's `n` in one call, or `count`
        Responses turns from the same parent side by side (each with its own retries and
        re-seeding). One Completed or Failed per drawing (one Failed for a refused Image API
        call). `on_created` hears each response id as OpenAI names it, `on_arrived` each image
        as it arrives.
        """
        if engine == "images":
            result = await self._backend.images_many(request, count)
            if isinstance(result, Failed):
                return [result]
            if on_arrived is not None:
                on_arrived()
            return [self._priced(done, request, engine, reseeded=False) for done in result]

        async def one() -> Completed | Failed:
            stream = self.run(request, engine=engine, reseed=reseed)
            try:
                async for event in stream:
                    if isinstance(event, ResponseCreated) and on_created is not None:
                        await on_created(event.response_id)
                    elif isinstance(event, Completed):
                        if on_arrived is not None:
                            on_arrived()
                        return event
                    elif isinstance(event, Failed):
                        return event
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            return Failed(FailureKind.TRANSIENT, "fail.stream_cut")

        results = await asyncio.gather(*(one() for _ in range(count)), return_exceptions=True)
        ended: list[Completed | Failed] = []
        for outcome in results:
            if isinstance(outcome, asyncio.CancelledError):
                raise outcome
            if isinstance(outcome, BaseException):
                log.error("one of %d drawings crashed", count, exc_info=outcome)
                outcome = Failed(FailureKind.TRANSIENT, "fail.transient", detail=repr(outcome))
            ended.append(outcome)
        return ended
