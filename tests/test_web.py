"""The web studio over HTTP against the sandbox: operations endpoints, links and their rules."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bot.core.tokens import Purpose
from bot.sandbox import Sandbox, sandbox
from tests.e2e import button, custom_ids, finals
from tests.test_web_units import check_exposition
from tests.web import (
    FAST,
    PUBLIC,
    imagine,
    layer_png,
    link_from,
    local,
    post_paint,
    responses_bodies,
    sent_mask,
)
from tests.web import web_box as web_box


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def text_of(http: aiohttp.ClientSession, url: str) -> tuple[int, str, Any]:
    async with http.get(url, allow_redirects=False) as response:
        return response.status, await response.text(), response.headers


async def test_health_readiness_and_metrics_count_a_turn(
    web_box: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, body, _ = await text_of(http, local(web_box, "/healthz"))
    assert (status, body) == (200, "ok\n")
    status, body, headers = await text_of(http, local(web_box, "/readyz"))
    assert status == 200, body
    assert json.loads(body) == {"database": True, "gateway": True, "queue": True, "ready": True}

    _, before, _ = await text_of(http, local(web_box, "/metrics"))
    assert "imagine_images_total{" not in before
    await imagine(web_box, "a lighthouse")
    await web_box.wait_idle()
    status, text, headers = await text_of(http, local(web_box, "/metrics"))
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    samples = check_exposition(text)
    model = web_box.settings.image_model
    labels = f'engine="responses",model="{model}"'
    assert samples[f"imagine_images_total{{{labels}}}"] == 1
    assert samples[f'imagine_job_duration_seconds_count{{{labels},outcome="completed"}}'] == 1
    assert samples['imagine_openai_responses_total{status="completed"}'] == 1
    assert samples["imagine_job_wait_seconds_count"] == 1
    assert samples[f"imagine_cost_usd_total{{{labels}}}"] > 0
    assert samples["imagine_jobs_queued"] == 0 and samples["imagine_jobs_running"] == 0
    # Every REST call of discord.py is counted by status.
    assert samples['imagine_discord_http_responses_total{status="200"}'] >= 3


async def test_readyz_says_what_is_not_ready(web_box: Sandbox, http: aiohttp.ClientSession) -> None:
    web_box.bot.web._gateway_ready = lambda: False
    status, body, _ = await text_of(http, local(web_box, "/readyz"))
    assert status == 503
    assert json.loads(body)["gateway"] is False and json.loads(body)["database"] is True


async def test_paint_link_rules_forged_expired_used(
    web_box: Sandbox, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    d = web_box.discord
    thread, final = await imagine(web_box, "a field of grass")
    # With a public address, Paint takes the grid's place and Gallery joins the buttons.
    actions = [c.split(":")[1] for c in custom_ids(final)]
    assert actions[:6] == ["reroll", "vary", "edit", "paint", "delete", "gallery"]
    assert "region" not in actions
    path = await link_from(web_box, final, "paint")
    token = path.rsplit("/", 1)[1]
    status, page, headers = await text_of(http, local(web_box, path))
    assert status == 200
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert headers["Referrer-Policy"] == "no-referrer"
    # The token is in the address only: never in the page it opens.
    assert token not in page and token.split(".")[1] not in page
    assert "<script>" not in page and 'src="/static/paint.js"' in page

    requests_before = len(web_box.openai.requests)
    body, signature = token.split(".")
    forged = [
        f"{body}.{signature[::-1]}",
        f"{body[:-4]}AAAA.{signature}",
        web_box.bot.studio._web_access().signer.issue(Purpose.GALLERY, 1, 1, ttl=600),
    ]
    expired = web_box.bot.studio._web_access().signer.issue(
        Purpose.PAINT, int(button(final, "paint").split(":")[2]), d.user["id"], ttl=-1
    )
    for bad in (*forged, expired):
        status, _, _ = await text_of(http, local(web_box, f"/paint/{bad}"))
        assert status == 403
        status, answer = await post_paint(
            http, local(web_box, f"/paint/{bad}"), layer_png((1024, 1024), (0, 0, 99, 99))
        )
        assert status == 403 and answer["status"] == "forbidden"
    assert len(web_box.openai.requests) == requests_before

    status, answer = await post_paint(
        http, local(web_box, path), layer_png((1024, 1024), (100, 200, 299, 399))
    )
    assert status == 200, answer
    assert answer["status"] == "queued"
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 2, timeout=15)
    mask = sent_mask(responses_bodies(web_box)[-1])
    assert mask.getchannel("A").getbbox() is not None
    assert mask.getpixel((150, 250))[3] == 0 and mask.getpixel((350, 250))[3] == 255
    count = len(web_box.openai.requests)
    # Used once: the page and a second submission are refused, and nothing more is sent.
    status, _, _ = await text_of(http, local(web_box, path))
    assert status == 403
    status, answer = await post_paint(
        http, local(web_box, path), layer_png((1024, 1024), (0, 0, 9, 9))
    )
    assert status == 403
    assert len(web_box.openai.requests) == count
    # The refusals and the submission were logged, the token never.
    assert "refused a link" in caplog.text and "queued as job" in caplog.text
    assert token not in caplog.text and signature not in caplog.text


async def test_a_refused_upload_keeps_the_link_and_sizes_are_limited(tmp_path: Path) -> None:
    settings = {"web_port": 0, "public_base_url": PUBLIC, "max_input_bytes": 100_000}
    async with (
        sandbox(tmp_path, timeline=FAST, settings=settings) as box,
        aiohttp.ClientSession() as http,
    ):
        d = box.discord
        thread, final = await imagine(box, "a quiet lake")
        path = await link_from(box, final, "paint")
        url = local(box, path)
        # Over the limit by its declared length: refused before the body is read.
        status, answer = await post_paint(http, url, b"\x89PNG\r\n\x1a\n" + b"\0" * 200_000)
        assert status == 413 and "MB" in answer["message"]
        # Refused for its content: the wrong size, then nothing painted.
        status, answer = await post_paint(http, url, layer_png((512, 512), (0, 0, 9, 9)))
        assert status == 400 and "512" in answer["message"]
        status, answer = await post_paint(http, url, layer_png((1024, 1024), None))
        assert status == 400 and "Nothing is marked" in answer["message"]
        status, answer = await post_paint(http, url, b"not a picture at all")
        assert status == 400
        assert [r.path for r in box.openai.requests].count("/v1/responses") == 1
        # The link still works for a proper submission.
        status, answer = await post_paint(http, url, layer_png((1024, 1024), (0, 0, 99, 99)))
        assert status == 200, answer
        await d.wait_for(lambda: len(finals(d, thread["id"])) == 2, timeout=15)


async def test_only_the_apps_own_files_are_served(
    web_box: Sandbox, http: aiohttp.ClientSession
) -> None:
    status, body, headers = await text_of(http, local(web_box, "/static/paint.js"))
    assert status == 200 and headers["Content-Type"].startswith("text/javascript")
    assert "pointerdown" in body
    for path in (
        "/static/../pyproject.toml",
        "/static/%2e%2e/pyproject.toml",
        "/static/..%2fapp.py",
        "/static/app.py",
        "/static/paint.html",
        "/static/",
        "/templates/paint.html",
        "/web/app.py",
    ):
        status, body, headers = await text_of(http, local(web_box, path))
        assert status == 404, path
        assert "Content-Security-Policy" in headers


async def test_the_gallery_escapes_user_text_and_shows_branches(
    web_box: Sandbox, http: aiohttp.ClientSession
) -> None:
    d = web_box.discord
    prompt = '<script>alert("x")</script> & <img src=x onerror=alert(1)>'
    thread, first = await imagine(web_box, prompt)
    await d.user_message(thread["id"], "now at night")
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 2, timeout=15)
    await d.user_message(thread["id"], "make it green instead", reply_to=first["id"])
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 3, timeout=15)
    path = await link_from(web_box, first, "gallery")
    status, _, headers = await text_of(http, local(web_box, path.rstrip("/")))
    assert status == 308 and headers["Location"].endswith("/")
    status, page, _ = await text_of(http, local(web_box, path))
    assert status == 200
    assert "<script>alert" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &lt;img src=x" in page
    token = path.strip("/").rsplit("/", 1)[1]
    assert token not in page
    turns = [int(button(m, "reroll").split(":")[2]) for m in finals(d, thread["id"])]
    # Both later images continued the first one: two branches under it.
    first_id = turns[0]
    assert page.count(f"from #{first_id}") == 2
    async with http.get(local(web_box, f"{path}thumb/{turns[1]}")) as response:
        assert response.status == 200 and response.headers["Content-Type"] == "image/png"
        assert (await response.read()).startswith(b"\x89PNG")
    # A turn of another thread is not in this gallery, even with a valid link.
    _other_thread, other = await imagine(web_box, "elsewhere")
    other_id = int(button(other, "reroll").split(":")[2])
    async with http.get(local(web_box, f"{path}image/{other_id}")) as response:
        assert response.status == 403
    async with http.get(local(web_box, f"{path}image/99999999999999999999")) as response:
        assert response.status == 404


async def test_history_in_a_thread_answers_with_a_gallery_link(web_box: Sandbox) -> None:
    d = web_box.discord
    thread, _ = await imagine(web_box, "a garden")
    await d.slash("history", {}, channel_id=thread["id"])
    reply = await d.wait_for(
        lambda: next((m for m in d.messages(thread["id"]) if int(m.get("flags") or 0) & 64), None),
        timeout=10,
    )
    assert f"{PUBLIC}/gallery/" in reply["content"]
    await d.slash("history", {})
    await d.wait_for(
        lambda: any("/history" in m["content"] for m in d.messages(d.channel["id"])), timeout=10
    )


async def test_help_tells_of_paint_and_gallery_only_where_they_are_offered(
    web_box: Sandbox, tmp_path: Path
) -> None:
    d = web_box.discord
    for locale, paint in (("en-US", "Paint"), ("ko", "칠해서 편집")):
        before = len(d.messages(d.channel["id"]))
        await d.slash("help", {}, locale=locale)
        reply = await d.wait_for(
            lambda before=before: next(iter(d.messages(d.channel["id"])[before:]), None),
            timeout=10,
        )
        web = reply["embeds"][0]["description"]
        assert paint in web
        assert "/history" in web or "/기록" in web
    async with sandbox(tmp_path / "plain", timeline=FAST, settings={"web_port": 0}) as box:
        await box.discord.slash("help", {})
        reply = await box.discord.wait_for(
            lambda: next(iter(box.discord.messages(box.discord.channel["id"])), None), timeout=10
        )
        assert "/imagine" in reply["content"]
        assert not reply.get("embeds")


async def test_without_a_public_address_the_grid_stays(tmp_path: Path) -> None:
    async with sandbox(tmp_path, timeline=FAST, settings={"web_port": 0}) as box:
        _thread, final = await imagine(box, "a tree")
        actions = [c.split(":")[1] for c in custom_ids(final)]
        assert actions[:5] == ["reroll", "vary", "edit", "region", "delete"]
        assert "paint" not in actions and "gallery" not in actions
        async with aiohttp.ClientSession() as http:
            status, _, _ = await text_of(http, local(box, "/healthz"))
            assert status == 200


async def test_log_lines_of_a_job_carry_its_job_thread_and_openai_request_ids(
    web_box: Sandbox,
) -> None:
    from bot.core.logcontext import ContextFilter

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(self.format(record))

    handler = Collect(level=logging.INFO)
    handler.addFilter(ContextFilter())
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s%(context)s"))
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        thread, _final = await imagine(web_box, "a lantern")
        await web_box.wait_idle()
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    finished = [line for line in lines if "turn finished" in line]
    assert len(finished) == 1, lines
    assert f"thread={thread['id']}" in finished[0]
    assert re.search(r" job=[0-9]+ thread=[0-9]+ openai_request=req_[A-Za-z0-9]+$", finished[0])
    # Lines outside any job carry no ids.
    assert all("job=" not in line for line in lines if "web studio listening" in line)
