"""What image-bot users ask for most, end to end against the stand-ins: cancel, named aspect
ratios, the revised prompt, quota tiers by role, where content belongs, an honest /usage.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

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
