"""End to end: the API may send fewer partial images than asked (the final can come first).

The progress message must still show the partials that came, in order, then become the final
image, whatever number arrived: a fixed shortfall, and a random one in a fuzz run.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.sandbox import Sandbox, sandbox
from fakes.openai_api import Timeline
from tests.e2e import error_log as error_log
from tests.e2e import finals

TIMELINE = Timeline(first_partial=0.1, between_partials=0.1, final=0.1)


@pytest.fixture
async def box(tmp_path: Path, error_log: Any) -> AsyncIterator[Sandbox]:
    async with sandbox(tmp_path, timeline=TIMELINE) as running:
        yield running
        assert running.discord.unhandled == []
        assert running.discord.internal_errors == []


def partials_sent(box: Sandbox) -> list[tuple[int, int]]:
    """(partial images sent, partial images asked) per generation request, in request order."""
    counts: dict[int, int] = {}
    for event in box.openai.sent:
        counts.setdefault(event.request_index, 0)
        if event.partial_index is not None:
            counts[event.request_index] += 1
    generations = {
        index
        for index, request in enumerate(box.openai.requests)
        if request.path == "/v1/responses" and request.method == "POST"
    }
    requests = box.openai.requests
    return [
        (counts[i], (requests[i].json or {})["tools"][0]["partial_images"])
        for i in sorted(counts)
        if i in generations
    ]


def check_progress(box: Sandbox, final: dict[str, Any], sent: int, asked: int) -> None:
    """The final message's versions: some of the sent partials in order, then the image."""
    shown = [v for v in box.discord.versions(final["id"]) if v.attachments]
    names = [v.attachments[0].filename for v in shown]
    assert names[-1] == "image.png", names
    indexes = [int(name.removeprefix("partial-").split(".")[0]) for name in names[:-1]]
    # Latest wins: a partial may be skipped, never repeated or shown out of order or invented.
    assert indexes == sorted(set(indexes)), names
    assert all(0 <= i < sent for i in indexes), (names, sent)
    for version, index in zip(shown, indexes, strict=False):
        assert f"{index + 1}/{asked}" in version.content
    # The final text carries no leftover progress line.
    assert f"/{asked}…" not in final["content"]


async def test_fewer_partials_than_asked_still_end_in_the_final_image(box: Sandbox) -> None:
    d = box.discord
    box.openai.send_fewer_partials(1)
    await d.slash("imagine", {"prompt": "a lighthouse", "partials": 3})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    final = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=15)
    assert partials_sent(box) == [(1, 3)]
    check_progress(box, final, sent=1, asked=3)

    box.openai.send_fewer_partials(0)
    await d.user_message(thread["id"], "at night")
    final = await d.wait_for(
        lambda: finals(d, thread["id"])[1] if len(finals(d, thread["id"])) > 1 else None,
        timeout=15,
    )
    assert partials_sent(box)[-1][0] == 0
    shown = [v for v in d.versions(final["id"]) if v.attachments]
    assert [v.attachments[0].filename for v in shown] == ["image.png"]


async def test_random_partial_counts_fuzz(box: Sandbox) -> None:
    d = box.discord
    seed = random.randrange(2**32)
    box.openai.send_fewer_partials(rng=random.Random(seed))
    await d.slash("imagine", {"prompt": "a fox in the snow", "partials": 3})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=15)
    turns = 5
    for turn in range(1, turns + 1):
        if turn > 1:
            await d.user_message(thread["id"], f"variation {turn}")
        final = await d.wait_for(
            lambda n=turn: (
                finals(d, thread["id"])[n - 1] if len(finals(d, thread["id"])) >= n else None
            ),
            timeout=15,
        )
        sent = partials_sent(box)
        assert len(sent) == turn, (seed, sent)
        check_progress(box, final, *sent[-1])
