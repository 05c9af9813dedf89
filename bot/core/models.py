"""What each image model can do: sizes, qualities, backgrounds, input fidelity, retirement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

STANDARD_SIZES: Final = ("1024x1024", "1536x1024", "1024x1536")
BASE_QUALITIES: Final = ("auto", "low", "medium", "high")
EXTENDED_QUALITIES: Final = (*BASE_QUALITIES, "xhigh", "max")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The capabilities of one image model, as its documentation describes them."""

    name: str
    free_sizes: bool
    qualities: tuple[str, ...]
    transparent: bool
    input_fidelity: tuple[str, ...]
    label: str


def _family(names: tuple[str, ...], **caps: object) -> dict[str, ModelSpec]:
    return {name: ModelSpec(name=name, **caps) for name in names}  # type: ignore[arg-type]


MODELS: Final[dict[str, ModelSpec]] = {
    **_family(
        ("gpt-image-2.6-sunburst", "gpt-image-2.6-flare"),
        free_sizes=True,
        qualities=EXTENDED_QUALITIES,
        transparent=True,
        input_fidelity=(),
        label="GPT Image 2.6",
    ),
    **_family(
        (
            "gpt-image-2.5-sunburst",
            "gpt-image-2.5-sunburst-2026-09-08",
            "gpt-image-2.5-flare",
            "gpt-image-2.5-flare-2026-09-08",
        ),
        free_sizes=True,
        qualities=EXTENDED_QUALITIES,
        transparent=True,
        input_fidelity=(),
        label="GPT Image 2.5",
    ),
    **_family(
        ("gpt-image-2", "gpt-image-2-2026-04-21"),
        free_sizes=True,
        qualities=BASE_QUALITIES,
        transparent=False,
        input_fidelity=(),
        label="GPT Image 2",
    ),
    **_family(
        ("gpt-image-1.5",),
        free_sizes=False,
        qualities=BASE_QUALITIES,
        transparent=True,
        input_fidelity=("low", "high"),
        label="GPT Image 1.5",
    ),
    **_family(
        ("gpt-image-1-mini",),
        free_sizes=False,
        qualities=BASE_QUALITIES,
        transparent=True,
        input_fidelity=("low",),
        label="GPT Image 1 mini",
    ),
    **_family(
        ("chatgpt-image-latest",),
        free_sizes=False,
        qualities=BASE_QUALITIES,
        transparent=True,
        input_fidelity=(),
        label="ChatGPT Image (latest)",
    ),
}

# Retired models and what to suggest instead.
RETIRED: Final[dict[str, str]] = {
    "dall-e-2": "gpt-image-1-mini",
    "dall-e-3": "gpt-image-2.6-sunburst",
    "gpt-image-1": "gpt-image-1.5",
}

MAX_SIDE: Final = 3840
MAX_PIXELS: Final = 3840 * 2160


def size_rule_violation(size: str) -> str | None:
    """Why a free `WIDTHxHEIGHT` size breaks the documented rules, or None when it is fine."""
    try:
        w_text, h_text = size.lower().split("x")
        width, height = int(w_text), int(h_text)
    except ValueError:
        return "write it as WIDTHxHEIGHT, e.g. 1536x864"
    if width <= 0 or height <= 0:
        return "both sides must be positive"
    if width % 16 or height % 16:
        return "each side must be a multiple of 16"
    if max(width, height) > 3 * min(width, height):
        return "the aspect ratio must be between 1:3 and 3:1"
    if max(width, height) > MAX_SIDE or width * height > MAX_PIXELS:
        return "the largest size is 3840x2160"
    if width * height < 256 * 256:
        return "the smallest size is 256x256 pixels"
    return None


def parse_size(size: str) -> tuple[int, int] | None:
    """The pixel size of `WIDTHxHEIGHT`, or None for `auto`."""
    if size == "auto":
        return None
    w_text, h_text = size.lower().split("x")
    return int(w_text), int(h_text)
