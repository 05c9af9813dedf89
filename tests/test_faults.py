"""Fault handling end to end: the real bot against both stand-ins, one test per fault.

Each test breaks one thing (an OpenAI error, a broken stream, a moderation refusal, a Discord
error, a dropped gateway, a missing permission, a small upload limit, a restart) and asserts what
the user sees in Discord: the final image, or a clear message naming the cause with a Retry button
that works once the fault is gone. DESIGN §4: every accepted request ends visibly.

The last test prints a table of every case (what was expected, what happened).
"""

from __future__ import annotations

import base64
import io
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from bot.core import i18n
from bot.sandbox import Sandbox, sandbox
from fakes.discord_api import FakeDiscord
from fakes.openai_api import Fault, Timeline
from storage.base import JobStatus
from tests.e2e import ErrorLog, button, custom_ids, ephemeral_texts, failures, finals
from tests.e2e import error_log as error_log

TIMELINE = Timeline(first_partial=0.1, between_partials=0.1, final=0.1)


# --- the summary table ----------------------------------------------------------------------


@dataclass
class Row:
    """One case of the summary table."""

    case: str
    expected: str = ""
    got: str = "(did not get this far)"
    passed: bool = False


ROWS: dict[str, Row] = {}


@pytest.fixture
def row(request: pytest.FixtureRequest) -> Iterator[Row]:
    """The table row of this test; the test marks it passed after its last assertion."""
    entry = Row(case=request.node.name.removeprefix("test_"))
    ROWS[request.node.nodeid] = entry
    yield entry


# --- helpers --------------------------------------------------------------------------------


def en(key: str, **params: object) -> str:
    """A message in English, as the user sees it."""
    return i18n.t("en", key, **params)


def responses_posts(box: Sandbox) -> int:
    """How many Responses API calls the bot made."""
    return sum(1 for r in box.openai.requests if r.method == "POST" and r.path == "/v1/responses")


def responses_bodies(box: Sandbox) -> list[dict[str, Any]]:
    return [
        r.json
        for r in box.openai.requests
        if r.method == "POST" and r.path == "/v1/responses" and r.json is not None
    ]


def has_image(message: dict[str, Any]) -> bool:
    return any(a["filename"].startswith("image.") for a in message.get("attachments") or [])


def first(items: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The first item, or None."""
    return items[0] if items else None


async def open_thread(box: Sandbox, prompt: str, **options: Any) -> Any:
    """Run /imagine in the default channel and return the id of the thread it opens."""
    d = box.discord
    await d.slash("imagine", {"prompt": prompt, **options})
    thread = await d.wait_for(
        lambda: next((t for t in d.threads(d.channel["id"]) if t["name"] == prompt), None),
        timeout=15,
    )
    return thread["id"]


async def outcome(box: Sandbox, channel_id: Any, *, finals_before: int = 0) -> dict[str, Any]:
    """Wait until a request in `channel_id` ends visibly: a new final image, or a failure."""
    d = box.discord
    return await d.wait_for(
        lambda: first(finals(d, channel_id)[finals_before:] or failures(d, channel_id)),
        timeout=20,
    )


async def retry_until_final(
    box: Sandbox, failure: dict[str, Any], channel_id: Any
) -> dict[str, Any]:
    """Press Retry on a failure message; return the final image that replaces it."""
    d = box.discord
    before = len(finals(d, channel_id))
    await d.click(failure["id"], button(failure, "retry"))
    return await d.wait_for(
        lambda: first(finals(d, channel_id)[before:]),
        timeout=20,
    )


def noise_png(size: tuple[int, int]) -> bytes:
    """A photo-like PNG: random pixels do not compress, so it is large."""
    buffer = io.BytesIO()
    Image.frombytes("RGB", size, os.urandom(size[0] * size[1] * 3)).save(buffer, "PNG")
    return buffer.getvalue()


def check_clean(box: Sandbox) -> None:
    assert box.discord.unhandled == []
    assert box.discord.internal_errors == []


# --- OpenAI faults ----------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenAICase:
    """One OpenAI misbehaviour and what the user must see."""

    name: str
    faults: tuple[Fault, ...]
    # "final", or the catalog key of the failure message.
    expect: str
    # The words of the failure message that name the cause (or the stage).
    words: str
    # Responses API calls until the request ended (retries included).
    calls: int
    settings: tuple[tuple[str, Any], ...] = ()
    partials: int = 2
    # Whether a partial image was on screen before the fault struck.
    partial_first: bool = False


OPENAI_CASES = [
    OpenAICase(
        "429 rate_limit_exceeded once: waits, retries",
        (Fault("rate_limit_429", retry_after_ms=50),),
        "final",
        "",
        calls=2,
    ),
    OpenAICase(
        "429 rate_limit_exceeded 3x: retries run out",
        (Fault("rate_limit_429"), Fault("rate_limit_429"), Fault("rate_limit_429")),
        "fail.rate_limited",
        "rate limiting",
        calls=3,
    ),
    OpenAICase(
        "429 insufficient_quota: not retried, admin told",
        (Fault("quota_429"),),
        "fail.quota",
        "A server admin needs to add billing",
        calls=1,
        settings=(("openai_max_retries", 2),),
    ),
    OpenAICase(
        "401 bad API key: not retried, admin told",
        (Fault("auth_401"),),
        "fail.auth",
        "A server admin needs to check it",
        calls=1,
        settings=(("openai_max_retries", 2),),
    ),
    OpenAICase(
        "500 without SDK retries",
        (Fault("server_500"),),
        "fail.transient",
        "OpenAI had a problem",
        calls=1,
    ),
    OpenAICase(
        "500 with SDK retries: retried",
        (Fault("server_500"),),
        "final",
        "",
        calls=2,
        settings=(("openai_max_retries", 2),),
    ),
    OpenAICase(
        "in-stream server_error event",
        (Fault("error_event_flat", after_events=6),),
        "fail.transient",
        "OpenAI had a problem",
        calls=1,
        partial_first=True,
    ),
    OpenAICase(
        "stalled stream: times out",
        (Fault("stall", after_events=6),),
        "fail.timeout",
        "took too long",
        calls=1,
        partial_first=True,
        settings=(("stream_stall_seconds", 1.0),),
    ),
    OpenAICase(
        "stream cut after a partial",
        (Fault("cut_stream", after_events=6),),
        "fail.stream_cut",
        "broke off",
        calls=1,
        partial_first=True,
    ),
    OpenAICase(
        "moderation: HTTP 400 (input)",
        (Fault("moderation_400"),),
        "fail.moderation_input",
        "before drawing",
        calls=1,
    ),
    OpenAICase(
        "moderation: in-stream error before drawing",
        (Fault("error_event_nested", after_events=2),),
        "fail.moderation_input",
        "before drawing",
        calls=1,
    ),
    OpenAICase(
        "moderation: in-stream error after a partial",
        (Fault("error_event_nested", after_events=6),),
        "fail.moderation_output",
        "finished image",
        calls=1,
        partial_first=True,
    ),
    OpenAICase(
        "moderation: failed image item",
        (Fault("failed_item"),),
        "fail.moderation_output",
        "finished image",
        calls=1,
    ),
    OpenAICase(
        "moderation: response.failed",
        (Fault("response_failed"),),
        "fail.moderation_output",
        "finished image",
        calls=1,
    ),
]


@pytest.mark.parametrize("case", OPENAI_CASES, ids=[c.name for c in OPENAI_CASES])
async def test_openai(tmp_path: Path, error_log: ErrorLog, row: Row, case: OpenAICase) -> None:
    row.case = f"openai: {case.name}"
    if case.expect == "final":
        row.expected = f"final image after {case.calls} calls"
    else:
        row.expected = f"{case.expect} ({case.words!r}) + Retry after {case.calls} call(s)"
    async with sandbox(tmp_path, settings=dict(case.settings), timeline=TIMELINE) as box:
        d = box.discord
        for fault in case.faults:
            box.openai.queue_fault(fault, path="/v1/responses")
        prompt = f"a lighthouse ({case.name})"
        thread = await open_thread(box, prompt, partials=case.partials)
        ended = await outcome(box, thread)
        calls = responses_posts(box)
        if has_image(ended):
            row.got = f"final image after {calls} calls"
        else:
            text = ended["content"].split("⚠️", 1)[-1].strip()
            row.got = f"{text[:60]!r}… + {'Retry' if failures(d, thread) else 'no Retry'} after {calls} call(s)"
        assert calls == case.calls
        if case.expect == "final":
            assert has_image(ended), ended["content"]
            assert failures(d, thread) == []
        else:
            assert not has_image(ended)
            assert en(case.expect, categories="other").split("(")[0].strip() in ended["content"]
            assert case.words in ended["content"]
            assert custom_ids(ended) == [f"img:retry:{button(ended, 'retry').split(':')[2]}"]
            if case.partial_first:
                # The failure replaced the preview the user was watching, in the same message.
                shown = [
                    v.attachments[0].filename for v in d.versions(ended["id"]) if v.attachments
                ]
                assert shown and shown[0].startswith("partial-"), shown
                assert ended["attachments"] == []
            # The fault is gone (each fault strikes once): Retry now makes the image.
            final = await retry_until_final(box, ended, thread)
            assert final["id"] == ended["id"]
            assert has_image(final)
            assert responses_posts(box) == case.calls + 1
            row.got += ", Retry → final"
        assert len(finals(d, thread)) == 1
        check_clean(box)
    row.passed = True


# --- the conversation forgotten by OpenAI ----------------------------------------------------


async def test_previous_response_not_found_reseeds_from_the_threads_last_image(
    tmp_path: Path, error_log: ErrorLog, row: Row
) -> None:
    row.case = "openai: previous_response_not_found"
    row.expected = "re-seeded from the last image (input_image), note.reseeded shown"
    async with sandbox(tmp_path, timeline=TIMELINE) as box:
        d = box.discord
        thread = await open_thread(box, "a red bicycle", partials=1)
        first = await outcome(box, thread)
        assert has_image(first)
        first_image = d.attachment_bytes(first["attachments"][0])
        box.openai.forget()
        await d.user_message(thread, "now paint it blue")
        second = await outcome(box, thread, finals_before=1)
        bodies = responses_bodies(box)
        refused, reseeded = bodies[-2], bodies[-1]
        parts = reseeded["input"][0]["content"]
        row.got = (
            f"{len(bodies)} calls, last without previous_response_id: "
            f"{'previous_response_id' not in reseeded}, inputs {[p['type'] for p in parts]}"
        )
        assert has_image(second), second["content"]
        assert refused["previous_response_id"] is not None
        assert "previous_response_id" not in reseeded
        assert [p["type"] for p in parts] == ["input_text", "input_image"]
        sent = parts[1]["image_url"].split(",", 1)[1]
        assert base64.b64decode(sent) == first_image
        assert "now paint it blue" in parts[0]["text"] and "a red bicycle" in parts[0]["text"]
        assert en("note.reseeded") in second["content"]
        texts = [v.content for v in d.versions(second["id"])]
        assert any(en("discord.reseeding") in text for text in texts)
        assert failures(d, thread) == []
        # The conversation goes on from the re-seeded turn.
        await d.user_message(thread, "add a basket")
        await outcome(box, thread, finals_before=2)
        assert (
            responses_bodies(box)[-1]["previous_response_id"]
            == list(box.openai.stored_responses)[-2]
        )
        row.got += ", note shown, next turn continues"
        check_clean(box)
    row.passed = True


# --- Discord faults ---------------------------------------------------------------------------

EDIT_MESSAGE = r"/channels/\d+/messages/\d+$"


@pytest.mark.parametrize(
    ("status", "upload"),
    [(429, "partial"), (429, "final"), (500, "final"), (502, "partial"), (503, "final")],
    ids=["429-partial", "429-final", "500-final", "502-partial", "503-final"],
)
async def test_discord_error_on_an_upload(
    tmp_path: Path, error_log: ErrorLog, row: Row, status: int, upload: str
) -> None:
    row.case = f"discord: {status} on the {upload} upload"
    row.expected = f"{status} answered once, final image still arrives"
    async with sandbox(tmp_path, timeline=TIMELINE) as box:
        d = box.discord
        # With partials the first edit of the progress message is partial 0; without, the final.
        partials = 2 if upload == "partial" else 0
        d.inject_error("PATCH", EDIT_MESSAGE, status, retry_after=0.2 if status == 429 else None)
        thread = await open_thread(box, f"a harbour at dawn ({status} {upload})", partials=partials)
        ended = await outcome(box, thread)
        refused = [r for r in d.requests if r.method == "PATCH" and r.status == status]
        await box.wait_idle()
        in_place = any(en("discord.drawing") in v.content for v in d.versions(ended["id"]))
        row.got = f"{len(refused)} x {status}, " + (
            ("final image, " + ("edited in place" if in_place else "posted anew"))
            if has_image(ended)
            else ended["content"]
        )
        assert len(refused) == 1
        assert has_image(ended), ended["content"]
        # One message left: the progress message edited in place, or (when Discord gives up on
        # the edit) a new one that replaced it; no stale "Drawing…" stays behind.
        assert [m["id"] for m in d.messages(thread) if m["author"]["bot"]] == [ended["id"]]
        assert d.attachment_bytes(ended["attachments"][0])[:4] == b"\x89PNG"
        names = [v.attachments[0].filename for v in d.versions(ended["id"]) if v.attachments]
        assert names[-1] == "image.png"
        turn = await box.services.store.get_turn_by_message(int(ended["id"]))
        assert turn is not None
        if upload == "partial":
            assert any(name.startswith("partial-") for name in names)
        check_clean(box)
    row.passed = True


async def test_gateway_drop_mid_generation_resumes_and_the_image_arrives(
    tmp_path: Path, error_log: ErrorLog, row: Row
) -> None:
    row.case = "discord: gateway dropped mid-generation"
    row.expected = "RESUME, final arrives; a message sent while down is replayed and drawn"
    slow = Timeline(first_partial=0.4, between_partials=0.3, final=0.4)
    async with sandbox(tmp_path, timeline=slow) as box:
        d = box.discord
        thread = await open_thread(box, "a night train", partials=2)
        # Drop the socket once the turn is being drawn, before any image is shown.
        await d.wait_for(
            lambda: any(m["author"]["bot"] for m in d.messages(thread)) and box.bot.studio.running,
            timeout=10,
        )
        await d.drop_gateway()
        dropped_at = time.monotonic()
        assert finals(d, thread) == []
        # A follow-up typed while the bot is disconnected reaches it through the RESUME replay.
        await d.user_message(thread, "add snow on the roof")
        first = await outcome(box, thread)
        await d.wait_for(lambda: d.resumes >= 1, timeout=15)
        second = await outcome(box, thread, finals_before=1)
        shown = [v.at for v in d.versions(first["id"]) if v.attachments]
        row.got = (
            f"resumes={d.resumes}, sessions={d.gateway_sessions}, "
            f"finals={len(finals(d, thread))}, failures={len(failures(d, thread))}"
        )
        assert has_image(first) and has_image(second)
        assert shown and min(shown) > dropped_at
        assert d.gateway_sessions == 1
        assert failures(d, thread) == []
        check_clean(box)
    row.passed = True


async def test_without_thread_permission_it_replies_in_the_channel(
    tmp_path: Path, error_log: ErrorLog, row: Row
) -> None:
    row.case = "discord: no permission to create threads"
    row.expected = "told so (ephemeral), final posted in the channel, replies continue"
    async with sandbox(tmp_path, timeline=TIMELINE) as box:
        d = box.discord
        channel = d.channel["id"]
        d.deny(channel, "create_threads")
        await d.slash("imagine", {"prompt": "a lonely tree", "partials": 1})
        final = await outcome(box, channel)
        notes = [text for text in ephemeral_texts(d) if en("discord.no_thread_permission") in text]
        row.got = f"threads={len(d.threads(channel))}, note={bool(notes)}, " + (
            "final in channel" if has_image(final) else final["content"]
        )
        assert has_image(final), final["content"]
        assert d.threads(channel) == []
        assert notes
        await d.user_message(channel, "add a swing", reply_to=final["id"])
        await outcome(box, channel, finals_before=1)
        assert responses_bodies(box)[-1]["previous_response_id"] == next(
            iter(box.openai.stored_responses)
        )
        row.got += ", reply continued"
        check_clean(box)
    row.passed = True


@pytest.mark.parametrize(
    ("limit", "side"),
    [(300 * 1024, (1536, 1024)), (10 * 1024 * 1024, (2048, 2048))],
    ids=["300KB-guild", "10MB-default"],
)
async def test_an_image_over_the_upload_limit_is_reencoded_to_fit(
    tmp_path: Path, error_log: ErrorLog, row: Row, limit: int, side: tuple[int, int]
) -> None:
    # 10 MB is the limit discord.py derives from a server without boosts, so the bot knows it
    # up front; a 300 KB limit it only learns from Discord's 413 (the sink halves the file).
    known = limit == 10 * 1024 * 1024
    row.case = f"discord: image over the upload limit ({limit // 1024} KB)"
    row.expected = f"final re-encoded under {limit // 1024} KB, message says so"
    # A photo-like reference makes the edited PNG several megabytes: noise does not compress.
    photo = noise_png(side)
    assert len(photo) > limit
    async with sandbox(tmp_path, timeline=TIMELINE, discord=FakeDiscord(upload_limit=limit)) as box:
        d = box.discord
        await d.slash(
            "imagine",
            {
                "prompt": "this photo as a postcard",
                "size": f"{side[0]}x{side[1]}",
                "partials": 0,
                "model": "gpt-image-2.5-sunburst",
            },
            attachments={"image": ("photo.png", photo)},
        )
        thread = await d.wait_for(lambda: first(d.threads(d.channel["id"])), timeout=15)
        final = await outcome(box, thread["id"])
        attachment = (final.get("attachments") or [{}])[0]
        size = attachment.get("size", 0)
        fmt = str(attachment.get("filename", "")).rsplit(".", 1)[-1]
        mb = round(size / 1024 / 1024, 1)
        note = (
            en("discord.reencoded", format=fmt, size=mb, limit=round(limit / 1024 / 1024, 1))
            if known
            else en("discord.reencoded_refused", format=fmt, size=mb)
        )
        refused = [r for r in d.requests if r.status == 413]
        row.got = (
            f"{attachment.get('filename')} {size / 1024:.0f} KB after {len(refused)} x 413, "
            f"note={'yes' if note in final['content'] else 'no'}"
        )
        assert has_image(final), final["content"]
        assert fmt in ("jpeg", "webp")
        assert 0 < size <= limit
        assert note in final["content"], final["content"]
        data = d.attachment_bytes(attachment)
        assert len(data) == size
        assert Image.open(io.BytesIO(data)).format in ("JPEG", "WEBP")
        assert (refused == []) if known else (len(refused) >= 1)
        assert [m["id"] for m in d.messages(thread["id"]) if m["author"]["bot"]] == [final["id"]]
        check_clean(box)
    row.passed = True


# --- a restart in the middle of a queue -------------------------------------------------------


def saw(d: FakeDiscord, channel_id: Any, text: str) -> bool:
    """Whether any version of any bot message in a channel showed `text`."""
    return any(
        text in version.content
        for message in d.messages(channel_id)
        if message["author"]["bot"]
        for version in d.versions(message["id"])
    )


async def test_a_restart_in_the_middle_of_a_queue_loses_nothing(
    tmp_path: Path, error_log: ErrorLog, row: Row
) -> None:
    row.case = "restart with 1 running + 3 queued (global_concurrency=1)"
    row.expected = "positions 1-3 shown; after restart 3 finals + 1 interrupted whose Retry works"
    settings = {"global_concurrency": 1}
    d = FakeDiscord()
    await d.start()
    try:
        users = [d.user, d.add_user("bob"), d.add_user("carol"), d.add_user("dave")]
        prompts = [f"queued picture {i}" for i in range(len(users))]
        # The first job is still drawing when the bot stops.
        slow = Timeline(first_partial=0.2, between_partials=0.2, final=30)
        async with sandbox(tmp_path, settings=settings, timeline=slow, discord=d) as box:
            for prompt, user in zip(prompts, users, strict=True):
                await d.slash("imagine", {"prompt": prompt, "partials": 1}, user=user)
            by_name = await d.wait_for(
                lambda: (
                    {t["name"]: t["id"] for t in d.threads(d.channel["id"])}
                    if len(d.threads(d.channel["id"])) == len(prompts)
                    else None
                ),
                timeout=15,
            )
            threads = [by_name[p] for p in prompts]
            await d.wait_for(
                lambda: (
                    all(
                        saw(d, thread, en("discord.queued", position=position))
                        for position, thread in enumerate(threads[1:], start=1)
                    )
                    and saw(d, threads[0], "Partial image")
                ),
                timeout=15,
            )
            assert box.bot.studio.running == 1
            assert len(box.bot.studio.waiting_jobs()) == 3
            first_calls = responses_posts(box)
            # Shutting down: the grace period runs out while the first job is drawing.
            await box.bot.studio.close(grace=0.1)
        async with sandbox(tmp_path, settings=settings, timeline=TIMELINE, discord=d) as box:
            ended = [await outcome(box, thread) for thread in threads]
            kinds = ["final" if has_image(m) else "failure" for m in ended]
            row.got = f"after restart: {kinds}"
            assert kinds == ["failure", "final", "final", "final"]
            interrupted = ended[0]
            assert en("fail.interrupted") in interrupted["content"]
            # The interrupted job's message is its progress message (the partial it showed).
            assert saw(d, threads[0], "Partial image")
            final = await retry_until_final(box, interrupted, threads[0])
            assert final["id"] == interrupted["id"]
            row.got += ", Retry → final"
            for thread in threads:
                assert len(finals(d, thread)) == 1
                assert failures(d, thread) == []
            assert first_calls == 1
            assert responses_posts(box) == 4
            await box.wait_idle()
            jobs = [await box.services.store.get_job(i) for i in range(1, 6)]
            statuses = [job.status for job in jobs if job is not None]
            assert statuses == [JobStatus.DONE] * 4
            assert d.gateway_sessions == 2
            check_clean(box)
    finally:
        await d.close()
    row.passed = True


# --- the table --------------------------------------------------------------------------------


def test_zz_summary(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> None:
    """Print every case of this module (expected, got) and fail if any did not pass."""
    ours = [
        item
        for item in request.session.items
        if getattr(item, "module", None) is request.module and item.name != request.node.name
    ]
    if not ours:
        pytest.skip("no fault case was selected")
    rows = [ROWS.get(item.nodeid) or Row(case=item.name, got="(not run)") for item in ours]
    width = [max(len(r.case) for r in rows), max(len(r.expected) for r in rows)]
    lines = [
        f"{'case':<{width[0]}} | {'expected':<{width[1]}} | ok   | got",
        f"{'-' * width[0]}-+-{'-' * width[1]}-+------+-----",
    ]
    for r in rows:
        ok = "PASS" if r.passed else "FAIL"
        lines.append(f"{r.case:<{width[0]}} | {r.expected:<{width[1]}} | {ok} | {r.got}")
    with capsys.disabled():
        print("\n\nFault handling, end to end:\n" + "\n".join(lines))
    assert rows and all(r.passed for r in rows), [r.case for r in rows if not r.passed]
