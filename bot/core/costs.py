"""Prices: turn `usage` + `tool_usage.image_gen` into US dollars, and estimate a turn before it runs."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Final

from bot.core.events import Usage
from bot.core.models import parse_size
from bot.core.options import ImageOptions

# Output image tokens per quality at the three standard sizes (the published table).
OUTPUT_TOKENS: Final[dict[str, dict[str, int]]] = {
    "low": {"1024x1024": 272, "1024x1536": 408, "1536x1024": 400},
    "medium": {"1024x1024": 1056, "1024x1536": 1584, "1536x1024": 1568},
    "high": {"1024x1024": 4160, "1024x1536": 6240, "1536x1024": 6208},
}
# Qualities above `high` have no published table; they are priced as a multiple of `high`.
QUALITY_FACTOR: Final = {"xhigh": 1.5, "max": 2.0}
PARTIAL_IMAGE_TOKENS: Final = 100
INPUT_IMAGE_TOKENS: Final = 194


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """USD per 1M tokens."""

    text_input: float
    image_input: float
    image_output: float


@dataclass(frozen=True, slots=True)
class PriceTable:
    """USD per 1M tokens for each image model, and for the mainline (Responses) model."""

    images: dict[str, ModelPrice] = field(default_factory=lambda: dict(DEFAULT_IMAGE_PRICES))
    mainline_input: float = 1.25
    mainline_output: float = 10.0

    @classmethod
    def from_json(cls, text: str | None) -> PriceTable:
        """The default table with the overrides in `text` (JSON) applied.

        Shape: {"images": {"gpt-image-2": {"text_input": 5, "image_input": 8, "image_output": 30}},
        "mainline_input": 1.25, "mainline_output": 10}
        """
        table = cls()
        if not text:
            return table
        data = json.loads(text)
        images = dict(table.images)
        for name, price in (data.get("images") or {}).items():
            images[name] = ModelPrice(
                text_input=float(price["text_input"]),
                image_input=float(price["image_input"]),
                image_output=float(price["image_output"]),
            )
        return cls(
            images=images,
            mainline_input=float(data.get("mainline_input", table.mainline_input)),
            mainline_output=float(data.get("mainline_output", table.mainline_output)),
        )

    def price_for(self, model: str) -> ModelPrice:
        """The price of `model` (a dated snapshot costs what its family costs)."""
        if model in self.images:
            return self.images[model]
        for name, price in self.images.items():
            if model.startswith(name):
                return price
        return self.images["gpt-image-2"]

    def cost(self, usage: Usage, *, model: str, engine: str) -> float:
        """The USD cost of `usage`."""
        price = self.price_for(model)
        dollars = (
            usage.image_input_text_tokens * price.text_input
            + usage.image_input_tokens * price.image_input
            + usage.image_output_tokens * price.image_output
        )
        if engine == "responses":
            dollars += usage.input_tokens * self.mainline_input
            dollars += usage.output_tokens * self.mainline_output
        return round(dollars / 1_000_000, 6)

    def estimate(
        self, options: ImageOptions, *, prompt: str, input_images: int, engine: str
    ) -> float:
        """A cautious USD estimate of a turn before it runs (for budgets)."""
        usage = estimate_usage(options, prompt=prompt, input_images=input_images, engine=engine)
        return self.cost(usage, model=options.model, engine=engine)


DEFAULT_IMAGE_PRICES: Final[dict[str, ModelPrice]] = {
    "gpt-image-1.5": ModelPrice(text_input=5.0, image_input=8.0, image_output=32.0),
    "gpt-image-1-mini": ModelPrice(text_input=2.0, image_input=2.5, image_output=8.0),
    "gpt-image-2": ModelPrice(text_input=5.0, image_input=8.0, image_output=30.0),
    "gpt-image-2.5": ModelPrice(text_input=5.0, image_input=8.0, image_output=30.0),
    "gpt-image-2.6": ModelPrice(text_input=5.0, image_input=8.0, image_output=30.0),
    "chatgpt-image-latest": ModelPrice(text_input=5.0, image_input=8.0, image_output=30.0),
}


def output_tokens(size: str, quality: str) -> int:
    """Output image tokens for one image of `size` at `quality` (auto size counts as 1024x1024)."""
    level = (
        quality if quality in OUTPUT_TOKENS else "high" if quality in QUALITY_FACTOR else "medium"
    )
    factor = QUALITY_FACTOR.get(quality, 1.0)
    table = OUTPUT_TOKENS[level]
    if size in table:
        return math.ceil(table[size] * factor)
    dims = parse_size(size) or (1024, 1024)
    area = dims[0] * dims[1] / (1024 * 1024)
    return math.ceil(table["1024x1024"] * area * factor)


def estimate_usage(options: ImageOptions, *, prompt: str, input_images: int, engine: str) -> Usage:
    """The usage a turn is expected to report (`auto` quality is estimated as `medium`, its usual pick)."""
    quality = "medium" if options.quality == "auto" else options.quality
    text_tokens = math.ceil(len(prompt) / 4)
    return Usage(
        input_tokens=text_tokens + 50 if engine == "responses" else 0,
        output_tokens=100 if engine == "responses" else 0,
        image_input_tokens=INPUT_IMAGE_TOKENS * input_images,
        image_input_text_tokens=text_tokens,
        image_output_tokens=output_tokens(options.size, quality)
        + PARTIAL_IMAGE_TOKENS * options.partials,
    )
