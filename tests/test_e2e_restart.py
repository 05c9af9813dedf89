"""`python -m bot run` as its own process: restarts keep conversations, buttons and jobs."""

from __future__ import annotations

import signal
from typing import Any

from fakes.discord_api import FakeDiscord
from fakes.openai_api import FakeOpenAI, Timeline
from tests.e2e import BotProcess, button, failures, finals
from tests.e2e import stand_ins as stand_ins


def previous_ids(openai: FakeOpenAI) -> list[Any]:
    return [
        r.json.get("previous_response_id")
        for r in openai.requests
        if r.path == "/v1/responses" and r.json
    ]


async def test_restart_keeps_the_conversation_and_the_buttons(
    stand_ins: tuple[FakeDiscord, FakeOpenAI, BotProcess],
) -> None:
    d, openai, bot = stand_ins
    await bot.start()
    await d.slash("imagine", {"prompt": "a windmill", "partials": 1})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=30)
    first = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=30)
    first_response = next(iter(openai.stored_responses))
    assert await bot.stop() == 0

    await bot.start()
    await d.user_message(thread["id"], "now at sunset")
    await d.wait_for(lambda: len(finals(d, thread["id"])) >= 2 or None, timeout=30)
    assert previous_ids(openai)[-1] == first_response

    await d.click(first["id"], button(first, "vary"))
    await d.wait_for(lambda: len(finals(d, thread["id"])) >= 3 or None, timeout=30)
    assert previous_ids(openai)[-1] == first_response
    assert await bot.stop() == 0


async def test_a_generation_killed_mid_way_is_reported_interrupted_with_a_working_retry(
    stand_ins: tuple[FakeDiscord, FakeOpenAI, BotProcess],
) -> None:
    d, openai, bot = stand_ins
    openai.set_timeline(Timeline(first_partial=0.2, between_partials=0.2, final=30))
    await bot.start()
    await d.slash("imagine", {"prompt": "a slow sunrise", "partials": 2})
    thread = await d.wait_for(lambda: (d.threads(d.channel["id"]) or [None])[0], timeout=30)

    def partial_shown() -> Any:
        for message in d.messages(thread["id"]):
            if any(v.attachments for v in d.versions(message["id"])):
                return message
        return None

    progress = await d.wait_for(partial_shown, timeout=30)
    await bot.stop(signal.SIGKILL)

    openai.set_timeline(Timeline())
    await bot.start()
    failed = await d.wait_for(lambda: (failures(d, thread["id"]) or [None])[0], timeout=30)
    assert failed["id"] == progress["id"]
    assert "restarted" in failed["content"]
    await d.click(failed["id"], button(failed, "retry"))
    final = await d.wait_for(lambda: (finals(d, thread["id"]) or [None])[0], timeout=30)
    assert final["id"] == progress["id"]
    assert final["attachments"][0]["filename"] == "image.png"
    assert await bot.stop() == 0
