"""Running it for a community: budgets, the queue, /settings, /usage, /config, /privacy, languages, safety."""

from __future__ import annotations

import io
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.logs import RedactingFilter
from bot.sandbox import Sandbox, sandbox
from fakes.openai_api import Timeline
from tests.e2e import finals

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Sandbox]:
    async with sandbox(tmp_path, timeline=Timeline(0.05, 0.05, 0.05)) as running:
        yield running
        assert running.discord.unhandled == []
        assert running.discord.internal_errors == []


def generation_requests(box: Sandbox) -> int:
    return sum(
        r.path in ("/v1/responses", "/v1/images/generations", "/v1/images/edits")
        for r in box.openai.requests
    )


def texts(box: Sandbox, channel_id: Any = None) -> list[str]:
    d = box.discord
    return [m["content"] for m in d.messages(channel_id or d.channel["id"])]


async def reply_containing(box: Sandbox, fragment: str, channel_id: Any = None) -> str:
    return await box.discord.wait_for(
        lambda: next((t for t in texts(box, channel_id) if fragment in t), None), timeout=15
    )


async def imagine_done(
    box: Sandbox, prompt: str, *, user: Any = None, **options: Any
) -> dict[str, Any]:
    d = box.discord
    count = len(d.threads(d.channel["id"]))
    await d.slash("imagine", {"prompt": prompt, **options}, user=user)
    thread = await d.wait_for(
        lambda: (
            d.threads(d.channel["id"])[count] if len(d.threads(d.channel["id"])) > count else None
        ),
        timeout=15,
    )
    await d.wait_for(lambda: finals(d, thread["id"]) or None, timeout=15)
    return thread


async def test_user_daily_budget_is_checked_before_sending(tmp_path: Path) -> None:
    async with sandbox(tmp_path, settings={"user_daily_usd": 0.06}) as box:
        await imagine_done(box, "first picture")
        sent = generation_requests(box)
        await box.discord.slash("imagine", {"prompt": "second picture"})
        text = await reply_containing(box, "today's limit")
        assert "$0.06" in text
        assert generation_requests(box) == sent
        # Another member still has their own budget.
        await imagine_done(box, "someone else's picture", user=box.discord.add_user("bob"))


async def test_image_count_budgets_and_the_server_budget_from_config(box: Sandbox) -> None:
    d = box.discord
    await d.slash("config", {"server_monthly_images": 2}, user=d.admin)
    await reply_containing(box, "server_monthly_images")
    await imagine_done(box, "one")
    await imagine_done(box, "two", user=d.add_user("carol"))
    before = generation_requests(box)
    await d.slash("imagine", {"prompt": "three"}, user=d.add_user("dave"))
    await reply_containing(box, "this month")
    assert generation_requests(box) == before


async def test_config_is_for_server_managers_only(box: Sandbox) -> None:
    d = box.discord
    synced = {c["name"]: c for c in d.commands()}
    assert str(synced["config"]["default_member_permissions"]) == str(1 << 5)
    await d.slash("config", {"user_daily_images": 1})
    await box.discord.wait_for(
        lambda: any("permission" in t.lower() for t in texts(box)), timeout=15
    )
    assert await box.services.store.get_guild_config(int(d.guild["id"])) == {}


async def test_allowed_channels_and_allowed_models(box: Sandbox) -> None:
    d = box.discord
    art = d.add_channel("art")
    await d.slash(
        "config",
        {"allowed_channels": f"<#{art['id']}>", "allowed_models": "gpt-image-1-mini"},
        user=d.admin,
    )
    text = await reply_containing(box, "allowed_channels")
    assert f"<#{art['id']}>" in text and "`gpt-image-1-mini`" in text
    await d.slash("imagine", {"prompt": "a cat"})
    await reply_containing(box, "only in")
    await d.slash("imagine", {"prompt": "a cat", "model": "gpt-image-2"}, channel_id=art["id"])
    await reply_containing(box, "not allowed on this server", channel_id=art["id"])
    assert generation_requests(box) == 0
    await d.slash("imagine", {"prompt": "a cat", "model": "gpt-image-1-mini"}, channel_id=art["id"])
    await d.wait_for(lambda: d.threads(art["id"]) or None, timeout=15)


async def test_partials_off_and_author_only_threads(box: Sandbox) -> None:
    d = box.discord
    await d.slash("config", {"partials": False, "continue_policy": "author"}, user=d.admin)
    await reply_containing(box, "continue_policy")
    thread = await imagine_done(box, "a boat", partials=3)
    body = next(r.json for r in box.openai.requests if r.path == "/v1/responses")
    assert body is not None and body["tools"][0]["partial_images"] == 0
    before = generation_requests(box)
    await d.user_message(thread["id"], "make it red", user=d.add_user("eve"))
    await reply_containing(box, "⚠️", channel_id=thread["id"])
    assert generation_requests(box) == before


async def test_settings_become_the_members_defaults_and_language(box: Sandbox) -> None:
    d = box.discord
    await d.slash("settings", {"format": "webp", "quality": "low", "language": "ko"})
    await reply_containing(box, "webp")
    thread = await imagine_done(box, "a dragon")
    body = next(r.json for r in box.openai.requests if r.path == "/v1/responses")
    assert body is not None
    assert body["tools"][0]["output_format"] == "webp" and body["tools"][0]["quality"] == "low"
    final = finals(d, thread["id"])[0]
    assert final["attachments"][0]["filename"] == "image.webp"
    assert "초" in final["content"]  # the footer speaks Korean
    await d.slash("settings", {"format": "jpeg", "background": "transparent"})
    await reply_containing(box, "jpeg")  # refused: transparent needs png or webp


async def test_korean_is_everywhere_for_korean_clients(box: Sandbox) -> None:
    d = box.discord
    synced = {c["name"]: c for c in d.commands()}
    assert synced["imagine"]["name_localizations"]["ko"] == "그리기"
    assert synced["imagine"]["description_localizations"]["ko"]
    options = {o["name"]: o for o in synced["imagine"]["options"]}
    assert options["prompt"]["name_localizations"]["ko"] == "프롬프트"
    assert all(c["name_localizations"]["ko"] for c in options["quality"]["choices"])
    await d.slash("help", {}, locale="ko")
    await d.wait_for(lambda: any("스레드" in t for t in texts(box)), timeout=15)
    await d.slash(
        "imagine", {"prompt": "고양이", "format": "jpeg", "background": "transparent"}, locale="ko"
    )
    await d.wait_for(lambda: any("투명" in t for t in texts(box)), timeout=15)


async def test_usage_shows_numbers_and_a_chart_and_admins_see_the_server(box: Sandbox) -> None:
    d = box.discord
    await imagine_done(box, "a tree")
    await d.slash("usage", {})
    mine = await d.wait_for(
        lambda: next(
            (
                m
                for m in d.messages(d.channel["id"])
                if m["attachments"] and "usage" in m["attachments"][0]["filename"]
            ),
            None,
        ),
        timeout=15,
    )
    assert "1" in mine["content"] and "$" in mine["content"]
    chart = Image.open(io.BytesIO(d.attachment_bytes(mine["attachments"][0])))
    assert chart.width > 200
    await d.slash("usage", {}, user=d.admin)
    await d.wait_for(
        lambda: (
            sum(
                1
                for m in d.messages(d.channel["id"])
                if m["attachments"] and "usage" in m["attachments"][0]["filename"]
            )
            >= 2
        ),
        timeout=15,
    )
    admin_view = [
        m
        for m in d.messages(d.channel["id"])
        if m["attachments"] and "usage" in m["attachments"][0]["filename"]
    ][-1]
    assert admin_view["content"] != mine["content"]


async def test_privacy_deletes_a_members_data(box: Sandbox) -> None:
    d = box.discord
    await d.slash("settings", {"quality": "high"})
    await reply_containing(box, "high")
    await imagine_done(box, "a rose")
    user_id = int(d.user["id"])
    assert await box.services.store.get_user_settings(user_id)
    await d.slash("privacy", {"confirm": True})
    await d.wait_for(lambda: len([t for t in texts(box) if t]) >= 3, timeout=15)
    assert await box.services.store.get_user_settings(user_id) == {}
    assert (await box.services.store.usage_totals(since=0, user_id=user_id)).images == 0


async def test_queue_positions_are_shown_and_every_job_finishes(tmp_path: Path) -> None:
    async with sandbox(
        tmp_path, settings={"global_concurrency": 1}, timeline=Timeline(0.3, 0.1, 0.1)
    ) as box:
        d = box.discord
        users = [d.user, d.add_user("u2"), d.add_user("u3")]
        for number, user in enumerate(users):
            await d.slash("imagine", {"prompt": f"picture {number}", "partials": 1}, user=user)
        threads = await d.wait_for(
            lambda: d.threads(d.channel["id"]) if len(d.threads(d.channel["id"])) == 3 else None,
            timeout=15,
        )
        await d.wait_for(lambda: all(finals(d, t["id"]) for t in threads) or None, timeout=30)
        shown = [
            v.content for t in threads for m in d.messages(t["id"]) for v in d.versions(m["id"])
        ]
        assert any("#1" in c or "position 1" in c.lower() for c in shown), shown
        assert any("#2" in c or "position 2" in c.lower() for c in shown), shown


async def test_prompts_cannot_ping_everyone(box: Sandbox) -> None:
    d = box.discord
    await imagine_done(box, "@everyone look at this <@&123456789012345678>")
    bot_posts = [
        r
        for r in d.requests
        if r.method in ("POST", "PATCH")
        and (
            r.path.endswith("/messages")
            or "/messages/" in r.path
            or r.path.startswith("/webhooks/")
        )
        and r.json is not None
        and "content" in (r.json or {})
    ]
    assert bot_posts
    for request in bot_posts:
        assert (request.json or {}).get("allowed_mentions", {}).get("parse") == [], request.json


def test_secrets_never_reach_a_log() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter(["discord-token-abcdef.123", "sk-live-secret-key-000"]))
    logger = logging.getLogger("test.redaction")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.error("token %s and key %s", "discord-token-abcdef.123", "sk-live-secret-key-000")
        logger.error("POST /webhooks/123/abcdefghijk-TOKEN/messages and Authorization: Bot xyz.abc")
        try:
            raise RuntimeError("failed with sk-other-secret-999999")
        except RuntimeError:
            logger.exception("boom")
    finally:
        logger.removeHandler(handler)
    output = stream.getvalue()
    for secret in (
        "discord-token-abcdef.123",
        "sk-live-secret-key-000",
        "abcdefghijk-TOKEN",
        "xyz.abc",
        "sk-other-secret",
    ):
        assert secret not in output
    assert output.count("<redacted>") >= 5


def test_every_config_entry_is_shown_under_a_localized_option_name() -> None:
    from bot.core import i18n
    from cogs.admin import CONFIG_OPTIONS

    for option in CONFIG_OPTIONS.values():
        assert i18n.has_key(f"opt.{option}.name"), option
