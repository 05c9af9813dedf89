"""The results picture, drawn with Pillow: time to first image, and overhead per partial."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from bench.pipeline import TTFI_TARGET
from bench.stats import median

WIDTH, HEIGHT = 1200, 520
PANEL = (70, 70, 540, 440)
BACKGROUND = (255, 255, 255)
INK = (30, 30, 30)
GRID = (225, 225, 225)
STREAMED = (33, 113, 181)
WAITED = (230, 120, 40)
TARGET = (200, 40, 40)
PHOTO = (20, 60, 110)
PHOTO_BARE = (150, 80, 20)

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> Font:
    return ImageFont.load_default(size=size)


def _nice_step(span: float) -> float:
    """A round tick step (1, 2, 2.5 or 5 times a power of ten) giving about five ticks."""
    raw = span / 5
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5):
        if magnitude * factor >= raw:
            return magnitude * factor
    return magnitude * 10


class Panel:
    """One chart area with a linear y axis from 0 to `top`."""

    def __init__(self, draw: ImageDraw.ImageDraw, left: int, title: str, unit: str, top: float):
        self.draw = draw
        self.x0, self.y0 = left + PANEL[0], PANEL[1]
        self.x1, self.y1 = left + PANEL[2], PANEL[3]
        self.top = top
        step = _nice_step(top)
        tick = 0.0
        while tick <= top + 1e-9:
            y = self.y(tick)
            draw.line((self.x0, y, self.x1, y), fill=GRID)
            label = f"{tick:g}"
            draw.text((self.x0 - 8, y), label, fill=INK, font=_font(13), anchor="rm")
            tick += step
        draw.line((self.x0, self.y0, self.x0, self.y1), fill=INK)
        draw.line((self.x0, self.y1, self.x1, self.y1), fill=INK)
        draw.text((self.x0, self.y0 - 40), title, fill=INK, font=_font(17))
        draw.text((self.x0 - 55, self.y0 - 18), unit, fill=INK, font=_font(13))

    def y(self, value: float) -> float:
        """Pixel row of `value`."""
        value = min(max(value, 0.0), self.top)
        return self.y1 - (self.y1 - self.y0) * value / self.top

    def hline(self, value: float, label: str, colour: tuple[int, int, int]) -> None:
        """A dashed horizontal reference line with a label at its right end."""
        y = self.y(value)
        x = self.x0
        while x < self.x1:
            self.draw.line((x, y, min(x + 8, self.x1), y), fill=colour, width=2)
            x += 14
        self.draw.text((self.x1 - 4, y - 4), label, fill=colour, font=_font(12), anchor="rb")


def _ttfi_panel(
    draw: ImageDraw.ImageDraw, streamed: Sequence[float], waited: Sequence[float], seconds: float
) -> None:
    top = max([*streamed, *waited, seconds]) * 1.2
    panel = Panel(draw, 0, "Time to first visible image (median, runs as dots)", "s", top)
    columns = [("streams 2 partials", streamed, STREAMED), ("waits for the final", waited, WAITED)]
    width = (panel.x1 - panel.x0) / 2
    for i, (label, values, colour) in enumerate(columns):
        left = panel.x0 + width * i + width * 0.25
        right = panel.x0 + width * i + width * 0.75
        draw.rectangle((left, panel.y(median(values)), right, panel.y1), fill=colour)
        draw.text(
            ((left + right) / 2, panel.y(median(values)) - 6),
            f"{median(values):.2f} s",
            fill=INK,
            font=_font(14),
            anchor="mb",
        )
        for j, value in enumerate(values):
            x = left + (right - left) * (j + 1) / (len(values) + 1)
            y = panel.y(value)
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), outline=INK, fill=BACKGROUND)
        draw.text(((left + right) / 2, panel.y1 + 10), label, fill=INK, font=_font(14), anchor="mt")
    panel.hline(seconds / 3, "first partial sent (T/3)", STREAMED)
    panel.hline(seconds, "final sent (T)", WAITED)
    ratio = median(streamed) / median(waited)
    draw.text(
        (panel.x0, panel.y1 + 40),
        f"ratio {ratio:.2f} (target <= {TTFI_TARGET:.2f}), T = {seconds:g} s",
        fill=INK,
        font=_font(14),
    )


Series = tuple[str, Sequence[float], tuple[int, int, int]]


def _overhead_panel(
    draw: ImageDraw.ImageDraw, series: Sequence[Series], p50_target: float, p99_target: float
) -> None:
    values_ms = [v * 1000 for _, values, _ in series for v in values]
    top = max([*values_ms, p99_target * 1000]) * 1.15
    panel = Panel(draw, 600, "Overhead per partial, sorted (percentile on x)", "ms", top)
    for number, (label, values, colour) in enumerate(series):
        ordered = sorted(v * 1000 for v in values)
        if not ordered:
            continue
        points = [
            (panel.x0 + (panel.x1 - panel.x0) * (i + 0.5) / len(ordered), panel.y(value))
            for i, value in enumerate(ordered)
        ]
        if len(points) > 1:
            draw.line(points, fill=colour, width=3)
        for x, y in points:
            draw.ellipse((x - 2, y - 2, x + 2, y + 2), fill=colour)
        legend_y = panel.y1 + 10 + 16 * number
        draw.rectangle((panel.x0, legend_y, panel.x0 + 12, legend_y + 11), fill=colour)
        draw.text((panel.x0 + 18, legend_y - 1), label, fill=INK, font=_font(12))
    panel.hline(p50_target * 1000, f"p50 target {p50_target * 1000:g} ms", TARGET)
    panel.hline(p99_target * 1000, f"p99 target {p99_target * 1000:g} ms", TARGET)


def draw_plot(
    path: Path,
    *,
    streamed: Sequence[float],
    waited: Sequence[float],
    seconds: float,
    overhead: Sequence[Series],
    p50_target: float,
    p99_target: float,
) -> None:
    """Write the two-panel PNG."""
    image = Image.new("RGB", (WIDTH, HEIGHT), BACKGROUND)
    draw = ImageDraw.Draw(image)
    if streamed and waited:
        _ttfi_panel(draw, streamed, waited, seconds)
    if any(values for _, values, _ in overhead):
        _overhead_panel(draw, overhead, p50_target, p99_target)
    image.save(path, "PNG", optimize=True)
