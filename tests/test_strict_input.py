"""Input that used to get through loosely, end to end through the real bot in the sandbox.

Refusals of this kind live in the corpus of tests/test_bad_input.py (invisible prompts, sizes in
other digits, two masks on one message). Here: what is accepted must reach the API in the one
form it takes (sizes, masks of every kind the help describes), user text echoed by the bot must
show as typed without becoming markdown, and crafted or repeated button clicks must be answered
without an exception.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from PIL import Image, ImageDraw

from bot.core import i18n
from bot.sandbox import Sandbox, sandbox
from fakes.discord_api import FakeDiscord, Interaction
from fakes.openai_api import Timeline
from tests.e2e import ErrorLog, button, finals, no_errors_logged, png

module_loop = pytest.mark.asyncio(loop_scope="module")

TIMELINE = Timeline(first_partial=0.05, between_partials=0.05, final=0.05)
WAIT = 15.0
# A row id no SQLite (or PostgreSQL) integer can hold.
HUGE_ID = "9" * 30


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    with no_errors_logged() as handler:
        yield handler


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(
    tmp_path_factory: pytest.TempPathFactory, error_log: ErrorLog
) -> AsyncIterator[Sandbox]:
    async with sandbox(tmp_path_factory.mktemp("strict-input"), timeline=TIMELINE) as running:
        yield running
        assert running.discord.unhandled == []
        assert running.discord.internal_errors == []


def responses_bodies(box: Sandbox, since: int = 0) -> list[dict[str, Any]]:
    return [
        r.json
        for r in box.openai.requests[since:]
        if r.path == "/v1/responses" and r.json is not None
    ]


async def imagine(
    box: Sandbox, options: dict[str, Any], **kwargs: Any
) -> tuple[Interaction, dict[str, Any], dict[str, Any]]:
    """Run a command that opens a thread; return the interaction, the thread and its final image."""
    d = box.discord
    command = kwargs.pop("command", "imagine")
    before = {t["id"] for t in d.threads(d.channel["id"])}
    interaction = await d.slash(command, options, **kwargs)
    thread = await d.wait_for(
        lambda: next((t for t in d.threads(d.channel["id"]) if t["id"] not in before), None),
        timeout=WAIT,
    )
    final = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=WAIT)
    await box.wait_idle()
    return interaction, thread, final


def encode(im: Image.Image) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, "PNG")
    return buffer.getvalue()


def sent_mask_alpha(body: dict[str, Any]) -> Image.Image:
    """The alpha channel of the mask a Responses request carries."""
    header, b64 = body["tools"][0]["input_image_mask"]["image_url"].split(",", 1)
    assert header == "data:image/png;base64"
    with Image.open(io.BytesIO(base64.b64decode(b64))) as im:
        assert im.mode == "RGBA"
        return im.getchannel("A")


# --- sizes -----------------------------------------------------------------------------------


@module_loop
async def test_a_loosely_typed_size_reaches_the_api_in_its_own_spelling(box: Sandbox) -> None:
    since = len(box.openai.requests)
    await imagine(box, {"prompt": "a kite", "size": " 1536X1024 ", "partials": 0})
    # /settings stores it in the same spelling, and later commands send that.
    d = box.discord
    answer = await d.slash("settings", {"size": "1024X1536"})
    await d.wait_for(lambda: answer.response_type is not None, timeout=WAIT)
    try:
        await imagine(box, {"prompt": "a kite, upright", "partials": 0})
    finally:
        reset = await d.slash("settings", {"reset": True})
        await d.wait_for(lambda: reset.response_type is not None, timeout=WAIT)
    sizes = [body["tools"][0]["size"] for body in responses_bodies(box, since)]
    assert sizes == ["1536x1024", "1024x1536"]


@module_loop
async def test_size_autocomplete_offers_only_sizes_the_api_takes(box: Sandbox) -> None:
    d = box.discord

    async def offered(typed: str) -> list[str]:
        choices = await d.autocomplete("imagine", {"prompt": "x", "size": typed}, "size")
        return [c["value"] for c in choices]

    assert (await offered(" 1536X864 "))[0] == "1536x864"
    assert (await offered("2048X1152"))[0] == "2048x1152"
    for loose in ("１０２４x１０２４", "١٠٢٤x١٠٢٤", "1_024x1_024", "1024 x 1024", "1000x1000"):
        assert await offered(loose) == [], loose
    assert await offered("15") == ["1536x1024", "1536x864"]


# --- masks -----------------------------------------------------------------------------------


def painted_layer(size: int) -> Image.Image:
    """What an editor exports after painting white strokes on an empty layer (soft edges too)."""
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.ellipse((40, 50, 120, 110), fill=(255, 255, 255, 255))
    draw.line((150, 0, 230, 200), fill=(255, 255, 255, 255), width=9)
    draw.rectangle((20, 200, 60, 230), fill=(255, 255, 255, 128))
    return layer


@module_loop
async def test_strokes_painted_on_a_transparent_layer_are_what_the_api_edits(
    box: Sandbox,
) -> None:
    layer = painted_layer(256)
    since = len(box.openai.requests)
    await imagine(
        box,
        {"prompt": "turn the painted parts into gold", "partials": 0},
        command="edit",
        attachments={"image": ("photo.png", png((256, 256))), "mask": ("mask.png", encode(layer))},
    )
    [body] = responses_bodies(box, since)
    alpha = sent_mask_alpha(body)
    assert alpha.size == (256, 256)
    # Transparent (edit) exactly where the user painted, as strongly as they painted.
    painted = layer.getchannel("A").tobytes()
    assert alpha.tobytes() == bytes(255 - value for value in painted)
    assert alpha.getpixel((80, 80)) == 0 and alpha.getpixel((5, 5)) == 255


@module_loop
async def test_holes_in_an_opaque_mask_are_what_the_api_edits(box: Sandbox) -> None:
    # OpenAI's own format, sent in a thread: the picture with the area to change erased.
    _, thread, _ = await imagine(box, {"prompt": "a bowl of fruit", "partials": 0})
    d = box.discord
    erased = Image.new("RGBA", (1024, 1024), (30, 90, 160, 255))
    erased.paste((0, 0, 0, 0), (300, 200, 700, 600))
    since = len(box.openai.requests)
    finals_before = len(finals(d, thread["id"]))
    await d.user_message(thread["id"], "put a pear here", files=[("mask.png", encode(erased))])
    await d.wait_for(lambda: len(finals(d, thread["id"])) > finals_before, timeout=WAIT)
    await box.wait_idle()
    [body] = responses_bodies(box, since)
    assert sent_mask_alpha(body).tobytes() == erased.getchannel("A").tobytes()


# --- echoed text -----------------------------------------------------------------------------

# Discord hides a backslash before any ASCII sign that is not a letter, digit or space.
DISCORD_ESCAPE = re.compile(r"\\([^0-9A-Za-z\s])")
INLINE_SIGNS = set("*_~|`[]<>@")
LINE_START = re.compile(r"[ \t]*(?:[#>+-]|[0-9]+[.)])")

HOSTILE_PROMPT = (
    "[click](https://evil.example) for a **free** cat\n"
    "# BIG HEADING\n"
    "-# small print\n"
    "> quoted @everyone <@123456789012345678> ||spoiler||\n"
    "1. step one\n"
    "```python\nunclosed fence, ending in a backslash \\"
)


def live_markup(shown: str) -> list[str]:
    """Whatever Discord would still read as markdown in `shown` (escapes honoured)."""
    found: list[str] = []
    plain = []
    i = 0
    while i < len(shown):
        if DISCORD_ESCAPE.match(shown, i):
            # An escaped sign is shown as a plain character.
            plain.append("x")
            i += 2
            continue
        if shown[i] in INLINE_SIGNS:
            found.append(shown[i])
        plain.append(shown[i])
        i += 1
    text = "".join(plain)
    if "://" in text:
        found.append("a link")
    found += [line for line in text.split("\n") if LINE_START.match(line)]
    return found


def echoed_prompt(content: str, before: str, after: str) -> str:
    """The prompt as a message shows it, between the bot's own `before` and `after`."""
    start = content.index(before) + len(before)
    return content[start : content.rindex(after)]


@module_loop
async def test_an_echoed_prompt_shows_as_typed_and_makes_no_markdown(box: Sandbox) -> None:
    d = box.discord
    interaction, thread, final = await imagine(box, {"prompt": HOSTILE_PROMPT, "partials": 1})
    user = f"<@{d.user['id']}>"
    [starter] = [
        m
        for m in (d.stored_message(i) for i in interaction.message_ids())
        if m is not None and not m.deleted and user in m.content
    ]
    shown = {
        "starting message": echoed_prompt(starter.content, f"{user} asked for: **", "**"),
        "image message": echoed_prompt(final["content"], "**", f"** — {user}"),
    }
    for where, text in shown.items():
        assert DISCORD_ESCAPE.sub(r"\1", text) == HOSTILE_PROMPT, where
        assert live_markup(text) == [], where
    # The footer is still its own line under the image, outside any code block.
    assert final["content"].split("\n")[-1].startswith("-# ")
    assert "`" not in DISCORD_ESCAPE.sub("", final["content"])
    # A thread name is plain text in Discord: it is shown as typed, without escapes.
    assert thread["name"].startswith("[click](https://evil.example) for a **free** cat # BIG")


# --- buttons -------------------------------------------------------------------------------


def forge(d: FakeDiscord, message_id: Any, component: dict[str, Any]) -> None:
    """Put a crafted component on a message, as a modified client could send it."""
    record = d._messages[int(message_id)]
    record.components = [{"type": 1, "components": [component]}]


def warning_for(d: FakeDiscord, interaction: Interaction) -> str | None:
    for message_id in interaction.message_ids():
        record = d.stored_message(message_id)
        if record is not None and record.content.startswith("⚠️"):
            return record.content
    return None


CRAFTED = {
    "reroll": ({"type": 2, "style": 2, "label": "Reroll"}, "studio.unknown_image"),
    "delete": ({"type": 2, "style": 4, "label": "Delete"}, "studio.unknown_image"),
    "cells": (
        {"type": 3, "options": [{"label": "1", "value": "1"}], "min_values": 1, "max_values": 1},
        "studio.unknown_image",
    ),
    "retry": ({"type": 2, "style": 1, "label": "Retry"}, "studio.unknown_job"),
}


@module_loop
@pytest.mark.parametrize("action", CRAFTED)
async def test_a_custom_id_past_any_row_id_is_an_unknown_image(
    box: Sandbox, error_log: ErrorLog, action: str
) -> None:
    d = box.discord
    _, _, final = await imagine(box, {"prompt": f"a {action} target", "partials": 0})
    component, key = CRAFTED[action]
    custom_id = f"img:{action}:{HUGE_ID}"
    forge(d, final["id"], {**component, "custom_id": custom_id})
    since = len(box.openai.requests)
    if component["type"] == 3:
        clicked = await d.select(final["id"], custom_id, ["1"])
    else:
        clicked = await d.click(final["id"], custom_id)
    got = await d.wait_for(lambda: warning_for(d, clicked), timeout=WAIT)
    assert got == "⚠️ " + i18n.t("en", key)
    assert d.stored_message(final["id"]) is not None
    assert not d.stored_message(final["id"]).deleted
    assert box.openai.requests[since:] == []
    assert [r.getMessage() for r in error_log.records] == []


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@module_loop
async def test_a_double_clicked_delete_deletes_once_and_quietly(box: Sandbox) -> None:
    d = box.discord
    _, thread, final = await imagine(box, {"prompt": "a sandcastle", "partials": 0})
    delete = button(final, "delete")
    # Both clicks are read before either is acknowledged, as when Discord delivers a double click.
    d.set_delay("POST", r"/interactions/\d+/[^/]+/callback$", 0.3)
    records = Records()
    root, buttons_log = logging.getLogger(), logging.getLogger("cogs.buttons")
    level = buttons_log.level
    root.addHandler(records)
    buttons_log.setLevel(logging.INFO)
    try:
        clicks = await asyncio.gather(d.click(final["id"], delete), d.click(final["id"], delete))
        path = re.compile(rf"/channels/{thread['id']}/messages/{final['id']}$")

        def deletes_of_the_image() -> list[Any] | None:
            found = [r for r in d.requests if r.method == "DELETE" and path.search(r.path)]
            return found if len(found) == 2 else None

        # Either both clicks reach the image (the second meets a 404 and says nothing), or the
        # second finds its record already gone and is told the image is gone.
        await d.wait_for(
            lambda: (
                all(click.response_type is not None for click in clicks)
                and d.stored_message(final["id"]).deleted
                and (
                    deletes_of_the_image()
                    or any(warning_for(d, click) is not None for click in clicks)
                )
            ),
            timeout=WAIT,
        )
        await box.wait_idle()
        deletes = [r for r in d.requests if r.method == "DELETE" and path.search(r.path)]
    finally:
        d.clear_delays()
        root.removeHandler(records)
        buttons_log.setLevel(level)
    assert [r.getMessage() for r in records.records if r.levelno >= logging.ERROR] == []
    assert all(click.error is None for click in clicks)
    warnings = [w for w in (warning_for(d, click) for click in clicks) if w is not None]
    if len(deletes) == 2:
        assert sorted(r.status for r in deletes) == [204, 404]
        assert warnings == []
    else:
        assert [r.status for r in deletes] == [204]
        assert len(warnings) == 1 and i18n.t("en", "studio.unknown_image") in warnings[0]
