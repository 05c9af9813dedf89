"""Pure helpers of the OpenAI stand-in: option validation, token accounting and rendering.

Nothing here knows about HTTP. The rendering functions are plain ``bytes -> bytes`` style
computations meant to run in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import io
import json
import math
import re
import secrets
import textwrap
import time
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from xml.sax.saxutils import escape

from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError

from bot.core.models import MODELS, RETIRED

# ----- models, limits and price tables --------------------------------------------------------

DEFAULT_IMAGE_MODEL = "gpt-image-2.6-sunburst"
# What each model accepts is the bot's model table: it follows the SDK's types where they speak
# (tests/test_model_table.py checks that) and names its public source where they are silent.
IMAGE_MODELS = frozenset(MODELS)
RETIRED_IMAGE_MODELS = frozenset(RETIRED)
STANDARD_SIZES = {"1024x1024": (1024, 1024), "1024x1536": (1024, 1536), "1536x1024": (1536, 1024)}

# Output image tokens for the standard sizes (reference 7.2); other sizes scale by area.
OUTPUT_TOKENS = {
    "low": {(1024, 1024): 272, (1024, 1536): 408, (1536, 1024): 400},
    "medium": {(1024, 1024): 1056, (1024, 1536): 1584, (1536, 1024): 1568},
    "high": {(1024, 1024): 4160, (1024, 1536): 6240, (1536, 1024): 6208},
}
PARTIAL_IMAGE_TOKENS = 100
INPUT_IMAGE_TOKENS = 194
MAX_PROMPT_CHARS = 32000
IMAGE_MIME_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
FILE_PURPOSES = frozenset({"assistants", "batch", "fine-tune", "vision", "user_data", "evals"})
MODERATION_MESSAGE = (
    "Your request was rejected by the safety system. If you believe this is an error, "
    "contact us at help.openai.com and include the request ID {request_id}."
)


# ----- errors ---------------------------------------------------------------------------------


class ApiError(Exception):
    """An OpenAI-style error reply: status, envelope fields and extra headers."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        extra: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Build the error; ``extra`` adds keys (e.g. moderation_details) to the envelope."""
        super().__init__(message)
        self.status = status
        self.body: dict[str, Any] = {"message": message, "type": type_, "param": param}
        self.body["code"] = code
        self.body.update(extra or {})
        self.headers = dict(headers or {})


def bad_request(
    message: str,
    param: str | None = None,
    code: str | None = "invalid_value",
    type_: str = "invalid_request_error",
) -> ApiError:
    """Return a 400 error with the usual envelope."""
    return ApiError(400, message, type_=type_, param=param, code=code)


def fault_error(kind: str, retry_after_ms: int | None, request_id: str) -> ApiError:
    """Build the error reply of an HTTP-level fault (reference 5.1, 5.2 and 5.4)."""
    headers: dict[str, str] = {}
    if retry_after_ms is not None:
        headers["retry-after-ms"] = str(retry_after_ms)
    if kind == "moderation_400":
        return ApiError(
            400,
            MODERATION_MESSAGE.format(request_id=request_id),
            type_="image_generation_user_error",
            code="moderation_blocked",
            extra={"moderation_details": {"moderation_stage": "input", "categories": ["other"]}},
            headers=headers,
        )
    if kind == "auth_401":
        return ApiError(
            401,
            "Incorrect API key provided: sk-****. You can find your API key at "
            "https://platform.openai.com/account/api-keys.",
            code="invalid_api_key",
            headers=headers,
        )
    if kind == "rate_limit_429":
        headers["retry-after-ms"] = str(retry_after_ms or 10)
        return ApiError(
            429,
            "Rate limit reached for images per min (IPM): Limit 5, Used 5, Requested 1. "
            "Please try again shortly.",
            type_="requests",
            code="rate_limit_exceeded",
            headers=headers,
        )
    if kind == "quota_429":
        headers["x-should-retry"] = "false"
        return ApiError(
            429,
            "You exceeded your current quota, please check your plan and billing details.",
            type_="insufficient_quota",
            code="insufficient_quota",
            headers=headers,
        )
    return ApiError(
        500,
        "The server had an error while processing your request. Sorry about that!",
        type_="server_error",
        code="server_error",
        headers=headers,
    )


def stream_error_event(kind: str, sequence_number: int, *, images_api: bool) -> dict[str, Any]:
    """Build a mid-stream error event: flat (yielded by the SDK) or nested (raised as APIError).

    Images API streams only know the nested shape (reference 4.5).
    """
    if kind == "error_event_flat" and not images_api:
        return {
            "type": "error",
            "sequence_number": sequence_number,
            "code": "server_error",
            "message": "The server had an error while processing your request.",
            "param": None,
        }
    return {
        "type": "error",
        "sequence_number": sequence_number,
        "error": {
            "type": "image_generation_user_error",
            "code": "moderation_blocked",
            "message": "Your request was rejected by the safety system.",
            "param": None,
        },
    }


# ----- option validation and token accounting -------------------------------------------------


@dataclass(frozen=True)
class ImageParams:
    """Validated image options with every ``auto`` resolved to what the fake will produce."""

    model: str
    width: int
    height: int
    quality: str
    output_format: str
    compression: int
    transparent: bool
    partial_images: int
    n: int
    action: str
    frame_count: int

    @property
    def size(self) -> str:
        """Return the size as the API reports it, ``WIDTHxHEIGHT``."""
        return f"{self.width}x{self.height}"

    @property
    def background(self) -> str:
        """Return the resolved background, ``transparent`` or ``opaque``."""
        return "transparent" if self.transparent else "opaque"


def parse_size(label: str, model: str, type_: str, param: str = "size") -> tuple[int, int]:
    """Resolve a size string for a model, raising the API's 400 when the model refuses it."""
    if label == "auto":
        return (1024, 1024)
    if label in STANDARD_SIZES:
        return STANDARD_SIZES[label]
    match = re.fullmatch(r"(\d{1,5})x(\d{1,5})", label)
    # Arbitrary WIDTHxHEIGHT sizes only for the models whose SDK docs list them.
    if match is None or not MODELS[model].free_sizes:
        raise bad_request(
            f"Invalid size '{label}'. Supported sizes are 1024x1024, 1024x1536, 1536x1024, "
            "and auto.",
            param,
            type_=type_,
        )
    width, height = int(match.group(1)), int(match.group(2))
    long_side, short_side = max(width, height), min(width, height)
    if (
        short_side < 16
        or width % 16
        or height % 16
        or long_side > 3 * short_side
        or long_side > 3840
        or width * height > 3840 * 2160
    ):
        raise bad_request(
            f"Invalid size '{label}'. Width and height must be multiples of 16, the aspect "
            "ratio must be between 1:3 and 3:1, and the size at most 3840x2160.",
            param,
            type_=type_,
        )
    return (width, height)


def image_params(
    raw: Mapping[str, Any], *, type_: str, stream: bool, where: str = ""
) -> ImageParams:
    """Validate image options (tool fields or Images API fields); ``null`` means default.

    ``where`` prefixes the ``param`` of an error (``tools[0].`` for the Responses tool), and
    what a model supports comes from the bot's model table (``bot.core.models``).
    """

    def choice(name: str, allowed: tuple[str, ...], default: str) -> str:
        """Return one of ``allowed`` (``default`` for null), or raise the API's 400."""
        value = raw.get(name)
        if value is None:
            return default
        if value not in allowed:
            supported = ", ".join(f"'{a}'" for a in allowed)
            message = f"Invalid value: '{value}'. Supported values are: {supported}."
            raise bad_request(message, where + name, type_=type_)
        return str(value)

    def integer(name: str, low: int, high: int, default: int) -> int:
        """Return an integer within bounds (``default`` for null), or raise the API's 400."""
        value = raw.get(name)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            message = f"Invalid type for '{where}{name}': expected an integer."
            raise bad_request(message, where + name, "invalid_type", type_)
        if not low <= value <= high:
            message = f"Invalid '{where}{name}': {value} is outside the range {low} to {high}."
            raise bad_request(message, where + name, type_=type_)
        return value

    model = raw.get("model") or DEFAULT_IMAGE_MODEL
    if not isinstance(model, str) or model not in IMAGE_MODELS:
        retired = " It has been retired." if model in RETIRED_IMAGE_MODELS else ""
        raise bad_request(
            f"The model '{model}' does not exist.{retired}", where + "model", type_=type_
        )
    spec = MODELS[model]
    size_label = raw.get("size")
    if size_label is not None and not isinstance(size_label, str):
        raise bad_request("Invalid type for 'size'.", where + "size", "invalid_type", type_)
    width, height = parse_size(size_label or "auto", model, type_, where + "size")
    quality = choice("quality", spec.qualities, "auto")
    output_format = choice("output_format", ("png", "webp", "jpeg", "gif", "svg"), "png")
    background = choice("background", ("transparent", "opaque", "auto"), "auto")
    choice("moderation", ("auto", "low"), "auto")
    action = choice("action", ("generate", "edit", "auto"), "auto")
    if raw.get("input_fidelity") is not None:
        if not spec.input_fidelity:
            message = f"'input_fidelity' is not supported with the model '{model}'."
            raise bad_request(message, where + "input_fidelity", type_=type_)
        choice("input_fidelity", spec.input_fidelity, spec.input_fidelity[0])
    compression = integer("output_compression", 0, 100, 100)
    partial_images = integer("partial_images", 0, 3, 0)
    n = integer("n", 1, 10, 1)
    frame_count = integer("frame_count", 2, 16, 9)
    if background == "transparent":
        if output_format == "jpeg":
            message = "Transparent background is not supported with jpeg; use png or webp."
            raise bad_request(message, where + "background", type_=type_)
        if not spec.transparent:
            message = f"Transparent background is not supported with the model '{model}'."
            raise bad_request(message, where + "background", type_=type_)
    if output_format == "svg" and n != 1:
        message = "The svg output format makes one image per request: 'n' must be 1."
        raise bad_request(message, where + "n", type_=type_)
    if output_format in ("gif", "svg") and (partial_images or stream):
        message = f"The {output_format} output format does not support streaming or partials."
        raise bad_request(message, where + "output_format", type_=type_)
    return ImageParams(
        model=model,
        width=width,
        height=height,
        quality="medium" if quality == "auto" else quality,
        output_format=output_format,
        compression=compression,
        transparent=background == "transparent",
        partial_images=partial_images,
        n=n,
        action=action,
        frame_count=frame_count,
    )


def typed_form(fields: Mapping[str, str]) -> dict[str, Any]:
    """Convert multipart text fields (bracketed names nest) to the JSON types they stand for."""
    values: dict[str, Any] = {}
    for name, value in fields.items():
        keys = re.findall(r"[^\[\]]+", name) or [name]
        node = values
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = node[key] = {}
            node = child
        node[keys[-1]] = value
    for name in ("n", "partial_images", "output_compression", "frame_count", "frame_duration_ms"):
        text = values.get(name)
        if isinstance(text, str):
            try:
                values[name] = int(text)
            except ValueError as exc:
                message = f"Invalid type for '{name}': expected an integer."
                raise bad_request(message, name, "invalid_type") from exc
    if isinstance(values.get("stream"), str):
        values["stream"] = values["stream"].lower() == "true"
    return values


def check_image_mime(content_type: str, param: str) -> None:
    """Reject image parts whose declared type the API does not take (reference 1.3)."""
    if content_type.split(";")[0].strip().lower() not in IMAGE_MIME_TYPES:
        raise bad_request(
            f"Invalid file '{param}': unsupported mimetype ('{content_type}'). "
            "Supported file formats are 'image/jpeg', 'image/png', and 'image/webp'.",
            param,
            "unsupported_file_mimetype",
        )


def text_tokens(text: str) -> int:
    """Estimate text tokens the way the fake bills them: a quarter of the characters."""
    return math.ceil(len(text) / 4)


def output_image_tokens(quality: str, width: int, height: int) -> int:
    """Return the output image tokens for one image (``auto`` counts as medium)."""
    key = quality if quality in OUTPUT_TOKENS else ("medium" if quality == "auto" else "high")
    row = OUTPUT_TOKENS[key]
    if (width, height) in row:
        return row[(width, height)]
    return max(1, round(row[(1024, 1024)] * width * height / (1024 * 1024)))


def image_usage(prompt: str, input_images: int, output_tokens: int) -> dict[str, Any]:
    """Build the image-model usage object of ``tool_usage.image_gen`` and the Images API."""
    text = text_tokens(prompt)
    images = INPUT_IMAGE_TOKENS * input_images
    return {
        "input_tokens": text + images,
        "input_tokens_details": {"image_tokens": images, "text_tokens": text},
        "output_tokens": output_tokens,
        "output_tokens_details": {"image_tokens": output_tokens, "text_tokens": 0},
        "total_tokens": text + images + output_tokens,
    }


# ----- wire shapes ----------------------------------------------------------------------------


def new_id(prefix: str) -> str:
    """Return an id in the API's style, e.g. ``resp_`` followed by 32 hex digits."""
    return prefix + secrets.token_hex(16)


@functools.lru_cache(maxsize=16)
def b64(data: bytes) -> str:
    """Return bare base64 text, the way the API carries images.

    Cached: pre-rendered pictures are the same bytes objects turn after turn (bytes cache their
    hash), so a benchmark's stand-in does not spend its CPU re-encoding megabytes.
    """
    return base64.b64encode(data).decode("ascii")


# Strings this long are images (base64): each is JSON-encoded once and spliced into its events,
# so a benchmark's stand-in does not scan megabytes of base64 for escapes on every event.
_SPLICE_MIN = 64 * 1024
_SPLICE_MARK = "\x00image\x00"
_SPLICE_MARK_JSON = json.dumps(_SPLICE_MARK).encode()


@functools.lru_cache(maxsize=32)
def _json_string(text: str) -> bytes:
    return json.dumps(text).encode()


def sse_block(payload: dict[str, Any]) -> bytes:
    """Frame one event as ``event:`` plus a one-line ``data:`` JSON block."""
    big: list[bytes] = []

    def marked(value: Any) -> Any:
        if isinstance(value, str) and len(value) >= _SPLICE_MIN:
            big.append(_json_string(value))
            return _SPLICE_MARK
        if isinstance(value, dict):
            return {k: marked(v) for k, v in value.items()}
        if isinstance(value, list):
            return [marked(v) for v in value]
        return value

    data = json.dumps(marked(payload), separators=(",", ":")).encode()
    pieces = data.split(_SPLICE_MARK_JSON)
    parts = [f"event: {payload['type']}\ndata: ".encode(), pieces[0]]
    for encoded, piece in zip(big, pieces[1:], strict=True):
        parts += (encoded, piece)
    parts.append(b"\n\n")
    return b"".join(parts)


def split_deltas(text: str) -> list[str]:
    """Cut reply text into a few word-aligned deltas, as a model streams it."""
    words = re.findall(r"\S+\s*|\s+", text)
    size = max(1, math.ceil(len(words) / 3))
    return ["".join(words[i : i + size]) for i in range(0, len(words), size)]


def image_fields(p: ImageParams) -> dict[str, Any]:
    """Return the resolved image fields every image event and item repeats."""
    return {
        "background": p.background,
        "output_format": p.output_format,
        "quality": p.quality,
        "size": p.size,
    }


def output_moderation_error() -> dict[str, Any]:
    """Return the error of an image item blocked by output moderation (reference 5.2)."""
    return {
        "type": "image_generation_user_error",
        "code": "moderation_blocked",
        "message": "Your request was rejected by the safety system.",
        "param": None,
        "moderation_details": {"categories": ["other"], "moderation_stage": "output"},
    }


def echo_tool(raw: Mapping[str, Any], params: ImageParams) -> dict[str, Any]:
    """Return the image tool as the API echoes it in ``response.tools``: defaults filled in."""
    echoed: dict[str, Any] = {
        "type": "image_generation",
        "action": raw.get("action") or "auto",
        "background": raw.get("background") or "auto",
        "model": params.model,
        "moderation": raw.get("moderation") or "auto",
        "output_compression": params.compression,
        "output_format": params.output_format,
        "partial_images": params.partial_images,
        "quality": raw.get("quality") or "auto",
        "size": raw.get("size") or "auto",
    }
    for key in ("input_fidelity", "input_image_mask", "complexity", "frame_count", "svg"):
        if raw.get(key) is not None:
            echoed[key] = raw[key]
    return echoed


def response_shell(
    body: Mapping[str, Any], model: str, tools: list[Any], store: bool
) -> dict[str, Any]:
    """Build the in-progress Response object, echoing the request as the API does."""

    def given(name: str, default: Any) -> Any:
        """Return the request's value for ``name``, or ``default`` when absent or null."""
        value = body.get(name)
        return default if value is None else value

    return {
        "id": new_id("resp_"),
        "object": "response",
        "created_at": int(time.time()),
        "status": "in_progress",
        "background": body.get("background") is True,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": body.get("prompt_cache_key"),
        "reasoning": given("reasoning", {"effort": None, "summary": None}),
        "safety_identifier": body.get("safety_identifier"),
        "service_tier": "default",
        "store": store,
        "temperature": given("temperature", 1.0),
        "text": given("text", {"format": {"type": "text"}, "verbosity": "medium"}),
        "tool_choice": given("tool_choice", "auto"),
        "tools": tools,
        "top_logprobs": given("top_logprobs", 0),
        "top_p": given("top_p", 1.0),
        "truncation": given("truncation", "disabled"),
        "usage": None,
        "user": body.get("user"),
        "metadata": given("metadata", {}),
    }


def file_json(
    file_id: str, size: int, filename: str, purpose: str, created: int, expires_at: int | None
) -> dict[str, Any]:
    """Build a FileObject."""
    return {
        "id": file_id,
        "object": "file",
        "bytes": size,
        "created_at": created,
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "expires_at": expires_at,
        "status_details": None,
    }


# ----- rendering ------------------------------------------------------------------------------

# Each partial is the final picture shrunk by this divisor and blown back up, so partial 0 is
# the blockiest and every later index is visibly finer (and none equals the final).
PARTIAL_DIVISORS = (32, 16, 8)


# Inputs are decoded only after checking their header size: a fake must not be knocked over by
# a decompression bomb any more than the bot should.
MAX_INPUT_PIXELS = 4096 * 4096


class InvalidImage(ValueError):
    """Raised when uploaded bytes are not a decodable png/jpeg/webp/gif image."""


@dataclass(frozen=True)
class ImageInfo:
    """What the server needs to know about an uploaded image before using it."""

    width: int
    height: int
    has_alpha: bool
    format: str


@dataclass(frozen=True)
class RenderRequest:
    """Everything that determines one output picture."""

    width: int
    height: int
    output_format: str
    compression: int
    transparent: bool
    prompt: str
    variant: int = 0
    base: bytes | None = None
    extras: tuple[bytes, ...] = ()
    mask: bytes | None = None
    partials: int = 0
    frame_count: int = 9


@dataclass(frozen=True)
class RenderedImage:
    """An encoded final picture and its encoded partial previews (coarsest first)."""

    final: bytes
    partials: tuple[bytes, ...]


def probe(data: bytes) -> ImageInfo:
    """Return the size, alpha presence and format of encoded image bytes, or raise InvalidImage."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            if width * height > MAX_INPUT_PIXELS:
                raise InvalidImage(f"image is too large ({width}x{height})")
            has_alpha = img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
                img.mode == "P" and "transparency" in img.info
            )
            fmt = (img.format or "").lower()
    except UnidentifiedImageError as exc:
        raise InvalidImage("not a recognised image") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(str(exc)) from exc
    if fmt not in ("png", "jpeg", "webp", "gif"):
        raise InvalidImage(f"unsupported image format {fmt!r}")
    return ImageInfo(width=width, height=height, has_alpha=has_alpha, format=fmt)


def render(req: RenderRequest) -> RenderedImage:
    """Render the final picture for a request (generation or edit) and its partials."""
    if req.output_format == "svg":
        return RenderedImage(final=_svg(req), partials=())
    picture = _compose(req)
    return _encode_all(picture, req.output_format, req.compression, req.partials, req.frame_count)


def render_generic(
    width: int, height: int, output_format: str, compression: int, transparent: bool, kind: str
) -> RenderedImage:
    """Render a prompt-independent picture with three partials, for the prerender cache."""
    if output_format == "svg":
        req = RenderRequest(width, height, "svg", compression, transparent, kind)
        return RenderedImage(final=_svg(req), partials=())
    seed = _seed(f"prerendered:{kind}", 0)
    picture = _gradient(width, height, seed)
    if transparent:
        picture = _cut_out_subject(picture)
    return _encode_all(picture, output_format, compression, len(PARTIAL_DIVISORS), 2)


def _seed(prompt: str, variant: int) -> bytes:
    """Return stable pseudo-random bytes derived from the prompt and the image's index."""
    return hashlib.sha256(f"{variant}\x00{prompt}".encode()).digest()


def _colour(seed: bytes, offset: int) -> tuple[int, int, int]:
    """Pick an RGB colour from three seed bytes, kept away from pure black and white."""
    r, g, b = seed[offset : offset + 3]
    return (40 + r * 180 // 255, 40 + g * 180 // 255, 40 + b * 180 // 255)


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Return Pillow's bundled font at a given pixel size (cached: loading it is not free)."""
    return ImageFont.load_default(size=size)


def _gradient(width: int, height: int, seed: bytes) -> Image.Image:
    """Draw a two-colour gradient with a few seeded discs: the prompt's visual fingerprint."""
    ramp = Image.linear_gradient("L").rotate(90 * (seed[6] % 4)).resize((width, height))
    picture = Image.composite(
        Image.new("RGB", (width, height), _colour(seed, 0)),
        Image.new("RGB", (width, height), _colour(seed, 3)),
        ramp,
    )
    draw = ImageDraw.Draw(picture)
    unit = min(width, height)
    for i in range(3):
        cx = seed[8 + i] * width // 255
        cy = seed[11 + i] * height // 255
        radius = unit // 10 + seed[14 + i] * unit // (255 * 6)
        draw.ellipse(
            (cx - radius, cy - radius, cx + radius, cy + radius), fill=_colour(seed, 17 + 3 * i)
        )
    return picture


def _cut_out_subject(picture: Image.Image) -> Image.Image:
    """Keep only a central ellipse of the picture on a fully transparent canvas."""
    width, height = picture.size
    alpha = Image.new("L", picture.size, 0)
    ImageDraw.Draw(alpha).ellipse(
        (width // 6, height // 6, width - width // 6, height - height // 6), fill=255
    )
    subject = picture.convert("RGBA")
    subject.putalpha(alpha)
    return subject


def _draw_caption(picture: Image.Image, text: str, box: tuple[int, int, int, int]) -> None:
    """Write wrapped text inside a box, outlined so it reads on any background."""
    left, top, right, bottom = box
    size = max(10, min(picture.size) // 22)
    font = _font(size)
    per_line = max(8, int((right - left) / (size * 0.55)))
    max_lines = max(1, (bottom - top) // (size + size // 3))
    lines = textwrap.wrap(text, per_line)[:max_lines] or [""]
    draw = ImageDraw.Draw(picture)
    y = top
    for line in lines:
        draw.text(
            (left, y),
            line,
            font=font,
            fill=(255, 255, 255, 255),
            stroke_width=max(1, size // 16),
            stroke_fill=(0, 0, 0, 255),
        )
        y += size + size // 3


def _load_rgba(data: bytes, size: tuple[int, int]) -> Image.Image:
    """Decode an input image as RGBA at the output size."""
    with Image.open(io.BytesIO(data)) as img:
        rgba = img.convert("RGBA")
    if rgba.size != size:
        rgba = rgba.resize(size, Image.Resampling.BILINEAR)
    return rgba


def _mask_alpha(data: bytes, size: tuple[int, int]) -> Image.Image:
    """Return the mask's alpha channel at the output size (255 = keep, 0 = editable)."""
    with Image.open(io.BytesIO(data)) as img:
        alpha = img.convert("RGBA").getchannel("A")
    if alpha.size != size:
        # Nearest keeps the mask's hard edges: a resampled edge would half-edit pixels.
        alpha = alpha.resize(size, Image.Resampling.NEAREST)
    return alpha


def _compose(req: RenderRequest) -> Image.Image:
    """Build the unencoded final picture: a fresh generation or an edit of the base image."""
    size = (req.width, req.height)
    seed = _seed(req.prompt, req.variant)
    if req.base is None:
        picture = _gradient(req.width, req.height, seed)
        if req.transparent:
            picture = _cut_out_subject(picture)
        margin = req.width // 12
        _draw_caption(
            picture, req.prompt, (margin, req.height // 3, req.width - margin, req.height - margin)
        )
        return picture

    base = _load_rgba(req.base, size)
    edited = base.copy()
    tint = _colour(seed, 0)
    if req.mask is not None:
        # With a mask the whole editable area must visibly change, wherever the mask opens it.
        wash = Image.new("RGBA", size, (*tint, 255))
        edited = Image.blend(edited, wash, 0.45)
        edited.putalpha(base.getchannel("A"))
    band_top = req.height - max(16, req.height // 5)
    band = Image.new("RGBA", (req.width, req.height - band_top), (*tint, 200))
    edited.alpha_composite(band, (0, band_top))
    _draw_caption(edited, req.prompt, (req.width // 24, band_top + 4, req.width, req.height))
    if req.extras:
        thumb = max(8, min(req.width, req.height) // 6)
        x = req.width - thumb - 4
        for extra in req.extras[:4]:
            edited.alpha_composite(_load_rgba(extra, (thumb, thumb)), (x, 4))
            x -= thumb + 4
    if req.mask is not None:
        edited = Image.composite(base, edited, _mask_alpha(req.mask, size))
    if not req.transparent:
        edited = _flatten(edited)
    return edited


def _flatten(picture: Image.Image) -> Image.Image:
    """Drop the alpha channel by painting the picture over white."""
    if picture.mode != "RGBA":
        return picture.convert("RGB")
    canvas = Image.new("RGBA", picture.size, (255, 255, 255, 255))
    canvas.alpha_composite(picture)
    return canvas.convert("RGB")


def _coarse(picture: Image.Image, divisor: int) -> Image.Image:
    """Return a blocky preview: the picture shrunk by ``divisor`` and scaled back up."""
    width, height = picture.size
    small = picture.resize(
        (max(1, width // divisor), max(1, height // divisor)), Image.Resampling.BOX
    )
    return small.resize((width, height), Image.Resampling.NEAREST)


def _encode_all(
    picture: Image.Image, output_format: str, compression: int, partials: int, frame_count: int
) -> RenderedImage:
    """Encode the final picture and up to three coarser partials in the output format."""
    final = _encode(picture, output_format, compression, frame_count)
    previews = tuple(
        _encode(_coarse(picture, divisor), output_format, compression, frame_count)
        for divisor in PARTIAL_DIVISORS[: max(0, min(partials, len(PARTIAL_DIVISORS)))]
    )
    return RenderedImage(final=final, partials=previews)


def _encode(picture: Image.Image, output_format: str, compression: int, frame_count: int) -> bytes:
    """Encode a picture as png, jpeg, webp or an animated gif."""
    buf = io.BytesIO()
    if output_format == "jpeg":
        # Pillow's own advice: qualities above 95 only grow the file.
        _flatten(picture).save(buf, "JPEG", quality=max(1, min(95, compression)))
    elif output_format == "webp":
        # method=0 is the fastest encoder setting; the fake needs speed, not small files.
        picture.save(buf, "WEBP", quality=max(0, min(100, compression)), method=0)
    elif output_format == "gif":
        _encode_gif(_flatten(picture), buf, frame_count)
    else:
        # Level 1: far faster than the default and the files are still reasonable.
        picture.save(buf, "PNG", compress_level=1)
    return buf.getvalue()


def _encode_gif(picture: Image.Image, buf: io.BytesIO, frame_count: int) -> None:
    """Write an animated GIF whose frames differ by a marker sweeping left to right."""
    base = picture.quantize(colors=64, method=Image.Quantize.FASTOCTREE)
    frames = []
    count = max(2, min(16, frame_count))
    width, height = picture.size
    for i in range(count):
        frame = base.copy()
        x = i * (width - width // count) // max(1, count - 1)
        ImageDraw.Draw(frame).rectangle((x, 0, x + width // count, height // 40), fill=0)
        frames.append(frame)
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=200, loop=0)


def _svg(req: RenderRequest) -> bytes:
    """Write a small SVG document with a seeded gradient and the prompt as text."""
    seed = _seed(req.prompt, req.variant)
    c1 = "#{:02x}{:02x}{:02x}".format(*_colour(seed, 0))
    c2 = "#{:02x}{:02x}{:02x}".format(*_colour(seed, 3))
    fill = "none" if req.transparent else "url(#g)"
    doc = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{req.width}" height="{req.height}">'
        f'<defs><linearGradient id="g"><stop offset="0" stop-color="{c1}"/>'
        f'<stop offset="1" stop-color="{c2}"/></linearGradient></defs>'
        f'<rect width="100%" height="100%" fill="{fill}"/>'
        f'<circle cx="50%" cy="50%" r="30%" fill="url(#g)"/>'
        f'<text x="5%" y="90%" font-size="{max(10, req.height // 22)}">'
        f"{escape(req.prompt[:200])}</text></svg>"
    )
    return doc.encode()
