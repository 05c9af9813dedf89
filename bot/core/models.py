"""What each image model can do: sizes, qualities, backgrounds, input fidelity, retirement."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

STANDARD_SIZES: Final = ("1024x1024", "1536x1024", "1024x1536")
BASE_QUALITIES: Final = ("auto", "low", "medium", "high")
EXTENDED_QUALITIES: Final = (*BASE_QUALITIES, "xhigh", "max")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """The capabilities of one image model, as its documentation describes them.

    `free_sizes` and `qualities` follow the installed openai SDK's types, which name the
    families taking `WIDTHxHEIGHT` sizes and `xhigh`/`max` (tests/test_model_table.py derives
    them from the SDK and compares). Where the SDK is silent, `source` names what is followed.
    """

    name: str
    free_sizes: bool
    qualities: tuple[str, ...]
    transparent: bool
    input_fidelity: tuple[str, ...]
    label: str
    source: str = ""


def _family(names: tuple[str, ...], **caps: object) -> dict[str, ModelSpec]:
    return {name: ModelSpec(name=name, **caps) for name in names}  # type: ignore[arg-type]


# The SDK says transparent backgrounds "are available for supported GPT Image models" and
# names only some; input_fidelity it grants to gpt-image-1.5 (high, low) and gpt-image-1-mini
# (low), and says to omit for gpt-image-2.
_SDK_SILENT = (
    "transparent: OpenAI image generation guide (GPT Image models take background=transparent "
    "with png or webp); input_fidelity: the SDK names only gpt-image-1.5 and gpt-image-1-mini"
)

MODELS: Final[dict[str, ModelSpec]] = {
    **_family(
        ("gpt-image-2.6-sunburst", "gpt-image-2.6-flare"),
        # Not among the SDK's families for free sizes or xhigh/max (third-party relays claim
        # both; the SDK does not, so neither does the bot until it does).
        free_sizes=False,
        qualities=BASE_QUALITIES,
        transparent=True,
        input_fidelity=(),
        label="GPT Image 2.6",
        source=_SDK_SILENT,
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
        source="input_fidelity: the SDK names only gpt-image-1.5 and gpt-image-1-mini",
    ),
    **_family(
        ("gpt-image-2", "gpt-image-2-2026-04-21"),
        free_sizes=True,
        qualities=BASE_QUALITIES,
        # The SDK calls transparent backgrounds on gpt-image-2 a preview: not every account
        # has it, so the bot refuses up front rather than let the API refuse later.
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
        source=_SDK_SILENT,
    ),
    **_family(
        ("gpt-image-1-mini",),
        free_sizes=False,
        qualities=BASE_QUALITIES,
        transparent=True,
        input_fidelity=("low",),
        label="GPT Image 1 mini",
        source=_SDK_SILENT,
    ),
    **_family(
        ("chatgpt-image-latest",),
        free_sizes=False,
        qualities=BASE_QUALITIES,
        transparent=True,
        input_fidelity=(),
        label="ChatGPT Image (latest)",
        source=_SDK_SILENT,
    ),
}

# Retired models and what to suggest instead.
RETIRED: Final[dict[str, str]] = {
    "dall-e-2": "gpt-image-1-mini",
    "dall-e-3": "gpt-image-2.6-sunburst",
    "gpt-image-1": "gpt-image-1.5",
}

# Named aspect ratios, and the size each stands for on models with fixed sizes and on models
# that take free sizes (16:9 where the model can, the nearest standard size where it cannot).
SIZE_PRESETS: Final[dict[str, tuple[str, str]]] = {
    "square": ("1024x1024", "1024x1024"),
    "portrait": ("1024x1536", "1024x1536"),
    "landscape": ("1536x1024", "1536x1024"),
    "wide": ("1536x1024", "1536x864"),
    "tall": ("1024x1536", "864x1536"),
}


def preset_size(name: str, model: str) -> str | None:
    """The size a named aspect ratio stands for on `model`, or None if `name` is no preset."""
    sizes = SIZE_PRESETS.get(name)
    if sizes is None:
        return None
    spec = MODELS.get(model)
    return sizes[1] if spec is not None and spec.free_sizes else sizes[0]


MAX_SIDE: Final = 3840
MAX_PIXELS: Final = 3840 * 2160


# What the API takes, and nothing looser: ASCII digits (`\d` and int() would also take
# fullwidth or Arabic-Indic digits, and int() underscores) and a lower-case x.
_SIZE_PATTERN: Final = re.compile(r"([0-9]+)x([0-9]+)")
# More digits than this is over MAX_SIDE whatever they say (and int() refuses huge strings).
_MAX_SIZE_DIGITS: Final = len(str(MAX_SIDE))


def canonical_size(size: str) -> str:
    """`size` in the one spelling the API takes (`auto` or `WIDTHxHEIGHT`), or unchanged.

    Surrounding spaces, an upper-case X, `AUTO` and leading zeros are forgiven, because what
    the user meant is plain; anything else (other digits, underscores, inner spaces) comes
    back as it was, for validation to refuse by name.
    """
    text = size.strip()
    if not text.isascii():
        return size
    text = text.lower()
    if text == "auto":
        return text
    match = _SIZE_PATTERN.fullmatch(text)
    if match is None:
        return size
    width, height = (digits.lstrip("0") or "0" for digits in match.groups())
    return f"{width}x{height}"


def size_rule_violation(size: str) -> str | None:
    """Why a free `WIDTHxHEIGHT` size breaks the documented rules, or None when it is fine."""
    match = _SIZE_PATTERN.fullmatch(size)
    if match is None or canonical_size(size) != size:
        return "write it as WIDTHxHEIGHT, e.g. 1536x864"
    w_text, h_text = match.groups()
    if max(len(w_text), len(h_text)) > _MAX_SIZE_DIGITS:
        return "the largest size is 3840x2160"
    width, height = int(w_text), int(h_text)
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
    """The pixel size of `WIDTHxHEIGHT`, or None for `auto`; ValueError for anything else."""
    if size == "auto":
        return None
    match = _SIZE_PATTERN.fullmatch(size)
    if match is None:
        raise ValueError(f"not a WIDTHxHEIGHT size: {size!r}")
    return int(match[1]), int(match[2])
