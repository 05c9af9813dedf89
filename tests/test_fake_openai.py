"""The OpenAI stand-in, driven by the real openai SDK over real sockets in strict mode."""

from __future__ import annotations

import asyncio
import base64
import io
import math
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from PIL import Image, ImageChops, ImageStat

from fakes import interruptible
from fakes.openai_api import FakeOpenAI, Fault, Timeline

REPO_ROOT = Path(__file__).resolve().parent.parent
REPLY = "Here is your image."
RESPONSE_EVENTS_WITH_TEXT = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.image_generation_call.in_progress",
    "response.image_generation_call.generating",
    "response.image_generation_call.completed",
    "response.output_item.done",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@pytest.fixture
async def fake() -> AsyncIterator[FakeOpenAI]:
    """Serve a fresh stand-in for one test."""
    async with FakeOpenAI() as server:
        yield server


def make_client(fake: FakeOpenAI, **options: Any) -> AsyncOpenAI:
    """Return a strict SDK client pointed at the stand-in (no retries unless asked)."""
    options.setdefault("max_retries", 0)
    return AsyncOpenAI(
        api_key="test", base_url=fake.base_url, _strict_response_validation=True, **options
    )


@pytest.fixture
async def client(fake: FakeOpenAI) -> AsyncIterator[AsyncOpenAI]:
    """Return a strict SDK client for the test's stand-in."""
    sdk = make_client(fake)
    yield sdk
    await sdk.close()


def decode(b64_text: str) -> Image.Image:
    """Decode base64 image bytes into a loaded Pillow image."""
    img = Image.open(io.BytesIO(base64.b64decode(b64_text)))
    img.load()
    return img


def pattern_png(width: int, height: int) -> bytes:
    """Return an opaque PNG whose pixels all differ along both axes (easy to compare)."""
    img = Image.new("RGB", (width, height))
    img.putdata(
        [((x * 255) // width, (y * 255) // height, 90) for y in range(height) for x in range(width)]
    )
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def half_mask_png(width: int, height: int) -> bytes:
    """Return a mask PNG that is transparent (editable) on its left half, opaque elsewhere."""
    mask = Image.new("RGBA", (width, height), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, width // 2, height))
    buf = io.BytesIO()
    mask.save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes) -> str:
    """Wrap PNG bytes in a base64 data URL."""
    return "data:image/png;base64," + base64.b64encode(data).decode()


def difference(a: Image.Image, b: Image.Image) -> Image.Image:
    """Return, per pixel, the largest channel difference between two same-sized images."""
    red, green, blue = ImageChops.difference(a.convert("RGB"), b.convert("RGB")).split()
    return ImageChops.lighter(red, ImageChops.lighter(green, blue))


def changed_fraction(a: Image.Image, b: Image.Image) -> float:
    """Return the fraction of pixels that differ at all between two same-sized images."""
    return 1 - difference(a, b).histogram()[0] / (a.width * a.height)


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Return the mean per-pixel difference (0-255) between two same-sized images."""
    return float(ImageStat.Stat(difference(a, b)).mean[0])


async def test_streamed_create_follows_the_reference_sequence(
    fake: FakeOpenAI, client: AsyncOpenAI
) -> None:
    """Partials, the final image, the text message and completion arrive in order."""
    fake.reply_text = REPLY
    stream = await client.responses.create(
        model="gpt-5.5",
        input="a grey tabby hugging an otter",
        tools=[{"type": "image_generation", "partial_images": 3, "quality": "low"}],
        stream=True,
    )
    events = [event async for event in stream]

    types = [event.type for event in events]
    partial_type = "response.image_generation_call.partial_image"
    assert (
        types == RESPONSE_EVENTS_WITH_TEXT[:5] + [partial_type] * 3 + RESPONSE_EVENTS_WITH_TEXT[5:]
    )
    assert [event.sequence_number for event in events] == list(range(len(events)))
    lifecycle = ("response.created", "response.in_progress", "response.completed")
    lifecycle_ids = {e.response.id for e in events if e.type in lifecycle}
    assert len(lifecycle_ids) == 1 and lifecycle_ids.pop().startswith("resp_")

    partials = [e for e in events if e.type == partial_type]
    assert [p.partial_image_index for p in partials] == [0, 1, 2]
    assert all(
        (p.size, p.output_format, p.background) == ("1024x1024", "png", "opaque") for p in partials
    )
    done = events[RESPONSE_EVENTS_WITH_TEXT.index("response.output_item.done") + 3]
    assert done.type == "response.output_item.done"
    final = decode(done.item.result)
    pictures = [decode(p.partial_image_b64) for p in partials]
    assert final.format == "PNG" and final.size == (1024, 1024)
    assert all(p.size == (1024, 1024) for p in pictures)
    # Each partial is coarser than the next and none equals the final picture.
    distances = [mean_difference(p, final) for p in pictures]
    assert distances[0] > distances[1] > distances[2] > 0.5
    assert len({p.tobytes() for p in [*pictures, final]}) == 4

    completed = events[-1].response
    assert completed.status == "completed"
    assert completed.output_text == REPLY
    assert completed.output[0].result == done.item.result
    assert completed.output[0].revised_prompt == "a grey tabby hugging an otter"
    assert (
        completed.usage is not None and completed.usage.input_tokens_details.cache_write_tokens == 0
    )
    assert completed.tool_usage is not None
    assert completed.tool_usage.image_gen.output_tokens == 272 + 3 * 100
    assert [s.type for s in fake.sent][-1] == "[DONE]"


@pytest.mark.parametrize("partial_images", [0, 1, 2, 3])
async def test_partial_count_follows_the_request(client: AsyncOpenAI, partial_images: int) -> None:
    """Exactly ``partial_images`` partial events are sent, indexed from 0."""
    stream = await client.responses.create(
        model="gpt-5.5",
        input="a lighthouse",
        tools=[{"type": "image_generation", "partial_images": partial_images}],
        tool_choice={"type": "image_generation"},
        stream=True,
    )
    indices = [
        e.partial_image_index
        async for e in stream
        if e.type == "response.image_generation_call.partial_image"
    ]
    assert indices == list(range(partial_images))


async def test_stream_helper_returns_the_final_response(
    fake: FakeOpenAI, client: AsyncOpenAI
) -> None:
    """``responses.stream`` accepts the event sequence and builds the final Response."""
    fake.reply_text = REPLY
    async with client.responses.stream(
        model="gpt-5.5",
        input="a red kite over hills",
        tools=[
            {
                "type": "image_generation",
                "partial_images": 2,
                "size": "1536x1024",
                "output_format": "webp",
            }
        ],
    ) as stream:
        seen = [event.type async for event in stream]
        final = await stream.get_final_response()

    assert seen.count("response.image_generation_call.partial_image") == 2
    assert final.status == "completed"
    assert final.output_text == REPLY
    image = final.output[0]
    assert image.type == "image_generation_call"
    picture = decode(image.result or "")
    assert (picture.format, picture.size) == ("WEBP", (1536, 1024))
    assert (image.size, image.output_format, image.quality) == ("1536x1024", "webp", "medium")


async def test_non_streamed_create_is_stored_and_retrievable(
    fake: FakeOpenAI, client: AsyncOpenAI
) -> None:
    """A plain create returns the Response; retrieve returns it again, and replays it as SSE."""
    prompt = "a bowl of ramen, studio light"
    created = await client.responses.create(
        model="gpt-5.5",
        input=prompt,
        tools=[{"type": "image_generation", "quality": "high", "partial_images": None}],
    )
    assert created.status == "completed"
    assert created.output_text == ""
    assert created.tool_usage is not None
    usage = created.tool_usage.image_gen
    assert usage.output_tokens == 4160
    assert usage.input_tokens_details.text_tokens == math.ceil(len(prompt) / 4)
    assert usage.input_tokens_details.image_tokens == 0
    assert created.tools[0].type == "image_generation"
    assert created.tools[0].model == "gpt-image-2.6-sunburst"

    again = await client.responses.retrieve(created.id)
    assert again.model_dump() == created.model_dump()
    assert fake.stored_responses[created.id]["status"] == "completed"

    replay = await client.responses.retrieve(created.id, stream=True)
    types = [event.type async for event in replay]
    assert types[0] == "response.created" and types[-1] == "response.completed"

    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_doesnotexist")


async def test_continuation_builds_on_the_parent_image(client: AsyncOpenAI) -> None:
    """A turn with previous_response_id edits the parent's final image, keeping most of it."""
    tool = {"type": "image_generation", "quality": "low"}
    parent = await client.responses.create(model="gpt-5.5", input="a castle", tools=[tool])
    child = await client.responses.create(
        model="gpt-5.5", input="add a dragon", previous_response_id=parent.id, tools=[tool]
    )
    parent_img = decode(parent.output[0].result or "")
    child_img = decode(child.output[0].result or "")
    assert child.output[0].action == "edit"
    assert child.previous_response_id == parent.id
    top = (0, 0, 1024, 700)
    assert parent_img.crop(top).tobytes() == child_img.crop(top).tobytes()
    assert changed_fraction(parent_img, child_img) > 0.1
    assert child.tool_usage is not None
    assert child.tool_usage.image_gen.input_tokens_details.image_tokens == 194


async def test_forgotten_or_unstored_responses_cannot_be_continued(
    fake: FakeOpenAI, client: AsyncOpenAI
) -> None:
    """forget() and store=false both lead to 400 previous_response_not_found."""
    first = await client.responses.create(
        model="gpt-5.5", input="a fox", tools=[{"type": "image_generation"}]
    )
    fake.forget(first.id)
    with pytest.raises(openai.BadRequestError) as forgotten:
        await client.responses.create(model="gpt-5.5", input="again", previous_response_id=first.id)
    assert forgotten.value.code == "previous_response_not_found"
    assert forgotten.value.param == "previous_response_id"

    unstored = await client.responses.create(
        model="gpt-5.5", input="a hare", tools=[{"type": "image_generation"}], store=False
    )
    assert unstored.id not in fake.stored_responses
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError) as not_stored:
        await client.responses.create(model="gpt-5.5", input="x", previous_response_id=unstored.id)
    assert not_stored.value.code == "previous_response_not_found"


async def test_transparent_background_has_a_real_alpha_channel(client: AsyncOpenAI) -> None:
    """A transparent png has clear corners and an opaque subject."""
    response = await client.responses.create(
        model="gpt-5.5",
        input="a sticker of a cactus",
        tools=[{"type": "image_generation", "background": "transparent"}],
    )
    picture = decode(response.output[0].result or "")
    assert picture.mode == "RGBA"
    alpha = picture.getchannel("A")
    assert (alpha.getpixel((0, 0)), alpha.getpixel((512, 512))) == (0, 255)
    assert response.output[0].background == "transparent"


async def test_jpeg_compression_changes_the_file_size(client: AsyncOpenAI) -> None:
    """Lower output_compression gives a smaller jpeg."""
    sizes = []
    for compression in (10, 95):
        result = await client.images.generate(
            model="gpt-image-1.5",
            prompt="a field of sunflowers",
            output_format="jpeg",
            output_compression=compression,
        )
        raw = base64.b64decode((result.data or [])[0].b64_json or "")
        assert Image.open(io.BytesIO(raw)).format == "JPEG"
        sizes.append(len(raw))
    assert sizes[0] < sizes[1] * 0.7


async def test_arbitrary_size_is_honoured_and_billed_by_area(client: AsyncOpenAI) -> None:
    """gpt-image-2 accepts WxH sizes; output tokens scale by area."""
    result = await client.images.generate(
        model="gpt-image-2", prompt="a wide canyon", size="1536x864", quality="high"
    )
    assert decode((result.data or [])[0].b64_json or "").size == (1536, 864)
    assert result.size == "1536x864"
    assert result.usage is not None
    assert result.usage.output_tokens == round(4160 * 1536 * 864 / 1024**2)


@pytest.mark.parametrize("model", ["dall-e-2", "dall-e-3", "gpt-image-1"])
async def test_retired_models_are_rejected(client: AsyncOpenAI, model: str) -> None:
    """Retired image models answer 400 invalid_value on both APIs."""
    with pytest.raises(openai.BadRequestError) as images_error:
        await client.images.generate(model=model, prompt="x")
    with pytest.raises(openai.BadRequestError) as tool_error:
        await client.responses.create(
            model="gpt-5.5", input="x", tools=[{"type": "image_generation", "model": model}]
        )
    assert (images_error.value.code, images_error.value.param) == ("invalid_value", "model")
    # A tool field is named by its path in the request, as the API does.
    assert (tool_error.value.code, tool_error.value.param) == ("invalid_value", "tools[0].model")
    assert images_error.value.type == "image_generation_user_error"


@pytest.mark.parametrize(
    ("model", "size", "accepted"),
    [
        ("gpt-image-1.5", "1536x1024", True),
        ("gpt-image-1.5", "1536x864", False),
        ("chatgpt-image-latest", "2048x1152", False),
        ("gpt-image-2", "2048x1152", True),
        ("gpt-image-2.5-flare", "3840x2160", True),
        ("gpt-image-2", "1000x1000", False),
        ("gpt-image-2", "3072x768", False),
        ("gpt-image-2", "3840x2176", False),
        ("gpt-image-2.6-sunburst", "big", False),
    ],
)
async def test_size_rules(client: AsyncOpenAI, model: str, size: str, accepted: bool) -> None:
    """Fixed sizes for older models; multiples of 16, 1:3..3:1, ≤3840x2160 for gpt-image-2*."""
    if accepted:
        stream = await client.images.generate(model=model, prompt="x", size=size, stream=True)
        completed = [e async for e in stream]
        assert completed[-1].size == size
        return
    with pytest.raises(openai.BadRequestError) as error:
        await client.images.generate(model=model, prompt="x", size=size)
    assert (error.value.code, error.value.param) == ("invalid_value", "size")


async def test_other_validation_rules(client: AsyncOpenAI) -> None:
    """Transparent jpeg, partial_images > 3 and over-long prompts are 400s; nulls are fine.

    (Unknown fields are refused: see tests/test_fake_strict.py.)
    """
    with pytest.raises(openai.BadRequestError) as transparent_jpeg:
        await client.images.generate(prompt="x", background="transparent", output_format="jpeg")
    assert transparent_jpeg.value.param == "background"
    with pytest.raises(openai.BadRequestError) as too_many:
        await client.responses.create(
            model="gpt-5.5", input="x", tools=[{"type": "image_generation", "partial_images": 4}]
        )
    assert too_many.value.param == "tools[0].partial_images"
    with pytest.raises(openai.BadRequestError) as long_prompt:
        await client.images.generate(prompt="x" * 32001)
    assert long_prompt.value.param == "prompt"

    result = await client.images.generate(
        prompt="x",
        model=None,
        size=None,
        quality=None,
        background=None,
        output_format=None,
        n=None,
    )
    assert result.size == "1024x1024" and result.output_format == "png"


async def test_responses_mask_only_changes_its_transparent_area(client: AsyncOpenAI) -> None:
    """With input_image_mask, pixels under the opaque part of the mask stay as they were."""
    source = pattern_png(512, 512)
    response = await client.responses.create(
        model="gpt-5.5",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "paint the left side blue"},
                    {"type": "input_image", "image_url": data_url(source), "detail": "auto"},
                ],
            }
        ],
        tools=[
            {
                "type": "image_generation",
                "model": "gpt-image-2",
                "size": "512x512",
                "input_image_mask": {"image_url": data_url(half_mask_png(512, 512))},
            }
        ],
    )
    edited = decode(response.output[0].result or "")
    original = Image.open(io.BytesIO(source))
    right, left = (256, 0, 512, 512), (0, 0, 256, 512)
    assert edited.convert("RGB").crop(right).tobytes() == original.crop(right).tobytes()
    assert changed_fraction(edited.crop(left), original.crop(left)) > 0.9


async def test_images_edit_with_mask_list_and_stream(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """images.edit takes a list of images and a mask, streamed or not, and is recorded."""
    first, second = pattern_png(512, 512), pattern_png(256, 256)
    edited = await client.images.edit(
        model="gpt-image-2",
        image=[("a.png", first, "image/png"), ("b.png", second, "image/png")],
        mask=("mask.png", half_mask_png(512, 512), "image/png"),
        prompt="make the left half a night sky",
        size="512x512",
        input_fidelity=None,
    )
    picture = decode((edited.data or [])[0].b64_json or "")
    original = Image.open(io.BytesIO(first))
    right = (256, 0, 512, 512)
    assert picture.convert("RGB").crop(right).tobytes() == original.crop(right).tobytes()
    assert edited.usage is not None
    assert edited.usage.input_tokens_details.image_tokens == 2 * 194

    recorded = fake.requests[-1]
    assert recorded.path == "/v1/images/edits"
    assert [f.filename for f in recorded.files["image[]"]] == ["a.png", "b.png"]
    assert recorded.files["image[]"][0].data == first
    assert recorded.files["mask"][0].content_type == "image/png"
    assert recorded.form["prompt"] == "make the left half a night sky"

    stream = await client.images.edit(
        image=("one.png", first, "image/png"), prompt="sepia", stream=True, partial_images=2
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "image_edit.partial_image",
        "image_edit.partial_image",
        "image_edit.completed",
    ]
    assert list(fake.requests[-1].files) == ["image"]
    assert fake.requests[-1].form["stream"] == "true"
    assert events[-1].usage.output_tokens == 1056 + 200


async def test_images_edit_rejects_bad_uploads(client: AsyncOpenAI) -> None:
    """Untyped uploads and masks of the wrong size are 400s, as the real API answers."""
    source = pattern_png(512, 512)
    with pytest.raises(openai.BadRequestError) as untyped:
        await client.images.edit(image=source, prompt="x")
    assert "application/octet-stream" in untyped.value.message
    with pytest.raises(openai.BadRequestError) as wrong_mask:
        await client.images.edit(
            image=("a.png", source, "image/png"),
            mask=("m.png", half_mask_png(256, 256), "image/png"),
            prompt="x",
        )
    assert wrong_mask.value.param == "mask"


async def test_images_generate_stream_and_batch(client: AsyncOpenAI) -> None:
    """Streamed generation sends partials then completed; n=2 returns two different images."""
    stream = await client.images.generate(
        model="gpt-image-1-mini", prompt="a tin robot", stream=True, partial_images=2, quality="low"
    )
    events = [event async for event in stream]
    assert [(e.type, getattr(e, "partial_image_index", None)) for e in events] == [
        ("image_generation.partial_image", 0),
        ("image_generation.partial_image", 1),
        ("image_generation.completed", None),
    ]
    assert events[-1].usage.output_tokens == 272 + 200

    batch = await client.images.generate(prompt="a tin robot", n=2, output_format="webp")
    data = batch.data or []
    assert len(data) == 2 and data[0].b64_json != data[1].b64_json
    assert decode(data[0].b64_json or "").format == "WEBP"
    assert batch.usage is not None and batch.usage.output_tokens == 2 * 1056


async def test_n_is_taken_as_the_api_takes_it(client: AsyncOpenAI) -> None:
    """`n` is 1-10 on both Image API calls; edits return n different images with n times the
    output tokens; svg makes one image only; the Responses tool has no `n` at all."""
    for wrong in (0, 11):
        with pytest.raises(openai.BadRequestError) as out_of_range:
            await client.images.generate(prompt="a kite", n=wrong)
        assert out_of_range.value.param == "n"
    with pytest.raises(openai.BadRequestError) as svg:
        await client.images.generate(prompt="a kite", n=2, output_format="svg")
    assert svg.value.param == "n"
    edited = await client.images.edit(
        image=("a.png", pattern_png(1024, 1024), "image/png"), prompt="a kite", n=3, quality="low"
    )
    data = edited.data or []
    assert len({d.b64_json for d in data}) == 3
    assert edited.usage is not None and edited.usage.output_tokens == 3 * 272
    with pytest.raises(openai.BadRequestError) as tool:
        await client.responses.create(
            model="gpt-5.5", input="a kite", tools=[{"type": "image_generation", "n": 2}]
        )
    assert tool.value.param == "tools[0].n"


async def test_drawing_the_same_request_again_makes_another_picture(client: AsyncOpenAI) -> None:
    """The model samples: the same Responses request drawn twice gives two pictures."""
    tool: Any = {"type": "image_generation", "quality": "low"}
    first, second = [
        await client.responses.create(model="gpt-5.5", input="a red kite", tools=[tool])
        for _ in range(2)
    ]
    results = [
        item.result
        for response in (first, second)
        for item in response.output
        if item.type == "image_generation_call"
    ]
    assert len(results) == 2 and results[0] != results[1]


async def test_prompts_change_the_picture(client: AsyncOpenAI) -> None:
    """Different prompts give visibly different pictures."""
    pictures = []
    for prompt in ("a blue whale", "a yellow taxi"):
        result = await client.images.generate(prompt=prompt, quality="low")
        pictures.append(decode((result.data or [])[0].b64_json or ""))
    assert changed_fraction(*pictures) > 0.5


async def test_files_upload_and_use_by_file_id(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """An uploaded file can be retrieved, used as input_image by id, and deleted."""
    source = pattern_png(1024, 1024)
    uploaded = await client.files.create(file=("cat.png", source, "image/png"), purpose="vision")
    assert (uploaded.filename, uploaded.bytes, uploaded.purpose) == (
        "cat.png",
        len(source),
        "vision",
    )
    assert fake.files[uploaded.id] == source
    assert (await client.files.retrieve(uploaded.id)).id == uploaded.id
    assert fake.requests[-2].form == {"purpose": "vision"}

    response = await client.responses.create(
        model="gpt-5.5",
        input=[
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "give it a hat"},
                    {"type": "input_image", "file_id": uploaded.id, "detail": "auto"},
                ],
            }
        ],
        tools=[{"type": "image_generation"}],
    )
    edited = decode(response.output[0].result or "")
    top = (0, 0, 1024, 700)
    assert edited.crop(top).tobytes() == Image.open(io.BytesIO(source)).crop(top).tobytes()

    deleted = await client.files.delete(uploaded.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_requests_are_recorded(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """JSON bodies, headers (key redacted) and query strings are kept in order."""
    created = await client.responses.create(
        model="gpt-5.5", input="a kettle", tools=[{"type": "image_generation", "size": "auto"}]
    )
    await client.responses.retrieve(created.id, include=["message.input_image.image_url"])
    post, get = fake.requests[-2:]
    assert (post.method, post.path) == ("POST", "/v1/responses")
    assert post.json is not None and post.json["tools"][0]["size"] == "auto"
    assert post.headers["authorization"] == "<redacted>"
    assert post.headers["x-stainless-retry-count"] == "0"
    assert (get.method, get.query) == ("GET", {"include[]": "message.input_image.image_url"})
    assert post.at <= get.at


async def test_json_replies_carry_exact_content_type_and_request_id(
    fake: FakeOpenAI, client: AsyncOpenAI
) -> None:
    """JSON replies say exactly application/json and carry an x-request-id; unknown routes 404."""
    raw = await client.images.with_raw_response.generate(prompt="x")
    assert raw.headers["content-type"] == "application/json"
    assert raw.headers["x-request-id"].startswith("req_")
    assert raw.parse()._request_id == raw.headers["x-request-id"]

    async with aiohttp.ClientSession() as session, session.post(f"{fake.base_url}/nope") as reply:
        assert reply.status == 404
        assert reply.headers["Content-Type"] == "application/json"
        body = await reply.json()
    assert body["error"]["message"] == "Invalid URL (POST /v1/nope)"
    assert body["error"]["type"] == "invalid_request_error"


async def test_moderation_400_carries_moderation_details(
    fake: FakeOpenAI, client: AsyncOpenAI
) -> None:
    """moderation_400 is a BadRequestError whose body has moderation_details."""
    fake.queue_fault(Fault("moderation_400"))
    with pytest.raises(openai.BadRequestError) as error:
        await client.responses.create(model="gpt-5.5", input="x", stream=True)
    assert (error.value.code, error.value.type) == (
        "moderation_blocked",
        "image_generation_user_error",
    )
    assert isinstance(error.value.body, dict)
    assert error.value.body["moderation_details"]["moderation_stage"] == "input"
    assert error.value.request_id is not None and error.value.request_id in error.value.message


async def test_auth_and_quota_errors(fake: FakeOpenAI) -> None:
    """auth_401 and quota_429 are not retried, even by a client willing to retry."""
    sdk = make_client(fake, max_retries=2)
    fake.queue_fault(Fault("auth_401"))
    with pytest.raises(openai.AuthenticationError) as auth:
        await sdk.images.generate(prompt="x")
    assert auth.value.code == "invalid_api_key"
    fake.queue_fault(Fault("quota_429"))
    with pytest.raises(openai.RateLimitError) as quota:
        await sdk.images.generate(prompt="x")
    assert quota.value.code == "insufficient_quota"
    assert len(fake.requests) == 2
    await sdk.close()


async def test_rate_limit_is_retried_by_the_sdk(fake: FakeOpenAI) -> None:
    """One queued 429 is absorbed by the SDK's retry; three exhaust max_retries=2."""
    sdk = make_client(fake, max_retries=2)
    fake.queue_fault(Fault("rate_limit_429"), path="/v1/responses")
    response = await sdk.responses.create(
        model="gpt-5.5", input="x", tools=[{"type": "image_generation"}]
    )
    assert response.status == "completed"
    assert [r.headers["x-stainless-retry-count"] for r in fake.requests] == ["0", "1"]

    for _ in range(3):
        fake.queue_fault(Fault("rate_limit_429", retry_after_ms=5))
    with pytest.raises(openai.RateLimitError) as error:
        await sdk.images.generate(prompt="x")
    assert error.value.code == "rate_limit_exceeded"
    assert error.value.response.headers["retry-after-ms"] == "5"
    assert len(fake.requests) == 5
    await sdk.close()


async def test_server_error_and_path_filter(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """A fault waits for a request on its path; server_500 is an InternalServerError."""
    fake.queue_fault(Fault("server_500"), path="/v1/images/*")
    await client.responses.create(model="gpt-5.5", input="x")
    with pytest.raises(openai.InternalServerError) as error:
        await client.images.generate(prompt="x")
    assert error.value.code == "server_error"


async def test_flat_error_event_is_yielded(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """error_event_flat arrives as a ResponseErrorEvent after the given number of events."""
    fake.queue_fault(Fault("error_event_flat", after_events=3))
    stream = await client.responses.create(
        model="gpt-5.5", input="x", tools=[{"type": "image_generation"}], stream=True
    )
    events = [event async for event in stream]
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "error",
    ]
    assert (events[-1].code, events[-1].sequence_number) == ("server_error", 3)


async def test_nested_error_event_raises_api_error(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """error_event_nested makes the SDK raise APIError mid-stream, on both APIs."""
    fake.queue_fault(Fault("error_event_nested", after_events=2))
    stream = await client.responses.create(
        model="gpt-5.5", input="x", tools=[{"type": "image_generation"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIError) as error:
        async for event in stream:
            seen.append(event.type)
    assert not isinstance(error.value, openai.APIStatusError)
    assert error.value.code == "moderation_blocked"
    assert seen == ["response.created", "response.in_progress"]

    fake.queue_fault(Fault("error_event_nested"))
    images = await client.images.generate(prompt="x", stream=True, partial_images=1)
    with pytest.raises(openai.APIError):
        async for _ in images:
            pass


async def test_response_failed_is_yielded(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """response_failed ends the stream with response.failed; the helper has no final response."""
    fake.queue_fault(Fault("response_failed"))
    stream = await client.responses.create(
        model="gpt-5.5", input="x", tools=[{"type": "image_generation"}], stream=True
    )
    events = [event async for event in stream]
    failed = events[-1]
    assert failed.type == "response.failed"
    assert failed.response.error is not None
    assert failed.response.error.code == "image_content_policy_violation"
    item = failed.response.output[0]
    assert item.type == "image_generation_call" and item.status == "failed"
    assert item.error is not None and item.error.moderation_details is not None
    assert item.error.moderation_details.moderation_stage == "output"
    assert fake.stored_responses[failed.response.id]["status"] == "failed"

    fake.queue_fault(Fault("response_failed"))
    async with client.responses.stream(
        model="gpt-5.5", input="x", tools=[{"type": "image_generation"}]
    ) as helper:
        async for _ in helper:
            pass
        with pytest.raises(RuntimeError):
            await helper.get_final_response()


@pytest.mark.parametrize("kind", ["failed_item", "moderation_output"])
async def test_failed_item_in_a_completed_response(
    fake: FakeOpenAI, client: AsyncOpenAI, kind: str
) -> None:
    """failed_item completes the response with a failed, moderated image item and no result."""
    fake.reply_text = "I can't make that image."
    fake.queue_fault(Fault(kind))
    response = await client.responses.create(
        model="gpt-5.5", input="x", tools=[{"type": "image_generation"}]
    )
    assert response.status == "completed"
    item = response.output[0]
    assert item.type == "image_generation_call"
    assert (item.status, item.result) == ("failed", None)
    assert item.error is not None and item.error.code == "moderation_blocked"
    assert item.error.moderation_details is not None
    assert item.error.moderation_details.moderation_stage == "output"
    assert response.output_text == "I can't make that image."


async def test_incomplete_after_the_image_keeps_the_image_and_reports_usage(
    fake: FakeOpenAI, client: AsyncOpenAI
) -> None:
    """incomplete_after_image: the image item is done, then response.incomplete with usage."""
    fake.reply_text = REPLY
    fake.queue_fault(Fault("incomplete_after_image"))
    stream = await client.responses.create(
        model="gpt-5.5", input="a kite", tools=[{"type": "image_generation"}], stream=True
    )
    events = [event async for event in stream]
    types = [event.type for event in events]
    assert types.index("response.output_item.done") < types.index("response.incomplete")
    assert types[-1] == "response.incomplete" and "response.completed" not in types
    response = events[-1].response
    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    item = response.output[0]
    assert item.type == "image_generation_call" and item.result
    assert decode(item.result).size == (1024, 1024)
    assert response.usage is not None and response.usage.output_tokens > 0
    assert response.tool_usage is not None and response.tool_usage.image_gen is not None
    assert response.tool_usage.image_gen.output_tokens > 0
    # The model's reply was cut off: no message item.
    assert [out.type for out in response.output] == ["image_generation_call"]
    # The stored response can be continued from, like a completed one.
    follow = await client.responses.create(
        model="gpt-5.5",
        input="now at night",
        previous_response_id=response.id,
        tools=[{"type": "image_generation"}],
    )
    assert follow.status == "completed"


async def test_incomplete_before_the_image_bills_only_the_mainline_model(
    fake: FakeOpenAI, client: AsyncOpenAI
) -> None:
    """incomplete_before_image: response.incomplete with no image item and no image tokens."""
    fake.queue_fault(Fault("incomplete_before_image"))
    stream = await client.responses.create(
        model="gpt-5.5", input="a kite", tools=[{"type": "image_generation"}], stream=True
    )
    events = [event async for event in stream]
    assert [event.type for event in events] == [
        "response.created",
        "response.in_progress",
        "response.incomplete",
    ]
    response = events[-1].response
    assert response.output == []
    assert response.usage is not None and response.usage.input_tokens > 0
    assert response.tool_usage is not None and response.tool_usage.image_gen is not None
    assert response.tool_usage.image_gen.output_tokens == 0


async def test_cut_stream_raises_connection_error(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """cut_stream closes the connection mid-body: the SDK raises APIConnectionError."""
    fake.queue_fault(Fault("cut_stream", after_events=4))
    stream = await client.responses.create(
        model="gpt-5.5", input="x", tools=[{"type": "image_generation"}], stream=True
    )
    seen = []
    with pytest.raises(openai.APIConnectionError):
        async for event in stream:
            seen.append(event.type)
    assert len(seen) == 4
    assert "[DONE]" not in [s.type for s in fake.sent]


async def test_stall_times_out_on_the_client(fake: FakeOpenAI) -> None:
    """stall keeps the connection silent: a short client timeout fires; close() still returns."""
    sdk = make_client(fake, timeout=0.5)
    fake.queue_fault(Fault("stall", after_events=2))
    stream = await sdk.responses.create(
        model="gpt-5.5", input="x", tools=[{"type": "image_generation"}], stream=True
    )
    seen = []
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        async for event in stream:
            seen.append(event.type)
    assert seen == ["response.created", "response.in_progress"]
    assert 0.4 < time.monotonic() - started < 3
    await sdk.close()


async def test_timeline_spaces_partials_and_final(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """Partials reach the client when their delay expires, and the final image after ``final``."""
    fake.set_timeline(Timeline(first_partial=0.3, between_partials=0.2, final=0.4))
    stream = await client.responses.create(
        model="gpt-5.5",
        input="a clock tower",
        tools=[{"type": "image_generation", "partial_images": 2}],
        stream=True,
    )
    arrived: dict[str, float] = {}
    async for event in stream:
        key = event.type + str(getattr(event, "partial_image_index", ""))
        arrived[key] = time.monotonic()
    generating = arrived["response.image_generation_call.generating"]
    first = arrived["response.image_generation_call.partial_image0"]
    second = arrived["response.image_generation_call.partial_image1"]
    final = arrived["response.image_generation_call.completed"]
    assert 0.25 < first - generating < 0.7
    assert 0.15 < second - first < 0.6
    assert 0.35 < final - second < 0.8
    # Each partial left the server moments before it arrived: nothing sat in a buffer.
    flushed = {s.partial_index: s.at for s in fake.sent if s.partial_index is not None}
    assert 0 <= first - flushed[0] < 0.15
    assert 0 <= second - flushed[1] < 0.15


async def test_prerender_reuses_pictures() -> None:
    """With prerender=True different prompts share one cached picture of the same shape."""
    async with FakeOpenAI(prerender=True) as fake:
        sdk = make_client(fake)
        results = [
            await sdk.images.generate(prompt=prompt, size="1024x1536") for prompt in ("a", "b")
        ]
        stream = await sdk.images.generate(
            prompt="c", size="1024x1536", stream=True, partial_images=3
        )
        events = [event async for event in stream]
        await sdk.close()
    first, second = ((r.data or [])[0].b64_json for r in results)
    assert first == second == events[-1].b64_json
    assert len({e.b64_json for e in events}) == 4
    assert decode(first or "").size == (1024, 1536)


def test_unknown_fault_kind_is_refused() -> None:
    """A misspelt fault kind fails where it is written."""
    with pytest.raises(ValueError, match="unknown fault kind"):
        Fault("rate_limit")


async def test_command_line_serves_until_interrupted() -> None:
    """``python -m fakes.openai_api`` prints its base URL, serves, and exits on Ctrl-C."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "fakes.openai_api",
        "--port",
        "0",
        "--first-partial",
        "0.01",
        cwd=REPO_ROOT,
        stdout=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), timeout=15)).decode().strip()
        assert line.startswith("http://127.0.0.1:") and line.endswith("/v1")
        sdk = AsyncOpenAI(api_key="test", base_url=line, max_retries=0)
        result = await sdk.images.generate(prompt="a small test")
        await sdk.close()
        assert result.data
        process.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(process.wait(), timeout=10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_ctrl_c_taken_by_a_worker_thread_still_stops_a_stand_in() -> None:
    """The kernel may hand a process's SIGINT to any thread; the stand-ins render in worker
    threads, so the loop must wake at once wherever the signal landed."""
    async with interruptible() as stop:
        # raise_signal sends the signal to the calling thread: here, a worker thread.
        await asyncio.to_thread(signal.raise_signal, signal.SIGINT)
        await asyncio.wait_for(stop.wait(), 5)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


async def test_client_hanging_up_mid_stream_leaves_the_fake_healthy(
    fake: FakeOpenAI, client: AsyncOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that walks away during a slow generation does not break later requests."""
    fake.set_timeline(Timeline(first_partial=0.0, final=30.0))
    stream = await client.responses.create(
        model="gpt-5.5",
        input="x",
        tools=[{"type": "image_generation", "partial_images": 1}],
        stream=True,
    )
    async for event in stream:
        if event.type == "response.image_generation_call.partial_image":
            break
    await stream.close()
    fake.set_timeline(Timeline())
    response = await client.responses.create(
        model="gpt-5.5", input="y", tools=[{"type": "image_generation"}]
    )
    assert response.status == "completed"
    assert not [r for r in caplog.records if r.levelno >= 40]


async def test_close_ends_a_stalled_stream() -> None:
    """Closing the fake ends a stall promptly; the waiting client sees a connection error."""
    fake = FakeOpenAI()
    await fake.start()
    sdk = make_client(fake)
    fake.queue_fault(Fault("stall", after_events=1))
    stream = await sdk.responses.create(model="gpt-5.5", input="x", stream=True)
    iterator = stream.__aiter__()
    assert (await anext(iterator)).type == "response.created"
    started = time.monotonic()
    await fake.close()
    with pytest.raises(openai.APIConnectionError):
        await anext(iterator)
    assert time.monotonic() - started < 2
    await sdk.close()


async def test_stateless_turns_and_text_only_turns(fake: FakeOpenAI, client: AsyncOpenAI) -> None:
    """An image item passed back in input is edited; without the tool the model only talks."""
    first = await client.responses.create(
        model="gpt-5.5", input="a boat", tools=[{"type": "image_generation"}], store=False
    )
    item = first.output[0]
    assert item.type == "image_generation_call"
    second = await client.responses.create(
        model="gpt-5.5",
        input=[
            {
                "type": "image_generation_call",
                "id": item.id,
                "result": item.result,
                "status": "completed",
            },
            {"role": "user", "content": "now at night"},
        ],
        tools=[{"type": "image_generation"}],
        store=False,
    )
    assert second.output[0].type == "image_generation_call"
    assert second.output[0].action == "edit"

    talk = await client.responses.create(model="gpt-5.5", input="hello")
    assert [o.type for o in talk.output] == ["message"]
    assert talk.output_text


async def test_gif_and_svg_outputs(client: AsyncOpenAI) -> None:
    """gif renders an animation and svg a document; neither can stream."""
    gif = await client.images.generate(
        model="gpt-image-2.5-flare", prompt="a spinning coin", output_format="gif", frame_count=3
    )
    animation = decode((gif.data or [])[0].b64_json or "")
    assert (animation.format, getattr(animation, "n_frames", 1)) == ("GIF", 3)
    svg = await client.images.generate(prompt="a logo", output_format="svg", size="1024x1536")
    document = base64.b64decode((svg.data or [])[0].b64_json or "")
    assert document.startswith(b"<svg") and b'height="1536"' in document
    with pytest.raises(openai.BadRequestError) as error:
        await client.images.generate(prompt="x", output_format="gif", stream=True)
    assert error.value.param == "output_format"
