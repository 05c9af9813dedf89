"""`response.incomplete`, through the real SDK against the stand-in: an image that arrived before
the response ended early is delivered and charged; without one, the failure carries the usage."""

from __future__ import annotations

import base64
import io
from collections.abc import AsyncIterator

import pytest
from PIL import Image

from bot.core import i18n
from bot.core.costs import PriceTable
from bot.core.errors import FailureKind
from bot.core.events import (
    Completed,
    Failed,
    Partial,
    ResponseCreated,
    Started,
    TurnEvent,
    Usage,
)
from bot.core.openai_adapter import ClientConfig, OpenAIImageClient
from bot.core.options import ImageOptions, TurnRequest
from bot.core.runner import TurnRunner
from fakes.openai_api import FakeOpenAI, Fault


@pytest.fixture
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIImageClient]:
    config = ClientConfig(
        api_key="sk-test-not-a-real-key-000000", base_url=fake_openai.base_url, max_retries=0
    )
    image_client = OpenAIImageClient(config)
    yield image_client
    await image_client.close()


async def run_turn(client: OpenAIImageClient, prices: PriceTable) -> list[TurnEvent]:
    request = TurnRequest(prompt="a red kite over dunes", options=ImageOptions(partials=1))
    return [event async for event in TurnRunner(client, prices).run(request)]


def billed(stored: dict[str, object]) -> Usage:
    """The usage a stored response reports, read straight from the stand-in's JSON."""
    usage: dict[str, int] = stored["usage"]  # type: ignore[assignment]
    image_gen = stored["tool_usage"]["image_gen"]  # type: ignore[index]
    return Usage(
        input_tokens=usage["input_tokens"],
        output_tokens=usage["output_tokens"],
        image_input_tokens=image_gen["input_tokens_details"]["image_tokens"],
        image_input_text_tokens=image_gen["input_tokens_details"]["text_tokens"],
        image_output_tokens=image_gen["output_tokens"],
    )


async def test_an_image_that_arrived_before_incomplete_is_delivered_and_charged(
    fake_openai: FakeOpenAI, client: OpenAIImageClient
) -> None:
    fake_openai.reply_text = "Here is your kite."
    fake_openai.queue_fault(Fault("incomplete_after_image"))
    prices = PriceTable()

    events = await run_turn(client, prices)

    assert [type(e) for e in events] == [Started, ResponseCreated, Partial, Completed]
    done = events[-1]
    assert isinstance(done, Completed)
    stored = fake_openai.stored_responses[str(done.response_id)]
    assert stored["status"] == "incomplete"
    item = stored["output"][0]
    assert done.image == base64.b64decode(item["result"])
    assert Image.open(io.BytesIO(done.image)).size == (1024, 1024)
    # Charged what the incomplete response reports, image tokens included.
    assert done.usage == billed(stored)
    assert done.usage.image_output_tokens > 0
    assert done.cost == prices.cost(done.usage, model=done.model, engine="responses") > 0
    assert done.incomplete_reason == "max_output_tokens"


def test_the_early_end_note_exists_in_every_language() -> None:
    english = i18n.t("en", "note.incomplete")
    korean = i18n.t("ko", "note.incomplete")
    assert "early" in english
    assert korean != english


async def test_incomplete_without_an_image_fails_with_the_billed_usage(
    fake_openai: FakeOpenAI, client: OpenAIImageClient
) -> None:
    fake_openai.queue_fault(Fault("incomplete_before_image"))

    events = await run_turn(client, PriceTable())

    assert [type(e) for e in events] == [Started, ResponseCreated, Failed]
    failed = events[-1]
    assert isinstance(failed, Failed)
    assert failed.kind is FailureKind.TRANSIENT
    assert failed.message_key == "fail.transient"
    (stored,) = fake_openai.stored_responses.values()
    assert failed.usage == billed(stored)
    assert failed.usage is not None and failed.usage.input_tokens > 0
    assert failed.usage.image_output_tokens == 0
