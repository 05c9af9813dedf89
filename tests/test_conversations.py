"""Conversation state and what happens once an image exists, end to end against the stand-ins.

Where a conversation lives (bot threads and DMs only), what Delete does to its head, a fresh
start in DMs, and the faults that come after OpenAI has made (and billed) the image: Discord
refusing the upload for a long time, the database locked by another process, the thread
deleted mid-turn, an expired interaction token, thread creation failing, a full disk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.core import i18n
from bot.sandbox import Sandbox, sandbox
from fakes.openai_api import Timeline
from tests.e2e import ErrorLog, button, failures, finals
from tests.e2e import error_log as error_log
from tests.test_ledger import billed, check_invariant, ephemeral_texts

FAST = Timeline(first_partial=0.05, between_partials=0.05, final=0.05)


@pytest.fixture
async def box(tmp_path: Path, error_log: ErrorLog) -> AsyncIterator[Sandbox]:
    async with sandbox(tmp_path, timeline=FAST, settings={"post_retry_seconds": 0.05}) as running:
        yield running
        assert running.discord.unhandled == []
        assert running.discord.internal_errors == []


def response_requests(box: Sandbox) -> list[dict[str, Any]]:
    return [r.json for r in box.openai.requests if r.path == "/v1/responses" and r.json]


async def first_thread(box: Sandbox, prompt: str) -> tuple[dict[str, Any], dict[str, Any]]:
    d = box.discord
    await d.slash("imagine", {"prompt": prompt, "partials": 1})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    final = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=15)
    return thread, final


# --- conversation state -------------------------------------------------------------------


async def test_deleting_the_latest_image_continues_from_the_one_before(box: Sandbox) -> None:
    d = box.discord
    thread, _first = await first_thread(box, "a red barn")
    await d.user_message(thread["id"], "add snow")
    second = await d.wait_for(
        lambda: finals(d, thread["id"])[1] if len(finals(d, thread["id"])) > 1 else None
    )
    first_response, second_response = (r for r in box.openai.stored_responses)
    await d.click(second["id"], button(second, "delete"))
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 1 or None)
    await box.wait_idle()
    await d.user_message(thread["id"], "paint it blue")
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 2 or None)
    assert response_requests(box)[-1]["previous_response_id"] == first_response
    assert second_response != first_response


async def test_delete_in_the_image_engine_goes_back_to_the_parent_image(tmp_path: Path) -> None:
    async with sandbox(tmp_path, timeline=FAST, settings={"engine": "images"}) as box:
        d = box.discord
        thread, _first = await first_thread(box, "a teapot")
        await d.user_message(thread["id"], "make it gold")
        second = await d.wait_for(
            lambda: finals(d, thread["id"])[1] if len(finals(d, thread["id"])) > 1 else None
        )
        await d.click(second["id"], button(second, "delete"))
        await d.wait_for(lambda: len(finals(d, thread["id"])) == 1 or None)
        await box.wait_idle()
        await d.user_message(thread["id"], "make it silver")
        await d.wait_for(lambda: len(finals(d, thread["id"])) == 2 or None)
        assert failures(d, thread["id"]) == []
        edits = [r for r in box.openai.requests if r.path == "/v1/images/edits"]
        # The last edit sent the first image (the parent of the deleted one), not nothing.
        assert len(edits) == 2


async def test_deleting_the_only_image_starts_the_thread_afresh(box: Sandbox) -> None:
    d = box.discord
    thread, first = await first_thread(box, "a kite")
    await d.click(first["id"], button(first, "delete"))
    await d.wait_for(lambda: finals(d, thread["id"]) == [] or None)
    await d.user_message(thread["id"], "a kite over the sea")
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 1 or None)
    assert "previous_response_id" not in response_requests(box)[-1]


async def test_a_second_imagine_in_a_dm_starts_fresh(box: Sandbox) -> None:
    d = box.discord
    await d.slash("imagine", {"prompt": "a paper boat"}, dm=True)
    dm = d.dm_channel(d.user)
    await d.wait_for(lambda: len(finals(d, dm["id"])) == 1 or None)
    await d.user_message(dm["id"], "at sunset")
    await d.wait_for(lambda: len(finals(d, dm["id"])) == 2 or None)
    assert "previous_response_id" in response_requests(box)[-1]
    await d.slash("imagine", {"prompt": "a mountain cabin"}, dm=True)
    await d.wait_for(lambda: len(finals(d, dm["id"])) == 3 or None)
    assert "previous_response_id" not in response_requests(box)[-1]
    cabin = response_requests(box)[-1]
    await d.user_message(dm["id"], "with smoke from the chimney")
    await d.wait_for(lambda: len(finals(d, dm["id"])) == 4 or None)
    # The DM now continues the cabin, not the boat.
    cabin_id = list(box.openai.stored_responses)[2]
    assert response_requests(box)[-1]["previous_response_id"] == cabin_id
    assert cabin["input"] != response_requests(box)[-1]["input"]


async def test_imagine_in_a_members_thread_does_not_turn_its_chat_into_paid_turns(
    box: Sandbox,
) -> None:
    d = box.discord
    thread = d.create_thread(
        int(d.channel["id"]), "general chat", thread_type=11, owner_id=int(d.user["id"])
    )
    await d.slash("imagine", {"prompt": "a sunflower"}, channel_id=thread["id"])
    final = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=15)
    await box.wait_idle()
    await d.user_message(thread["id"], "lol nice")
    await d.user_message(thread["id"], "anyone up for games?")
    await box.wait_idle()
    assert len(response_requests(box)) == 1
    # A reply to the image still continues it.
    await d.user_message(thread["id"], "now in a vase", reply_to=final["id"])
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 2 or None, timeout=15)
    assert response_requests(box)[-1]["previous_response_id"] == next(
        iter(box.openai.stored_responses)
    )


# --- after the image exists ---------------------------------------------------------------


async def test_discord_refusing_the_final_upload_for_a_long_time_still_shows_it_once(
    box: Sandbox,
) -> None:
    d = box.discord
    thread, _first = await first_thread(box, "a fox")
    d.inject_error("PATCH", r"/channels/\d+/messages/\d+$", 503, times=None)
    d.inject_error("POST", r"/channels/\d+/messages$", 503, times=None)
    await d.user_message(thread["id"], "in the snow")
    await d.wait_for(lambda: sum(1 for r in d.requests if r.status == 503) >= 6 or None, timeout=30)
    # Made, saved and charged; waiting for Discord. Nothing failed, nothing was asked twice.
    assert len(billed(box.openai)) == 2
    assert failures(d, thread["id"]) == []
    d.clear_errors()
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 2 or None, timeout=30)
    await box.wait_idle()
    assert len(billed(box.openai)) == 2
    check_invariant(d, box.openai, Path(box.settings.database_url.split("///", 1)[1]))


async def test_a_database_locked_by_another_process_delays_the_image_but_loses_nothing(
    box: Sandbox,
) -> None:
    d = box.discord
    thread, _first = await first_thread(box, "a lamp")
    database = Path(box.settings.database_url.split("///", 1)[1])
    box.openai.set_timeline(Timeline(first_partial=0.3, between_partials=0.3, final=0.3))
    warnings = Warnings()
    logging.getLogger("bot.core.studio").addHandler(warnings)
    other = sqlite3.connect(database, isolation_level=None)
    try:
        await d.user_message(thread["id"], "make it glow")
        await d.wait_for(
            lambda: any(r.path == "/v1/responses" for r in box.openai.requests[1:]) or None
        )
        other.execute("BEGIN EXCLUSIVE")
        # Held past the bot's 5 s busy timeout: its save fails, and it says it will try again.
        await d.wait_for(
            lambda: any("could not save the image" in m for m in warnings.messages) or None,
            timeout=30,
        )
        assert len(billed(box.openai)) == 2
        assert len(finals(d, thread["id"])) == 1
        other.rollback()
    finally:
        logging.getLogger("bot.core.studio").removeHandler(warnings)
        other.close()
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 2 or None, timeout=30)
    await box.wait_idle()
    assert failures(d, thread["id"]) == []
    check_invariant(d, box.openai, database)


class Warnings(logging.Handler):
    """Collects the messages of WARNING records."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


async def test_a_thread_deleted_mid_turn_gets_the_image_to_its_requester(box: Sandbox) -> None:
    d = box.discord
    thread, _first = await first_thread(box, "a violin")
    box.openai.set_timeline(Timeline(first_partial=0.3, between_partials=0.3, final=0.5))
    await d.user_message(thread["id"], "make it glass")
    await d.wait_for(lambda: len(box.openai.requests) >= 2 or None)
    await d.delete_thread(thread["id"])
    await box.wait_idle()
    elsewhere = [
        m
        for m in d.messages(d.channel["id"])
        if m.get("attachments") and i18n.t("en", "discord.delivered_elsewhere") in m["content"]
    ]
    assert len(elsewhere) == 1
    assert len(billed(box.openai)) == 2


async def test_an_expired_interaction_token_still_gets_the_request_started(box: Sandbox) -> None:
    d = box.discord
    d.inject_error(
        "POST",
        r"/webhooks/\d+/[^/]+$",
        401,
        code=50027,
        message="Invalid Webhook Token",
        times=None,
    )
    await d.slash("imagine", {"prompt": "a comet"})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=15)
    # The "asked for" message was posted in the channel instead of through the dead token.
    assert any("a comet" in m["content"] for m in d.messages(d.channel["id"]))


async def test_thread_creation_failing_posts_in_the_channel_without_an_orphan(
    box: Sandbox,
) -> None:
    d = box.discord
    d.inject_error("POST", r"/channels/\d+/messages/\d+/threads$", 503, times=None)
    await d.slash("imagine", {"prompt": "a clock tower"})
    final = await d.wait_for(lambda: (finals(d, d.channel["id"]) or [None])[0], timeout=30)
    assert final["attachments"]
    assert d.threads(d.channel["id"]) == []
    assert any(i18n.t("en", "discord.no_thread") in text for text in ephemeral_texts(box))


async def test_a_full_disk_refuses_the_request_before_anything_is_posted(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = box.discord
    store = box.services.store

    async def full(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "admit_job", full)
    await d.slash("imagine", {"prompt": "a snowman"})
    await d.wait_for(
        lambda: any(i18n.t("en", "studio.not_saved") in t for t in ephemeral_texts(box)) or None
    )
    assert d.threads(d.channel["id"]) == []
    assert [m for m in d.messages(d.channel["id"]) if not int(m.get("flags") or 0) & 64] == []
    assert box.openai.requests == []


async def test_a_command_before_ready_is_not_reported_interrupted(tmp_path: Path) -> None:
    from fakes.discord_api import FakeDiscord
    from fakes.openai_api import FakeOpenAI
    from tests.e2e import BotProcess

    async with FakeDiscord() as d, FakeOpenAI() as openai:
        openai.set_timeline(Timeline(first_partial=0.5, between_partials=0.5, final=1.5))
        bot = BotProcess(d, openai, tmp_path)
        try:
            await bot.start(ready=False)
            await d.wait_for(lambda: d.commands() or None, timeout=30)
            await d.slash("imagine", {"prompt": "an early bird", "partials": 1})
            thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=30)
            await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=30)
            assert failures(d, thread["id"]) == []
            assert await bot.stop() == 0
        finally:
            if bot.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    bot.process.kill()
                await bot.process.wait()
        assert "Traceback" not in bot.log


async def test_an_image_that_arrived_before_response_incomplete_is_shown_and_charged(
    box: Sandbox,
) -> None:
    from fakes.openai_api import Fault

    d = box.discord
    thread, _first = await first_thread(box, "a dragon kite")
    box.openai.queue_fault(Fault("incomplete_after_image"))
    await d.user_message(thread["id"], "with a long tail")
    second = await d.wait_for(
        lambda: finals(d, thread["id"])[1] if len(finals(d, thread["id"])) > 1 else None
    )
    await box.wait_idle()
    assert i18n.t("en", "note.incomplete") in second["content"]
    assert failures(d, thread["id"]) == []
    database = Path(box.settings.database_url.split("///", 1)[1])
    with contextlib.closing(sqlite3.connect(database)) as db:
        rows = db.execute("SELECT images, cost_usd FROM usage_ledger ORDER BY id").fetchall()
    assert len(rows) == 2 and rows[1][0] == 1 and rows[1][1] > 0


async def test_a_refusal_reaches_the_user_when_the_interaction_token_is_dead(
    box: Sandbox,
) -> None:
    d = box.discord
    d.inject_error(
        "*", r"/webhooks/\d+/[^/]+", 401, code=50027, message="Invalid Webhook Token", times=None
    )
    await d.slash("imagine", {"prompt": "a cat", "model": "dall-e-3"})
    told = await d.wait_for(
        lambda: [m for m in d.messages(d.channel["id"]) if "retired" in m["content"]] or None
    )
    assert f"<@{d.user['id']}>" in told[0]["content"]
    assert box.openai.requests == []


async def test_usage_stamped_in_the_future_does_not_count_today(box: Sandbox) -> None:
    d = box.discord
    database = Path(box.settings.database_url.split("///", 1)[1])
    box.bot.studio.limits = dataclasses.replace(box.bot.studio.limits, user_daily_images=1)
    later = time.time() + 3 * 86400
    with contextlib.closing(sqlite3.connect(database)) as db:
        # A row written while the host clock ran three days fast.
        db.execute(
            "INSERT INTO usage_ledger (at, day, guild_id, user_id, model, engine, images,"
            " input_tokens, output_tokens, image_input_tokens, image_output_tokens, cost_usd)"
            " VALUES (?, '2099-01-01', ?, ?, 'gpt-image-2', 'responses', 1, 0, 0, 0, 0, 0.1)",
            (later, int(d.guild["id"]), int(d.user["id"])),
        )
        db.commit()
    await d.slash("imagine", {"prompt": "a morning walk"})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=15)
