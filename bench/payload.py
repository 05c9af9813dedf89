"""The OpenAI stand-in the benchmarks use: pre-rendered pictures with the weight of real ones.

The stand-in's own pre-rendered pictures are smooth gradients that PNG squeezes to ~20-40 KB,
while a generated 1024x1024 PNG weighs 1.3-2 MB. The bot's costs (SSE parsing, base64, uploads,
memory) grow with the bytes, so by default every generation carries photo-like PNGs (fine noise
over a gradient: ~1.8 MB at 1024x1024, ~2.7 MB at 1536x1024), rendered once per size and reused,
so the stand-in spends no CPU on pictures while the bot is measured.
"""

from __future__ import annotations

import asyncio
import io

from PIL import Image

from fakes import _openai_render as render
from fakes.openai_api import FakeOpenAI, _ImagePlan

# 2.7 MB at 1536x1024, the weight of a generated PNG of that size (issue 10).
NOISE_SIGMA = 8.0
PARTIALS = 3


def photo_like_png(width: int, height: int) -> bytes:
    """A PNG whose size is that of a generated picture: faint noise over a colour gradient."""
    noise = Image.merge("RGB", [Image.effect_noise((width, height), NOISE_SIGMA) for _ in range(3)])
    ramp = Image.linear_gradient("L").resize((width, height))
    gradient = Image.merge("RGB", (ramp, ramp.rotate(90), ramp.rotate(180)))
    buffer = io.BytesIO()
    Image.blend(noise, gradient, 0.5).save(buffer, "PNG")
    return buffer.getvalue()


def photo_like(width: int, height: int) -> render.RenderedImage:
    """A final picture and three partials of photo-like weight."""
    return render.RenderedImage(
        final=photo_like_png(width, height),
        partials=tuple(photo_like_png(width, height) for _ in range(PARTIALS)),
    )


class BenchOpenAI(FakeOpenAI):
    """FakeOpenAI with pre-rendered pictures: photo-like PNGs, or the stand-in's own ones."""

    def __init__(self, *, photo_like: bool = True) -> None:
        super().__init__(prerender=True)
        self.photo_like = photo_like
        self._photos: dict[tuple[int, int], asyncio.Future[render.RenderedImage]] = {}

    async def pictures(self, width: int, height: int) -> render.RenderedImage:
        """The pictures every generation of this size streams (rendered on first use)."""
        key = (width, height)
        cached = self._photos.get(key)
        if cached is None:
            cached = self._photos[key] = asyncio.ensure_future(
                asyncio.to_thread(photo_like, width, height)
            )
        return await asyncio.shield(cached)

    async def _render(
        self, plan: _ImagePlan, partials: int, variant: int = 0
    ) -> render.RenderedImage:
        """Serve the cached photo-like PNGs for opaque PNG output; anything else as usual."""
        p = plan.params
        if not self.photo_like or p.output_format != "png" or p.transparent:
            return await super()._render(plan, partials, variant)
        return await self.pictures(p.width, p.height)
