"""`python -m bot demo --out DIR`: a scripted session against the built-in stand-ins, written to DIR."""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bot.sandbox import Sandbox, sandbox
from bot.settings import Settings
from fakes.openai_api import Timeline

log = logging.getLogger(__name__)

DEMO_TIMELINE = Timeline(first_partial=0.4, between_partials=0.4, final=0.4)


def _custom_ids(message: dict[str, Any]) -> list[str]:
    return [
        c["custom_id"]
        for row in message.get("components") or []
        for c in row.get("components") or []
        if "custom_id" in c
    ]


class Transcript:
    """Collects what happened, and every image shown, as a readable Markdown file."""

    def __init__(self, out: Path, box: Sandbox) -> None:
        self.out = out
        self.box = box
        self.lines: list[str] = ["# Demo session", ""]
        self.started = time.monotonic()
        self.saved: set[tuple[int, int]] = set()
        self.images = 0

    def step(self, title: str, action: str) -> None:
        self.lines += [f"## {title}", "", f"**User:** {action}", ""]

    def _save(self, message_id: int, index: int, filename: str, data: bytes) -> str:
        self.images += 1
        name = f"{self.images:02d}-{filename}"
        (self.out / name).write_bytes(data)
        self.saved.add((message_id, index))
        return name

    def show(self, message: dict[str, Any]) -> None:
        """Record every version of a bot message: the partials it showed, then its final state."""
        fake = self.box.discord
        message_id = int(message["id"])
        for index, version in enumerate(fake.versions(message_id)):
            if (message_id, index) in self.saved or not version.attachments:
                continue
            attachment = version.attachments[0]
            name = self._save(message_id, index, attachment.filename, attachment.data)
            seconds = version.at - self.started
            label = "final image" if attachment.filename.startswith("image") else "partial image"
            self.lines.append(f"- t={seconds:5.2f}s {label}: ![{name}]({name})")
        final = fake.versions(message_id)[-1]
        self.lines += [
            "",
            "**Bot:**",
            "",
            *[f"> {line}" for line in final.content.splitlines()],
            "",
        ]
        buttons = [c.split(":")[1] for c in _custom_ids(fake.message(message_id))]
        if buttons:
            self.lines += [f"Buttons: {', '.join(buttons)}", ""]

    def write(self) -> Path:
        path = self.out / "transcript.md"
        path.write_text("\n".join(self.lines) + "\n", encoding="utf-8")
        return path


async def _final(box: Sandbox, channel_id: Any, count: int) -> dict[str, Any]:
    fake = box.discord

    def found() -> dict[str, Any] | None:
        finals = [
            m
            for m in fake.messages(channel_id)
            if any(c.startswith("img:reroll:") for c in _custom_ids(m))
        ]
        return finals[count - 1] if len(finals) >= count else None

    return await fake.wait_for(found, timeout=60)


async def play(box: Sandbox, out: Path) -> Transcript:
    """The scripted session."""
    fake = box.discord
    box.openai.reply_text = None
    transcript = Transcript(out, box)

    transcript.step(
        "1. /imagine with partial images",
        "`/imagine prompt:a lighthouse on a cliff at dusk, oil painting partials:2`",
    )
    await fake.slash(
        "imagine", {"prompt": "a lighthouse on a cliff at dusk, oil painting", "partials": 2}
    )
    thread = await fake.wait_for(
        lambda: next(iter(fake.threads(fake.channel["id"])), None), timeout=60
    )
    transcript.lines.append(f"The bot opened the thread **{thread['name']}**.\n")
    first = await _final(box, thread["id"], 1)
    transcript.show(first)

    transcript.step(
        "2. A follow-up in the thread edits the latest image",
        "`now a storm is coming, with lightning`",
    )
    await fake.user_message(thread["id"], "now a storm is coming, with lightning")
    second = await _final(box, thread["id"], 2)
    transcript.show(second)

    transcript.step(
        "3. A reply to the first image branches from it",
        "(reply to image 1) `make it a sunny morning instead`",
    )
    await fake.user_message(thread["id"], "make it a sunny morning instead", reply_to=first["id"])
    third = await _final(box, thread["id"], 3)
    transcript.show(third)

    transcript.step(
        "4. Edit region", "Edit region on image 3, cells 1 and 2, `add a flock of seagulls`"
    )
    reroll = next(c for c in _custom_ids(third) if c.startswith("img:region:"))
    await fake.click(third["id"], reroll)
    picker = await fake.wait_for(
        lambda: next(
            (
                m
                for m in fake.messages(thread["id"])
                if any(c.startswith("img:cells:") for c in _custom_ids(m))
            ),
            None,
        ),
        timeout=60,
    )
    attachment = picker["attachments"][0]
    grid = transcript._save(
        int(picker["id"]), 0, attachment["filename"], fake.attachment_bytes(attachment)
    )
    transcript.lines.append(f"The bot shows the grid: ![{grid}]({grid})\n")
    opened = await fake.select(picker["id"], _custom_ids(picker)[0], ["1", "2"])
    await fake.submit_modal(opened, {"instruction": "add a flock of seagulls"})
    fourth = await _final(box, thread["id"], 4)
    transcript.show(fourth)

    requests = [r for r in box.openai.requests if r.path == "/v1/responses" and r.json]
    transcript.lines += ["## What was sent to OpenAI", ""]
    for number, request in enumerate(requests, start=1):
        body = request.json or {}
        tool = body.get("tools", [{}])[0]
        parts = [c["type"] for c in body.get("input", [{}])[0].get("content", [])]
        mask = " + mask" if "input_image_mask" in tool else ""
        transcript.lines.append(
            f"{number}. previous_response_id=`{body.get('previous_response_id')}`, input={parts}{mask}, partial_images={tool.get('partial_images')}"
        )
    transcript.lines.append("")
    return transcript


async def run_demo(out: Path, settings: Settings) -> int:
    """Start both stand-ins and the bot, play the session, write the transcript and images."""
    del settings  # the demo never uses the operator's tokens or database
    out.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="imagine-demo-"))
    try:
        async with sandbox(data, timeline=DEMO_TIMELINE) as box:
            transcript = await play(box, out)
            path = transcript.write()
        print(f"wrote {path} and {transcript.images} images to {out}")
        return 0
    finally:
        shutil.rmtree(data, ignore_errors=True)
