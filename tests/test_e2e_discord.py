"""End to end: the real discord.py client against the Discord stand-in, the turn engine against the OpenAI stand-in."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.sandbox import Sandbox, sandbox
from fakes.openai_api import Timeline
from tests.e2e import button, custom_ids, finals, png
from tests.e2e import error_log as error_log

TIMELINE = Timeline(first_partial=0.15, between_partials=0.15, final=0.15)


@pytest.fixture
async def box(tmp_path: Path, error_log: Any) -> AsyncIterator[Sandbox]:
    async with sandbox(tmp_path, timeline=TIMELINE) as running:
        yield running
        assert running.discord.unhandled == []
        assert running.discord.internal_errors == []


def responses_requests(box: Sandbox) -> list[dict[str, Any]]:
    return [r.json for r in box.openai.requests if r.path == "/v1/responses" and r.json is not None]


async def imagine(
    box: Sandbox, prompt: str, **options: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run /imagine in the default channel; return its thread and the final image message."""
    d = box.discord
    before = {t["id"] for t in d.threads(d.channel["id"])}
    await d.slash("imagine", {"prompt": prompt, **options})
    thread = await d.wait_for(
        lambda: next((t for t in d.threads(d.channel["id"]) if t["id"] not in before), None),
        timeout=15,
    )
    final = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=15)
    return thread, final


async def next_final(box: Sandbox, channel_id: Any, count: int) -> dict[str, Any]:
    """Wait for the `count`-th final image in a channel."""
    d = box.discord
    found = await d.wait_for(
        lambda: finals(d, channel_id) if len(finals(d, channel_id)) >= count else None, timeout=15
    )
    return found[count - 1]


async def test_imagine_streams_partials_into_one_message_before_the_final(box: Sandbox) -> None:
    d = box.discord
    thread, final = await imagine(box, "a lighthouse in a storm", partials=2)
    assert thread["name"] == "a lighthouse in a storm"
    versions = d.versions(final["id"])
    shown = [v for v in versions if v.attachments]
    names = [v.attachments[0].filename for v in shown]
    assert names[-1] == "image.png"
    assert names[:-1] == ["partial-0.png", "partial-1.png"]
    times = [v.at for v in shown]
    assert times == sorted(times) and times[0] < times[-1]
    # The first preview was visible well before the final (the timeline spaces them 0.15 s apart).
    assert times[-1] - times[0] > 0.2
    partial = Image.open(io.BytesIO(shown[0].attachments[0].data))
    full = Image.open(io.BytesIO(shown[-1].attachments[0].data))
    assert partial.size == full.size == (1024, 1024)
    assert [c.split(":")[1] for c in custom_ids(final)] == [
        "reroll",
        "vary",
        "edit",
        "region",
        "delete",
        "extend",
    ]
    assert "gpt-image-2.6-sunburst" in final["content"] and "$" in final["content"]
    body = responses_requests(box)[-1]
    assert body["tools"][0]["partial_images"] == 2
    assert "previous_response_id" not in body


async def test_thread_messages_continue_the_latest_response_and_chain_in_order(
    box: Sandbox,
) -> None:
    d = box.discord
    thread, _ = await imagine(box, "a cabin in the woods")
    first_id = box.openai.requests[-1].json and responses_requests(box)[-1]
    stored = list(box.openai.stored_responses)
    await d.user_message(thread["id"], "now in winter")
    await next_final(box, thread["id"], 2)
    assert responses_requests(box)[-1]["previous_response_id"] == stored[0]
    assert first_id
    # Two quick messages chain: the second continues from the first's result, not from the same parent.
    await d.user_message(thread["id"], "add a fox")
    await d.user_message(thread["id"], "make it night")
    await next_final(box, thread["id"], 4)
    ids = list(box.openai.stored_responses)
    bodies = responses_requests(box)
    assert bodies[-2]["previous_response_id"] == ids[1]
    assert bodies[-1]["previous_response_id"] == ids[2]


async def test_a_reply_to_an_earlier_image_branches_from_it(box: Sandbox) -> None:
    d = box.discord
    thread, first = await imagine(box, "a red car")
    await d.user_message(thread["id"], "make it blue")
    await next_final(box, thread["id"], 2)
    first_response = next(iter(box.openai.stored_responses))
    await d.user_message(thread["id"], "make it green instead", reply_to=first["id"])
    await next_final(box, thread["id"], 3)
    assert responses_requests(box)[-1]["previous_response_id"] == first_response


async def test_reference_images_and_a_mask_from_a_thread_message(box: Sandbox) -> None:
    d = box.discord
    thread, _ = await imagine(box, "a table")
    mask = Image.new("L", (1024, 1024), 0)
    mask.paste(255, (0, 0, 512, 512))
    buffer = io.BytesIO()
    mask.save(buffer, "PNG")
    await d.user_message(
        thread["id"],
        "put this vase on it",
        files=[("vase.png", png()), ("mask.png", buffer.getvalue())],
    )
    await next_final(box, thread["id"], 2)
    body = responses_requests(box)[-1]
    content = body["input"][0]["content"]
    assert [c["type"] for c in content] == ["input_text", "input_image"]
    assert body["tools"][0]["input_image_mask"]["image_url"].startswith("data:image/png;base64,")


async def test_buttons_reroll_vary_edit_region_delete(box: Sandbox) -> None:
    d = box.discord
    thread, first = await imagine(box, "a castle on a hill", partials=1)
    first_response = next(iter(box.openai.stored_responses))

    await d.click(first["id"], button(first, "reroll"))
    await next_final(box, thread["id"], 2)
    reroll = responses_requests(box)[-1]
    assert "previous_response_id" not in reroll
    assert reroll["input"][0]["content"][0]["text"] == "a castle on a hill"

    await d.click(first["id"], button(first, "vary"))
    await next_final(box, thread["id"], 3)
    assert responses_requests(box)[-1]["previous_response_id"] == first_response

    opened = await d.click(first["id"], button(first, "edit"))
    await d.submit_modal(opened, {"instruction": "add a dragon"})
    await next_final(box, thread["id"], 4)
    edit = responses_requests(box)[-1]
    assert edit["previous_response_id"] == first_response
    assert edit["input"][0]["content"][0]["text"] == "add a dragon"

    await d.click(first["id"], button(first, "region"))
    picker = await d.wait_for(
        lambda: next(
            (
                m
                for m in d.messages(thread["id"])
                if any(c.startswith("img:cells:") for c in custom_ids(m))
            ),
            None,
        )
    )
    assert picker["attachments"][0]["filename"] == "grid.png"
    chosen = await d.select(picker["id"], custom_ids(picker)[0], ["1", "2"])
    await d.submit_modal(chosen, {"instruction": "a flag on the tower"})
    await next_final(box, thread["id"], 5)
    region = responses_requests(box)[-1]
    assert region["previous_response_id"] == first_response
    assert region["tools"][0]["input_image_mask"]["image_url"].startswith("data:image/png;base64,")
    assert [c["type"] for c in region["input"][0]["content"]] == ["input_text", "input_image"]

    stranger = d.add_user("mallory")
    await d.click(first["id"], button(first, "delete"), user=stranger)
    await d.wait_for(
        lambda: any(
            "⚠️" in m["content"] for m in d.messages(thread["id"]) if int(m.get("flags") or 0) & 64
        )
    )
    assert d.message(first["id"])
    await d.click(first["id"], button(first, "delete"))
    await d.wait_for(lambda: all(m["id"] != first["id"] for m in d.messages(thread["id"])))


async def test_a_crafted_custom_id_cannot_act_on_another_channels_image(box: Sandbox) -> None:
    d = box.discord
    _thread_a, final_a = await imagine(box, "picture one")
    thread_b, final_b = await imagine(box, "picture two")
    requests_before = len(responses_requests(box))
    turn_a = button(final_a, "reroll").split(":")[2]
    # Mallory re-labels a button in thread B with the id of a turn in thread A.
    forged = d.message(final_b["id"])
    forged["components"][0]["components"][0]["custom_id"] = f"img:reroll:{turn_a}"
    record = d._messages[int(final_b["id"])]
    record.components = forged["components"]
    await d.click(final_b["id"], f"img:reroll:{turn_a}")
    await d.wait_for(lambda: any("⚠️" in m["content"] for m in d.messages(thread_b["id"])))
    assert len(responses_requests(box)) == requests_before


async def test_imagine_inside_a_bot_thread_continues_it(box: Sandbox) -> None:
    d = box.discord
    thread, _ = await imagine(box, "a garden")
    await d.slash("imagine", {"prompt": "add a pond"}, channel_id=thread["id"])
    await next_final(box, thread["id"], 2)
    assert responses_requests(box)[-1]["previous_response_id"] == next(
        iter(box.openai.stored_responses)
    )
    assert len(d.threads(d.channel["id"])) == 1


async def test_direct_messages_are_one_conversation(box: Sandbox) -> None:
    d = box.discord
    await d.slash("imagine", {"prompt": "a paper boat"}, dm=True)
    dm = d.dm_channel(d.user)
    await next_final(box, dm["id"], 1)
    await d.user_message(dm["id"], "make it sail at sunset")
    await next_final(box, dm["id"], 2)
    assert responses_requests(box)[-1]["previous_response_id"] == next(
        iter(box.openai.stored_responses)
    )


async def test_without_thread_permission_the_image_is_posted_in_the_channel(box: Sandbox) -> None:
    d = box.discord
    d.deny(d.channel["id"], "create_threads")
    await d.slash("imagine", {"prompt": "a lonely tree"})
    final = await next_final(box, d.channel["id"], 1)
    assert d.threads(d.channel["id"]) == []
    await d.user_message(d.channel["id"], "add a swing", reply_to=final["id"])
    await next_final(box, d.channel["id"], 2)
    assert responses_requests(box)[-1]["previous_response_id"] == next(
        iter(box.openai.stored_responses)
    )


async def test_bad_input_gets_a_clear_message_and_costs_nothing(box: Sandbox) -> None:
    d = box.discord
    await d.slash("imagine", {"prompt": "a cat", "background": "transparent", "format": "jpeg"})
    await d.wait_for(lambda: any("jpeg" in m["content"] for m in d.messages(d.channel["id"])))
    await d.slash("imagine", {"prompt": "a cat", "model": "dall-e-3"})
    await d.wait_for(lambda: any("retired" in m["content"] for m in d.messages(d.channel["id"])))
    await d.slash(
        "imagine", {"prompt": "a cat"}, attachments={"image": ("notes.png", b"just text")}
    )
    await d.wait_for(
        lambda: any("not an image" in m["content"].lower() for m in d.messages(d.channel["id"]))
    )
    assert box.openai.requests == []
    assert d.threads(d.channel["id"]) == []


async def test_a_job_that_outlives_the_interaction_token_still_arrives(tmp_path: Path) -> None:
    async with sandbox(
        tmp_path, timeline=Timeline(first_partial=0.5, between_partials=0.2, final=0.2)
    ) as box:
        d = box.discord
        interaction = await d.slash("imagine", {"prompt": "a slow painting"})
        thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
        d.age_interaction(interaction, 16 * 60)
        await next_final(box, thread["id"], 1)
        statuses = [r.status for r in d.requests]
        assert 401 not in statuses and 404 not in statuses


async def test_autocomplete_offers_sizes_and_models(box: Sandbox) -> None:
    d = box.discord
    sizes = await d.autocomplete("imagine", {"prompt": "x", "size": "15"}, "size")
    assert [c["value"] for c in sizes] == ["1536x1024", "1536x864"]
    typed = await d.autocomplete("imagine", {"prompt": "x", "size": "2048x1152"}, "size")
    assert typed[0]["value"] == "2048x1152"
    models = await d.autocomplete("imagine", {"prompt": "x", "model": "mini"}, "model")
    assert [c["value"] for c in models] == ["gpt-image-1-mini"]
    assert len(await d.autocomplete("imagine", {"prompt": "x", "model": ""}, "model")) <= 25


async def test_the_image_engine_sends_the_previous_image_itself(tmp_path: Path) -> None:
    async with sandbox(tmp_path, settings={"engine": "images"}, timeline=TIMELINE) as box:
        d = box.discord
        thread, first = await imagine(box, "a paper lantern", partials=1)
        assert box.openai.requests[-1].path == "/v1/images/generations"
        await d.user_message(thread["id"], "make it glow green")
        second = await next_final(box, thread["id"], 2)
        edit = box.openai.requests[-1]
        assert edit.path == "/v1/images/edits"
        sent = (edit.files.get("image") or edit.files.get("image[]") or [])[0]
        assert sent.data == d.attachment_bytes(first["attachments"][0])
        assert edit.form["prompt"] == "make it glow green"
        assert "image.png" in second["attachments"][0]["filename"]
        # A reply branches from the first image: that image is what gets sent.
        await d.user_message(thread["id"], "make it blue", reply_to=first["id"])
        await next_final(box, thread["id"], 3)
        branch = box.openai.requests[-1]
        assert (branch.files.get("image") or branch.files["image[]"])[0].data == sent.data


async def test_the_models_own_words_are_shown_with_the_image(box: Sandbox) -> None:
    box.openai.reply_text = "Here is your otter, now with a tiny scarf."
    _, final = await imagine(box, "an otter with a scarf")
    assert "Here is your otter, now with a tiny scarf." in final["content"]
