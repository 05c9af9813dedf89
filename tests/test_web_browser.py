"""The web studio in a real headless browser: Debian's Chromium driven by Playwright.

The browser is the system's (/usr/bin/chromium, installed by .ci/run), never a download. In CI
(CI set) a missing browser fails these tests; on a developer's machine without it they skip.
"""

from __future__ import annotations

import base64
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageChops

from bot.sandbox import Sandbox
from tests.e2e import finals
from tests.web import imagine, link_from, local, responses_bodies, sent_mask
from tests.web import web_box as web_box

CHROMIUM = Path("/usr/bin/chromium")
# As the machine's notes require: no sandbox as root, no GPU, and no background networking
# (the machine's closed network refuses Chromium's own connections).
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# README screenshots are written here when set (python -m pytest tests/test_web_browser.py).
SHOTS = os.environ.get("WEB_SCREENSHOTS")


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs Debian's chromium before the tests")
    pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium)")


@pytest.fixture
async def browser() -> AsyncIterator[Any]:
    _require_chromium()
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield launched
        finally:
            await launched.close()


def _shot(tmp_path: Path, name: str) -> Path:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        return Path(SHOTS) / name
    return tmp_path / name


async def test_a_painted_stroke_is_the_mask_openai_receives(
    web_box: Sandbox, browser: Any, tmp_path: Path
) -> None:
    d = web_box.discord
    thread, final = await imagine(web_box, "a meadow under a wide sky")
    path = await link_from(web_box, final, "paint")
    page = await browser.new_page(viewport={"width": 1280, "height": 1400})
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    await page.goto(local(web_box, path))
    await page.wait_for_function(
        "() => { const i = document.getElementById('picture'); return i.complete && i.naturalWidth > 0; }",
        timeout=10_000,
    )
    assert await page.eval_on_selector("#picture", "i => [i.naturalWidth, i.naturalHeight]") == [
        1024,
        1024,
    ]
    # A horizontal stroke with the mouse, 40 px wide (the default brush), at 100 % zoom.
    box = await page.locator("#layer").bounding_box()
    assert box is not None and round(box["width"]) == 1024
    start, end, row = (200, 700, 300)
    await page.mouse.move(box["x"] + start, box["y"] + row)
    await page.mouse.down()
    for x in range(start, end + 1, 25):
        await page.mouse.move(box["x"] + x, box["y"] + row)
    await page.mouse.up()
    # What the canvas holds: the browser's own view of the painted pixels (alpha per pixel).
    painted_b64 = await page.evaluate(
        """() => {
            const c = document.getElementById('layer');
            const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            const alpha = new Uint8Array(data.length / 4);
            for (let i = 0; i < alpha.length; i++) alpha[i] = data[i * 4 + 3];
            let text = '';
            for (let i = 0; i < alpha.length; i += 0x8000) {
                text += String.fromCharCode.apply(null, alpha.subarray(i, i + 0x8000));
            }
            return btoa(text);
        }"""
    )
    painted = Image.frombytes("L", (1024, 1024), base64.b64decode(painted_b64))
    await page.fill("#prompt", "a red kite in the sky")
    await page.screenshot(path=str(_shot(tmp_path, "painter.png")))
    requests = len(responses_bodies(web_box))
    await page.click("#submit")
    await page.wait_for_function(
        "() => document.getElementById('painter').dataset.state === 'queued'", timeout=10_000
    )
    status = await page.text_content("#status")
    assert status is not None and "Queued" in status
    # The edited image arrives in the thread, as after any edit.
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 2, timeout=15)
    bodies = responses_bodies(web_box)
    assert len(bodies) == requests + 1
    body = bodies[-1]
    assert body["input"][0]["content"][0]["text"] == "a red kite in the sky"
    assert body["previous_response_id"] == next(iter(web_box.openai.stored_responses))

    mask = sent_mask(body)
    assert mask.mode == "RGBA" and mask.size == (1024, 1024)
    alpha = mask.getchannel("A")
    assert painted.getbbox() is not None
    # Transparent exactly where the canvas was painted (at least half opaque), opaque elsewhere.
    expected = painted.point(lambda a: 0 if a >= 128 else 255)
    differing = ImageChops.difference(alpha, expected).getbbox()
    assert differing is None, f"the mask differs from the painted layer in {differing}"
    # And that is where the mouse went: along the row, as wide as the brush, nowhere else.
    edited = ImageChops.invert(alpha).getbbox()
    assert edited is not None
    left, top, right, bottom = edited
    assert abs(left - (start - 20)) <= 2 and abs(right - (end + 20)) <= 2
    assert abs(top - (row - 20)) <= 2 and abs(bottom - (row + 20)) <= 2
    assert mask.getpixel((450, row))[3] == 0 and mask.getpixel((450, row + 60))[3] == 255
    assert errors == []

    # The link worked once: opening it again is refused.
    response = await page.goto(local(web_box, path))
    assert response is not None and response.status == 403
    assert "does not work" in (await page.text_content("h1") or "")
    await page.close()


async def test_an_expired_link_is_refused_in_the_browser(
    web_box: Sandbox, browser: Any, tmp_path: Path
) -> None:
    from bot.core.tokens import Purpose

    _thread, final = await imagine(web_box, "a boat")
    await link_from(web_box, final, "paint")
    turn = int(final["components"][0]["components"][0]["custom_id"].split(":")[2])
    signer = web_box.bot.studio._web_access().signer
    expired = signer.issue(Purpose.PAINT, turn, web_box.discord.user["id"], ttl=-1)
    page = await browser.new_page()
    response = await page.goto(local(web_box, f"/paint/{expired}"))
    assert response is not None and response.status == 403
    assert await page.locator("#layer").count() == 0
    await page.close()


async def test_the_gallery_shows_a_branch_with_its_images(
    web_box: Sandbox, browser: Any, tmp_path: Path
) -> None:
    d = web_box.discord
    thread, first = await imagine(web_box, "a red car on a coast road")
    await d.user_message(thread["id"], "make it blue")
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 2, timeout=15)
    await d.user_message(thread["id"], "make it green instead", reply_to=first["id"])
    await d.wait_for(lambda: len(finals(d, thread["id"])) == 3, timeout=15)
    path = await link_from(web_box, first, "gallery")
    page = await browser.new_page(viewport={"width": 1100, "height": 900})
    started = time.monotonic()
    await page.goto(local(web_box, path))
    await page.wait_for_function(
        "() => [...document.images].length === 3 && [...document.images].every(i => i.complete && i.naturalWidth > 0)",
        timeout=10_000,
    )
    loaded = time.monotonic() - started
    first_id = int(first["components"][0]["components"][0]["custom_id"].split(":")[2])
    # Both later images hang under the first: a branch.
    children = await page.eval_on_selector_all(
        f"li[data-turn='{first_id}'] > ul > li", "items => items.map(i => i.dataset.turn)"
    )
    assert len(children) == 2
    roots = await page.eval_on_selector_all(".tree > li", "items => items.length")
    assert roots == 1
    prompts = await page.eval_on_selector_all(".prompt", "ps => ps.map(p => p.textContent)")
    assert prompts == ["a red car on a coast road", "make it blue", "make it green instead"]
    await page.screenshot(path=str(_shot(tmp_path, "gallery.png")), full_page=True)
    assert loaded < 10
    await page.close()


ALPHA_AT = """([x, y]) => {
    const c = document.getElementById('layer');
    return c.getContext('2d').getImageData(x, y, 1, 1).data[3];
}"""
PAINTED = """() => {
    const c = document.getElementById('layer');
    const data = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) n++;
    return n;
}"""
PEN_STROKE = """([x0, x1, y, pressure]) => {
    const c = document.getElementById('layer');
    const box = c.getBoundingClientRect();
    const at = (x) => ({
        pointerId: 7, pointerType: 'pen', isPrimary: true, pressure, button: 0, buttons: 1,
        clientX: box.left + x * box.width / c.width, clientY: box.top + y * box.height / c.height,
        bubbles: true, cancelable: true,
    });
    c.dispatchEvent(new PointerEvent('pointerdown', at(x0)));
    for (let x = x0; x <= x1; x += 10) c.dispatchEvent(new PointerEvent('pointermove', at(x)));
    c.dispatchEvent(new PointerEvent('pointerup', at(x1)));
}"""


async def test_the_painters_tools_with_touch_pen_eraser_undo_clear_and_zoom(
    web_box: Sandbox, browser: Any
) -> None:
    _thread, final = await imagine(web_box, "a harbour at dawn")
    path = await link_from(web_box, final, "paint")
    context = await browser.new_context(has_touch=True, viewport={"width": 1280, "height": 1300})
    page = await context.new_page()
    await page.goto(local(web_box, path))
    await page.wait_for_function(
        "() => { const i = document.getElementById('picture'); return i.complete && i.naturalWidth > 0; }",
        timeout=10_000,
    )
    box = await page.locator("#layer").bounding_box()
    assert box is not None
    # Touch: a tap paints a dot of the brush's size.
    await page.touchscreen.tap(box["x"] + 100, box["y"] + 100)
    assert await page.evaluate(ALPHA_AT, [100, 100]) == 255
    assert await page.evaluate(ALPHA_AT, [100, 140]) == 0
    # Pen: pressure thins the stroke (40 px brush at pressure 0.25: 20 px wide).
    await page.evaluate(PEN_STROKE, [300, 500, 600, 0.25])
    assert await page.evaluate(ALPHA_AT, [400, 600]) == 255
    assert await page.evaluate(ALPHA_AT, [400, 600 + 14]) == 0
    assert await page.evaluate(ALPHA_AT, [400, 600 + 6]) == 255
    painted = await page.evaluate(PAINTED)
    # The eraser takes the dot away again.
    await page.check("#tool-eraser")
    await page.mouse.move(box["x"] + 80, box["y"] + 100)
    await page.mouse.down()
    await page.mouse.move(box["x"] + 120, box["y"] + 100)
    await page.mouse.up()
    assert await page.evaluate(ALPHA_AT, [100, 100]) == 0
    assert await page.evaluate(ALPHA_AT, [400, 600]) == 255
    # Undo brings the dot back; clear empties the layer; undo again restores it all.
    await page.click("#undo")
    assert await page.evaluate(ALPHA_AT, [100, 100]) == 255
    assert await page.evaluate(PAINTED) == painted
    await page.click("#clear")
    assert await page.evaluate(PAINTED) == 0
    await page.click("#undo")
    assert await page.evaluate(PAINTED) == painted
    # Zoom: at 50 % the canvas shows at half size and the mouse still paints where it points.
    await page.check("#tool-brush")
    await page.select_option("#zoom", "0.5")
    box = await page.locator("#layer").bounding_box()
    assert box is not None and round(box["width"]) == 512
    await page.mouse.move(box["x"] + 400, box["y"] + 400)
    await page.mouse.down()
    await page.mouse.up()
    assert await page.evaluate(ALPHA_AT, [800, 800]) == 255
    # The brush size control changes the stroke.
    await page.fill("#size", "10")
    await page.dispatch_event("#size", "input")
    assert await page.text_content("#size-value") == "10"
    await context.close()
