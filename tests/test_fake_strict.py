"""The OpenAI stand-in refuses what the API refuses, with the API's error shape.

Every endpoint the bot uses: an unknown parameter is `unknown_parameter` naming it by its path
(`tools[0].n`), a legacy DALL-E parameter is refused for GPT image models, and the values a
model does not support are `invalid_value` with `param`.
"""

from __future__ import annotations

import io
import random
from collections.abc import AsyncIterator
from typing import Any

import openai
import pytest
from openai import AsyncOpenAI
from PIL import Image

from fakes._openai_render import OUTPUT_TOKENS, PARTIAL_IMAGE_TOKENS
from fakes._openai_strict import check_request
from fakes.openai_api import FakeOpenAI


def png(width: int = 64, height: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), (200, 40, 40)).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    client = AsyncOpenAI(api_key="sk-test", base_url=fake_openai.base_url, max_retries=0)
    try:
        yield client
    finally:
        await client.close()


async def refused(call: Any) -> openai.BadRequestError:
    with pytest.raises(openai.BadRequestError) as caught:
        await call
    return caught.value


TOOL = {"type": "image_generation", "model": "gpt-image-1.5", "size": "1024x1024"}


async def test_an_unknown_top_level_parameter_is_refused(client: AsyncOpenAI) -> None:
    error = await refused(
        client.responses.create(
            model="gpt-5.5", input="x", tools=[TOOL], extra_body={"partial_image": 2}
        )
    )
    assert (error.code, error.param, error.type) == (
        "unknown_parameter",
        "partial_image",
        "invalid_request_error",
    )
    assert error.message.endswith("Unknown parameter: 'partial_image'.")


async def test_an_unknown_field_inside_the_image_tool_is_refused_by_its_path(
    client: AsyncOpenAI,
) -> None:
    error = await refused(
        client.responses.create(
            model="gpt-5.5", input="x", tools=[{"type": "web_search"}, TOOL | {"n": 2}]
        )  # type: ignore[list-item]
    )
    assert (error.code, error.param) == ("unknown_parameter", "tools[1].n")
    mask = {"image_url": "data:image/png;base64,AAAA", "detail": "auto"}
    error = await refused(
        client.responses.create(
            model="gpt-5.5",
            input="x",
            tools=[TOOL | {"input_image_mask": mask}],  # type: ignore[list-item]
        )
    )
    assert error.param == "tools[0].input_image_mask.detail"


async def test_an_unknown_field_in_an_input_part_is_refused(client: AsyncOpenAI) -> None:
    content = [{"type": "input_text", "text": "x"}, {"type": "input_image", "url": "https://x"}]
    error = await refused(
        client.responses.create(
            model="gpt-5.5",
            input=[{"role": "user", "content": content}],  # type: ignore[list-item]
            tools=[TOOL],  # type: ignore[list-item]
        )
    )
    assert (error.code, error.param) == ("unknown_parameter", "input[0].content[1].url")


async def test_a_streamed_request_is_refused_before_any_event(client: AsyncOpenAI) -> None:
    error = await refused(
        client.responses.create(
            model="gpt-5.5",
            input="x",
            tools=[TOOL | {"partial": 1}],  # type: ignore[list-item]
            stream=True,
        )
    )
    assert error.param == "tools[0].partial"


@pytest.mark.parametrize("legacy", [{"response_format": "b64_json"}, {"style": "vivid"}])
async def test_legacy_dall_e_parameters_are_refused_for_gpt_image_models(
    client: AsyncOpenAI, legacy: dict[str, str]
) -> None:
    (name,) = legacy
    error = await refused(client.images.generate(prompt="x", model="gpt-image-1.5", **legacy))  # type: ignore[arg-type]
    assert (error.code, error.param) == ("unknown_parameter", name)


async def test_legacy_response_format_is_refused_on_edits_too(client: AsyncOpenAI) -> None:
    error = await refused(
        client.images.edit(
            image=("a.png", png(), "image/png"), prompt="x", response_format="b64_json"
        )
    )
    assert (error.code, error.param) == ("unknown_parameter", "response_format")


async def test_moderation_is_not_a_parameter_of_edits(client: AsyncOpenAI) -> None:
    error = await refused(
        client.images.edit(
            image=("a.png", png(), "image/png"), prompt="x", extra_body={"moderation": "low"}
        )
    )
    assert (error.code, error.param) == ("unknown_parameter", "moderation")
    # ... while generations take it.
    result = await client.images.generate(prompt="x", moderation="low", size="1024x1024")
    assert result.data


async def test_an_unknown_file_part_on_edits_and_files_is_refused(client: AsyncOpenAI) -> None:
    error = await refused(
        client.images.edit(
            image=("a.png", png(), "image/png"),
            prompt="x",
            extra_body={"quality_level": "high"},
        )
    )
    assert error.param == "quality_level"
    error = await refused(
        client.files.create(
            file=("a.png", png(), "image/png"), purpose="vision", extra_body={"name": "a"}
        )
    )
    assert (error.code, error.param) == ("unknown_parameter", "name")


async def test_nulls_for_optional_parameters_are_still_accepted(client: AsyncOpenAI) -> None:
    result = await client.images.generate(
        prompt="x", model=None, size=None, quality=None, response_format=None, style=None
    )
    assert result.size == "1024x1024"


def test_the_pure_check_agrees_with_the_live_refusals() -> None:
    body = {"model": "gpt-5.5", "input": "x", "tools": [TOOL | {"n": 1}]}
    error = check_request("POST", "/v1/responses", body, {}, [])
    assert error is not None and error.body["param"] == "tools[0].n"
    assert check_request("POST", "/v1/responses", {**body, "tools": [TOOL]}, {}, []) is None
    # Not a parameter problem: left to the handler (state, pixels).
    assert check_request("GET", "/v1/responses/resp_x", None, {}, []) is None


# ----- fewer partial images than asked ------------------------------------------------------


async def partial_counts(client: AsyncOpenAI, asked: int) -> tuple[int, int]:
    """(partials, finals) one streamed Responses turn and one Images stream delivered."""
    counts = []
    stream = await client.responses.create(
        model="gpt-5.5",
        input="x",
        tools=[TOOL | {"partial_images": asked}],  # type: ignore[list-item]
        stream=True,
    )
    kinds = [event.type async for event in stream]
    counts.append(kinds.count("response.image_generation_call.partial_image"))
    assert kinds.count("response.output_item.done") == 1 and kinds[-1] == "response.completed"
    images = await client.images.generate(
        prompt="x", model="gpt-image-1.5", partial_images=asked, stream=True
    )
    image_kinds = [event.type async for event in images]
    assert image_kinds[-1] == "image_generation.completed"
    counts.append(image_kinds.count("image_generation.partial_image"))
    return counts[0], counts[1]


async def test_the_stand_in_sends_as_many_partials_as_asked_by_default(
    client: AsyncOpenAI,
) -> None:
    assert await partial_counts(client, 3) == (3, 3)


async def test_the_stand_in_can_send_fewer_partials_than_asked(
    client: AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    fake_openai.send_fewer_partials(1)
    assert await partial_counts(client, 3) == (1, 1)
    fake_openai.send_fewer_partials(0)
    assert await partial_counts(client, 2) == (0, 0)
    fake_openai.send_fewer_partials()
    assert await partial_counts(client, 2) == (2, 2)


async def test_random_partial_counts_stay_within_what_was_asked(
    client: AsyncOpenAI, fake_openai: FakeOpenAI
) -> None:
    seed = random.randrange(2**32)
    fake_openai.send_fewer_partials(rng=random.Random(seed))
    seen: set[int] = set()
    for _ in range(12):
        for count in await partial_counts(client, 3):
            assert 0 <= count <= 3, seed
            seen.add(count)
    # 24 draws from 0..3: all the same would mean the setting does nothing random.
    assert len(seen) > 1, seed
    # The usage bills the partials that were made, not the ones asked for.
    stream = await client.images.generate(
        prompt="x", model="gpt-image-1.5", partial_images=3, stream=True, size="1024x1024"
    )
    events = [event async for event in stream]
    made = sum(event.type == "image_generation.partial_image" for event in events)
    final = OUTPUT_TOKENS["medium"][(1024, 1024)]  # quality auto renders as medium
    assert events[-1].usage.output_tokens == final + PARTIAL_IMAGE_TOKENS * made  # type: ignore[union-attr]
