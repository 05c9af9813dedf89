"""The OpenAI stand-in refuses what the API refuses, with the API's error shape.

Every endpoint the bot uses: an unknown parameter is `unknown_parameter` naming it by its path
(`tools[0].n`), a legacy DALL-E parameter is refused for GPT image models, and the values a
model does not support are `invalid_value` with `param`.
"""

from __future__ import annotations

import io
import json
import random
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest
from openai import AsyncOpenAI
from PIL import Image

from fakes._openai_render import OUTPUT_TOKENS, PARTIAL_IMAGE_TOKENS
from fakes._openai_strict import check_request
from fakes.discord_api import FakeDiscord
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


# ----- the Discord stand-in's REST shapes, status codes and limits ----------------------------


@pytest.fixture
async def discord_fake() -> AsyncIterator[FakeDiscord]:
    async with FakeDiscord(upload_limit=1000) as fake:
        yield fake


async def rest(
    fake: FakeDiscord,
    method: str,
    path: str,
    body: Any = None,
    files: list[tuple[str, bytes]] | None = None,
) -> tuple[int, Any]:
    """One REST call as the bot makes it: JSON, or multipart payload_json + files[n]."""
    headers = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession() as http:
        if files:
            form = aiohttp.FormData(quote_fields=False)
            form.add_field("payload_json", json.dumps(body or {}), content_type="application/json")
            for index, (name, data) in enumerate(files):
                form.add_field(f"files[{index}]", data, filename=name)
            request = http.request(method, fake.api_base + path, data=form, headers=headers)
        else:
            request = http.request(method, fake.api_base + path, json=body, headers=headers)
        async with request as response:
            return response.status, await response.json()


async def test_rest_messages_carry_no_gateway_only_fields(
    discord_fake: FakeDiscord, monkeypatch: pytest.MonkeyPatch
) -> None:
    dispatched: list[tuple[str, dict[str, Any]]] = []
    monkeypatch.setattr(
        discord_fake.gateway, "dispatch", lambda event, data: dispatched.append((event, data))
    )
    channel = discord_fake.channel["id"]
    status, message = await rest(
        discord_fake, "POST", f"/channels/{channel}/messages", {"content": "hi"}
    )
    assert status == 200
    # The plain message object: what the specification requires, and not guild_id or member.
    for key in (
        "id", "channel_id", "author", "content", "timestamp", "edited_timestamp", "tts",
        "mention_everyone", "mentions", "mention_roles", "attachments", "embeds", "pinned", "type",
    ):  # fmt: skip
        assert key in message, key
    assert "guild_id" not in message and "member" not in message
    status, fetched = await rest(
        discord_fake, "GET", f"/channels/{channel}/messages/{message['id']}"
    )
    assert status == 200 and "member" not in fetched and "guild_id" not in fetched
    # The gateway event for the same message has both.
    assert dispatched[-1][0] == "MESSAGE_CREATE" and dispatched[-1][1]["id"] == message["id"]
    assert dispatched[-1][1]["guild_id"] == str(discord_fake.guild["id"])
    assert "member" in dispatched[-1][1]


async def test_thread_creation_answers_201(discord_fake: FakeDiscord) -> None:
    channel = discord_fake.channel["id"]
    _, message = await rest(discord_fake, "POST", f"/channels/{channel}/messages", {"content": "x"})
    body = {"name": "a thread", "auto_archive_duration": 1440}
    status, thread = await rest(
        discord_fake, "POST", f"/channels/{channel}/messages/{message['id']}/threads", body
    )
    assert (status, thread["id"]) == (201, message["id"])
    status, _ = await rest(discord_fake, "POST", f"/channels/{channel}/threads", body)
    assert status == 201


async def test_the_upload_limit_applies_to_each_file_not_the_request(
    discord_fake: FakeDiscord,
) -> None:
    channel = discord_fake.channel["id"]
    path = f"/channels/{channel}/messages"
    # Two files each under the 1000-byte limit, together over it: accepted.
    status, message = await rest(
        discord_fake, "POST", path, {}, [("a.bin", b"a" * 600), ("b.bin", b"b" * 600)]
    )
    assert status == 200 and len(message["attachments"]) == 2
    status, error = await rest(discord_fake, "POST", path, {}, [("c.bin", b"c" * 1001)])
    assert (status, error["code"]) == (413, 40005)


@pytest.mark.parametrize(
    ("embed", "where"),
    [
        ({"footer": {"text": "f" * 2049}}, ["embeds", "0", "footer", "text"]),
        ({"author": {"name": "a" * 257}}, ["embeds", "0", "author", "name"]),
    ],
)
async def test_embed_footer_and_author_limits(
    discord_fake: FakeDiscord, embed: dict[str, Any], where: list[str]
) -> None:
    channel = discord_fake.channel["id"]
    path = f"/channels/{channel}/messages"
    status, error = await rest(discord_fake, "POST", path, {"embeds": [embed]})
    assert (status, error["code"]) == (400, 50035)
    node = error["errors"]
    for key in where:
        node = node[key]
    assert node["_errors"]
    (part,) = embed
    ok = {part: {key: value[:-1] for key, value in embed[part].items()}}
    assert (await rest(discord_fake, "POST", path, {"embeds": [ok]}))[0] == 200
    # Footer and author count towards the 6000 characters of all embeds.
    length = len(next(iter(ok[part].values())))
    rest_of_it = {"description": "d" * (6001 - 3000 - length)}
    both = [{"description": "d" * 3000, **ok}, rest_of_it]
    assert (await rest(discord_fake, "POST", path, {"embeds": both}))[0] == 400
    assert (await rest(discord_fake, "POST", path, {"embeds": [both[0], {"description": "d"}]}))[
        0
    ] == 200


async def test_select_option_descriptions_are_at_most_100(discord_fake: FakeDiscord) -> None:
    channel = discord_fake.channel["id"]

    def menu(description: str) -> dict[str, Any]:
        option = {"label": "a", "value": "a", "description": description}
        select = {"type": 3, "custom_id": "pick", "options": [option]}
        return {"components": [{"type": 1, "components": [select]}]}

    path = f"/channels/{channel}/messages"
    assert (await rest(discord_fake, "POST", path, menu("d" * 100)))[0] == 200
    status, error = await rest(discord_fake, "POST", path, menu("d" * 101))
    assert (status, error["code"]) == (400, 50035)


def command(**fields: Any) -> dict[str, Any]:
    return {"name": "imagine", "description": "Draw", "type": 1, **fields}


async def test_commands_over_8000_characters_are_refused(discord_fake: FakeDiscord) -> None:
    path = f"/applications/{discord_fake.application_id}/commands"
    option = {"type": 3, "name": "style", "description": "d" * 100}
    choices = [{"name": f"c{i}" + "n" * 97, "value": f"v{i}" + "v" * 97} for i in range(25)]
    big = command(options=[option | {"name": f"o{i}", "choices": choices} for i in range(2)])
    # 2 options x 25 choices x 200 characters: 10,000, every single field within its own limit.
    status, error = await rest(discord_fake, "PUT", path, [big])
    assert (status, error["code"]) == (400, 50035)
    small = command(options=[option | {"name": "o0", "choices": choices}])
    assert (await rest(discord_fake, "PUT", path, [small]))[0] == 200
    # Only the longest localization of a field counts, not their sum.
    localized = command(
        description_localizations={"ko": "그리기" * 33, "ja": "描く" * 50},
        options=[option | {"name": "o0", "choices": choices}],
    )
    assert (await rest(discord_fake, "PUT", path, [localized]))[0] == 200


@pytest.mark.parametrize("locale", ["en", "kr", "ko-KR", "EN-US"])
async def test_localization_keys_must_be_discord_locales(
    discord_fake: FakeDiscord, locale: str
) -> None:
    path = f"/applications/{discord_fake.application_id}/commands"
    status, error = await rest(
        discord_fake, "PUT", path, [command(description_localizations={locale: "x"})]
    )
    assert (status, error["code"]) == (400, 50035)
    option = {"type": 3, "name": "size", "description": "d", "name_localizations": {locale: "s"}}
    status, _ = await rest(discord_fake, "PUT", path, [command(options=[option])])
    assert status == 400
    good = command(description_localizations={"ko": "그리기", "en-US": "Draw"})
    assert (await rest(discord_fake, "PUT", path, [good]))[0] == 200


# ----- the recorded requests of the end-to-end tests, checked again ----------------------------


def test_the_final_check_flags_a_misspelt_option_in_recorded_requests() -> None:
    from fakes import _discord_model
    from fakes.openai_api import RecordedRequest
    from tests.conftest import recorded_request_violations

    def sent(body: dict[str, Any]) -> RecordedRequest:
        return RecordedRequest("POST", "/v1/responses", {}, {}, body, {}, {}, 0.0)

    good = {"model": "gpt-5.5", "input": "x", "tools": [TOOL]}
    misspelt = {**good, "tools": [TOOL | {"partials": 2}]}
    commands = [{"name": "imagine", "description": "d", "description_localizations": {"kr": "x"}}]
    discord = _discord_model.RecordedRequest(
        "PUT", "/applications/1/commands", {}, commands, [], 0.0
    )
    found = recorded_request_violations(
        [
            ("t::good", "openai", sent(good)),
            ("t::bad", "openai", sent(misspelt)),
            ("t::sync", "discord", discord),
        ]
    )
    assert len(found) == 2
    assert found[0].startswith("t::bad: POST /v1/responses") and "tools[0].partials" in found[0]
    assert found[1].startswith("t::sync: PUT") and "kr" in found[1]
