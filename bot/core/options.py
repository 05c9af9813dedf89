"""Output options of one turn, merged from defaults, and validated before anything is sent."""

from __future__ import annotations

import dataclasses
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

from bot.core.errors import BadInput
from bot.core.models import (
    MODELS,
    RETIRED,
    SIZE_PRESETS,
    STANDARD_SIZES,
    canonical_size,
    preset_size,
    size_rule_violation,
)

MAX_PROMPT_CHARS: Final = 32_000
MAX_INPUT_IMAGES: Final = 16
FORMATS: Final = ("png", "jpeg", "webp")
BACKGROUNDS: Final = ("auto", "opaque", "transparent")
MODERATIONS: Final = ("auto", "low")
ENGINES: Final = ("responses", "images")

# The output options every image command offers (slash options, /settings, CLI flags).
OUTPUT_OPTIONS: Final = (
    "size",
    "quality",
    "format",
    "background",
    "compression",
    "moderation",
    "partials",
    "model",
)
# Option names a user may set (slash options, /settings, CLI flags, /config defaults).
OPTION_NAMES: Final = (
    "size",
    "quality",
    "format",
    "background",
    "compression",
    "moderation",
    "partials",
    "model",
    "input_fidelity",
)


@dataclass(frozen=True, slots=True)
class ImageOptions:
    """Every output option of the image tool for one turn."""

    model: str = "gpt-image-2.6-sunburst"
    size: str = "auto"
    quality: str = "auto"
    format: str = "png"
    background: str = "auto"
    compression: int | None = None
    moderation: str = "auto"
    partials: int = 2
    input_fidelity: str | None = None

    def merged(self, overrides: Mapping[str, object]) -> ImageOptions:
        """These options with every non-None value of `overrides` applied (unknown keys ignored)."""
        changes = {k: v for k, v in overrides.items() if k in OPTION_NAMES and v is not None}
        if "format" in changes and isinstance(changes["format"], str):
            changes["format"] = "jpeg" if changes["format"] == "jpg" else changes["format"]
        if "size" in changes and isinstance(changes["size"], str):
            changes["size"] = canonical_size(changes["size"])
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def with_preset_size(self) -> ImageOptions:
        """These options with a named aspect ratio (`wide`, ...) as this model's pixel size."""
        size = preset_size(self.size, self.model)
        return self if size is None else dataclasses.replace(self, size=size)

    def as_dict(self) -> dict[str, object]:
        """A JSON-ready dict of the options."""
        return dataclasses.asdict(self)

    @property
    def mime(self) -> str:
        """The MIME type of images in this format."""
        return f"image/{self.format}"


@dataclass(frozen=True, slots=True)
class InputImage:
    """A reference image ready to send: bytes the API accepts, and their identity."""

    data: bytes
    mime: str
    filename: str
    sha256: str
    width: int = 0
    height: int = 0
    # A message key when the bytes were converted from what the user sent (see images.PreparedImage);
    # shown to the user when the turn is accepted, not stored with the job.
    note: str | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TurnRequest:
    """One conversation turn: the instruction, its inputs, its options and where it continues."""

    prompt: str
    options: ImageOptions
    images: tuple[InputImage, ...] = ()
    mask: bytes | None = None
    previous_response_id: str | None = None
    # The parent's final image: sent as the input when the conversation cannot be continued
    # by id (the Image API engine, or a response the API has forgotten).
    parent_image: InputImage | None = None
    parent_prompt: str | None = None
    user_hash: str | None = None
    extra: Mapping[str, object] = field(default_factory=dict)


# Unicode categories that draw nothing on their own: controls, format characters (zero-width
# space and joiners, word joiner, BOM, soft hyphen, bidi marks, tags), surrogates, separators,
# and combining marks without a base letter.
_INVISIBLE_CATEGORIES: Final = frozenset({"Cc", "Cf", "Cs", "Zs", "Zl", "Zp", "Mn", "Me"})
# Letters and symbols that are defined as blank: Hangul fillers and the empty braille cell.
_BLANK_CHARACTERS: Final = frozenset("\u115f\u1160\u3164\uffa0\u2800")


def has_visible_text(text: str) -> bool:
    """Whether `text` has at least one character that shows when it is printed."""
    return any(
        ch not in _BLANK_CHARACTERS and unicodedata.category(ch) not in _INVISIBLE_CATEGORIES
        for ch in text
    )


def validate_prompt(prompt: str) -> str:
    """The prompt stripped, or BadInput when it is empty, invisible or over the limit."""
    text = prompt.strip()
    if not text:
        raise BadInput("bad.prompt_empty")
    if not has_visible_text(text):
        # Zero-width and filler characters look empty in Discord but would be paid for.
        raise BadInput("bad.prompt_invisible")
    if len(text) > MAX_PROMPT_CHARS:
        raise BadInput("bad.prompt_too_long", length=len(text), limit=MAX_PROMPT_CHARS)
    return text


def _choices(values: Sequence[str]) -> str:
    return ", ".join(f"`{v}`" for v in values)


def validate_options(options: ImageOptions, *, allowed_models: Sequence[str] | None = None) -> None:
    """Raise BadInput for the first option the API would refuse, with a message naming it."""
    model = options.model
    if model in RETIRED:
        raise BadInput("bad.retired_model", model=model, suggestion=RETIRED[model])
    spec = MODELS.get(model)
    if spec is None:
        raise BadInput("bad.unknown_model", model=model, choices=_choices(list(MODELS)))
    if allowed_models and model not in allowed_models:
        raise BadInput("bad.model_not_allowed", model=model, choices=_choices(allowed_models))

    size = options.size
    if size != "auto" and size not in STANDARD_SIZES:
        if not spec.free_sizes:
            raise BadInput(
                "bad.unknown_size",
                size=size,
                model=model,
                choices=_choices(("auto", *STANDARD_SIZES, *SIZE_PRESETS)),
            )
        rule = size_rule_violation(size)
        if rule is not None:
            raise BadInput("bad.size_rules", size=size, model=model, rule=rule)

    if options.quality not in spec.qualities:
        raise BadInput(
            "bad.unknown_quality",
            quality=options.quality,
            model=model,
            choices=_choices(spec.qualities),
        )
    if options.format not in FORMATS:
        raise BadInput("bad.unknown_format", format=options.format)
    if options.background not in BACKGROUNDS:
        raise BadInput("bad.unknown_background", background=options.background)
    if options.moderation not in MODERATIONS:
        raise BadInput("bad.unknown_moderation", moderation=options.moderation)
    if options.background == "transparent":
        if options.format == "jpeg":
            raise BadInput("bad.transparent_jpeg")
        if not spec.transparent:
            raise BadInput("bad.transparent_model", model=model)
    if options.compression is not None:
        if options.format == "png":
            raise BadInput("bad.compression_png")
        if not 0 <= options.compression <= 100:
            raise BadInput("bad.compression_range", value=options.compression)
    if not 0 <= options.partials <= 3:
        raise BadInput("bad.partials_range", value=options.partials)
    if options.input_fidelity is not None and options.input_fidelity not in spec.input_fidelity:
        raise BadInput("bad.input_fidelity", model=model, value=options.input_fidelity)


def validate_request(request: TurnRequest, *, allowed_models: Sequence[str] | None = None) -> None:
    """Raise BadInput when the request as a whole cannot be sent."""
    validate_prompt(request.prompt)
    validate_options(request.options, allowed_models=allowed_models)
    if len(request.images) > MAX_INPUT_IMAGES:
        raise BadInput("bad.too_many_images", limit=MAX_INPUT_IMAGES, count=len(request.images))
    has_target = request.images or request.parent_image or request.previous_response_id
    if request.mask is not None and not has_target:
        raise BadInput("bad.mask_without_image")
