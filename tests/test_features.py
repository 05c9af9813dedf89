"""What image-bot users ask for most, end to end against the stand-ins: cancel, named aspect
ratios, the revised prompt, quota tiers by role, where content belongs, an honest /usage.
"""

from __future__ import annotations

import contextlib
import io
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.core import i18n
from bot.sandbox import Sandbox, sandbox
from fakes.openai_api import Timeline
from tests.e2e import ErrorLog, custom_ids, failures, finals
from tests.e2e import error_log as error_log
from tests.test_ledger import billed, ephemeral_texts

FAST = Timeline(first_partial=0.05, between_partials=0.05, final=0.05)
SLOW = Timeline(first_partial=0.3, between_partials=0.3, final=3.0)


@pytest.fixture
async def box(tmp_path: Path, error_log: ErrorLog) -> AsyncIterator[Sandbox]:
    async with sandbox(tmp_path, timeline=FAST) as running:
        yield running
        assert running.discord.unhandled == []
        assert running.discord.internal_errors == []


def tool_of(request: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = request["tools"][0]
    return tool


def response_requests(box: Sandbox) -> list[dict[str, Any]]:
    return [r.json for r in box.openai.requests if r.path == "/v1/responses" and r.json]


def usage_rows(box: Sandbox) -> list[tuple[Any, ...]]:
    database = Path(box.settings.database_url.split("///", 1)[1])
    with contextlib.closing(sqlite3.connect(database)) as db:
        return db.execute("SELECT user_id, images, cost_usd FROM usage_ledger").fetchall()


def cancel_button(message: dict[str, Any]) -> str | None:
    return next((c for c in custom_ids(message) if c.startswith("img:cancel:")), None)


# --- cancel -------------------------------------------------------------------------------


async def test_cancel_a_running_job_stops_it_and_charges_nothing(box: Sandbox) -> None:
    d = box.discord
    box.openai.set_timeline(SLOW)
    await d.slash("imagine", {"prompt": "a slow glacier", "partials": 2})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    progress = await d.wait_for(
        lambda: next((m for m in d.messages(thread["id"]) if cancel_button(m)), None), timeout=15
    )
    await d.wait_for(lambda: box.openai.requests or None)
    await d.click(progress["id"], cancel_button(progress))
    await box.wait_idle()
    shown = d.message(progress["id"])
    assert i18n.t("en", "discord.cancelled") in shown["content"]
    assert custom_ids(shown) == []
    assert finals(d, thread["id"]) == [] and failures(d, thread["id"]) == []
    assert usage_rows(box) == []
    assert billed(box.openai) == []


async def test_cancel_a_queued_job_takes_it_out_of_the_queue_for_free(tmp_path: Path) -> None:
    async with sandbox(tmp_path, timeline=SLOW, settings={"global_concurrency": 1}) as box:
        d = box.discord
        await d.slash("imagine", {"prompt": "first in line"})
        await d.wait_for(lambda: box.openai.requests or None, timeout=15)
        await d.slash("imagine", {"prompt": "second in line"})
        threads = await d.wait_for(
            lambda: d.threads(d.channel["id"])[1:] and d.threads(d.channel["id"]), timeout=15
        )
        second = threads[1]
        queued = await d.wait_for(
            lambda: next(
                (
                    m
                    for m in d.messages(second["id"])
                    if cancel_button(m) and "Waiting in line" in m["content"]
                ),
                None,
            ),
            timeout=15,
        )
        await d.click(queued["id"], cancel_button(queued))
        await d.wait_for(
            lambda: i18n.t("en", "discord.cancelled") in d.message(queued["id"])["content"] or None,
            timeout=15,
        )
        await box.wait_idle(60)
        # Only the first job ever reached OpenAI.
        assert len(box.openai.requests) == 1
        assert len(billed(box.openai)) == 1


async def test_only_the_requester_or_a_moderator_can_cancel(box: Sandbox) -> None:
    d = box.discord
    box.openai.set_timeline(SLOW)
    other = d.add_user("someone else")
    await d.slash("imagine", {"prompt": "a heron"})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    progress = await d.wait_for(
        lambda: next((m for m in d.messages(thread["id"]) if cancel_button(m)), None), timeout=15
    )
    await d.click(progress["id"], cancel_button(progress), user=other)
    await d.wait_for(
        lambda: (
            any(i18n.t("en", "studio.not_allowed_cancel") in t for t in ephemeral_texts(box))
            or None
        )
    )
    await d.wait_for(lambda: finals(d, thread["id"]) or None, timeout=15)


# --- named sizes and the revised prompt -----------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "model", "size"),
    [
        ("wide", "gpt-image-2", "1536x864"),
        ("wide", "gpt-image-1.5", "1536x1024"),
        ("tall", "gpt-image-2", "864x1536"),
        ("square", "gpt-image-1.5", "1024x1024"),
        ("portrait", "gpt-image-2", "1024x1536"),
    ],
)
async def test_aspect_presets_become_the_models_own_size(
    box: Sandbox, preset: str, model: str, size: str
) -> None:
    d = box.discord
    await d.slash("imagine", {"prompt": "a field", "size": preset, "model": model})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    await d.wait_for(lambda: finals(d, thread["id"]) or None, timeout=15)
    assert tool_of(response_requests(box)[-1])["size"] == size


async def test_a_preset_in_settings_follows_the_model_of_each_request(box: Sandbox) -> None:
    d = box.discord
    await d.slash("settings", {"size": "wide"})
    await d.wait_for(lambda: any("`wide`" in t for t in ephemeral_texts(box)) or None)
    await d.slash("imagine", {"prompt": "a river", "model": "gpt-image-1.5"})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    await d.wait_for(lambda: finals(d, thread["id"]) or None, timeout=15)
    assert tool_of(response_requests(box)[-1])["size"] == "1536x1024"
    choices = await d.autocomplete("imagine", {"prompt": "x", "size": "wi"}, focused="size")
    assert "wide" in [c["value"] for c in choices]


async def test_the_revised_prompt_is_shown_when_the_model_rewrote_it(box: Sandbox) -> None:
    d = box.discord
    box.openai.revise = lambda prompt: f"A detailed painting of {prompt}, golden hour"
    await d.slash("imagine", {"prompt": "a *bold* fox"})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    final = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=15)
    assert "golden hour" in final["content"]
    assert "\\*bold\\*" in final["content"]  # shown as typed, not as markdown
    box.openai.revise = lambda prompt: prompt
    await d.user_message(thread["id"], "at night")
    second = await d.wait_for(
        lambda: finals(d, thread["id"])[1] if len(finals(d, thread["id"])) > 1 else None
    )
    assert "✏️" not in second["content"]


# --- quota tiers by role ------------------------------------------------------------------


async def test_a_supporter_role_gets_its_own_daily_quota(tmp_path: Path) -> None:
    async with sandbox(tmp_path, timeline=FAST) as box:
        d = box.discord
        admin = d.add_user("admin", admin=True)
        role = d.add_role("supporter")
        fan = d.add_user("fan", roles=[role["id"]])
        await d.gateway.flush()

        def texts_with(fragment: str) -> int:
            return sum(fragment in t for t in ephemeral_texts(box))

        await d.slash("config", {"user_daily_images": 1}, user=admin)
        await d.wait_for(lambda: texts_with("user_daily_images") or None)
        await d.slash("config", {"tier_role": role["id"], "tier_daily_images": 2}, user=admin)
        await d.wait_for(lambda: texts_with(f"<@&{role['id']}> 2/day") or None)
        for count in (1, 2):
            await d.slash("imagine", {"prompt": f"fan art {count}"}, user=fan)
            await d.wait_for(
                lambda count=count: len(billed(box.openai)) == count or None, timeout=15
            )
        await box.wait_idle()
        await d.slash("imagine", {"prompt": "fan art 3"}, user=fan)
        await d.wait_for(lambda: texts_with("the quota of your role") or None)
        # A member without the role keeps the server's limit of one.
        await d.slash("imagine", {"prompt": "plain 1"})
        await d.wait_for(lambda: len(billed(box.openai)) == 3 or None, timeout=15)
        await box.wait_idle()
        await d.slash("imagine", {"prompt": "plain 2"})
        await d.wait_for(lambda: texts_with("of today's 1 images") or None)
        assert len(billed(box.openai)) == 3
        await d.slash("usage", user=fan)
        await d.wait_for(lambda: texts_with("comes from your role") or None, timeout=15)


# --- where content belongs ------------------------------------------------------------------


async def test_low_moderation_only_in_age_restricted_channels(tmp_path: Path) -> None:
    async with sandbox(tmp_path, timeline=FAST) as box:
        d = box.discord
        admin = d.add_user("admin", admin=True)
        await d.slash("config", {"low_moderation_nsfw_only": True}, user=admin)
        await d.wait_for(
            lambda: any("low_moderation_nsfw_only" in t for t in ephemeral_texts(box)) or None
        )
        await d.slash("imagine", {"prompt": "a duel", "moderation": "low"})
        await d.wait_for(
            lambda: (
                any(i18n.t("en", "bad.moderation_low_nsfw") in t for t in ephemeral_texts(box))
                or None
            )
        )
        assert box.openai.requests == []
        mature = d.add_channel("mature")
        mature["nsfw"] = True
        d.emit("CHANNEL_UPDATE", mature)
        await d.gateway.flush()
        await d.slash("imagine", {"prompt": "a duel", "moderation": "low"}, channel_id=mature["id"])
        thread = await d.wait_for(lambda: (d.threads(mature["id"]) or [None])[0], timeout=15)
        await d.wait_for(lambda: finals(d, thread["id"]) or None, timeout=15)
        assert tool_of(response_requests(box)[-1])["moderation"] == "low"


async def test_results_can_be_posted_as_spoilers(box: Sandbox) -> None:
    d = box.discord
    await d.slash("settings", {"spoiler": True})
    await d.wait_for(lambda: any("spoiler" in t for t in ephemeral_texts(box)) or None)
    await d.slash("imagine", {"prompt": "a plot twist", "partials": 1})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    final = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=15)
    assert final["attachments"][0]["filename"].startswith("SPOILER_")


# --- an honest /usage -------------------------------------------------------------------------


async def test_usage_names_members_counts_image_tokens_and_every_day(tmp_path: Path) -> None:
    async with sandbox(tmp_path, timeline=FAST) as box:
        d = box.discord
        admin = d.add_user("admin", admin=True)
        painter = d.add_user("Painter Kim")
        await d.slash("imagine", {"prompt": "a tiger"}, user=painter)
        await d.wait_for(lambda: billed(box.openai) or None, timeout=15)
        await box.wait_idle()
        await d.slash("usage", user=admin)
        text = await d.wait_for(
            lambda: next((t for t in ephemeral_texts(box) if "Top this month" in t), None),
            timeout=15,
        )
        assert "Painter Kim" in text and painter["id"] not in text
        await d.slash("usage", user=painter)
        mine = await d.wait_for(
            lambda: next((t for t in ephemeral_texts(box) if "Today:** 1 image(s)" in t), None),
            timeout=15,
        )
        database = Path(box.settings.database_url.split("///", 1)[1])
        with contextlib.closing(sqlite3.connect(database)) as db:
            (image_tokens,) = db.execute(
                "SELECT SUM(image_input_tokens + image_output_tokens) FROM usage_ledger"
            ).fetchone()
        assert image_tokens > 1000
        assert f"{image_tokens:,} image tokens" in mine


def test_the_chart_font_really_draws_korean() -> None:
    from PIL import ImageFont

    from bot.core import images

    assert images.draws_hangul(), f"install {images.CJK_FONT_PACKAGES}"
    # The check tells a font without Hangul apart: DejaVu draws every syllable as one box.
    dejavu = next(Path("/usr/share/fonts").rglob("DejaVuSans.ttf"))
    box_font = ImageFont.truetype(str(dejavu), 32)
    assert images._glyph(box_font, "한") == images._glyph(box_font, "국")


# --- edit any image -------------------------------------------------------------------------


async def test_edit_with_imagine_on_anyones_image_opens_a_thread(box: Sandbox) -> None:
    from tests.e2e import png

    d = box.discord
    artist = d.add_user("artist")
    posted = await d.user_message(
        d.channel["id"], "my sketch", files=[("sketch.png", png((512, 512)))], user=artist
    )
    menu = await d.message_command("Edit with imagine", posted["id"])
    await d.submit_modal(menu, {"instruction": "color it in"})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    await d.wait_for(lambda: finals(d, thread["id"]) or None, timeout=15)
    request = response_requests(box)[-1]
    parts = request["input"][0]["content"]
    assert any(p.get("type") == "input_image" for p in parts)
    assert "color it in" in str(request["input"])
    # The chat message itself was never a turn: only the menu made a request.
    assert len(response_requests(box)) == 1


async def test_edit_with_imagine_on_a_message_without_an_image_says_so(box: Sandbox) -> None:
    d = box.discord
    posted = await d.user_message(d.channel["id"], "just words")
    await d.message_command("Edit with imagine", posted["id"])
    await d.wait_for(
        lambda: (
            any(i18n.t("en", "discord.no_image_to_edit") in t for t in ephemeral_texts(box)) or None
        )
    )
    assert box.openai.requests == []


# --- zoom out and pan -----------------------------------------------------------------------


def _mask_and_image(box: Sandbox, engine: str) -> tuple[Image.Image, Image.Image, str]:
    """The canvas and mask the last request sent, and the size it asked for."""
    import base64

    if engine == "images":
        request = [r for r in box.openai.requests if r.path == "/v1/images/edits"][-1]
        files = request.files
        image = (files.get("image[]") or files["image"])[0]
        canvas = Image.open(io.BytesIO(image.data))
        mask = Image.open(io.BytesIO(files["mask"][0].data))
        return canvas, mask, str(request.form["size"])
    body = response_requests(box)[-1]
    tool = tool_of(body)
    parts = body["input"][-1]["content"]
    url = next(p["image_url"] for p in parts if p.get("type") == "input_image")
    canvas = Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))
    mask_url = tool["input_image_mask"]["image_url"]
    mask = Image.open(io.BytesIO(base64.b64decode(mask_url.split(",", 1)[1])))
    return canvas, mask, str(tool["size"])


@pytest.mark.parametrize("engine", ["responses", "images"])
@pytest.mark.parametrize(
    ("how", "size", "new_box"),
    [
        ("left", "1536x1024", (0, 0, 512, 1024)),
        ("up", "1024x1536", (0, 0, 1024, 512)),
        ("zoom2", "2048x2048", (0, 0, 2048, 512)),
    ],
)
async def test_zoom_out_and_pan_extend_the_canvas_and_mask_the_new_border(
    tmp_path: Path, engine: str, how: str, size: str, new_box: tuple[int, int, int, int]
) -> None:
    async with sandbox(
        tmp_path, timeline=FAST, settings={"engine": engine, "default_size": "1024x1024"}
    ) as box:
        d = box.discord
        await d.slash("imagine", {"prompt": "a lighthouse", "model": "gpt-image-2"})
        thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
        final = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=15)
        extend = next(c for c in custom_ids(final) if c.startswith("img:extend:"))
        await d.select(final["id"], extend, [how])
        await d.wait_for(lambda: len(finals(d, thread["id"])) == 2 or None, timeout=15)
        canvas, mask, asked = _mask_and_image(box, engine)
        assert asked == size
        assert canvas.size == mask.size == tuple(int(v) for v in size.split("x"))
        alpha = mask.getchannel("A")
        # The new border is transparent (to be drawn), the old picture opaque (kept).
        assert alpha.crop(new_box).getextrema() == (0, 0)
        w, h = canvas.size
        assert alpha.getpixel((w // 2, h // 2)) == 255
