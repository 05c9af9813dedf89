"""The adapter's lean stream against the stand-in: the SDK stays the client of record (requests,
retries, errors), the repeated final is skipped, previews decode lazily, and the memory budget
holds streams back while it is spent."""

from __future__ import annotations

import asyncio
import base64
import gc
import sys
import threading
from collections.abc import AsyncIterator, Callable

import aiohttp
import openai
import pytest

from bot.core import memory_budget
from bot.core.events import Completed, Failed, Partial, ResponseCreated
from bot.core.lean_stream import LeanSSEParser
from bot.core.memory_budget import ImageMemoryBudget, TurnAllowance
from bot.core.openai_adapter import ClientConfig, OpenAIImageClient
from bot.core.options import ImageOptions, TurnRequest
from fakes.openai_api import FakeOpenAI, Fault, Timeline

KEY = "sk-test-not-a-real-key-000000"
REQUEST = TurnRequest(prompt="a lighthouse in a storm", options=ImageOptions(partials=2))


def make_client(fake: FakeOpenAI, *, retries: int = 0, budget: ImageMemoryBudget | None = None):
    config = ClientConfig(api_key=KEY, base_url=fake.base_url, max_retries=retries)
    return OpenAIImageClient(config, budget=budget)


def budgeted(fake: FakeOpenAI, capacity: int) -> tuple[ImageMemoryBudget, OpenAIImageClient]:
    """A client whose streams share a budget of `capacity` bytes; events sent without delay."""
    budget = ImageMemoryBudget(capacity)
    fake.set_timeline(Timeline(0.0, 0.0, 0.0))
    return budget, make_client(fake, budget=budget)


@pytest.fixture
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIImageClient]:
    image_client = make_client(fake_openai, budget=ImageMemoryBudget(64 * 1024 * 1024))
    yield image_client
    await image_client.close()


async def until(condition: Callable[[], bool], within: float = 10.0) -> None:
    """Wait for a condition, failing after a deadline."""
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


def final_b64(fake: FakeOpenAI) -> str:
    """The final image's base64 as the stand-in stored it (the last stored response)."""
    stored = list(fake.stored_responses.values())[-1]
    return next(o["result"] for o in stored["output"] if o["type"] == "image_generation_call")


async def test_a_turn_reads_partials_and_one_final_and_skips_the_repeat(
    fake_openai: FakeOpenAI, client: OpenAIImageClient
) -> None:
    events = [e async for e in client.stream_responses(REQUEST)]

    assert isinstance(events[0], ResponseCreated)
    partials = [e for e in events if isinstance(e, Partial)]
    assert [p.index for p in partials] == [0, 1]
    done = events[-1]
    assert isinstance(done, Completed)
    b64 = final_b64(fake_openai)
    assert done.image == base64.b64decode(b64)
    # The copy of the final inside response.completed was counted and dropped, never kept.
    assert client.budget is not None
    assert client.budget.stats.skipped_bytes == len(b64)


async def test_partials_decode_only_when_looked_at(
    fake_openai: FakeOpenAI, client: OpenAIImageClient
) -> None:
    events = [e async for e in client.stream_responses(REQUEST)]
    first, second = (e for e in events if isinstance(e, Partial))
    assert not first.decoded and not second.decoded
    assert second.image.startswith(b"\x89PNG") and second.decoded
    stats = client.budget.stats  # type: ignore[union-attr]
    del events, first, second
    gc.collect()
    # The first preview was freed without anyone decoding it: counted apart from work done.
    assert (stats.partials_decoded, stats.partials_dropped) == (1, 1)


async def test_the_sdk_retries_and_raises_status_errors(fake_openai: FakeOpenAI) -> None:
    client = make_client(fake_openai, retries=1)
    try:
        fake_openai.queue_fault(Fault("server_500"))
        events = [e async for e in client.stream_responses(REQUEST)]
        assert isinstance(events[-1], Completed)
        calls = [r for r in fake_openai.requests if r.path == "/v1/responses"]
        # The SDK retried (its own header counts the retries): the request loop is the SDK's.
        assert [r.headers.get("x-stainless-retry-count") for r in calls] == ["0", "1"]

        fake_openai.queue_fault(Fault("moderation_400"))
        call = client._client.responses.with_streaming_response.create(
            **client.responses_params(REQUEST)
        )
        with pytest.raises(openai.BadRequestError) as raised:
            async for _ in client._lean(call, LeanSSEParser(), TurnAllowance(None)):
                pass
        assert raised.value.code == "moderation_blocked" and raised.value.status_code == 400
    finally:
        await client.close()


async def test_a_nested_stream_error_raises_as_in_the_sdk(
    fake_openai: FakeOpenAI, client: OpenAIImageClient
) -> None:
    fake_openai.queue_fault(Fault("error_event_nested", after_events=3))
    with pytest.raises(openai.APIError) as sdk_raised:
        stream = await client._client.responses.create(**client.responses_params(REQUEST))
        async for _ in stream:
            pass

    fake_openai.queue_fault(Fault("error_event_nested", after_events=3))
    call = client._client.responses.with_streaming_response.create(
        **client.responses_params(REQUEST)
    )
    with pytest.raises(openai.APIError) as lean_raised:
        async for _ in client._lean(call, LeanSSEParser(), TurnAllowance(None)):
            pass
    ours, theirs = lean_raised.value, sdk_raised.value
    assert type(ours) is type(theirs) is openai.APIError
    assert (ours.message, ours.code, ours.type, ours.body) == (
        theirs.message,
        theirs.code,
        theirs.type,
        theirs.body,
    )

    fake_openai.queue_fault(Fault("error_event_nested", after_events=3))
    events = [e async for e in client.stream_responses(REQUEST)]
    assert isinstance(events[-1], Failed) and events[-1].kind.value == "moderation"


async def test_a_spent_budget_holds_the_stream_back_until_an_image_is_freed(
    fake_openai: FakeOpenAI,
) -> None:
    # Room for one image: the second turn waits while the first turn's preview is alive.
    budget, client = budgeted(fake_openai, 1)
    try:
        first = client.stream_responses(REQUEST)
        held = [e async for e in first if isinstance(e, Partial | Completed)]
        assert budget.used == 1

        second = client.stream_responses(REQUEST)
        nxt = asyncio.ensure_future(anext(second))
        created = await nxt
        assert isinstance(created, ResponseCreated)
        waiting = asyncio.ensure_future(anext(second))
        await until(lambda: budget.stats.waits >= 1)
        assert not waiting.done()

        del held
        gc.collect()
        event = await asyncio.wait_for(waiting, 10)
        assert isinstance(event, Partial)
        await second.aclose()
    finally:
        await client.close()


async def test_budget_waiters_are_served_in_order_and_cancellation_is_clean() -> None:
    budget = ImageMemoryBudget(10)
    big = await budget.acquire(8)
    order: list[str] = []

    async def take(name: str, size: int) -> None:
        lease = await budget.acquire(size)
        order.append(name)
        lease.release()

    a = asyncio.ensure_future(take("a", 5))
    b = asyncio.ensure_future(take("b", 1))
    c = asyncio.ensure_future(take("c", 3))
    await until(lambda: budget.stats.waits == 3)
    # b would fit now, but a came first: nobody jumps the queue.
    assert order == []
    c.cancel()
    await asyncio.gather(c, return_exceptions=True)
    big.release()
    await asyncio.gather(a, b)
    assert order == ["a", "b"] and budget.used == 0
    # More than the capacity is clamped: one huge image can always pass alone.
    lease = await budget.acquire(1000)
    assert lease.size == 10
    lease.release()
    lease.release()
    assert budget.used == 0


async def test_an_idle_budget_gives_memory_back_off_the_loop_and_a_busy_one_does_not() -> None:
    calls: list[int] = []
    budget = ImageMemoryBudget(10, on_idle=lambda: calls.append(threading.get_ident()))
    budget._idle_seconds = 3600.0
    lease = await budget.acquire(4)
    lease.release()
    # Nothing held: the idle timer runs...
    await until(lambda: budget._idle_timer is not None)
    # ...and stops as soon as an image is held again.
    held = await budget.acquire(4)
    await until(lambda: budget._idle_timer is None)
    assert calls == []
    budget._idle_seconds = 0.01
    held.release()
    await until(lambda: len(calls) == 1)
    assert calls[0] != threading.get_ident() and budget.idle_runs == 1


def test_the_allocator_takes_its_thresholds_and_trims() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's allocator")
    assert memory_budget.return_large_buffers_to_os()
    assert memory_budget.give_back_free_memory()


async def test_the_body_is_read_from_aiohttp_as_it_arrives(
    client: OpenAIImageClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not through the SDK's transport in 16 KiB pieces: aiohttp's reader gives what it holds."""
    readers: list[aiohttp.StreamReader] = []
    iter_any = aiohttp.StreamReader.iter_any

    def spy(self: aiohttp.StreamReader) -> object:
        readers.append(self)
        return iter_any(self)

    monkeypatch.setattr(aiohttp.StreamReader, "iter_any", spy)
    events = [e async for e in client.stream_responses(REQUEST)]

    assert isinstance(events[-1], Completed)
    assert len(readers) == 1


async def test_a_held_preview_stays_counted_after_the_turn_reads_on_until_it_is_released(
    fake_openai: FakeOpenAI,
) -> None:
    budget, client = budgeted(fake_openai, 64 * 1024 * 1024)
    try:
        stream = client.stream_responses(REQUEST)
        first = await anext(e async for e in stream if isinstance(e, Partial))
        alone = budget.used
        assert alone > 0
        # The consumer keeps the first preview (say, it is still uploading) while the turn
        # reads its next image: both are counted.
        first.hold()
        second = await anext(stream)
        assert isinstance(second, Partial)
        both = budget.used
        assert both > alone
        first.release()
        assert budget.used == both - alone
        # Releasing twice gives nothing back twice.
        first.release()
        assert budget.used == both - alone
        rest = [e async for e in stream]
        assert isinstance(rest[-1], Completed)
        del first, second, rest
        gc.collect()
        await until(lambda: budget.used == 0)
    finally:
        await client.close()


async def test_turns_whose_consumers_never_release_still_finish_on_a_spent_budget(
    fake_openai: FakeOpenAI,
) -> None:
    # Room for one image, four turns at once, and consumers that keep each turn's last event
    # (as a loop variable does) without ever releasing it: every turn still gets to its end.
    budget, client = budgeted(fake_openai, 1)

    async def consume() -> bool:
        last: object = None
        async for event in client.stream_responses(REQUEST):
            last = event
        return isinstance(last, Completed)

    try:
        # The budget starts spent, so that the turns queue up behind each other.
        blocker = await budget.acquire(1)
        turns = asyncio.gather(*(consume() for _ in range(4)))
        await until(lambda: budget.stats.waits >= 1)
        blocker.release()
        finished = await asyncio.wait_for(turns, 30)
        assert finished == [True] * 4
    finally:
        await client.close()
