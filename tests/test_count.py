"""Four at once, end to end against the stand-ins: `/imagine count:1-4` draws several images in
one job (the Image API's `n`, or parallel Responses turns from the same parent), reserves and
charges every one of them, posts them as one grid with U1-U4, and a pick moves the
conversation to the picked image.
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
from fakes.discord_api import FakeDiscord
from fakes.openai_api import Fault, Timeline
from tests.e2e import ErrorLog, custom_ids, failures, finals
from tests.e2e import error_log as error_log
from tests.test_faults import noise_png
from tests.test_ledger import billed, ephemeral_texts

FAST = Timeline(first_partial=0.05, between_partials=0.05, final=0.05)
SLOW = Timeline(first_partial=0.3, between_partials=0.3, final=3.0)


@pytest.fixture
async def box(tmp_path: Path, error_log: ErrorLog) -> AsyncIterator[Sandbox]:
    async with sandbox(tmp_path, timeline=FAST) as running:
        yield running
        assert running.discord.unhandled == []
        assert running.discord.internal_errors == []


def picks(message: dict[str, Any]) -> list[str]:
    """The U1-U4 custom ids of a message, in order."""
    return [c for c in custom_ids(message) if c.startswith("img:pick")]


def grids(d: FakeDiscord, channel_id: Any) -> list[dict[str, Any]]:
    """Messages in a channel that show several images with U buttons."""
    return [m for m in d.messages(channel_id) if picks(m)]


def database(box: Sandbox) -> Path:
    return Path(box.settings.database_url.split("///", 1)[1])


def query(box: Sandbox, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with contextlib.closing(sqlite3.connect(database(box))) as db:
        return db.execute(sql, params).fetchall()


def openai_posts(box: Sandbox) -> list[Any]:
    return [r for r in box.openai.requests if r.method == "POST"]


async def grid_in_thread(box: Sandbox, count: int = 4) -> tuple[dict[str, Any], dict[str, Any]]:
    d = box.discord
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    grid = await d.wait_for(
        lambda: (
            next(iter(grids(d, thread["id"])), None)
            if len(next(iter(grids(d, thread["id"])), {}).get("attachments", [])) == count
            else None
        ),
        timeout=30,
    )
    await box.wait_idle()
    return thread, d.message(grid["id"])


def turn_of(custom_id: str) -> int:
    return int(custom_id.rsplit(":", 1)[1])


@pytest.mark.parametrize("engine", ["responses", "images"])
async def test_count_four_posts_one_grid_and_charges_four(tmp_path: Path, engine: str) -> None:
    settings = {"engine": engine, "user_daily_images": 5}
    async with sandbox(tmp_path, timeline=FAST, settings=settings) as box:
        d = box.discord
        await d.slash("imagine", {"prompt": "four foxes", "count": 4, "partials": 2})
        thread, grid = await grid_in_thread(box)

        assert len(grid["attachments"]) == 4
        assert len({d.attachment_bytes(a) for a in grid["attachments"]}) == 4
        assert [c.split(":")[1] for c in picks(grid)] == ["pick1", "pick2", "pick3", "pick4"]
        assert i18n.t("en", "discord.grid", count=4) in grid["content"]
        # The grid took the place of the progress message: nothing else is left in the thread.
        assert [m["id"] for m in d.messages(thread["id"])] == [grid["id"]]
        assert finals(d, thread["id"]) == [] and failures(d, thread["id"]) == []
        rows = query(box, "SELECT images, response_id FROM usage_ledger")
        assert [r[0] for r in rows] == [1, 1, 1, 1]
        saved = query(box, "SELECT id, response_id FROM turns ORDER BY id")
        assert [turn_of(c) for c in picks(grid)] == [t[0] for t in saved]
        assert sorted(r[1] for r in rows) == sorted(t[1] for t in saved)
        # Until a pick, the conversation continues from U1.
        assert query(box, "SELECT latest_response_id FROM conversations") == [(saved[0][1],)]

        posts = openai_posts(box)
        if engine == "images":
            # One Image API call with n=4, not streamed (its events could not be told apart).
            assert [p.path for p in posts] == ["/v1/images/generations"]
            assert posts[0].json["n"] == 4
            assert "stream" not in posts[0].json and "partial_images" not in posts[0].json
        else:
            # Four turns side by side from the same parent, with the same input, no previews.
            assert [p.path for p in posts] == ["/v1/responses"] * 4
            assert len({str(p.json["input"]) for p in posts}) == 1
            assert {p.json.get("previous_response_id") for p in posts} == {None}
            assert {p.json["tools"][0].get("partial_images") for p in posts} == {0}
            assert len(billed(box.openai)) == 4

        # The budget counted four: of today's 5, a second request for 2 no longer fits.
        await d.slash("imagine", {"prompt": "two more foxes", "count": 2})
        refusal = await d.wait_for(
            lambda: next((t for t in ephemeral_texts(box) if "asks for 2 images" in t), None),
            timeout=15,
        )
        assert "4 of today's 5" in refusal
        assert len(openai_posts(box)) == len(posts)


async def test_a_limit_that_cannot_take_all_four_refuses_before_any_request(
    tmp_path: Path,
) -> None:
    async with sandbox(tmp_path, timeline=FAST, settings={"user_daily_images": 3}) as box:
        d = box.discord
        await d.slash("imagine", {"prompt": "four owls", "count": 4})
        refusal = await d.wait_for(
            lambda: next((t for t in ephemeral_texts(box) if "owls" not in t), None), timeout=15
        )
        assert "asks for 4 images" in refusal and "0 of today's 3" in refusal
        assert "`count`" in refusal
        await box.wait_idle()
        assert box.openai.requests == []
        assert d.threads(d.channel["id"]) == []
        assert query(box, "SELECT COUNT(*) FROM jobs") == [(0,)]
        # Three still fit.
        await d.slash("imagine", {"prompt": "three owls", "count": 3})
        await grid_in_thread(box, 3)
        assert len(query(box, "SELECT id FROM usage_ledger")) == 3


@pytest.mark.parametrize("engine", ["responses", "images"])
async def test_picking_u3_continues_from_image_three(tmp_path: Path, engine: str) -> None:
    async with sandbox(tmp_path, timeline=FAST, settings={"engine": engine}) as box:
        d = box.discord
        await d.slash("imagine", {"prompt": "four lanterns", "count": 4})
        thread, grid = await grid_in_thread(box)
        third = turn_of(picks(grid)[2])
        ((third_response, third_image),) = query(
            box,
            "SELECT t.response_id, i.data FROM turns t JOIN turn_images i ON i.turn_id = t.id"
            " WHERE t.id = ?",
            third,
        )
        assert d.attachment_bytes(grid["attachments"][2]) == third_image

        await d.click(grid["id"], picks(grid)[2])
        picked = await d.wait_for(lambda: next(iter(finals(d, thread["id"])), None), timeout=15)
        assert "U3" in picked["content"]
        assert d.attachment_bytes(picked["attachments"][0]) == third_image
        assert f"img:reroll:{third}" in custom_ids(picked)
        assert query(box, "SELECT latest_response_id FROM conversations") == [(third_response,)]
        # A second click does not post it twice; it says where it is.
        await d.click(grid["id"], picks(grid)[2])
        await d.wait_for(
            lambda: any(str(picked["id"]) in t for t in ephemeral_texts(box)) or None, timeout=15
        )
        assert len(finals(d, thread["id"])) == 1

        before = len(openai_posts(box))
        await d.user_message(thread["id"], "now at night")
        await d.wait_for(lambda: len(finals(d, thread["id"])) == 2 or None, timeout=30)
        await box.wait_idle()
        follow_up = openai_posts(box)[before:]
        assert len(follow_up) == 1
        if engine == "responses":
            assert follow_up[0].json["previous_response_id"] == third_response
        else:
            sent = follow_up[0].files.get("image") or follow_up[0].files["image[]"]
            assert sent[0].data == third_image

        # A Discord reply to the picked image branches from it too.
        await d.user_message(thread["id"], "in the snow", reply_to=picked["id"])
        await d.wait_for(lambda: len(finals(d, thread["id"])) == 3 or None, timeout=30)
        await box.wait_idle()
        branch = openai_posts(box)[-1]
        if engine == "responses":
            assert branch.json["previous_response_id"] == third_response
        else:
            assert (branch.files.get("image") or branch.files["image[]"])[0].data == third_image


async def test_only_people_who_may_continue_can_pick(tmp_path: Path) -> None:
    async with sandbox(tmp_path, timeline=FAST) as box:
        d = box.discord
        requester = await box.bot.studio.requester(
            user_id=int(d.user["id"]),
            guild_id=int(d.guild["id"]),
            channel_id=int(d.channel["id"]),
            client_locale="en",
            is_admin=True,
        )
        await box.bot.studio.update_config(requester, {"continue_policy": "author"})
        other = d.add_user("someone else")
        await d.slash("imagine", {"prompt": "four kites", "count": 4})
        thread, grid = await grid_in_thread(box)
        head = query(box, "SELECT latest_response_id FROM conversations")
        await d.click(grid["id"], picks(grid)[1], user=other)
        await d.wait_for(
            lambda: (
                any(i18n.t("en", "studio.not_allowed_continue") in t for t in ephemeral_texts(box))
                or None
            ),
            timeout=15,
        )
        assert query(box, "SELECT latest_response_id FROM conversations") == head
        assert finals(d, thread["id"]) == []


async def test_cancel_stops_every_drawing_of_a_count_job(tmp_path: Path) -> None:
    async with sandbox(tmp_path, timeline=SLOW) as box:
        d = box.discord
        await d.slash("imagine", {"prompt": "four slow glaciers", "count": 4})
        thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
        progress = await d.wait_for(
            lambda: next(
                (m for m in d.messages(thread["id"]) if any("cancel" in c for c in custom_ids(m))),
                None,
            ),
            timeout=15,
        )
        await d.wait_for(lambda: len(openai_posts(box)) == 4 or None, timeout=15)
        cancel = next(c for c in custom_ids(progress) if c.startswith("img:cancel:"))
        await d.click(progress["id"], cancel)
        await box.wait_idle()
        shown = d.message(progress["id"])
        assert i18n.t("en", "discord.cancelled") in shown["content"]
        assert custom_ids(shown) == []
        assert grids(d, thread["id"]) == [] and failures(d, thread["id"]) == []
        assert query(box, "SELECT COUNT(*) FROM usage_ledger") == [(0,)]
        assert query(box, "SELECT status, reserved_images FROM jobs") == [("cancelled", 0)]
        assert billed(box.openai) == []


async def test_a_drawing_that_fails_leaves_the_others_delivered_and_charged(box: Sandbox) -> None:
    d = box.discord
    box.openai.queue_fault(Fault("moderation_400"), path="/v1/responses")
    await d.slash("imagine", {"prompt": "four herons", "count": 4})
    thread, grid = await grid_in_thread(box, 3)
    assert len(picks(grid)) == 3
    assert i18n.t("en", "discord.grid_failed", failed=1, asked=4) in grid["content"]
    assert len(openai_posts(box)) == 4
    assert len(billed(box.openai)) == 3
    assert [r[0] for r in query(box, "SELECT images FROM usage_ledger")] == [1, 1, 1]
    assert query(box, "SELECT status, reserved_images FROM jobs") == [("done", 0)]
    assert failures(d, thread["id"]) == []


async def test_count_is_offered_in_both_languages(box: Sandbox) -> None:
    command = next(c for c in box.discord.commands() if c["name"] == "imagine")
    count = next(o for o in command["options"] if o["name"] == "count")
    assert (count["min_value"], count["max_value"]) == (1, 4)
    assert count["name_localizations"]["ko"] == "개수"
    assert count["description_localizations"]["ko"]
    for locale in ("en", "ko"):
        assert "U1-U4" in i18n.t(locale, "help.text")


async def test_a_grid_over_the_upload_limit_fits_each_file_and_keeps_the_originals(
    tmp_path: Path,
) -> None:
    limit = 300 * 1024
    photo = noise_png((1536, 1024))
    assert len(photo) > limit
    async with sandbox(tmp_path, timeline=FAST, discord=FakeDiscord(upload_limit=limit)) as box:
        d = box.discord
        await d.slash(
            "imagine",
            {
                "prompt": "this photo as two postcards",
                "size": "1536x1024",
                "model": "gpt-image-2.5-sunburst",
                "count": 2,
            },
            attachments={"image": ("photo.png", photo)},
        )
        _, grid = await grid_in_thread(box, 2)
        sizes = [a["size"] for a in grid["attachments"]]
        assert all(0 < size <= limit for size in sizes)
        assert i18n.t("en", "discord.grid_reencoded") in grid["content"]
        originals = query(box, "SELECT LENGTH(data) FROM turn_images ORDER BY turn_id")
        assert len(originals) == 2 and all(row[0] > limit for row in originals)
