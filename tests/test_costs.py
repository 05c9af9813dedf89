"""Prices turn usage into dollars; estimates are cautious."""

from __future__ import annotations

import json

import pytest

from bot.core.costs import PriceTable, estimate_usage, output_tokens
from bot.core.events import Usage
from bot.core.options import ImageOptions


@pytest.mark.parametrize(
    ("size", "quality", "tokens"),
    [
        ("1024x1024", "low", 272),
        ("1024x1536", "medium", 1584),
        ("1536x1024", "high", 6208),
        ("auto", "high", 4160),
        ("2048x2048", "high", 4160 * 4),
        ("1024x1024", "max", 8320),
    ],
)
def test_output_token_table(size: str, quality: str, tokens: int) -> None:
    assert output_tokens(size, quality) == tokens


def test_cost_of_an_image_model_turn() -> None:
    prices = PriceTable()
    usage = Usage(
        image_input_text_tokens=1000, image_input_tokens=1000, image_output_tokens=1_000_000
    )
    # gpt-image-1.5: $5 text in (not listed → family default), $8 image in, $32 image out per 1M.
    assert prices.cost(usage, model="gpt-image-1.5", engine="images") == pytest.approx(
        0.005 + 0.008 + 32.0
    )


def test_responses_engine_adds_mainline_tokens_and_images_engine_does_not() -> None:
    prices = PriceTable(mainline_input=2.0, mainline_output=8.0)
    usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
    assert prices.cost(usage, model="gpt-image-2", engine="responses") == pytest.approx(10.0)
    assert prices.cost(usage, model="gpt-image-2", engine="images") == 0.0


def test_snapshot_names_cost_what_their_family_costs() -> None:
    prices = PriceTable()
    assert prices.price_for("gpt-image-2.5-flare-2026-09-08") == prices.images["gpt-image-2.5"]


def test_overrides_from_json() -> None:
    text = json.dumps(
        {
            "images": {"gpt-image-2": {"text_input": 1, "image_input": 2, "image_output": 3}},
            "mainline_output": 20,
        }
    )
    prices = PriceTable.from_json(text)
    assert prices.images["gpt-image-2"].image_output == 3.0
    assert prices.mainline_output == 20.0
    assert prices.images["gpt-image-1.5"].image_output == 32.0


def test_estimate_counts_auto_as_medium_and_counts_partials() -> None:
    auto = estimate_usage(
        ImageOptions(quality="auto", partials=2), prompt="a cat", input_images=1, engine="responses"
    )
    assert auto.image_output_tokens == 1056 + 200
    assert auto.image_input_tokens == 194
    assert (
        PriceTable().estimate(ImageOptions(), prompt="a cat", input_images=0, engine="images") > 0
    )
