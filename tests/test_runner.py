"""The turn runner, against a scripted backend at our own interface (fast, no sockets)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from bot.core.costs import PriceTable
from bot.core.errors import FailureKind
from bot.core.events import Completed, Failed, Partial, Started, TurnEvent, TurnFailure, Usage
from bot.core.options import ImageOptions, InputImage, TurnRequest
from bot.core.runner import RunnerConfig, TurnRunner

IMAGE = InputImage(data=b"png-bytes", mime="image/png", filename="a.png", sha256="abc")


def done(response_id: str = "resp_1", usage: Usage | None = None) -> Completed:
    return Completed(
        image=b"final",
        format="png",
        response_id=response_id,
        revised_prompt="revised",
        usage=usage if usage is not None else Usage(image_output_tokens=1000),
        cost=0.0,
        model="gpt-image-2",
        engine="responses",
    )


class ScriptedBackend:
    """Plays one scripted list of events per call and records the requests."""

    def __init__(self, *scripts: list[Partial | Completed | Failed]) -> None:
        self.scripts = list(scripts)
        self.requests: list[TurnRequest] = []
        self.uploads: list[str] = []

    async def upload_file(self, image: InputImage) -> str:
        self.uploads.append(image.sha256)
        return f"file-{len(self.uploads)}"

    async def _play(self, request: TurnRequest) -> AsyncIterator[Partial | Completed | Failed]:
        self.requests.append(request)
        for event in self.scripts.pop(0):
            yield event

    def stream_responses(
        self, request: TurnRequest, *, file_ids: dict[str, str] | None = None
    ) -> AsyncIterator[Partial | Completed | Failed]:
        return self._play(request)

    def stream_images(self, request: TurnRequest) -> AsyncIterator[Partial | Completed | Failed]:
        return self._play(request)


class MemoryFiles:
    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    async def get_uploaded_file(self, sha256: str) -> str | None:
        return self.ids.get(sha256)

    async def put_uploaded_file(self, sha256: str, file_id: str, size: int) -> None:
        self.ids[sha256] = file_id


async def collect(runner: TurnRunner, request: TurnRequest, **kwargs: object) -> list[TurnEvent]:
    return [event async for event in runner.run(request, **kwargs)]  # type: ignore[arg-type]


def request(**changes: object) -> TurnRequest:
    base = TurnRequest(prompt="a cat", options=ImageOptions(model="gpt-image-2", partials=2))
    import dataclasses

    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


async def test_events_in_order_and_priced() -> None:
    backend = ScriptedBackend([Partial(0, b"p0", "png"), Partial(1, b"p1", "png"), done()])
    events = await collect(TurnRunner(backend, PriceTable()), request())
    assert [type(e) for e in events] == [Started, Partial, Partial, Completed]
    final = events[-1]
    assert isinstance(final, Completed)
    assert final.cost == PriceTable().cost(
        Usage(image_output_tokens=1000), model="gpt-image-2", engine="responses"
    )
    assert final.cost > 0


async def test_missing_usage_is_charged_at_the_estimate() -> None:
    backend = ScriptedBackend([done(usage=Usage())])
    events = await collect(TurnRunner(backend, PriceTable()), request())
    final = events[-1]
    assert isinstance(final, Completed)
    assert final.usage.image_output_tokens > 0
    assert final.cost > 0


async def test_unreported_image_tokens_are_charged_at_the_estimate() -> None:
    """A response that reports only the mainline model's tokens still made (and billed) an image."""
    mainline = Usage(input_tokens=40, output_tokens=12)
    backend = ScriptedBackend([done(usage=mainline)])
    events = await collect(TurnRunner(backend, PriceTable()), request())
    final = events[-1]
    assert isinstance(final, Completed)
    assert (final.usage.input_tokens, final.usage.output_tokens) == (40, 12)
    assert final.usage.image_output_tokens > 0
    assert final.cost > PriceTable().cost(mainline, model="gpt-image-2", engine="responses")


async def test_forgotten_conversation_is_reseeded_from_the_last_image() -> None:
    backend = ScriptedBackend(
        [Failed(FailureKind.CONTEXT_EXPIRED, "fail.context_expired")],
        [done("resp_2")],
    )

    async def reseed() -> tuple[InputImage, str] | None:
        return IMAGE, "the first prompt"

    events = await collect(
        TurnRunner(backend, PriceTable()),
        request(previous_response_id="resp_gone", prompt="make it blue"),
        reseed=reseed,
    )
    assert [type(e) for e in events] == [Started, Started, Completed]
    assert isinstance(events[1], Started) and events[1].reseeded
    final = events[-1]
    assert isinstance(final, Completed) and final.reseeded
    second = backend.requests[1]
    assert second.previous_response_id is None
    assert second.parent_image == IMAGE
    assert "the first prompt" in second.prompt and "make it blue" in second.prompt


async def test_forgotten_conversation_without_an_image_fails_clearly() -> None:
    backend = ScriptedBackend([Failed(FailureKind.CONTEXT_EXPIRED, "fail.context_expired")])

    async def nothing() -> tuple[InputImage, str] | None:
        return None

    events = await collect(
        TurnRunner(backend, PriceTable()), request(previous_response_id="x"), reseed=nothing
    )
    assert isinstance(events[-1], Failed) and events[-1].kind is FailureKind.CONTEXT_EXPIRED


async def test_rate_limit_waits_and_retries_then_gives_up() -> None:
    limited = Failed(FailureKind.RATE_LIMITED, "fail.rate_limited", retry_after=0.001)
    backend = ScriptedBackend([limited], [done()])
    events = await collect(TurnRunner(backend, PriceTable()), request())
    assert isinstance(events[-1], Completed)
    assert len(backend.requests) == 2

    backend = ScriptedBackend([limited], [limited], [limited])
    runner = TurnRunner(backend, PriceTable(), config=RunnerConfig(rate_limit_retries=2))
    events = await collect(runner, request())
    assert isinstance(events[-1], Failed) and events[-1].kind is FailureKind.RATE_LIMITED
    assert len(backend.requests) == 3


async def test_no_retry_after_partials_were_shown() -> None:
    limited = Failed(FailureKind.RATE_LIMITED, "fail.rate_limited", retry_after=0.001)
    backend = ScriptedBackend([Partial(0, b"p", "png"), limited], [done()])
    events = await collect(TurnRunner(backend, PriceTable()), request())
    assert isinstance(events[-1], Failed)
    assert len(backend.requests) == 1


async def test_files_api_uploads_each_image_once() -> None:
    files = MemoryFiles()
    backend = ScriptedBackend([done()], [done()])
    runner = TurnRunner(backend, PriceTable(), files=files, config=RunnerConfig(use_files_api=True))
    await collect(runner, request(images=(IMAGE,)))
    await collect(runner, request(images=(IMAGE,)))
    assert backend.uploads == ["abc"]
    assert files.ids == {"abc": "file-1"}


async def test_upload_failure_is_reported_not_raised() -> None:
    class FailingUpload(ScriptedBackend):
        async def upload_file(self, image: InputImage) -> str:
            raise TurnFailure(Failed(FailureKind.AUTH, "fail.auth"))

    runner = TurnRunner(
        FailingUpload(), PriceTable(), files=MemoryFiles(), config=RunnerConfig(use_files_api=True)
    )
    events = await collect(runner, request(images=(IMAGE,)))
    assert len(events) == 1 and isinstance(events[0], Failed) and events[0].kind is FailureKind.AUTH
