"""Helpers for the web studio's tests: the sandbox with the web app on, and its links."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from bot.sandbox import Sandbox, sandbox
from fakes.openai_api import Timeline
from tests.e2e import button, finals

PUBLIC = "https://studio.example.test"
FAST = Timeline(first_partial=0.05, between_partials=0.05, final=0.05)
LINK = re.compile(r"https://studio\.example\.test(/(?:paint|gallery)/[A-Za-z0-9_\-.]+/?)")


@pytest.fixture
async def web_box(tmp_path: Path) -> AsyncIterator[Sandbox]:
    """The sandbox with the web studio on a free port and a public address."""
    async with sandbox(
        tmp_path, timeline=FAST, settings={"web_port": 0, "public_base_url": PUBLIC}
    ) as box:
        yield box
        assert box.discord.unhandled == []
        assert box.discord.internal_errors == []


def local(box: Sandbox, path: str) -> str:
    """The address of `path` on the web studio as this machine reaches it."""
    return f"http://127.0.0.1:{box.bot.web.port}{path}"


async def imagine(box: Sandbox, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """/imagine in the default channel; its thread and final message."""
    d = box.discord
    before = {t["id"] for t in d.threads(d.channel["id"])}
    await d.slash("imagine", {"prompt": prompt, "partials": 0})
    thread = await d.wait_for(
        lambda: next((t for t in d.threads(d.channel["id"]) if t["id"] not in before), None),
        timeout=15,
    )
    final = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=15)
    return thread, final


async def link_from(box: Sandbox, message: dict[str, Any], action: str, **click: Any) -> str:
    """Press Paint or Gallery under `message`; the path of the link the bot answers with."""
    d = box.discord
    channel = message["channel_id"]
    seen = {m["id"] for m in d.messages(channel)}
    await d.click(message["id"], button(message, action), **click)
    reply = await d.wait_for(
        lambda: next(
            (
                m
                for m in d.messages(channel)
                if m["id"] not in seen and int(m.get("flags") or 0) & 64
            ),
            None,
        ),
        timeout=10,
    )
    found = LINK.search(reply["content"])
    assert found, reply["content"]
    return found.group(1)


def responses_bodies(box: Sandbox) -> list[dict[str, Any]]:
    return [r.json for r in box.openai.requests if r.path == "/v1/responses" and r.json is not None]


def sent_mask(body: dict[str, Any]) -> Image.Image:
    """The mask a Responses request carried, decoded."""
    url = body["tools"][0]["input_image_mask"]["image_url"]
    head, data = url.split(",", 1)
    assert head == "data:image/png;base64"
    return Image.open(io.BytesIO(base64.b64decode(data)))


def layer_png(size: tuple[int, int], box: tuple[int, int, int, int] | None) -> bytes:
    """A transparent layer with one opaque rectangle painted on it."""
    from PIL import ImageDraw

    im = Image.new("RGBA", size, (0, 0, 0, 0))
    if box is not None:
        ImageDraw.Draw(im).rectangle(box, fill=(255, 42, 109, 255))
    out = io.BytesIO()
    im.save(out, "PNG")
    return out.getvalue()


async def post_paint(
    http: aiohttp.ClientSession, url: str, layer: bytes, prompt: str = "a red kite"
) -> tuple[int, dict[str, Any]]:
    """Send a painted layer the way the page does."""
    form = aiohttp.FormData()
    form.add_field("prompt", prompt)
    form.add_field("mask", layer, filename="mask.png", content_type="image/png")
    async with http.post(url, data=form) as response:
        return response.status, await response.json()
