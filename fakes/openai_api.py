"""A local stand-in for the OpenAI API (Responses, Images, Files) served over real HTTP.

Point the official SDK at it with ``AsyncOpenAI(api_key="x", base_url=fake.base_url)``. It speaks
the wire format the openai 3.57 SDK expects (strict response validation passes), renders real
pictures with Pillow, keeps stored responses for ``previous_response_id``, and can be told to
misbehave in the ways the real service does:

    async with FakeOpenAI() as fake:
        fake.set_timeline(Timeline(first_partial=0.5, between_partials=0.3, final=1.0))
        fake.queue_fault(Fault("rate_limit_429"), path="/v1/responses")
        ...  # drive the bot or the SDK; inspect fake.requests, fake.sent, fake.stored_responses

Faults wait in a FIFO queue and each is consumed by the first later request that matches its
path (an exact path or an ``fnmatch`` glob; ``None`` matches any) and that it can apply to:

* ``moderation_400``, ``auth_401``, ``rate_limit_429``, ``quota_429``, ``server_500``: any
  request, answered with the error instead of running it (the SDK may retry 429/500 on its own,
  and each retry is a new request);
* ``response_failed``, ``failed_item``, ``moderation_output``: ``POST /v1/responses``,
  streamed or not (a turn without the image tool uses the fault up without effect);
* ``incomplete_after_image``, ``incomplete_before_image``: ``POST /v1/responses`` ends with
  ``response.incomplete`` (``max_output_tokens``) and the usage billed so far, after the image
  item is done or before any image is drawn;
* ``slow_headers``: any request, answered normally but only ``seconds`` after it was read, so
  the client waits for the response headers (the SDK may retry after its own read timeout);
* ``error_event_flat``, ``error_event_nested``: streamed generations (Responses or Images);
  the error event is written after ``after_events`` events and the stream then ends;
* ``cut_stream``, ``stall``: generations, streamed or not (a non-streamed call is cut or left
  silent before any reply), and ``GET /v1/responses/{id}?stream=true`` replays.

``send_fewer_partials(at_most, rng=...)`` makes streamed generations send fewer partial images
than asked (a fixed cap, or a random count per generation), as the API may.

Operators can run it standalone: ``python -m fakes.openai_api --port 8089``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import collections
import contextlib
import copy
import fnmatch
import functools
import hashlib
import itertools
import json
import logging
import random
import secrets
import string
import time
from collections.abc import AsyncGenerator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from aiohttp import BodyPartReader, ClientError, ClientSession, ClientTimeout, web

from fakes import _openai_render as render
from fakes import interruptible
from fakes._openai_render import (
    FILE_PURPOSES,
    MAX_PROMPT_CHARS,
    PARTIAL_IMAGE_TOKENS,
    ApiError,
    ImageParams,
    b64,
    bad_request,
    check_image_mime,
    echo_tool,
    fault_error,
    file_json,
    image_fields,
    image_params,
    image_usage,
    new_id,
    output_image_tokens,
    output_moderation_error,
    response_shell,
    split_deltas,
    sse_block,
    stream_error_event,
    text_tokens,
    typed_form,
)
from fakes._openai_strict import check_request

__all__ = [
    "FakeOpenAI",
    "Fault",
    "RecordedRequest",
    "SentEvent",
    "Timeline",
    "UploadedFile",
]

log = logging.getLogger(__name__)

HTTP_FAULTS = frozenset({"moderation_400", "auth_401", "rate_limit_429", "quota_429", "server_500"})
STREAM_FAULTS = frozenset({"error_event_flat", "error_event_nested", "cut_stream", "stall"})
# The item faults that fail the image itself (the incomplete ones let it finish, or never start).
FAILED_ITEM_FAULTS = frozenset({"response_failed", "failed_item", "moderation_output"})
INCOMPLETE_FAULTS = frozenset({"incomplete_after_image", "incomplete_before_image"})
ITEM_FAULTS = FAILED_ITEM_FAULTS | INCOMPLETE_FAULTS
HEADER_FAULTS = frozenset({"slow_headers"})
FAULT_KINDS = HTTP_FAULTS | STREAM_FAULTS | ITEM_FAULTS | HEADER_FAULTS


@dataclass(frozen=True)
class Timeline:
    """Delays, in seconds, that shape a generation as the client sees it.

    ``first_partial`` runs from the ``generating`` event to the first partial image,
    ``between_partials`` separates partials, and ``final`` runs from the last partial to the
    final image. Without partials (and for non-streamed calls) the final image arrives
    ``first_partial + final`` after generation starts.
    """

    first_partial: float = 0.0
    between_partials: float = 0.0
    final: float = 0.0


@dataclass(frozen=True)
class Fault:
    """One injected failure, consumed by the next request it applies to.

    ``after_events`` counts SSE events written before a stream fault strikes;
    ``retry_after_ms`` sets the ``retry-after-ms`` header of an HTTP fault (429 defaults to 10);
    ``seconds`` is how long a ``slow_headers`` fault holds the reply before its headers go out.
    """

    kind: str
    after_events: int = 0
    retry_after_ms: int | None = None
    seconds: float = 0.0

    def __post_init__(self) -> None:
        """Reject unknown kinds early, where the typo is made."""
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}"
            )


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart request."""

    filename: str
    content_type: str
    data: bytes


@dataclass(frozen=True)
class RecordedRequest:
    """A request as the fake received it (header names lower-cased, Authorization redacted)."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    json: dict[str, Any] | None
    form: dict[str, str]
    files: dict[str, list[UploadedFile]]
    at: float


class SentEvent(NamedTuple):
    """One SSE block flushed to a client; ``type`` is ``"[DONE]"`` for the end marker."""

    at: float
    request_index: int
    type: str
    partial_index: int | None


@dataclass
class _Call:
    """What the middleware learnt about a request, for its handler."""

    request_id: str
    index: int = -1
    json: dict[str, Any] | None = None
    form: dict[str, str] = field(default_factory=dict)
    files: dict[str, list[UploadedFile]] = field(default_factory=dict)
    fault: Fault | None = None


_CALL = web.RequestKey("fake_openai_call", _Call)


class _Dropped(Exception):
    """Raised after a fault closed the connection without a reply."""


@dataclass(frozen=True)
class _ImagePlan:
    """What one image generation call will draw and bill."""

    params: ImageParams
    prompt: str
    base: bytes | None
    extras: tuple[bytes, ...]
    mask: bytes | None
    input_images: int


@dataclass
class _ResponseJob:
    """A Responses API call being played out: its shell object, plan and event log."""

    shell: dict[str, Any]
    plan: _ImagePlan | None
    partials: int
    reply_text: str | None
    store: bool
    failure: str | None
    timeline: Timeline
    all_text: str
    context_base: bytes | None
    image_tokens: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)
    # How many times this very request was drawn before: the model samples, so drawing the
    # same request again (a reroll, several at once) makes another picture.
    variant: int = 0


class FakeOpenAI:
    """An aiohttp server on 127.0.0.1 that behaves like the OpenAI image APIs."""

    def __init__(self, *, prerender: bool = False) -> None:
        """Create the stand-in; ``prerender`` reuses cached pictures to spend almost no CPU."""
        self.prerender = prerender
        # How the image tool rewrites a prompt (its `revised_prompt`); unchanged by default.
        self.revise: Callable[[str], str] = lambda prompt: prompt
        self.requests: list[RecordedRequest] = []
        self._draws: collections.Counter[str] = collections.Counter()
        self.sent: list[SentEvent] = []
        self.timeline = Timeline()
        self._partial_cap: int | None = None
        self._partial_rng: random.Random | None = None
        self.reply_text: str | None = None
        self.stored_responses: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self._file_objects: dict[str, dict[str, Any]] = {}
        self._replay: dict[str, list[dict[str, Any]]] = {}
        self._context_images: dict[str, bytes | None] = {}
        self._items: dict[str, dict[str, Any]] = {}
        self._faults: list[tuple[Fault, str | None]] = []
        self._prerendered: dict[tuple[Any, ...], asyncio.Future[render.RenderedImage]] = {}
        self._request_counter = itertools.count()
        self._active: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None

    # ----- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """Return ``http://127.0.0.1:PORT/v1``, ready for ``AsyncOpenAI(base_url=...)``."""
        if self._port is None:
            raise RuntimeError("FakeOpenAI is not started")
        return f"http://127.0.0.1:{self._port}/v1"

    async def start(self, port: int = 0) -> None:
        """Start serving on 127.0.0.1 (a free port when ``port`` is 0)."""
        app = web.Application(middlewares=[self._middleware], client_max_size=1024**3)
        app.router.add_post("/v1/responses", self._create_response)
        app.router.add_get("/v1/responses/{id}", self._retrieve_response)
        app.router.add_delete("/v1/responses/{id}", self._delete_response)
        app.router.add_post("/v1/images/generations", self._images_generate)
        app.router.add_post("/v1/images/edits", self._images_edit)
        app.router.add_post("/v1/files", self._files_create)
        app.router.add_get("/v1/files/{id}", self._files_retrieve)
        app.router.add_delete("/v1/files/{id}", self._files_delete)
        app.router.add_get("/v1/files/{id}/content", self._files_content)
        app.router.add_get("/v1/models", self._models)
        # handler_cancellation: when a client hangs up, a stalled or slow handler must end too.
        runner = web.AppRunner(
            app, handler_cancellation=True, access_log=None, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port)
        await site.start()
        self._runner = runner
        self._port = int(runner.addresses[0][1])

    async def close(self) -> None:
        """Stop serving, ending stalled and delayed streams first."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        tasks = [task for task in self._active if task is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=2.0)
        await runner.cleanup()

    async def __aenter__(self) -> FakeOpenAI:
        """Start on a random port."""
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the server."""
        await self.close()

    # ----- knobs -----------------------------------------------------------------------------

    def set_timeline(self, timeline: Timeline) -> None:
        """Use these delays for every following generation."""
        self.timeline = timeline

    def send_fewer_partials(
        self, at_most: int | None = None, *, rng: random.Random | None = None
    ) -> None:
        """Send fewer partial images than asked, as the API may when the final comes first.

        Every following streamed generation sends at most ``at_most`` partials, or, with
        ``rng``, a count drawn from 0 to what was asked; the final image always comes. Both
        ``None`` restores sending exactly the number asked.
        """
        if at_most is not None and at_most < 0:
            raise ValueError("at_most must be 0 or more")
        self._partial_cap, self._partial_rng = at_most, rng

    def _partials_to_send(self, asked: int) -> int:
        """How many of the ``asked`` partial images the next generation sends."""
        count = asked
        if self._partial_cap is not None:
            count = min(count, self._partial_cap)
        if self._partial_rng is not None:
            count = self._partial_rng.randint(0, count)
        return count

    def queue_fault(self, fault: Fault, *, path: str | None = None) -> None:
        """Queue a fault for the next request it applies to (FIFO), optionally by path glob."""
        self._faults.append((fault, path))

    def forget(self, response_id: str | None = None) -> None:
        """Forget one stored response, or all of them."""
        ids = [response_id] if response_id is not None else list(self.stored_responses)
        for rid in ids:
            for item in self.stored_responses.get(rid, {}).get("output", []):
                self._items.pop(item.get("id"), None)
            self.stored_responses.pop(rid, None)
            self._replay.pop(rid, None)
            self._context_images.pop(rid, None)

    # ----- plumbing --------------------------------------------------------------------------

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Record the request, apply HTTP faults, and turn errors into API envelopes."""
        call = request[_CALL] = _Call(request_id=new_id("req_"))
        task = asyncio.current_task()
        if task is not None:
            self._active.add(task)
        try:
            try:
                await self._record(request, call)
                # Parameters are checked before anything else, as the API does: a request it
                # refuses never meets a queued fault.
                refusal = check_request(
                    request.method, request.path, call.json, call.form, call.files
                )
                if refusal is not None:
                    raise refusal
                fault = call.fault = self._take_fault(request, call)
                if fault is not None and fault.kind in HTTP_FAULTS:
                    raise fault_error(fault.kind, fault.retry_after_ms, call.request_id)
                if fault is not None and fault.kind in HEADER_FAULTS:
                    # Cancelled with the handler when the client gives up and hangs up.
                    await asyncio.sleep(fault.seconds)
                response: web.StreamResponse = await handler(request)
            except ApiError as err:
                response = self._json({"error": err.body}, request, status=err.status)
                response.headers.update(err.headers)
            except _Dropped:
                # The connection is already closed; aiohttp discards whatever is returned.
                response = web.Response()
            except web.HTTPException as exc:
                # Unknown routes and methods answer like the real API: 404 "Invalid URL".
                unrouted = isinstance(exc, web.HTTPNotFound | web.HTTPMethodNotAllowed)
                message = (
                    f"Invalid URL ({request.method} {request.path})" if unrouted else exc.reason
                )
                error = {"message": message, "type": "invalid_request_error", "param": None}
                status = 404 if unrouted else exc.status
                response = self._json({"error": error | {"code": None}}, request, status=status)
            except Exception:
                # A bug in the stand-in must still look like an API reply, and be visible.
                log.exception("FakeOpenAI failed on %s %s", request.method, request.path)
                error = {"message": "The fake server failed.", "type": "server_error"}
                body = {"error": error | {"param": None, "code": "server_error"}}
                response = self._json(body, request, status=500)
            return response
        finally:
            if task is not None:
                self._active.discard(task)

    async def _record(self, request: web.Request, call: _Call) -> None:
        """Read the body once (JSON or multipart) and append a RecordedRequest."""
        body_json: dict[str, Any] | None = None
        parse_error = False
        form: dict[str, str] = {}
        files: dict[str, list[UploadedFile]] = {}
        if request.content_type == "multipart/form-data":
            reader = await request.multipart()
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader) or part.name is None:
                    continue
                if part.filename is None:
                    form[part.name] = await part.text()
                else:
                    files.setdefault(part.name, []).append(
                        UploadedFile(
                            filename=part.filename,
                            content_type=part.headers.get(
                                "Content-Type", "application/octet-stream"
                            ),
                            data=bytes(await part.read()),
                        )
                    )
        elif request.can_read_body:
            raw = await request.read()
            try:
                parsed = json.loads(raw) if raw.strip() else None
            except ValueError:
                parse_error = True
            else:
                body_json = parsed if isinstance(parsed, dict) else None
        headers = {k.lower(): v for k, v in request.headers.items()}
        if "authorization" in headers:
            headers["authorization"] = "<redacted>"
        call.index = next(self._request_counter)
        call.json, call.form, call.files = body_json, form, files
        self.requests.append(
            RecordedRequest(
                method=request.method,
                path=request.path,
                query=dict(request.query),
                headers=headers,
                json=body_json,
                form=form,
                files=files,
                at=time.monotonic(),
            )
        )
        if parse_error:
            raise bad_request(
                "We could not parse the JSON body of your request. The OpenAI API expects a "
                "JSON payload.",
                code=None,
            )

    def _take_fault(self, request: web.Request, call: _Call) -> Fault | None:
        """Pop the first queued fault whose path matches and which makes sense here."""
        path = request.path
        body = call.json or {}
        streaming = body.get("stream") is True or call.form.get("stream", "") == "true"
        if request.method == "GET":
            streaming = request.query.get("stream") == "true"
        creates = request.method == "POST" and path == "/v1/responses"
        images = request.method == "POST" and path in ("/v1/images/generations", "/v1/images/edits")
        replay = request.method == "GET" and path.startswith("/v1/responses/") and streaming
        for i, (fault, pattern) in enumerate(self._faults):
            if pattern is not None and not fnmatch.fnmatchcase(path, pattern):
                continue
            if fault.kind in HTTP_FAULTS or fault.kind in HEADER_FAULTS:
                applies = True
            elif fault.kind in ITEM_FAULTS:
                applies = creates
            elif fault.kind in ("error_event_flat", "error_event_nested"):
                applies = streaming and (creates or images or replay)
            else:
                applies = creates or images or replay
            if applies:
                del self._faults[i]
                return fault
        return None

    def _json(
        self, payload: Mapping[str, Any], request: web.Request, *, status: int = 200
    ) -> web.Response:
        """Return a JSON reply with the exact content type and an x-request-id."""
        return web.Response(
            status=status,
            body=json.dumps(payload, separators=(",", ":")).encode(),
            content_type="application/json",
            headers={"x-request-id": request[_CALL].request_id},
        )

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        """Send the headers of an SSE reply."""
        response = web.StreamResponse(
            status=200,
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
                "x-request-id": request[_CALL].request_id,
            },
        )
        response.enable_chunked_encoding()
        await response.prepare(request)
        return response

    async def _write(
        self, response: web.StreamResponse, index: int, payload: dict[str, Any] | None
    ) -> None:
        """Write and flush one SSE block (``None`` writes ``[DONE]``) and log when it left."""
        if payload is None:
            await response.write(b"data: [DONE]\n\n")
            self.sent.append(SentEvent(time.monotonic(), index, "[DONE]", None))
            return
        await response.write(sse_block(payload))
        self.sent.append(
            SentEvent(time.monotonic(), index, payload["type"], payload.get("partial_image_index"))
        )

    async def _stream(
        self,
        request: web.Request,
        events: AsyncGenerator[dict[str, Any]],
        accept: Callable[[dict[str, Any]], None],
        *,
        images_api: bool,
        finished: bool = True,
    ) -> web.StreamResponse:
        """Relay generated events to the client, striking with a queued stream fault."""
        fault: Fault | None = request[_CALL].fault
        if fault is not None and fault.kind not in STREAM_FAULTS:
            fault = None
        response = await self._open_stream(request)
        index = request[_CALL].index
        count = 0
        async with contextlib.aclosing(events) as gen:
            while fault is None or count < fault.after_events:
                try:
                    payload = await anext(gen)
                except StopAsyncIteration:
                    break
                await self._write(response, index, payload)
                accept(payload)
                count += 1
        if fault is None:
            if finished:
                await self._write(response, index, None)
            return response
        if fault.kind == "cut_stream":
            # A FIN in the middle of a chunked body: the client sees an incomplete read.
            if request.transport is not None:
                request.transport.close()
            return response
        if fault.kind == "stall":
            await asyncio.Event().wait()
        error = stream_error_event(fault.kind, count, images_api=images_api)
        await self._write(response, index, error)
        return response

    async def _hold_or_drop(self, request: web.Request) -> None:
        """Apply a stall or cut fault to a non-streamed call before anything is sent."""
        fault: Fault | None = request[_CALL].fault
        if fault is None:
            return
        if fault.kind == "stall":
            await asyncio.Event().wait()
        if fault.kind == "cut_stream":
            if request.transport is not None:
                request.transport.close()
            raise _Dropped

    async def _sleep_until(self, deadline: float) -> None:
        """Sleep until a loop-clock deadline (no-op when it has passed)."""
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    async def _render(
        self, plan: _ImagePlan, partials: int, variant: int = 0
    ) -> render.RenderedImage:
        """Render a plan in a worker thread, or take the prerendered picture."""
        p = plan.params
        if self.prerender:
            kind = "edit" if plan.base is not None else "generate"
            key = (p.width, p.height, p.output_format, p.compression, p.transparent, kind)
            cached = self._prerendered.get(key)
            if cached is None:
                # Concurrent misses share one render: a benchmark's first burst stays cheap.
                cached = self._prerendered[key] = asyncio.ensure_future(
                    asyncio.to_thread(
                        render.render_generic,
                        p.width,
                        p.height,
                        p.output_format,
                        p.compression,
                        p.transparent,
                        kind,
                    )
                )
            try:
                return await asyncio.shield(cached)
            except Exception:
                self._prerendered.pop(key, None)
                raise
        return await asyncio.to_thread(
            render.render,
            render.RenderRequest(
                width=p.width,
                height=p.height,
                output_format=p.output_format,
                compression=p.compression,
                transparent=p.transparent,
                prompt=plan.prompt,
                variant=variant,
                base=plan.base,
                extras=plan.extras,
                mask=plan.mask,
                partials=partials,
                frame_count=p.frame_count,
            ),
        )

    async def _probe(self, data: bytes, param: str, type_: str) -> render.ImageInfo:
        """Check that bytes are an image, raising the API's 400 when they are not."""
        try:
            return await asyncio.to_thread(render.probe, data)
        except render.InvalidImage as exc:
            message = f"Invalid image file for '{param}': {exc}. Use png, jpeg or webp."
            raise bad_request(message, param, "invalid_image_format", type_) from exc

    async def _check_mask(self, mask: bytes, base: bytes, param: str, type_: str) -> None:
        """Reject masks without alpha or whose size differs from the image they apply to."""
        mask_info = await self._probe(mask, param, type_)
        base_info = await self._probe(base, "image", type_)
        if not mask_info.has_alpha:
            message = "Invalid mask image: the mask must have an alpha channel (RGBA or LA)."
            raise bad_request(message, param, type_=type_)
        if (mask_info.width, mask_info.height) != (base_info.width, base_info.height):
            raise bad_request(
                f"Invalid mask image: its size {mask_info.width}x{mask_info.height} must match "
                f"the image size {base_info.width}x{base_info.height}.",
                param,
                type_=type_,
            )

    async def _resolve_image(self, spec: Mapping[str, Any], param: str) -> bytes:
        """Load an image referenced by ``file_id`` or ``image_url`` (data URL or http URL)."""
        file_id = spec.get("file_id")
        url = spec.get("image_url")
        if isinstance(file_id, str) and file_id:
            if file_id not in self.files:
                raise bad_request(f"File '{file_id}' not found.", param, "image_file_not_found")
            data = self.files[file_id]
        elif isinstance(url, str) and url:
            data = await self._download(url, param)
        else:
            message = "An input image needs either 'image_url' or 'file_id'."
            raise bad_request(message, param, "missing_required_parameter")
        await self._probe(data, param, "invalid_request_error")
        return data

    async def _download(self, url: str, param: str) -> bytes:
        """Decode a data URL, or fetch an http(s) URL as the real service would."""
        if url.startswith("data:"):
            header, sep, payload = url.partition(",")
            if sep and header.endswith(";base64"):
                with contextlib.suppress(binascii.Error, ValueError):
                    return base64.b64decode(payload, validate=True)
            raise bad_request("Invalid base64 image_url.", param, "invalid_base64_image")
        if url.startswith(("http://", "https://")):
            with contextlib.suppress(ClientError, TimeoutError):
                async with (
                    ClientSession(timeout=ClientTimeout(total=15)) as session,
                    session.get(url) as reply,
                ):
                    if reply.status == 200:
                        return await reply.read()
            raise bad_request(f"Error while downloading {url}.", param, "invalid_image_url")
        raise bad_request("Invalid image_url.", param, "invalid_image_url")

    # ----- Responses API ---------------------------------------------------------------------

    async def _collect_input(self, value: Any) -> tuple[str, str, list[bytes]]:
        """Return (text of the last user message, all input text, input images in order)."""
        if value is None or isinstance(value, str):
            return value or "", value or "", []
        if not isinstance(value, list):
            raise bad_request("Invalid type for 'input'.", "input", "invalid_type")
        prompt = ""
        texts: list[str] = []
        images: list[bytes] = []
        for item in value:
            if not isinstance(item, dict):
                raise bad_request("Invalid input item.", "input", "invalid_type")
            kind = item.get("type") or "message"
            if kind in ("image_generation_call", "item_reference"):
                ref = (
                    item
                    if kind == "image_generation_call"
                    else self._items.get(str(item.get("id")))
                )
                if ref is None:
                    raise bad_request(f"Item with id '{item.get('id')}' not found.", "input")
                if isinstance(ref.get("result"), str) and ref["result"]:
                    images.append(await self._download("data:;base64," + ref["result"], "input"))
                continue
            if kind != "message":
                continue
            role, content = item.get("role"), item.get("content")
            parts = (
                [{"type": "input_text", "text": content}] if isinstance(content, str) else content
            )
            said: list[str] = []
            for part in parts if isinstance(parts, list) else []:
                part_type = part.get("type") if isinstance(part, dict) else None
                if part_type in ("input_text", "output_text") and isinstance(part.get("text"), str):
                    said.append(part["text"])
                elif part_type == "input_image":
                    if role == "assistant":
                        message = (
                            "Invalid value: 'input_image'. Supported values are: 'output_text' "
                            "and 'refusal'."
                        )
                        raise bad_request(message, "input")
                    images.append(await self._resolve_image(part, "input"))
            texts.extend(said)
            if role == "user" and said:
                prompt = " ".join(said)
        return prompt, " ".join(texts), images

    async def _response_job(self, body: Mapping[str, Any], fault: Fault | None) -> _ResponseJob:
        """Validate a Responses request and plan what it will produce."""
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise bad_request(
                "Missing required parameter: 'model'.", "model", "missing_required_parameter"
            )
        previous = body.get("previous_response_id")
        if previous is not None and (
            not isinstance(previous, str) or previous not in self.stored_responses
        ):
            raise bad_request(
                f"Previous response with id '{previous}' not found.",
                "previous_response_id",
                "previous_response_not_found",
            )
        tools = body.get("tools") or []
        if not isinstance(tools, list):
            raise bad_request("Invalid type for 'tools'.", "tools", "invalid_type")
        echoed: list[Any] = []
        image_tool: tuple[Mapping[str, Any], ImageParams] | None = None
        for index, tool in enumerate(tools):
            if isinstance(tool, dict) and tool.get("type") == "image_generation":
                # Responses streams lifecycle events even for gif/svg, so stream=False here.
                params = image_params(
                    tool, type_="invalid_request_error", stream=False, where=f"tools[{index}]."
                )
                image_tool = image_tool or (tool, params)
                echoed.append(echo_tool(tool, params))
            else:
                echoed.append(tool)
        prompt, all_text, images = await self._collect_input(body.get("input"))
        context = self._context_images.get(previous) if isinstance(previous, str) else None
        plan: _ImagePlan | None = None
        if image_tool is not None and body.get("tool_choice") != "none":
            plan = await self._plan_tool_call(*image_tool, prompt or all_text, images, context)
        reply = self.reply_text
        if plan is None and reply is None:
            # A turn without the image tool still answers something, as the model would.
            reply = "I can draw that for you: ask for an image."
        store = body.get("store") is not False
        same = hashlib.sha256(
            json.dumps([prompt or all_text, previous], sort_keys=True).encode()
            + b"".join(hashlib.sha256(image).digest() for image in images)
        ).hexdigest()
        variant = self._draws[same]
        self._draws[same] += 1
        return _ResponseJob(
            shell=response_shell(body, model, echoed, store),
            plan=plan,
            partials=(
                self._partials_to_send(plan.params.partial_images)
                if plan and body.get("stream") is True
                else 0
            ),
            reply_text=reply,
            store=store,
            failure=fault.kind if plan and fault and fault.kind in ITEM_FAULTS else None,
            timeline=self.timeline,
            all_text=all_text,
            context_base=plan.base if plan else (images[0] if images else context),
            variant=variant,
        )

    async def _plan_tool_call(
        self,
        tool: Mapping[str, Any],
        params: ImageParams,
        prompt: str,
        images: list[bytes],
        context: bytes | None,
    ) -> _ImagePlan:
        """Decide what the image tool draws: from scratch or from the image in context."""
        base = images[0] if images else context
        extras = tuple(images[1:])
        if params.action == "edit" and base is None:
            raise bad_request("The action 'edit' needs an image in context.", "action")
        if params.action == "generate":
            base, extras = None, ()
        mask: bytes | None = None
        if isinstance(tool.get("input_image_mask"), dict):
            mask = await self._resolve_image(tool["input_image_mask"], "input_image_mask")
            if base is None:
                message = "input_image_mask needs an input image to apply to."
                raise bad_request(message, "input_image_mask")
            await self._check_mask(mask, base, "input_image_mask", "invalid_request_error")
        return _ImagePlan(
            params=params,
            prompt=prompt,
            base=base,
            extras=extras,
            mask=mask,
            input_images=len(images) + (1 if context is not None else 0),
        )

    async def _response_events(self, job: _ResponseJob) -> AsyncGenerator[dict[str, Any]]:
        """Play a Responses call out as its SSE events (reference 4.3), honouring the timeline."""
        numbers = itertools.count()

        def event(type_: str, **fields: Any) -> dict[str, Any]:
            """Build an event carrying the next sequence number."""
            return {"type": type_, "sequence_number": next(numbers), **fields}

        shell = job.shell
        yield event("response.created", response=copy.deepcopy(shell))
        yield event("response.in_progress", response=copy.deepcopy(shell))
        if job.failure == "incomplete_before_image":
            # The mainline model ran out of output tokens before calling the tool: only its
            # tokens are billed.
            _complete(job, incomplete="max_output_tokens")
            shell["tool_usage"]["image_gen"] = image_usage("", 0, 0)
            yield event("response.incomplete", response=copy.deepcopy(shell))
            return
        if job.plan is not None:
            image_events = self._image_call_events(job, job.plan, event)
            async with contextlib.aclosing(image_events) as payloads:
                async for payload in payloads:
                    yield payload
        if job.failure == "response_failed":
            shell["status"] = "failed"
            shell["error"] = {
                "code": "image_content_policy_violation",
                "message": "Your request was rejected by the safety system.",
                "param": None,
                "type": "image_generation_user_error",
            }
            yield event("response.failed", response=copy.deepcopy(shell))
            return
        if job.failure == "incomplete_after_image":
            # The answer ran out of output tokens after the tool call: the image stands.
            _complete(job, incomplete="max_output_tokens")
            yield event("response.incomplete", response=copy.deepcopy(shell))
            return
        if job.reply_text is not None:
            async with contextlib.aclosing(_message_events(job, event)) as payloads:
                async for payload in payloads:
                    yield payload
        _complete(job)
        yield event("response.completed", response=copy.deepcopy(shell))

    async def _image_call_events(
        self, job: _ResponseJob, plan: _ImagePlan, event: Callable[..., dict[str, Any]]
    ) -> AsyncGenerator[dict[str, Any]]:
        """Yield the image_generation_call item's events and add the item to the output."""
        render_task = (
            None
            if job.failure in FAILED_ITEM_FAULTS
            else asyncio.ensure_future(self._render(plan, job.partials, job.variant))
        )
        try:
            p = plan.params
            item_id = new_id("ig_")
            where = {"output_index": len(job.shell["output"]), "item_id": item_id}
            item: dict[str, Any] = {"id": item_id, "type": "image_generation_call"}
            item["status"] = "in_progress"
            yield event(
                "response.output_item.added",
                output_index=where["output_index"],
                item=item | {"result": None},
            )
            yield event("response.image_generation_call.in_progress", **where)
            yield event("response.image_generation_call.generating", **where)
            start = asyncio.get_running_loop().time()
            tl = job.timeline
            if render_task is None:
                await self._sleep_until(start + tl.first_partial)
                item |= {"status": "failed", "result": None, "error": output_moderation_error()}
            else:
                rendered = await render_task
                common = image_fields(p)
                for i, data in enumerate(rendered.partials[: job.partials]):
                    await self._sleep_until(start + tl.first_partial + i * tl.between_partials)
                    yield event(
                        "response.image_generation_call.partial_image",
                        **where,
                        partial_image_index=i,
                        partial_image_b64=b64(data),
                        **common,
                    )
                await self._sleep_until(_final_deadline(start, tl, job.partials))
                yield event("response.image_generation_call.completed", **where)
                action = "edit" if plan.base is not None else "generate"
                item |= {"status": "completed", "action": action, **common}
                revised = self.revise(plan.prompt)
                item |= {"revised_prompt": revised, "result": b64(rendered.final)}
                job.image_tokens = (
                    output_image_tokens(p.quality, p.width, p.height)
                    + PARTIAL_IMAGE_TOKENS * job.partials
                )
            yield event("response.output_item.done", output_index=where["output_index"], item=item)
            job.shell["output"].append(item)
        finally:
            if render_task is not None:
                render_task.cancel()

    def _accept(self, job: _ResponseJob, payload: dict[str, Any]) -> None:
        """Log an event that reached the client and keep stored state in step with it."""
        job.log.append(payload)
        if not job.store:
            return
        rid = job.shell["id"]
        self._replay[rid] = job.log
        response = payload.get("response")
        if response is None:
            return
        self.stored_responses[rid] = response
        if payload["type"] in ("response.completed", "response.failed", "response.incomplete"):
            latest = job.context_base
            for item in response["output"]:
                self._items[item["id"]] = item
                if item.get("type") == "image_generation_call" and item.get("result"):
                    latest = _decoded(item["result"])
            self._context_images[rid] = latest

    async def _create_response(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/responses``, streamed or not."""
        body = request[_CALL].json
        if body is None:
            raise bad_request("The request body must be a JSON object.", code=None)
        job = await self._response_job(body, request[_CALL].fault)

        def accept(payload: dict[str, Any]) -> None:
            """Keep the job's log and stored state in step with what was sent."""
            self._accept(job, payload)

        if body.get("stream") is True:
            return await self._stream(request, self._response_events(job), accept, images_api=False)
        await self._hold_or_drop(request)
        async with contextlib.aclosing(self._response_events(job)) as events:
            async for payload in events:
                accept(payload)
        return self._json(job.log[-1]["response"], request)

    async def _retrieve_response(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /v1/responses/{id}``, including the ``?stream=true`` replay."""
        rid = request.match_info["id"]
        stored = self.stored_responses.get(rid)
        if stored is None:
            raise ApiError(404, f"Response with id '{rid}' not found.", param="response_id")
        if request.query.get("stream") != "true":
            return self._json(stored, request)
        try:
            after = int(request.query.get("starting_after", "-1"))
        except ValueError as exc:
            raise bad_request("Invalid 'starting_after'.", "starting_after") from exc
        log = [e for e in self._replay.get(rid, []) if e["sequence_number"] > after]

        async def replay() -> AsyncGenerator[dict[str, Any]]:
            """Yield the logged events again, without delays."""
            for payload in log:
                yield payload

        finished = stored.get("status") != "in_progress"
        return await self._stream(request, replay(), _ignore, images_api=False, finished=finished)

    async def _delete_response(self, request: web.Request) -> web.StreamResponse:
        """Handle ``DELETE /v1/responses/{id}``."""
        rid = request.match_info["id"]
        if rid not in self.stored_responses:
            raise ApiError(404, f"Response with id '{rid}' not found.", param="response_id")
        self.forget(rid)
        return self._json({"id": rid, "object": "response", "deleted": True}, request)

    # ----- Images API ------------------------------------------------------------------------

    async def _image_events(
        self, plan: _ImagePlan, prefix: str, partials: int, tl: Timeline
    ) -> AsyncGenerator[dict[str, Any]]:
        """Yield Images API stream events (reference 4.5) for every requested image."""
        p = plan.params
        out = output_image_tokens(p.quality, p.width, p.height) + PARTIAL_IMAGE_TOKENS * partials
        usage = image_usage(plan.prompt, plan.input_images, out)
        common = image_fields(p)
        tasks = [asyncio.ensure_future(self._render(plan, partials, v)) for v in range(p.n)]
        try:
            for task in tasks:
                start = asyncio.get_running_loop().time()
                rendered = await task
                for i, data in enumerate(rendered.partials[:partials]):
                    await self._sleep_until(start + tl.first_partial + i * tl.between_partials)
                    yield {
                        "type": f"{prefix}.partial_image",
                        "b64_json": b64(data),
                        "created_at": int(time.time()),
                        "partial_image_index": i,
                        **common,
                    }
                await self._sleep_until(_final_deadline(start, tl, partials))
                yield {
                    "type": f"{prefix}.completed",
                    "b64_json": b64(rendered.final),
                    "created_at": int(time.time()),
                    **common,
                    "usage": usage,
                }
        finally:
            for task in tasks:
                task.cancel()

    async def _images(
        self,
        request: web.Request,
        values: Mapping[str, Any],
        images: list[bytes],
        mask: bytes | None,
    ) -> web.StreamResponse:
        """Run an Images API generation or edit, streamed or as one ImagesResponse."""
        prompt = values.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise bad_request(
                "Missing required parameter: 'prompt'.", "prompt", "missing_required_parameter"
            )
        if len(prompt) > MAX_PROMPT_CHARS:
            raise bad_request(
                f"Invalid 'prompt': string too long. Expected a string with maximum length "
                f"{MAX_PROMPT_CHARS}, but got a string with length {len(prompt)} instead.",
                "prompt",
                "string_above_max_length",
            )
        stream = values.get("stream") is True
        params = image_params(values, type_="image_generation_user_error", stream=stream)
        plan = _ImagePlan(
            params=params,
            prompt=prompt,
            base=images[0] if images else None,
            extras=tuple(images[1:]),
            mask=mask,
            input_images=len(images),
        )
        prefix = "image_edit" if images else "image_generation"
        if stream:
            partials = self._partials_to_send(params.partial_images)
            events = self._image_events(plan, prefix, partials, self.timeline)
            return await self._stream(request, events, _ignore, images_api=True)
        await self._hold_or_drop(request)
        async with contextlib.aclosing(self._image_events(plan, prefix, 0, self.timeline)) as gen:
            done = [payload async for payload in gen]
        per_image = output_image_tokens(params.quality, params.width, params.height)
        reply = {
            "created": int(time.time()),
            "background": params.background,
            "data": [{"b64_json": payload["b64_json"]} for payload in done],
            "output_format": params.output_format,
            "quality": params.quality,
            "size": params.size,
            "usage": image_usage(prompt, len(images), per_image * params.n),
        }
        return self._json(reply, request)

    async def _images_generate(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/images/generations`` (JSON)."""
        body = request[_CALL].json
        if body is None:
            raise bad_request("The request body must be a JSON object.", code=None)
        return await self._images(request, body, [], None)

    async def _images_edit(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/images/edits`` (multipart: image or image[], mask, fields)."""
        values = typed_form(request[_CALL].form)
        type_ = "image_generation_user_error"
        # Options are checked before the uploads, as the real endpoint reports them first.
        image_params(values, type_=type_, stream=values.get("stream") is True)
        files: dict[str, list[UploadedFile]] = request[_CALL].files
        uploads = files.get("image", []) + files.get("image[]", [])
        if not uploads:
            raise bad_request(
                "Missing required parameter: 'image'.", "image", "missing_required_parameter"
            )
        if len(uploads) > 16:
            raise bad_request("Too many images: at most 16 are accepted.", "image")
        for upload in uploads:
            check_image_mime(upload.content_type, "image")
            await self._probe(upload.data, "image", type_)
        mask: bytes | None = None
        if files.get("mask"):
            if files.get("markup"):
                raise bad_request("'mask' cannot be combined with 'markup'.", "markup")
            check_image_mime(files["mask"][0].content_type, "mask")
            mask = files["mask"][0].data
            await self._check_mask(mask, uploads[0].data, "mask", type_)
        return await self._images(request, values, [u.data for u in uploads], mask)

    # ----- Files API -------------------------------------------------------------------------

    def _file_object(self, file_id: str) -> dict[str, Any]:
        """Return the FileObject of a stored file, or raise the API's 404."""
        if file_id not in self.files:
            raise ApiError(404, f"No such File object: {file_id}", param="id")
        # Files put straight into ``self.files`` by a test get a plausible description.
        return self._file_objects.get(file_id) or file_json(
            file_id, len(self.files[file_id]), "upload", "vision", int(time.time()), None
        )

    async def _files_create(self, request: web.Request) -> web.StreamResponse:
        """Handle ``POST /v1/files`` (multipart purpose, file, expires_after[...])."""
        form: dict[str, str] = request[_CALL].form
        parts: list[UploadedFile] = request[_CALL].files.get("file", [])
        purpose = form.get("purpose")
        if not parts or purpose is None:
            name = "file" if not parts else "purpose"
            raise bad_request(
                f"Missing required parameter: '{name}'.", name, "missing_required_parameter"
            )
        if purpose not in FILE_PURPOSES:
            raise bad_request(f"Invalid value for 'purpose': '{purpose}'.", "purpose")
        created = int(time.time())
        expires_at: int | None = None
        seconds = form.get("expires_after[seconds]")
        if seconds is not None:
            if not seconds.isdigit() or not 3600 <= int(seconds) <= 2592000:
                message = "Invalid 'expires_after[seconds]': expected 3600 to 2592000."
                raise bad_request(message, "expires_after.seconds")
            expires_at = created + int(seconds)
        alphabet = string.ascii_letters + string.digits
        file_id = "file-" + "".join(secrets.choice(alphabet) for _ in range(22))
        upload = parts[0]
        self.files[file_id] = upload.data
        self._file_objects[file_id] = file_json(
            file_id, len(upload.data), upload.filename, purpose, created, expires_at
        )
        return self._json(self._file_objects[file_id], request)

    async def _models(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /v1/models`` (the models this stand-in serves, for key checks)."""
        created = int(time.time())
        data = [
            {"id": name, "object": "model", "created": created, "owned_by": "system"}
            for name in sorted({*render.IMAGE_MODELS, "gpt-5.5"})
        ]
        return self._json({"object": "list", "data": data}, request)

    async def _files_retrieve(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /v1/files/{id}``."""
        return self._json(self._file_object(request.match_info["id"]), request)

    async def _files_delete(self, request: web.Request) -> web.StreamResponse:
        """Handle ``DELETE /v1/files/{id}``."""
        file_id = request.match_info["id"]
        self._file_object(file_id)
        del self.files[file_id]
        self._file_objects.pop(file_id, None)
        return self._json({"id": file_id, "object": "file", "deleted": True}, request)

    async def _files_content(self, request: web.Request) -> web.StreamResponse:
        """Handle ``GET /v1/files/{id}/content``: the raw bytes."""
        file_id = request.match_info["id"]
        self._file_object(file_id)
        return web.Response(
            body=self.files[file_id],
            content_type="application/octet-stream",
            headers={"x-request-id": request[_CALL].request_id},
        )


def _ignore(payload: dict[str, Any]) -> None:
    """Accept an event without keeping it (streams with no stored state)."""


def _final_deadline(start: float, tl: Timeline, partials: int) -> float:
    """Return when the final image is due on the loop clock, for generation begun at ``start``."""
    if partials == 0:
        return start + tl.first_partial + tl.final
    return start + tl.first_partial + (partials - 1) * tl.between_partials + tl.final


def _complete(job: _ResponseJob, *, incomplete: str | None = None) -> None:
    """Mark the job's response completed (or incomplete, for that reason) and fill in its usage."""
    plan = job.plan
    shell = job.shell
    tokens_in = 24 + text_tokens(job.all_text)
    tokens_out = 8 + text_tokens(job.reply_text or "") + (text_tokens(plan.prompt) if plan else 0)
    if incomplete is not None:
        shell["status"] = "incomplete"
        shell["incomplete_details"] = {"reason": incomplete}
        tokens_out = 8 + (text_tokens(plan.prompt) if plan else 0)
    else:
        shell["status"] = "completed"
    shell["completed_at"] = int(time.time())
    shell["usage"] = {
        "input_tokens": tokens_in,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": tokens_out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": tokens_in + tokens_out,
    }
    image_gen = image_usage(
        plan.prompt if plan else "", plan.input_images if plan else 0, job.image_tokens
    )
    shell["tool_usage"] = {"image_gen": image_gen, "web_search": {"num_requests": 0}}


async def _message_events(
    job: _ResponseJob, event: Callable[..., dict[str, Any]]
) -> AsyncGenerator[dict[str, Any]]:
    """Yield the events of an assistant text message and add the message to the output."""
    text = job.reply_text or ""
    msg_id = new_id("msg_")
    index = len(job.shell["output"])
    where = {"output_index": index, "item_id": msg_id, "content_index": 0}
    item: dict[str, Any] = {"id": msg_id, "type": "message", "status": "in_progress"}
    item |= {"role": "assistant", "content": []}
    yield event("response.output_item.added", output_index=index, item=item)
    empty = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
    yield event("response.content_part.added", **where, part=empty)
    for delta in split_deltas(text):
        yield event("response.output_text.delta", **where, delta=delta, logprobs=[])
    yield event("response.output_text.done", **where, text=text, logprobs=[])
    part = empty | {"text": text}
    yield event("response.content_part.done", **where, part=part)
    item = item | {"status": "completed", "phase": "final_answer", "content": [part]}
    yield event("response.output_item.done", output_index=index, item=item)
    job.shell["output"].append(item)


async def _serve(args: argparse.Namespace) -> None:
    """Run the stand-in until cancelled, printing its base URL for the operator."""
    fake = FakeOpenAI(prerender=args.prerender)
    fake.set_timeline(Timeline(args.first_partial, args.between, args.final))
    fake.reply_text = args.reply_text
    async with interruptible() as stop:
        await fake.start(args.port)
        print(fake.base_url, flush=True)
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 60)
                # A long-running demo must not grow without bound: keep only recent history.
                del fake.requests[:-1000]
                del fake.sent[:-10000]
        finally:
            await fake.close()


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and serve until Ctrl-C."""
    parser = argparse.ArgumentParser(description="Serve a stand-in for the OpenAI image APIs.")
    add = parser.add_argument
    add("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    add("--first-partial", type=float, default=0.0, help="seconds to the first partial")
    add("--between", type=float, default=0.0, help="seconds between partials")
    add("--final", type=float, default=0.0, help="seconds from the last partial to the final")
    add("--reply-text", default=None, help="assistant text added to every response")
    add("--prerender", action="store_true", help="reuse cached pictures to save CPU")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))


if __name__ == "__main__":
    main()


@functools.lru_cache(maxsize=16)
def _decoded(text: str) -> bytes:
    """The image of a stored response's result; cached, as the same final recurs turn after turn."""
    return base64.b64decode(text)
