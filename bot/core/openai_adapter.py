"""The only module that knows the `openai` package: one streamed turn in, core events out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import aiohttp
import openai
from openai import AsyncOpenAI
from openai._httpx2 import request_exceptions, timeout_exceptions
from openai._streaming_cleanup import drain_response_async
from openai._vendor.httpx_aiohttp.transport import map_aiohttp_exceptions

from bot.core import logcontext
from bot.core.b64 import b64decode
from bot.core.errors import FailureKind
from bot.core.events import Completed, Failed, Partial, ResponseCreated, TurnFailure, Usage
from bot.core.images import to_data_url
from bot.core.lean_stream import LeanEvent, LeanSSEParser, Span, SpanBuffers, StreamProtocolError
from bot.core.memory_budget import ImageMemoryBudget, TurnAllowance
from bot.core.options import ImageOptions, InputImage, TurnRequest

log = logging.getLogger(__name__)

T = TypeVar("T")

MODERATION_CODES = frozenset(
    {
        "moderation_blocked",
        "content_policy_violation",
        "image_content_policy_violation",
        "bio_policy",
        "misalignment_policy_violation",
    }
)
INPUT_CODES = frozenset(
    {
        "invalid_image",
        "invalid_image_format",
        "invalid_base64_image",
        "invalid_image_url",
        "image_too_large",
        "image_too_small",
        "image_parse_error",
        "invalid_image_mode",
        "image_file_too_large",
        "unsupported_image_media_type",
        "empty_image_file",
        "invalid_prompt",
        "invalid_value",
    }
)


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """How to reach OpenAI."""

    api_key: str
    base_url: str | None = None
    # The SDK's own per-read limit: a backstop that must not fire before `stall_seconds` does,
    # because the SDK retries a request whose headers timed out (a second, billed generation).
    timeout: float = 330.0
    max_retries: int = 2
    mainline_model: str = "gpt-5.5"
    # A generation can take up to two minutes with nothing streamed (no partials): well above.
    stall_seconds: float = 300.0
    # How the SDK talks HTTP: "aiohttp" (its DefaultAioHttpClient) or "httpx2" (its default).
    transport: str = "aiohttp"


def _moderation_failed(details: Any, detail: str | None) -> Failed:
    stage = "unknown"
    categories: list[str] = []
    if isinstance(details, dict):
        stage = str(details.get("moderation_stage") or "unknown")
        categories = [str(c) for c in details.get("categories") or []]
    elif details is not None:
        stage = str(getattr(details, "moderation_stage", None) or "unknown")
        categories = [str(c) for c in getattr(details, "categories", None) or []]
    return Failed(
        FailureKind.MODERATION,
        f"fail.moderation_{stage}" if stage in ("input", "output") else "fail.moderation_unknown",
        {"categories": ", ".join(categories) or "-"},
        detail=detail,
    )


def _placed(failed: Failed, drawing: bool) -> Failed:
    """A mid-stream refusal without a stage, placed by how far the stream got.

    Input moderation runs before the image model starts; once it is drawing, a refusal is about
    the image it made.
    """
    if failed.message_key != "fail.moderation_unknown":
        return failed
    return replace(
        failed, message_key="fail.moderation_output" if drawing else "fail.moderation_input"
    )


def classify_code(code: str | None, message: str, details: Any = None) -> Failed:
    """A Failed for an error `code` found in a stream, a failed response or a failed item."""
    if code in MODERATION_CODES or details is not None:
        return _moderation_failed(details, message)
    if code == "previous_response_not_found":
        return Failed(FailureKind.CONTEXT_EXPIRED, "fail.context_expired", detail=message)
    if code == "rate_limit_exceeded":
        return Failed(FailureKind.RATE_LIMITED, "fail.rate_limited", detail=message)
    if code == "insufficient_quota":
        return Failed(FailureKind.QUOTA, "fail.quota", detail=message)
    if code in INPUT_CODES:
        return Failed(
            FailureKind.BAD_REQUEST, "fail.bad_request", {"reason": message[:300]}, detail=message
        )
    return Failed(FailureKind.TRANSIENT, "fail.transient", detail=f"{code}: {message}")


def _retry_after(exc: openai.APIStatusError) -> float | None:
    headers = exc.response.headers
    try:
        if "retry-after-ms" in headers:
            return float(headers["retry-after-ms"]) / 1000
        if "retry-after" in headers:
            return float(headers["retry-after"])
    except ValueError:
        return None
    return None


def classify_exception(exc: BaseException) -> Failed:
    """A Failed for an exception raised by the SDK (before or during a stream)."""
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        code = exc.code or body.get("code")
        message = str(body.get("message") or exc.message)
        if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
            return Failed(FailureKind.AUTH, "fail.auth", detail=message)
        if isinstance(exc, openai.RateLimitError):
            if code == "insufficient_quota" or body.get("type") == "insufficient_quota":
                return Failed(FailureKind.QUOTA, "fail.quota", detail=message)
            return Failed(
                FailureKind.RATE_LIMITED,
                "fail.rate_limited",
                detail=message,
                retry_after=_retry_after(exc),
            )
        if isinstance(exc, openai.BadRequestError):
            failed = classify_code(code, message, body.get("moderation_details"))
            if failed.kind is FailureKind.TRANSIENT:
                return Failed(
                    FailureKind.BAD_REQUEST,
                    "fail.bad_request",
                    {"reason": message[:300]},
                    detail=message,
                )
            return failed
        if exc.status_code >= 500 or exc.status_code in (408, 409):
            return Failed(FailureKind.TRANSIENT, "fail.transient", detail=message)
        return Failed(
            FailureKind.BAD_REQUEST, "fail.bad_request", {"reason": message[:300]}, detail=message
        )
    if isinstance(exc, openai.APITimeoutError | TimeoutError):
        return Failed(FailureKind.TRANSIENT, "fail.timeout", detail=type(exc).__name__)
    if isinstance(exc, openai.APIConnectionError):
        return Failed(FailureKind.TRANSIENT, "fail.connection", detail=str(exc))
    if isinstance(exc, openai.APIError):
        body = exc.body if isinstance(exc.body, dict) else {}
        return classify_code(exc.code, exc.message, body.get("moderation_details"))
    return Failed(FailureKind.TRANSIENT, "fail.transient", detail=repr(exc))


def _decode_span(span: Span) -> bytes:
    """Decode an image span and drop its text (one image, not two, stays alive)."""
    image = span.decode()
    span.release()
    return image


async def _decode(span: Span) -> bytes:
    # Off the event loop: the SIMD decoder takes ~0.2 ms for a 3.6 MB span alone, but a few ms
    # with fresh pages under load, and at 100 concurrent turns the finals come together.
    image = await asyncio.to_thread(b64decode, span.raw())
    span.release()
    return image


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _usage_from_response(response: Any) -> Usage:
    usage = _get(response, "usage")
    image_gen = _get(_get(response, "tool_usage"), "image_gen")
    details = _get(image_gen, "input_tokens_details")
    return Usage(
        input_tokens=int(_get(usage, "input_tokens", 0) or 0),
        output_tokens=int(_get(usage, "output_tokens", 0) or 0),
        image_input_tokens=int(_get(details, "image_tokens", 0) or 0),
        image_input_text_tokens=int(_get(details, "text_tokens", 0) or 0),
        image_output_tokens=int(_get(image_gen, "output_tokens", 0) or 0),
    )


def _usage_from_images(usage: Any) -> Usage:
    details = _get(usage, "input_tokens_details")
    return Usage(
        image_input_tokens=int(_get(details, "image_tokens", 0) or 0),
        image_input_text_tokens=int(_get(details, "text_tokens", 0) or 0),
        image_output_tokens=int(_get(usage, "output_tokens", 0) or 0),
    )


def _text_of(output: Any) -> str | None:
    parts: list[str] = []
    for item in output or []:
        if _get(item, "type") == "message":
            for content in _get(item, "content") or []:
                if _get(content, "type") == "output_text" and _get(content, "text"):
                    parts.append(str(_get(content, "text")))
    return "\n".join(parts) or None


def _raise_stream_error(event: LeanEvent, request: Any) -> None:
    """Raise `openai.APIError` for an event with a truthy `error`, as the SDK's stream does."""
    data = event.data
    if isinstance(data, dict) and data.get("error"):
        error = data["error"]
        message = error.get("message") if isinstance(error, dict) else None
        if not message or not isinstance(message, str):
            message = "An error occurred during streaming"
        raise openai.APIError(message=message, request=request, body=error)


def _body_chunks(raw: Any) -> AsyncIterator[bytes]:
    """The body of a streamed response as it arrives: all the connection has buffered at once.

    The SDK's aiohttp transport hands the body on in 16 KiB pieces, each through three
    generators and a timeout of ours: ~900 loop steps per turn of real-size images, and with
    decoding the largest share of the loop's time at 100 concurrent turns (py-spy of the bot
    under bench/realsize.py). Its aiohttp response is read directly when the body needs no
    decoding; anything else (a compressed body, another transport) goes the SDK's way.
    """
    http = raw.http_response
    stream = getattr(http, "stream", None)
    # httpx2's client wraps the transport's stream (BoundAsyncStream, to time the response).
    stream = getattr(stream, "_stream", stream)
    content = getattr(getattr(stream, "_aiohttp_response", None), "content", None)
    encoding = http.headers.get("content-encoding", "identity").strip().lower()
    if isinstance(content, aiohttp.StreamReader) and encoding in ("", "identity"):
        return content.iter_any().__aiter__()
    chunks: AsyncIterator[bytes] = raw.iter_bytes().__aiter__()
    return chunks


class OpenAIImageClient:
    """Streams one image turn through the Responses API or the Image API."""

    def __init__(self, config: ClientConfig, *, budget: ImageMemoryBudget | None = None) -> None:
        if not config.api_key:
            raise ValueError("an OpenAI API key is required")
        self._config = config
        self._budget = budget
        # The streams' image text is written into reused buffers (bot/core/lean_stream.py).
        self._buffers = SpanBuffers()
        http_client: Any = None
        if config.transport == "aiohttp":
            # The SDK's own aiohttp transport: the same requests, retries and errors, and the
            # body read ~9x cheaper than through its default httpx2 stack (bench/results.md).
            http_client = openai.DefaultAioHttpClient(timeout=config.timeout)
        self._client = AsyncOpenAI(
            api_key=config.api_key,
            base_url=config.base_url,
            timeout=config.timeout,
            max_retries=config.max_retries,
            http_client=http_client,
        )

    @property
    def budget(self) -> ImageMemoryBudget | None:
        """The memory budget this client's streams share (None: unbounded)."""
        return self._budget

    async def close(self) -> None:
        """Close the HTTP connections."""
        await self._client.close()

    async def upload_file(self, image: InputImage) -> str:
        """Upload an image through the Files API; returns its file id."""
        try:
            created = await self._answered(
                self._client.files.create(
                    file=(image.filename, image.data, image.mime), purpose="vision"
                )
            )
        except (openai.OpenAIError, TimeoutError) as exc:
            log.warning("file upload failed: %r", exc)
            raise TurnFailure(classify_exception(exc)) from exc
        return created.id

    async def check(self) -> str:
        """Whether the API accepts the key: a short description, or raises on refusal."""
        page = await self._client.models.list()
        return f"{len(page.data)} models visible"

    async def _answered(self, call: Awaitable[T]) -> T:
        """Await a request until its response (headers) arrives, for at most `stall_seconds`.

        The SDK's read timeout alone does not bound this: it restarts on every retry and is
        meant to be longer than a silent generation.
        """
        async with asyncio.timeout(self._config.stall_seconds):
            answered = await call
        # A streamed call answers with a raw response (`http_response`), others with `response`.
        http = getattr(answered, "http_response", None) or getattr(answered, "response", None)
        headers = getattr(http, "headers", None)
        logcontext.bind_openai_request(headers.get("x-request-id") if headers else None)
        return answered

    async def _lean(
        self, call: Any, parser: LeanSSEParser, allowance: TurnAllowance
    ) -> AsyncIterator[LeanEvent]:
        """The events of a streamed SDK call, read as raw bytes through the lean parser.

        The SDK sends the request, retries it and raises its status errors (`call` is a
        `with_streaming_response` method's context manager); only the body is read here. An
        event with a truthy `error` raises `openai.APIError` exactly as the SDK's stream does.
        Before the bytes of an image are read further, the turn reserves room in the budget.
        """
        async with contextlib.AsyncExitStack() as stack:
            raw = await self._answered(stack.enter_async_context(call))
            http = raw.http_response
            chunks = _body_chunks(raw)
            while not parser.done:
                try:
                    # aiohttp's errors as the SDK's transport maps them (read directly, they
                    # would not be httpx2's): a cut stream is a connection error, and so on.
                    with map_aiohttp_exceptions():
                        async with asyncio.timeout(self._config.stall_seconds):
                            chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    chunk = None
                except timeout_exceptions() as exc:
                    raise openai.APITimeoutError(request=http.request) from exc
                except request_exceptions() as exc:
                    raise openai.APIConnectionError(request=http.request) from exc
                if chunk is None:
                    for event in parser.finish():
                        _raise_stream_error(event, http.request)
                        yield event
                    return
                start: int | None = 0
                while start is not None:
                    for event in parser.feed(chunk, start):
                        _raise_stream_error(event, http.request)
                        yield event
                    start = parser.resume_at
                    if parser.span_opened:
                        # An image began: wait for room before reading on (TCP holds the
                        # sender); the parser paused there, the chunk's rest follows.
                        parser.span_opened = False
                        await allowance.reserve()
            if http.http_version == "HTTP/1.1":
                # Read the body's end, as the SDK does, so that the connection is reused.
                await drain_response_async(http)

    def _partial(self, span: Span, index: int, fmt: str, allowance: TurnAllowance) -> Partial:
        """A preview decoded only if someone looks at it, holding its share of the budget."""
        allowance.settle(span.length)
        budget = self._budget
        state = {"decoded": False}

        def source() -> bytes:
            state["decoded"] = True
            if budget is not None:
                budget.stats.partials_decoded += 1
            return _decode_span(span)

        lease = allowance.lease
        partial = Partial(
            index,
            format=fmt,
            source=source,
            keep=(lambda: allowance.hand_over(lease)) if lease is not None else None,
            give_back=lease.release if lease is not None else None,
        )
        allowance.attach(partial)
        # A preview dropped undecoded gives its text's buffer back too.
        weakref.finalize(partial, span.release)
        if budget is not None:
            weakref.finalize(partial, _count_dropped, budget, state)
        return partial

    # --- Responses API -----------------------------------------------------------------

    def _image_part(self, image: InputImage, file_ids: dict[str, str]) -> dict[str, Any]:
        file_id = file_ids.get(image.sha256)
        if file_id:
            return {"type": "input_image", "file_id": file_id, "detail": "auto"}
        return {
            "type": "input_image",
            "image_url": to_data_url(image.data, image.mime),
            "detail": "auto",
        }

    def responses_params(
        self, request: TurnRequest, *, file_ids: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """The keyword arguments of `responses.create` for `request`."""
        ids = file_ids or {}
        opts = request.options
        tool: dict[str, Any] = {
            "type": "image_generation",
            "model": opts.model,
            "size": opts.size,
            "quality": opts.quality,
            "output_format": opts.format,
            "background": opts.background,
            "moderation": opts.moderation,
            "partial_images": opts.partials,
        }
        if opts.compression is not None:
            tool["output_compression"] = opts.compression
        if opts.input_fidelity is not None:
            tool["input_fidelity"] = opts.input_fidelity
        if request.mask is not None:
            tool["input_image_mask"] = {"image_url": to_data_url(request.mask, "image/png")}
        images = list(request.images)
        if request.parent_image is not None:
            images.insert(0, request.parent_image)
        content: list[dict[str, Any]] = [{"type": "input_text", "text": request.prompt}]
        content += [self._image_part(image, ids) for image in images]
        params: dict[str, Any] = {
            "model": self._config.mainline_model,
            "input": [{"role": "user", "content": content}],
            "tools": [tool],
            "tool_choice": {"type": "image_generation"},
            "stream": True,
        }
        if request.previous_response_id:
            params["previous_response_id"] = request.previous_response_id
        if request.user_hash:
            params["safety_identifier"] = request.user_hash
        return params

    async def finished_image(self, response_id: str, options: ImageOptions) -> Completed | None:
        """The image of a response that finished while nobody was listening, or None.

        Used after a restart: a response whose stream the bot lost may still have completed
        (and been billed); fetching it shows the image without paying for another.
        """
        started = time.monotonic()
        try:
            response = await self._client.responses.retrieve(response_id)
        except openai.OpenAIError as exc:
            log.warning("could not fetch response %s: %r", response_id, exc)
            return None
        if _get(response, "status") != "completed":
            return None
        for item in _get(response, "output") or []:
            if _get(item, "type") == "image_generation_call" and _get(item, "result"):
                return Completed(
                    image=await asyncio.to_thread(b64decode, _get(item, "result")),
                    format=_get(item, "output_format") or options.format,
                    response_id=response_id,
                    revised_prompt=_get(item, "revised_prompt"),
                    usage=_usage_from_response(response),
                    cost=0.0,
                    text=_text_of(_get(response, "output")),
                    size=_get(item, "size"),
                    quality=_get(item, "quality"),
                    model=options.model,
                    engine="responses",
                    seconds=time.monotonic() - started,
                )
        return None

    async def stream_responses(
        self, request: TurnRequest, *, file_ids: dict[str, str] | None = None
    ) -> AsyncIterator[ResponseCreated | Partial | Completed | Failed]:
        """Run one turn through the Responses API with the image tool, yielding core events."""
        started = time.monotonic()
        opts = request.options
        response_id: str | None = None
        result: Span | None = None
        item: Any = None
        text: str | None = None
        drawing = False
        parser = LeanSSEParser(auto_skip_repeats=True, pause_at_spans=True, buffers=self._buffers)
        allowance = TurnAllowance(self._budget)
        delivered = False
        params = self.responses_params(request, file_ids=file_ids)
        # The body goes as `extra_body`: the SDK would walk it against its TypedDicts first
        # (~1 ms a turn, the largest piece of the bot's own fixed cost at 20 KB) and give back
        # the same plain JSON (tests/test_memory_downstream.py holds it to that).
        del params["stream"]
        call = self._client.responses.with_streaming_response.create(
            model=params.pop("model"), stream=True, extra_body=params
        )
        try:
            async for event in self._lean(call, parser, allowance):
                data = event.data
                kind = event.type
                if kind in ("response.created", "response.in_progress"):
                    new_id = str(_get(data.get("response"), "id"))
                    if response_id is None:
                        yield ResponseCreated(new_id)
                    response_id = new_id
                elif kind == "response.image_generation_call.generating":
                    drawing = True
                elif kind == "response.image_generation_call.partial_image":
                    drawing = True
                    span = event.span(data.get("partial_image_b64"))
                    if span is not None and not span.skipped:
                        yield self._partial(
                            span,
                            int(data.get("partial_image_index") or 0),
                            data.get("output_format") or opts.format,
                            allowance,
                        )
                elif kind == "response.output_item.done":
                    out = data.get("item") or {}
                    if out.get("type") == "image_generation_call":
                        item = out
                        span = event.span(out.get("result"))
                        if span is not None and not span.skipped:
                            result = span
                            allowance.settle(span.length)
                            # The same image comes again in response.completed: skip it there.
                            parser.skip_repeated_results = True
                    elif out.get("type") == "message":
                        text = _text_of([out]) or text
                elif kind in ("response.completed", "response.incomplete"):
                    response = data.get("response") or {}
                    response_id = str(response.get("id") or response_id)
                    for out in response.get("output") or []:
                        if _get(out, "type") == "image_generation_call":
                            span = event.span(out.get("result"))
                            if span is not None and not span.skipped:
                                result = span
                                allowance.settle(span.length)
                            elif out.get("result") and span is None:
                                log.warning("an image result that is no string: ignored")
                            item = {k: v for k, v in out.items() if k != "result"}
                    stats_skipped = parser.skipped_bytes
                    if self._budget is not None:
                        self._budget.stats.skipped_bytes += stats_skipped
                    text = _text_of(response.get("output")) or text
                    usage = _usage_from_response(response)
                    reason: str | None = None
                    if kind == "response.incomplete":
                        details = response.get("incomplete_details")
                        reason = str(_get(details, "reason") or "unknown")
                        if result is None:
                            yield self._incomplete(reason, usage)
                            return
                        # The image was made and billed before the response ended early.
                        log.warning("response %s ended early (%s)", response_id, reason)
                    if result is None:
                        yield self._no_image(item, text)
                        return
                    done = Completed(
                        image=await _decode(result),
                        format=_get(item, "output_format") or opts.format,
                        response_id=response_id,
                        revised_prompt=_get(item, "revised_prompt"),
                        usage=usage,
                        cost=0.0,
                        text=text,
                        size=_get(item, "size"),
                        quality=_get(item, "quality"),
                        model=opts.model,
                        engine="responses",
                        seconds=time.monotonic() - started,
                        incomplete_reason=reason,
                    )
                    allowance.attach(done)
                    delivered = True
                    yield done
                    return
                elif kind == "response.failed":
                    yield self._failed_response(data.get("response"))
                    return
                elif kind == "error":
                    yield _placed(
                        classify_code(data.get("code"), str(data.get("message") or "")), drawing
                    )
                    return
        except (openai.OpenAIError, TimeoutError, StreamProtocolError) as exc:
            if result is not None:
                # The image arrived before the stream broke: it counts.
                log.warning("stream ended early after the final image: %r", exc)
                done = await self._completed_without_usage(
                    result, item, response_id, text, request, started
                )
                allowance.attach(done)
                delivered = True
                yield done
                return
            log.warning("turn failed: %r", exc)
            if response_id is not None and (
                type(exc) is openai.APIConnectionError or isinstance(exc, StreamProtocolError)
            ):
                # The connection dropped after the response had started: say the stream broke.
                yield Failed(FailureKind.TRANSIENT, "fail.stream_cut", detail=repr(exc))
                return
            yield _placed(classify_exception(exc), drawing)
            return
        finally:
            allowance.finish(delivered=delivered)
        if result is not None:
            done = await self._completed_without_usage(
                result, item, response_id, text, request, started
            )
            allowance.attach(done)
            yield done
            return
        yield Failed(
            FailureKind.TRANSIENT, "fail.stream_cut", detail="stream ended without a result"
        )

    async def _completed_without_usage(
        self,
        result: Span,
        item: Any,
        response_id: str | None,
        text: str | None,
        request: TurnRequest,
        started: float,
    ) -> Completed:
        return Completed(
            image=await _decode(result),
            format=_get(item, "output_format") or request.options.format,
            response_id=response_id,
            revised_prompt=_get(item, "revised_prompt"),
            usage=Usage(),
            cost=0.0,
            text=text,
            size=_get(item, "size"),
            quality=_get(item, "quality"),
            model=request.options.model,
            engine="responses",
            seconds=time.monotonic() - started,
        )

    def _incomplete(self, reason: str, usage: Usage) -> Failed:
        """The failure for a response that ended early without an image, with what it billed."""
        if reason == "content_filter":
            failed = _moderation_failed(None, "incomplete: content_filter")
        else:
            failed = Failed(FailureKind.TRANSIENT, "fail.transient", detail=f"incomplete: {reason}")
        return replace(failed, usage=usage) if usage != Usage() else failed

    def _no_image(self, item: Any, text: str | None) -> Failed:
        error = _get(item, "error")
        if error is not None:
            return classify_code(
                _get(error, "code"),
                str(_get(error, "message", "")),
                _get(error, "moderation_details"),
            )
        return Failed(
            FailureKind.MODERATION,
            "fail.no_image",
            {"text": (text or "-")[:1500]},
            detail="no image in a completed response",
        )

    def _failed_response(self, response: Any) -> Failed:
        for out in _get(response, "output") or []:
            error = _get(out, "error")
            if _get(out, "type") == "image_generation_call" and error is not None:
                return classify_code(
                    _get(error, "code"),
                    str(_get(error, "message", "")),
                    _get(error, "moderation_details"),
                )
        error = _get(response, "error")
        return classify_code(_get(error, "code"), str(_get(error, "message", "response failed")))

    # --- Image API ---------------------------------------------------------------------

    def images_params(self, request: TurnRequest) -> tuple[str, dict[str, Any]]:
        """Which Image API call (`generate` or `edit`) and its keyword arguments."""
        opts = request.options
        params: dict[str, Any] = {
            "prompt": request.prompt,
            "model": opts.model,
            "size": opts.size,
            "quality": opts.quality,
            "output_format": opts.format,
            "background": opts.background,
            "partial_images": opts.partials,
            "stream": True,
            "n": 1,
        }
        if opts.compression is not None:
            params["output_compression"] = opts.compression
        if request.user_hash:
            params["safety_identifier"] = request.user_hash
        images = list(request.images)
        if request.parent_image is not None:
            images.insert(0, request.parent_image)
        if not images:
            params["moderation"] = opts.moderation
            return "generate", params
        files = [(image.filename, image.data, image.mime) for image in images]
        params["image"] = files if len(files) > 1 else files[0]
        if request.mask is not None:
            params["mask"] = ("mask.png", request.mask, "image/png")
        if opts.input_fidelity is not None:
            params["input_fidelity"] = opts.input_fidelity
        return "edit", params

    async def stream_images(
        self, request: TurnRequest
    ) -> AsyncIterator[Partial | Completed | Failed]:
        """Run one turn through the Image API (generate, or edit with the inputs), yielding core events."""
        started = time.monotonic()
        opts = request.options
        call_name, params = self.images_params(request)
        drawing = False
        parser = LeanSSEParser(pause_at_spans=True, buffers=self._buffers)
        allowance = TurnAllowance(self._budget)
        delivered = False
        images = self._client.images.with_streaming_response
        call = images.generate(**params) if call_name == "generate" else images.edit(**params)
        try:
            async for event in self._lean(call, parser, allowance):
                data = event.data
                kind = event.type
                span = event.span(data.get("b64_json"))
                if kind.endswith(".partial_image"):
                    drawing = True
                    if span is not None:
                        yield self._partial(
                            span,
                            int(data.get("partial_image_index") or 0),
                            data.get("output_format") or opts.format,
                            allowance,
                        )
                elif kind.endswith(".completed"):
                    if span is None:
                        break
                    allowance.settle(span.length)
                    done = Completed(
                        image=await _decode(span),
                        format=data.get("output_format") or opts.format,
                        response_id=f"img_{uuid.uuid4().hex}",
                        revised_prompt=None,
                        usage=_usage_from_images(data.get("usage")),
                        cost=0.0,
                        size=data.get("size"),
                        quality=data.get("quality"),
                        model=opts.model,
                        engine="images",
                        seconds=time.monotonic() - started,
                    )
                    allowance.attach(done)
                    delivered = True
                    yield done
                    return
                elif kind == "error":
                    failed = classify_code(data.get("code"), str(data.get("message") or ""))
                    yield _placed(failed, drawing)
                    return
        except (openai.OpenAIError, TimeoutError, StreamProtocolError) as exc:
            log.warning("image API turn failed: %r", exc)
            yield _placed(classify_exception(exc), drawing)
            return
        finally:
            allowance.finish(delivered=delivered)
        yield Failed(
            FailureKind.TRANSIENT, "fail.stream_cut", detail="stream ended without an image"
        )

    async def images_many(self, request: TurnRequest, n: int) -> list[Completed] | Failed:
        """Draw `n` images in one Image API call (its `n`), not streamed: the stream's events
        carry no image index, so previews of several images could not be told apart.

        The call's usage is shared out over the images it returned (their sum is what was
        billed); fewer images than asked means the rest made none.
        """
        started = time.monotonic()
        opts = request.options
        call_name, params = self.images_params(request)
        del params["stream"], params["partial_images"]
        params["n"] = n
        images = self._client.images
        try:
            call = images.generate(**params) if call_name == "generate" else images.edit(**params)
            reply = await self._answered(call)
        except (openai.OpenAIError, TimeoutError) as exc:
            log.warning("image API call for %d images failed: %r", n, exc)
            return _placed(classify_exception(exc), False)
        encoded = [item.b64_json for item in reply.data or [] if item.b64_json]
        if not encoded:
            return Failed(
                FailureKind.TRANSIENT, "fail.stream_cut", detail="the reply held no image"
            )
        decoded = await asyncio.gather(*(asyncio.to_thread(b64decode, text) for text in encoded))
        seconds = time.monotonic() - started
        return [
            Completed(
                image=image,
                format=reply.output_format or opts.format,
                response_id=f"img_{uuid.uuid4().hex}",
                revised_prompt=None,
                usage=share,
                cost=0.0,
                size=reply.size,
                quality=reply.quality,
                model=opts.model,
                engine="images",
                seconds=seconds,
            )
            for image, share in zip(
                decoded, split_usage(_usage_from_images(reply.usage), len(decoded)), strict=True
            )
        ]


def split_usage(usage: Usage, parts: int) -> list[Usage]:
    """`usage` shared out over `parts` images, each token counted once (the first get the rest)."""
    shares: list[dict[str, int]] = [{} for _ in range(parts)]
    for name, value in usage.as_dict().items():
        each, rest = divmod(value, parts)
        for index, share in enumerate(shares):
            share[name] = each + (1 if index < rest else 0)
    return [Usage(**share) for share in shares]


def _count_dropped(budget: ImageMemoryBudget, state: dict[str, bool]) -> None:
    """A preview was freed: count it as dropped if nobody ever decoded it."""
    if not state["decoded"]:
        budget.stats.partials_dropped += 1
