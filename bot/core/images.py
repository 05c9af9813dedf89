"""Image checks and conversions with Pillow: inputs, masks, region grids, upload fitting, charts.

Every function here is a plain `bytes -> bytes` (or `bytes -> value`) call that may take a while on
large images; callers on the event loop go through `run_in_thread`. Untrusted bytes are bounded
before anything is decoded: first their length, then the pixel count read from the header, and
only then is the image loaded. Problems a user can fix raise `BadInput` with a message key.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import math
import struct
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final, Literal, ParamSpec, TypeVar

from PIL import (
    ExifTags,
    Image,
    ImageDraw,
    ImageFile,
    ImageFilter,
    ImageFont,
    ImageOps,
    ImageSequence,
    UnidentifiedImageError,
)

from bot.core.errors import BadInput
from bot.core.options import InputImage

__all__ = [
    "API_INPUT_MAX_BYTES",
    "MASK_MAX_BYTES",
    "MIN_SIDE",
    "FittedImage",
    "ImageInfo",
    "PreparedImage",
    "fit_to_limit",
    "grid_mask",
    "grid_overlay",
    "image_size",
    "inspect_image",
    "prepare_input_image",
    "prepare_mask",
    "run_in_thread",
    "to_data_url",
    "usage_chart",
]

API_INPUT_MAX_BYTES: Final = 50 * 1024 * 1024
"""The image APIs refuse input images at or above 50 MB."""

MASK_MAX_BYTES: Final = 4 * 1024 * 1024
"""The Images API refuses masks at or above 4 MB."""

MIN_SIDE: Final = 16
"""Smaller images carry too little for the model to work from."""

# Formats Pillow may even try to parse. Everything else is refused before any plugin sees the
# bytes: fewer parsers exposed to untrusted input, and no format that needs outside tools.
_DECODABLE: Final = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF", "AVIF")

# Formats the OpenAI image APIs accept as input, with the modes we pass through unchanged.
# Grayscale JPEG is ordinary and re-encoding it would only lose quality.
_PASSTHROUGH_MODES: Final[dict[str, frozenset[str]]] = {
    "png": frozenset({"RGB", "RGBA"}),
    "jpeg": frozenset({"RGB", "L"}),
    "webp": frozenset({"RGB", "RGBA"}),
}
_MIME: Final = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
_EXTENSIONS: Final = {"png": ("png",), "jpeg": ("jpg", "jpeg"), "webp": ("webp",)}
_ALPHA_MODES: Final = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_HIGH_DEPTH_MODES: Final = frozenset({"I", "F", "I;16", "I;16L", "I;16B", "I;16N"})

# Bounds for images the bot made itself (previews, re-encoding for upload): generous, but still
# bounds, so a bug upstream cannot turn into an unbounded allocation.
_OWN_MAX_BYTES: Final = 128 * 1024 * 1024
_OWN_MAX_PIXELS: Final = 64_000_000
_MAX_FRAMES: Final = 64

_JPEG_CONVERT_QUALITY: Final = 95
_FIT_QUALITIES: Final = (85, 70, 55, 40)
_FIT_DOWNSCALE_QUALITY: Final = 75

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"

# Note keys in order of precedence: the first that applies is the one the user is told about.
_NOTE_ORDER: Final = (
    "images.converted_format",
    "images.converted_cmyk",
    "images.converted_16bit",
    "images.converted_mode",
    "images.converted_rotation",
)

_P = ParamSpec("_P")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What an image is, read from its bytes after they passed every check."""

    width: int
    height: int
    format: str
    mode: str
    mime: str
    has_alpha: bool
    size_bytes: int


@dataclass(frozen=True, slots=True)
class PreparedImage:
    """An input image ready for the API: png, jpeg or webp bytes with their metadata.

    `note` is a message key when the bytes differ from what the user sent (converted format,
    colour mode, bit depth or orientation), None when the original bytes are used as they are.
    """

    data: bytes
    mime: str
    filename: str
    width: int
    height: int
    sha256: str
    note: str | None


@dataclass(frozen=True, slots=True)
class FittedImage:
    """Image bytes that fit an upload limit, and whether they had to be re-encoded for it."""

    data: bytes
    format: str
    reencoded: bool


# --- threads -------------------------------------------------------------------------------


async def run_in_thread(fn: Callable[_P, _R], /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
    """Run `fn(*args, **kwargs)` in a worker thread so Pillow never blocks the event loop."""
    return await asyncio.to_thread(fn, *args, **kwargs)


# --- headers -------------------------------------------------------------------------------


def image_size(data: bytes) -> tuple[int, int]:
    """The stored width and height of an image, read from its header without decoding pixels.

    The size is the one in the file, before any EXIF orientation is applied.
    """
    size = _header_size(data)
    if size is not None:
        return size
    # Formats without a hand-read header (TIFF, AVIF): Pillow's open only parses the header.
    try:
        with _bomb_warnings("ignore"), Image.open(io.BytesIO(data), formats=_formats()) as im:
            return im.size
    except Image.DecompressionBombError:
        raise BadInput(
            "images.too_many_pixels", width="?", height="?", limit=_pillow_pixel_limit()
        ) from None
    except Exception:
        raise BadInput("images.not_an_image") from None


def _header_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG, GIF, JPEG, WebP or BMP header; None when not one of them."""
    try:
        if data.startswith(_PNG_SIGNATURE) and data[12:16] == b"IHDR":
            width, height = struct.unpack(">II", data[16:24])
            return int(width), int(height)
        if data[:6] in (b"GIF87a", b"GIF89a"):
            width, height = struct.unpack("<HH", data[6:10])
            return int(width), int(height)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data[:3] == b"\xff\xd8\xff":
            return _jpeg_size(data)
        if data[:2] == b"BM" and len(data) >= 26:
            header_size = struct.unpack("<I", data[14:18])[0]
            if header_size == 12:
                width, height = struct.unpack("<HH", data[18:22])
            else:
                width, height = struct.unpack("<ii", data[18:26])
            return abs(int(width)), abs(int(height))
    except struct.error:
        return None
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return int(width) & 0x3FFF, int(height) & 0x3FFF
    if chunk == b"VP8L" and data[20] == 0x2F:
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X":
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    # Walk the marker segments up to the first start-of-frame, which holds the size.
    pos = 2
    end = len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD9)):  # markers without a length
            pos += 2
            continue
        length = struct.unpack(">H", data[pos + 2 : pos + 4])[0]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return int(width), int(height)
        pos += 2 + int(length)
    return None


# --- opening untrusted bytes ---------------------------------------------------------------


@lru_cache(maxsize=1)
def _formats() -> tuple[str, ...]:
    """The formats of `_DECODABLE` this Pillow build can open (AVIF support is optional)."""
    Image.init()
    return tuple(name for name in _DECODABLE if name in Image.OPEN)


@contextmanager
def _bomb_warnings(action: Literal["error", "ignore"]) -> Iterator[None]:
    """A context in which Pillow's decompression-bomb warning gets `action`.

    catch_warnings is process-wide, not per thread, so two threads interleaving could leave this
    filter installed after both exit. It only ever concerns DecompressionBombWarning, which every
    open in this module handles either way, so that outcome is harmless.
    """
    with warnings.catch_warnings():
        warnings.simplefilter(action, Image.DecompressionBombWarning)
        yield


def _extrema(band: Image.Image) -> tuple[float, float]:
    """The lowest and highest value of a single-band image."""
    low, high = band.getextrema()
    if isinstance(low, tuple) or isinstance(high, tuple):
        raise ValueError(f"expected a single band, got mode {band.mode}")
    return float(low), float(high)


def _pillow_pixel_limit() -> int:
    """The pixel count past which Pillow itself refuses to open an image."""
    limit = Image.MAX_IMAGE_PIXELS
    return int(limit) if limit is not None else 0


def _megabytes(size: int) -> str:
    return f"{size / (1024 * 1024):.3g}"


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise BadInput("images.too_many_pixels", width=width, height=height, limit=max_pixels)


def _sniff_unsupported(data: bytes) -> str | None:
    """The name of a known image format we do not take, from its magic bytes."""
    head = data[:32]
    if head.startswith(b"8BPS"):
        return "PSD"
    if head[:4] in (b"\x00\x00\x01\x00", b"\x00\x00\x02\x00"):
        return "ICO"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"mif1", b"msf1"):
            return "HEIC"
        if brand in (b"avif", b"avis"):
            return "AVIF"
    if head.startswith((b"\xff\x0a", b"\x00\x00\x00\x0cJXL ")):
        return "JPEG XL"
    if head.startswith((b"\x00\x00\x00\x0cjP  ", b"\xff\x4f\xff\x51")):
        return "JPEG 2000"
    if head.startswith((b"%!PS", b"\xc5\xd0\xd3\xc6")):
        return "EPS"
    if head.startswith(b"qoif"):
        return "QOI"
    if head.startswith(b"DDS "):
        return "DDS"
    if b"<svg" in data[:2048].lower():
        return "SVG"
    return None


def _has_decodable_signature(data: bytes) -> bool:
    """Whether the bytes start like one of the formats we open, so a failure means damage."""
    return (
        data.startswith((_PNG_SIGNATURE, b"\xff\xd8\xff", b"GIF87a", b"GIF89a"))
        or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")
        or data[:4] in (b"II*\x00", b"MM\x00*")
    )


def _format_name(im: Image.Image) -> str:
    name = (im.format or "").lower()
    # Multi-picture JPEGs from phones and cameras are JPEGs with extra images appended.
    return "jpeg" if name == "mpo" else name


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in _ALPHA_MODES or "transparency" in im.info


def _is_animated(im: Image.Image) -> bool:
    if _format_name(im) == "jpeg":
        return False
    # is_animated only looks for a second frame; n_frames may have to walk all of them.
    animated = getattr(im, "is_animated", None)
    if animated is None:
        return int(getattr(im, "n_frames", 1)) > 1
    return bool(animated)


def _decode(data: bytes, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """Open and fully load untrusted image bytes after bounding them; BadInput on any problem."""
    if not data:
        raise BadInput("images.empty")
    if len(data) > max_bytes:
        raise BadInput(
            "images.too_large_bytes", size=_megabytes(len(data)), limit=_megabytes(max_bytes)
        )
    # The header is checked before Pillow runs so a bomb is refused without touching a plugin.
    header = _header_size(data)
    if header is not None:
        _check_pixels(*header, max_pixels)

    try:
        with _bomb_warnings("error"):
            im: ImageFile.ImageFile = Image.open(io.BytesIO(data), formats=_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        width, height = header or ("?", "?")
        raise BadInput(
            "images.too_many_pixels",
            width=width,
            height=height,
            limit=min(max_pixels, _pillow_pixel_limit() or max_pixels),
        ) from None
    except UnidentifiedImageError:
        unsupported = _sniff_unsupported(data)
        if unsupported is not None:
            raise BadInput("images.unsupported_format", format=unsupported) from None
        if _has_decodable_signature(data):
            raise BadInput("images.truncated") from None
        raise BadInput("images.not_an_image") from None
    except MemoryError:
        raise
    except Exception:
        # Plugins raise OSError, ValueError, EOFError... on headers they cannot parse.
        key = "images.truncated" if _has_decodable_signature(data) else "images.not_an_image"
        raise BadInput(key) from None

    try:
        width, height = im.size
        _check_pixels(width, height, max_pixels)
        if min(width, height) < MIN_SIDE:
            raise BadInput("images.too_small", width=width, height=height, min=MIN_SIDE)
        if _is_animated(im):
            raise BadInput("images.animated")
        # A full load is the only way to notice a file cut off in the middle of its pixel data.
        im.load()
    except BadInput:
        im.close()
        raise
    except MemoryError:
        im.close()
        raise
    except Exception:
        im.close()
        raise BadInput("images.truncated") from None
    return im


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(ExifTags.Base.Orientation, 1))
    except Exception:
        # Broken EXIF is common in the wild and must not cost the image.
        return 1


def inspect_image(data: bytes, *, max_bytes: int, max_pixels: int) -> ImageInfo:
    """Check untrusted image bytes (size, pixels, format, frames, integrity) and describe them."""
    with _decode(data, max_bytes=max_bytes, max_pixels=max_pixels) as im:
        fmt = _format_name(im)
        return ImageInfo(
            width=im.width,
            height=im.height,
            format=fmt,
            mode=im.mode,
            mime=_MIME.get(fmt) or Image.MIME.get((im.format or "").upper(), "image/" + fmt),
            has_alpha=_has_alpha(im),
            size_bytes=len(data),
        )


# --- input images --------------------------------------------------------------------------


def _png_bit_depth(data: bytes) -> int:
    return data[24] if data.startswith(_PNG_SIGNATURE) and len(data) > 24 else 8


def _to_8bit(im: Image.Image) -> Image.Image:
    """Scale a 16-bit, 32-bit or float image down to 8-bit grayscale."""
    src = im if im.mode in ("I", "F") else im.convert("I")
    lo, hi = _extrema(src)
    offset = 0.0
    if im.mode.startswith("I;16"):
        scale = 255 / 65535
    elif im.mode == "F" and lo >= 0 and hi <= 1:
        scale = 255.0
    elif lo >= 0 and hi <= 255:
        scale = 1.0
    elif lo >= 0 and hi <= 65535:
        scale = 255 / 65535
    else:
        scale = 255 / (hi - lo) if hi > lo else 1.0
        offset = -lo * scale
    return src.point(lambda value: value * scale + offset).convert("L")


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    """CMYK to sRGB, through the embedded ICC profile when there is one."""
    icc = im.info.get("icc_profile")
    if icc:
        try:
            # Imported here: ImageCms needs LittleCMS, which some Pillow builds lack.
            from PIL import ImageCms

            converted = ImageCms.profileToProfile(
                im,
                ImageCms.ImageCmsProfile(io.BytesIO(icc)),
                ImageCms.createProfile("sRGB"),
                outputMode="RGB",
            )
            if converted is not None:
                return converted
        except Exception:
            # A broken or exotic profile: the plain conversion below is still a usable image.
            pass
    return im.convert("RGB")


def _to_rgb(im: Image.Image) -> Image.Image:
    """RGB or RGBA, keeping transparency when the image has any."""
    try:
        return im.convert("RGBA" if _has_alpha(im) else "RGB")
    except ValueError:
        raise BadInput("images.unsupported_format", format=f"{im.format} {im.mode}") from None


def _safe_filename(filename: str, fmt: str) -> str:
    """`filename` without directories or odd characters, with an extension matching `fmt`."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(ch for ch in base if ch.isprintable() and ch not in '"*:<>?|').strip(" .")
    stem, dot, ext = base.rpartition(".")
    if not dot:
        stem, ext = base, ""
    if ext.lower() in _EXTENSIONS[fmt] and stem:
        return base[-120:]
    return f"{(stem or 'image')[:100]}.{_EXTENSIONS[fmt][0]}"


def _encode(
    im: Image.Image, fmt: str, *, quality: int = _JPEG_CONVERT_QUALITY, **extra: Any
) -> bytes:
    buffer = io.BytesIO()
    if fmt == "jpeg":
        im.save(buffer, "JPEG", quality=quality, optimize=True, **extra)
    elif fmt == "webp":
        im.save(buffer, "WEBP", quality=quality, **extra)
    else:
        im.save(buffer, "PNG", **extra)
    return buffer.getvalue()


def prepare_input_image(
    data: bytes, *, filename: str, max_bytes: int, max_pixels: int
) -> PreparedImage:
    """Check an input image and make it one the API takes: png, jpeg or webp, 8-bit, upright.

    Bytes already in a form the API takes are returned as they are; anything else is converted,
    and `note` says what happened.
    """
    with _decode(data, max_bytes=max_bytes, max_pixels=max_pixels) as im:
        fmt = _format_name(im)
        notes: set[str] = set()
        work: Image.Image = im
        icc = im.info.get("icc_profile") if im.mode in ("RGB", "RGBA") else None

        if _orientation(im) != 1:
            work = ImageOps.exif_transpose(work)
            notes.add("images.converted_rotation")
        if fmt not in _PASSTHROUGH_MODES:
            notes.add("images.converted_format")

        if work.mode == "CMYK":
            work = _cmyk_to_rgb(work)
            icc = None
            notes.add("images.converted_cmyk")
        elif work.mode in _HIGH_DEPTH_MODES:
            work = _to_8bit(work).convert("RGB")
            notes.add("images.converted_16bit")
        elif fmt == "png" and _png_bit_depth(data) == 16:
            # Pillow already reads 16-bit RGB(A) as 8-bit; writing it back makes it 8-bit.
            notes.add("images.converted_16bit")
        if work.mode not in _PASSTHROUGH_MODES.get(fmt, _PASSTHROUGH_MODES["png"]):
            if work.mode not in ("RGB", "RGBA"):
                notes.add("images.converted_mode")
            work = _to_rgb(work)

        if not notes:
            return PreparedImage(
                data=data,
                mime=_MIME[fmt],
                filename=_safe_filename(filename, fmt),
                width=im.width,
                height=im.height,
                sha256=hashlib.sha256(data).hexdigest(),
                note=None,
            )

        # Photos stay JPEG: a lossless PNG of a large photo can be ten times the size.
        out_fmt = "jpeg" if fmt in ("jpeg", "avif") and work.mode in ("RGB", "L") else "png"
        extra: dict[str, Any] = {"icc_profile": icc} if icc else {}
        out = _encode(work, out_fmt, **extra)
        if len(out) > max_bytes:
            raise BadInput(
                "images.too_large_bytes", size=_megabytes(len(out)), limit=_megabytes(max_bytes)
            )
        return PreparedImage(
            data=out,
            mime=_MIME[out_fmt],
            filename=_safe_filename(filename, out_fmt),
            width=work.width,
            height=work.height,
            sha256=hashlib.sha256(out).hexdigest(),
            note=next(key for key in _NOTE_ORDER if key in notes),
        )


# --- masks ---------------------------------------------------------------------------------


def _is_painted_layer(alpha: Image.Image) -> bool:
    """Whether an alpha channel is a transparent layer with strokes painted on it.

    The two kinds of mask with transparency mean opposite things: an opaque picture with
    transparent holes (OpenAI's format: the holes change) and a transparent layer with strokes
    painted on it (what an editor exports: the strokes change). They differ in their background,
    and the background is what covers the edges: when most of the border is transparent, the
    opaque pixels are the strokes.
    """
    width, height = alpha.size
    strips = [(0, 0, width, 1), (0, height - 1, width, height)]
    if height > 2:
        strips += [(0, 1, 1, height - 1), (width - 1, 1, width, height - 1)]
    border = transparent = 0
    for box in strips:
        histogram = alpha.crop(box).histogram()
        border += sum(histogram)
        transparent += sum(histogram[:128])
    return transparent * 2 > border


def _mask_alpha(im: Image.Image) -> Image.Image:
    """The alpha channel of the API mask (0 = edit here) for a user's mask image."""
    if im.mode in _HIGH_DEPTH_MODES:
        im = _to_8bit(im)
    elif im.mode == "CMYK":
        im = im.convert("RGB")
    if _has_alpha(im):
        alpha = im.convert("RGBA").getchannel("A")
        if _extrema(alpha)[0] != 255:
            # Painted strokes are the area to change, so they become the transparent part.
            return ImageOps.invert(alpha) if _is_painted_layer(alpha) else alpha
    # No usable alpha: white marks the area to edit, as in most inpainting tools. Thresholding
    # rather than inverting keeps JPEG noise from making "white" pixels not quite transparent.
    return im.convert("L").point(lambda value: 0 if value >= 128 else 255)


def _mask_png(alpha: Image.Image) -> bytes:
    black = Image.new("L", alpha.size, 0)
    return _encode(Image.merge("RGBA", (black, black, black, alpha)), "png")


def prepare_mask(
    mask: bytes, image: PreparedImage | InputImage, *, max_bytes: int, max_pixels: int
) -> bytes:
    """Turn a user's mask into the API's: a PNG RGBA of the image's size, transparent = edit.

    Without transparency, white (light) pixels are the area to edit and black (dark) ones are
    kept. With transparency, the background decides (see _is_painted_layer): strokes painted on
    a transparent layer are the area to edit; holes in an opaque mask (OpenAI's format) are.
    """
    with _decode(mask, max_bytes=max_bytes, max_pixels=max_pixels) as im:
        work: Image.Image = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im
        if work.size != (image.width, image.height):
            raise BadInput(
                "mask.wrong_size",
                mask_width=work.width,
                mask_height=work.height,
                width=image.width,
                height=image.height,
            )
        alpha = _mask_alpha(work)
    if _extrema(alpha)[0] != 0:
        raise BadInput("mask.nothing_to_edit")
    out = _mask_png(alpha)
    if len(out) > MASK_MAX_BYTES:
        # Soft, noisy alpha compresses badly; a hard edge keeps the same area and fits.
        out = _mask_png(alpha.point(lambda value: 0 if value < 128 else 255))
        if len(out) > MASK_MAX_BYTES:
            raise BadInput("mask.too_complex", limit=_megabytes(MASK_MAX_BYTES))
    return out


# --- region grid ---------------------------------------------------------------------------


def _cell_box(
    cell: int, width: int, height: int, rows: int, cols: int
) -> tuple[int, int, int, int]:
    """The pixel box (left, top, right, bottom; right and bottom exclusive) of cell `cell`."""
    row, col = divmod(cell - 1, cols)
    return (
        col * width // cols,
        row * height // rows,
        (col + 1) * width // cols,
        (row + 1) * height // rows,
    )


def _check_grid(rows: int, cols: int) -> None:
    if rows < 1 or cols < 1:
        raise ValueError(f"a grid needs at least one row and column, got {rows}x{cols}")


def grid_overlay(image: bytes, *, rows: int = 3, cols: int = 3) -> bytes:
    """A PNG of `image` with a grid drawn over it, cells numbered 1.. left to right, top down."""
    _check_grid(rows, cols)
    with _decode(image, max_bytes=_OWN_MAX_BYTES, max_pixels=_OWN_MAX_PIXELS) as im:
        upright = ImageOps.exif_transpose(im) if _orientation(im) != 1 else im
        base = upright.convert("RGBA")
    width, height = base.size
    # Transparent areas would hide the grid's contrast; show them on neutral gray.
    canvas = Image.new("RGBA", base.size, (128, 128, 128, 255))
    canvas.alpha_composite(base)

    overlay = Image.new("RGBA", base.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    line = max(2, min(width, height) // 200)
    for col in range(1, cols):
        x = col * width // cols
        draw.line([(x, 0), (x, height)], fill=(0, 0, 0, 160), width=line + 2)
        draw.line([(x, 0), (x, height)], fill=(255, 255, 255, 230), width=line)
    for row in range(1, rows):
        y = row * height // rows
        draw.line([(0, y), (width, y)], fill=(0, 0, 0, 160), width=line + 2)
        draw.line([(0, y), (width, y)], fill=(255, 255, 255, 230), width=line)

    cell_w, cell_h = width / cols, height / rows
    size = max(10, int(min(cell_w, cell_h) / 3.5))
    font = _font(size)
    for cell in range(1, rows * cols + 1):
        left, top, right, bottom = _cell_box(cell, width, height, rows, cols)
        cx, cy = (left + right) / 2, (top + bottom) / 2
        radius = size * 0.85
        draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=(0, 0, 0, 150))
        draw.text(
            (cx, cy),
            str(cell),
            font=font,
            fill=(255, 255, 255, 255),
            anchor="mm",
            stroke_width=max(1, size // 14),
            stroke_fill=(0, 0, 0, 255),
        )
    canvas.alpha_composite(overlay)
    return _encode(canvas.convert("RGB"), "png")


def grid_mask(
    width: int, height: int, cells: Iterable[int], *, rows: int = 3, cols: int = 3
) -> bytes:
    """A PNG RGBA mask where the chosen grid cells are transparent (edit) and the rest opaque black.

    Cells are numbered as in `grid_overlay`.
    """
    _check_grid(rows, cols)
    if width < 1 or height < 1:
        raise ValueError(f"a mask needs a positive size, got {width}x{height}")
    chosen = set(cells)
    if not chosen:
        raise BadInput("mask.nothing_to_edit")
    outside = sorted(cell for cell in chosen if not 1 <= cell <= rows * cols)
    if outside:
        raise ValueError(f"cells {outside} are outside a {rows}x{cols} grid")
    alpha = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(alpha)
    for cell in sorted(chosen):
        left, top, right, bottom = _cell_box(cell, width, height, rows, cols)
        if right > left and bottom > top:
            draw.rectangle((left, top, right - 1, bottom - 1), fill=0)
    return _mask_png(alpha)


# --- extending the canvas (zoom out, pan) ----------------------------------------------------

# How each choice grows the canvas: fractions of the width and height added on each side
# (left, top, right, bottom).
EXTENSIONS: Final[dict[str, tuple[float, float, float, float]]] = {
    "zoom15": (0.25, 0.25, 0.25, 0.25),
    "zoom2": (0.5, 0.5, 0.5, 0.5),
    "left": (0.5, 0.0, 0.0, 0.0),
    "right": (0.0, 0.0, 0.5, 0.0),
    "up": (0.0, 0.5, 0.0, 0.0),
    "down": (0.0, 0.0, 0.0, 0.5),
}


MAX_CANVAS_PIXELS: Final = 40_000_000


@dataclass(frozen=True, slots=True)
class ExtendedCanvas:
    """A picture on a larger canvas, the mask that asks for the new border, and their size."""

    image: bytes
    mask: bytes
    size: str


def _canvas_size(width: float, height: float, free_sizes: bool) -> tuple[int, int]:
    """The size the model can draw that is closest to a canvas of `width` x `height`."""
    from bot.core.models import MAX_PIXELS, MAX_SIDE, STANDARD_SIZES, parse_size

    if not free_sizes:
        ratio = width / height
        sizes = [parse_size(size) for size in STANDARD_SIZES]
        return min((s for s in sizes if s is not None), key=lambda s: abs(s[0] / s[1] - ratio))
    # Free sizes: the same shape within 1:3..3:1, at most MAX_SIDE and MAX_PIXELS, multiples of 16.
    ratio = min(max(width / height, 1 / 3), 3.0)
    scale = min(1.0, MAX_SIDE / max(width, height), (MAX_PIXELS / (width * height)) ** 0.5)
    w, h = width * scale, height * scale
    if w / h != ratio:
        w, h = (h * ratio, h) if ratio > w / h else (w, w / ratio)
    return max(256, int(w) // 16 * 16), max(256, int(h) // 16 * 16)


def extend_canvas(data: bytes, how: str, *, free_sizes: bool) -> ExtendedCanvas:
    """Put an image on a larger canvas (zoom out, or pan one way) for the model to fill in.

    The new border is masked as the area to change and the picture kept; both are scaled to
    a size the model can draw (for models with fixed sizes, the closest standard shape).
    """
    left, top, right, bottom = EXTENSIONS[how]
    # The bot's own image (from its database), bounded all the same.
    with _decode(data, max_bytes=64 * 1024 * 1024, max_pixels=MAX_CANVAS_PIXELS) as im:
        picture = im.convert("RGB")
    w, h = picture.size
    pad = (round(w * left), round(h * top), round(w * right), round(h * bottom))
    width, height = w + pad[0] + pad[2], h + pad[1] + pad[3]
    # The border starts as the picture's edges stretched outwards: a calmer start than grey.
    canvas = picture.resize((width, height), Image.Resampling.BILINEAR).filter(
        ImageFilter.GaussianBlur(radius=max(width, height) / 40)
    )
    canvas.paste(picture, (pad[0], pad[1]))
    alpha = Image.new("L", (width, height), 0)
    alpha.paste(255, (pad[0], pad[1], pad[0] + w, pad[1] + h))
    target = _canvas_size(width, height, free_sizes)
    canvas = canvas.resize(target, Image.Resampling.LANCZOS)
    alpha = alpha.resize(target, Image.Resampling.NEAREST)
    return ExtendedCanvas(
        image=_encode(canvas, "png"), mask=_mask_png(alpha), size=f"{target[0]}x{target[1]}"
    )


# --- fitting an upload limit ---------------------------------------------------------------


def _frames(im: Image.Image) -> tuple[list[Image.Image], list[int]]:
    """Every frame (at most `_MAX_FRAMES`) as RGB(A), with its duration in milliseconds."""
    frames: list[Image.Image] = []
    durations: list[int] = []
    for frame in ImageSequence.Iterator(im):
        frames.append(frame.convert("RGBA" if _has_alpha(frame) else "RGB"))
        durations.append(int(frame.info.get("duration", 100)))
        if len(frames) >= _MAX_FRAMES:
            break
    return frames, durations


def _uses_alpha(frame: Image.Image) -> bool:
    return frame.mode == "RGBA" and _extrema(frame.getchannel("A"))[0] < 255


def _encode_frames(
    frames: Sequence[Image.Image], durations: Sequence[int], fmt: str, quality: int
) -> bytes:
    first = frames[0]
    if fmt == "jpeg":
        return _encode(first.convert("RGB"), "jpeg", quality=quality)
    if len(frames) == 1:
        return _encode(first, "webp", quality=quality)
    return _encode(
        first,
        "webp",
        quality=quality,
        save_all=True,
        append_images=list(frames[1:]),
        duration=list(durations),
        loop=0,
    )


def fit_to_limit(data: bytes, fmt: str, limit_bytes: int) -> FittedImage:
    """Make image bytes fit `limit_bytes`, re-encoding and then shrinking them only if needed.

    Order: the same format at lower quality (jpeg, webp), then jpeg (webp when the image has
    transparency or frames) at decreasing quality, then smaller sizes. Raises ValueError when
    not even a tiny version fits, or when the format cannot be re-encoded (svg).
    """
    fmt = "jpeg" if fmt.lower() == "jpg" else fmt.lower()
    if len(data) <= limit_bytes:
        return FittedImage(data=data, format=fmt, reencoded=False)
    if fmt not in ("png", "jpeg", "webp", "gif"):
        raise ValueError(f"cannot re-encode {fmt!r} to fit {limit_bytes} bytes")

    with _decode_own(data) as im:
        frames, durations = _frames(im)
    animated = len(frames) > 1
    fallback = "webp" if animated or any(_uses_alpha(frame) for frame in frames) else "jpeg"

    attempts: list[tuple[str, int]] = []
    if fmt == "webp" or (fmt == "jpeg" and not animated):
        attempts += [(fmt, quality) for quality in _FIT_QUALITIES]
    if fallback != fmt:
        attempts += [(fallback, quality) for quality in _FIT_QUALITIES]
    smallest = len(data)
    for target, quality in attempts:
        out = _encode_frames(frames, durations, target, quality)
        if len(out) <= limit_bytes:
            return FittedImage(data=out, format=target, reencoded=True)
        smallest = min(smallest, len(out))

    while True:
        # Bytes scale roughly with the pixel count, so the side shrinks with the square root.
        scale = min(0.9, max(0.3, math.sqrt(limit_bytes / smallest) * 0.95))
        width = round(frames[0].width * scale)
        height = round(frames[0].height * scale)
        if min(width, height) < MIN_SIDE:
            raise ValueError(f"cannot fit the image under {limit_bytes} bytes")
        frames = [frame.resize((width, height), Image.Resampling.LANCZOS) for frame in frames]
        out = _encode_frames(frames, durations, fallback, _FIT_DOWNSCALE_QUALITY)
        if len(out) <= limit_bytes:
            return FittedImage(data=out, format=fallback, reencoded=True)
        smallest = len(out)


def _decode_own(data: bytes) -> Image.Image:
    """Open image bytes the bot produced itself; frames are allowed, bounds still apply."""
    if len(data) > _OWN_MAX_BYTES:
        raise BadInput(
            "images.too_large_bytes", size=_megabytes(len(data)), limit=_megabytes(_OWN_MAX_BYTES)
        )
    try:
        with _bomb_warnings("error"):
            im = Image.open(io.BytesIO(data), formats=_formats())
        _check_pixels(im.width, im.height, _OWN_MAX_PIXELS)
        im.load()
    except BadInput:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise BadInput(
            "images.too_many_pixels", width="?", height="?", limit=_OWN_MAX_PIXELS
        ) from None
    except MemoryError:
        raise
    except Exception:
        raise BadInput("images.not_an_image") from None
    return im


def to_data_url(data: bytes, mime: str) -> str:
    """A `data:` URL carrying `data` base64-encoded, as the API takes for `image_url`."""
    if not mime or "/" not in mime:
        raise ValueError(f"not a MIME type: {mime!r}")
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


# --- fonts ---------------------------------------------------------------------------------

# Fonts shipped next to this module come first (package data), then common system fonts with
# Hangul, then DejaVu; the last resort is Pillow's built-in font, which lacks Hangul.
_SYSTEM_FONT_NAMES: Final = (
    "NotoSansCJK-Regular.ttc",
    "NotoSansCJKkr-Regular.otf",
    "NotoSansKR-Regular.otf",
    "NotoSansKR-Regular.ttf",
    "NanumGothic.ttf",
    "UnDotum.ttf",
    "DejaVuSans.ttf",
)
_SYSTEM_FONT_DIRS: Final = ("/usr/share/fonts", "/usr/local/share/fonts")


@lru_cache(maxsize=1)
def _font_path() -> Path | None:
    here = Path(__file__).resolve().parent
    bundled = sorted([*here.glob("*.ttf"), *here.glob("*.otf"), *here.glob("*.ttc")])
    if bundled:
        return bundled[0]
    found: dict[str, Path] = {}
    for root in _SYSTEM_FONT_DIRS:
        base = Path(root)
        if not base.is_dir():
            continue
        for path in base.rglob("*"):
            if path.name in _SYSTEM_FONT_NAMES:
                found.setdefault(path.name, path)
    for name in _SYSTEM_FONT_NAMES:
        if name in found:
            return found[name]
    return None


# Packages that give the chart Hangul, for the messages that say what to install.
CJK_FONT_PACKAGES: Final = "fonts-nanum or fonts-noto-cjk"


def _glyph(font: ImageFont.FreeTypeFont | ImageFont.ImageFont, char: str) -> bytes:
    canvas = Image.new("L", (48, 48), 0)
    ImageDraw.Draw(canvas).text((4, 4), char, font=font, fill=255)
    return canvas.tobytes()


@lru_cache(maxsize=1)
def draws_hangul() -> bool:
    """Whether the chart's font really draws Korean: a font without Hangul draws every syllable
    as the same empty box (or nothing), so two different syllables must come out different."""
    font = _font(32)
    first, second = _glyph(font, "한"), _glyph(font, "국")
    return any(first) and any(second) and first != second


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    path = _font_path()
    if path is not None:
        try:
            return ImageFont.truetype(str(path), size)
        except OSError:
            pass
    return ImageFont.load_default(size)


# --- usage chart ---------------------------------------------------------------------------

_CHART_WIDTH: Final = 1000
_DAYS_PANEL_HEIGHT: Final = 440
_USER_ROW_HEIGHT: Final = 34
_MAX_USER_ROWS: Final = 12
_BACKGROUND: Final = (255, 255, 255)
_TEXT: Final = (35, 39, 42)
_MUTED: Final = (110, 116, 124)
_GRID: Final = (227, 229, 232)
_BAR: Final = (88, 101, 242)
_USER_BAR: Final = (59, 165, 93)
_CURRENCY_SYMBOLS: Final = {"USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "KRW": "₩"}
_WHOLE_CURRENCIES: Final = frozenset({"JPY", "KRW"})


def _nice_step(top: float, ticks: int = 5) -> float:
    """A 1-2-2.5-5 step that splits 0..`top` into about `ticks` parts."""
    raw = top / ticks
    magnitude = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1.0, 2.0, 2.5, 5.0, 10.0):
        if multiple * magnitude >= raw:
            return multiple * magnitude
    return 10 * magnitude


def _decimals(step: float) -> int:
    for places in range(5):
        scaled = step * 10**places
        if abs(scaled - round(scaled)) < 1e-6:
            return places
    return 4


def _money(value: float, currency: str, places: int | None = None) -> str:
    code = currency.upper()
    if places is None:
        if code in _WHOLE_CURRENCIES or value >= 100:
            places = 0
        elif value == 0 or value >= 0.01:
            places = 2
        else:
            places = 4
    amount = f"{value:,.{places}f}"
    symbol = _CURRENCY_SYMBOLS.get(code)
    return f"{symbol}{amount}" if symbol else f"{amount} {code}"


def _fit_text(
    draw: ImageDraw.ImageDraw,
    text: str,
    font: ImageFont.FreeTypeFont | ImageFont.ImageFont,
    max_width: float,
) -> str:
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "…", font=font) > max_width:
        text = text[:-1]
    return text + "…"


def _draw_days_panel(
    draw: ImageDraw.ImageDraw,
    top: int,
    days: Sequence[tuple[str, float]],
    currency: str,
) -> None:
    tick_font, label_font, value_font = _font(15), _font(14), _font(13)
    values = [max(0.0, float(value)) for _, value in days]
    # With nothing spent the axis still runs to one unit, so an empty chart looks like a chart.
    peak = max(values, default=0.0) or 1.0
    step = _nice_step(peak)
    axis_top = step * max(1, math.ceil(peak / step - 1e-9))
    if currency.upper() in _WHOLE_CURRENCIES or step >= 1:
        places = _decimals(step)
    else:
        places = max(2, _decimals(step))
    tick_count = round(axis_top / step)
    tick_labels = [_money(step * i, currency, places) for i in range(tick_count + 1)]

    left = 24 + int(max(draw.textlength(label, font=tick_font) for label in tick_labels))
    right = _CHART_WIDTH - 24
    plot_top = top + 16
    plot_bottom = top + _DAYS_PANEL_HEIGHT - 44
    plot_height = plot_bottom - plot_top

    for i, label in enumerate(tick_labels):
        y = plot_bottom - plot_height * i / tick_count
        draw.line([(left, y), (right, y)], fill=_GRID, width=1)
        draw.text((left - 8, y), label, font=tick_font, fill=_MUTED, anchor="rm")
    draw.line([(left, plot_bottom), (right, plot_bottom)], fill=_MUTED, width=1)

    if not days:
        return
    slot = (right - left) / len(days)
    bar_width = min(80.0, max(1.0, slot * 0.7))
    widest = max(draw.textlength(label, font=label_font) for label, _ in days)
    # Show every n-th date label so that neighbours never overlap.
    every = max(1, math.ceil((widest + 10) / slot))
    show_values = slot >= 44
    for index, ((label, _), value) in enumerate(zip(days, values, strict=True)):
        cx = left + slot * (index + 0.5)
        bar_top = plot_bottom - plot_height * value / axis_top
        if value > 0:
            draw.rectangle(
                (
                    cx - bar_width / 2,
                    min(bar_top, plot_bottom - 1),
                    cx + bar_width / 2,
                    plot_bottom,
                ),
                fill=_BAR,
            )
            if show_values:
                draw.text(
                    (cx, bar_top - 4),
                    _money(value, currency),
                    font=value_font,
                    fill=_TEXT,
                    anchor="ms",
                )
        if index % every == 0:
            half = draw.textlength(label, font=label_font) / 2
            x = min(max(cx, half + 4), _CHART_WIDTH - half - 4)
            draw.text((x, plot_bottom + 8), label, font=label_font, fill=_TEXT, anchor="mt")


def _draw_users_panel(
    draw: ImageDraw.ImageDraw,
    top: int,
    users: Sequence[tuple[str, float]],
    currency: str,
) -> None:
    font = _font(15)
    rows = [(label, max(0.0, float(value))) for label, value in users[:_MAX_USER_ROWS]]
    rest = users[_MAX_USER_ROWS:]
    if rest:
        rows.append((f"+{len(rest)}", sum(max(0.0, float(value)) for _, value in rest)))
    peak = max((value for _, value in rows), default=0.0) or 1.0

    label_width = min(260.0, max(draw.textlength(label, font=font) for label, _ in rows))
    left = 24 + int(label_width) + 12
    right = _CHART_WIDTH - 24 - 110
    draw.line([(left, top), (left, top + _USER_ROW_HEIGHT * len(rows))], fill=_MUTED, width=1)
    for index, (label, value) in enumerate(rows):
        cy = top + _USER_ROW_HEIGHT * (index + 0.5)
        draw.text(
            (left - 12, cy),
            _fit_text(draw, label, font, label_width),
            font=font,
            fill=_TEXT,
            anchor="rm",
        )
        end = left + (right - left) * value / peak
        if value > 0:
            draw.rectangle((left, cy - 10, max(end, left + 1), cy + 10), fill=_USER_BAR)
        draw.text((end + 8, cy), _money(value, currency), font=font, fill=_TEXT, anchor="lm")


def usage_chart(
    days: Sequence[tuple[str, float]],
    *,
    title: str,
    per_user: Sequence[tuple[str, float]] | None = None,
    currency: str = "USD",
) -> bytes:
    """A PNG bar chart of spend per day (label, amount), with an optional panel of spend by user."""
    title_font = _font(24)
    header = 64
    users_height = 0
    if per_user:
        shown = min(len(per_user), _MAX_USER_ROWS + 1)
        users_height = 24 + _USER_ROW_HEIGHT * shown + 24
    height = header + _DAYS_PANEL_HEIGHT + users_height

    canvas = Image.new("RGB", (_CHART_WIDTH, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    total = _money(sum(max(0.0, float(value)) for _, value in days), currency)
    total_width = draw.textlength(f"Σ {total}", font=title_font)
    draw.text(
        (24, header / 2),
        _fit_text(draw, title, title_font, _CHART_WIDTH - 72 - total_width),
        font=title_font,
        fill=_TEXT,
        anchor="lm",
    )
    draw.text(
        (_CHART_WIDTH - 24, header / 2), f"Σ {total}", font=title_font, fill=_MUTED, anchor="rm"
    )
    _draw_days_panel(draw, header, days, currency)
    if per_user:
        separator = header + _DAYS_PANEL_HEIGHT
        draw.line([(24, separator), (_CHART_WIDTH - 24, separator)], fill=_GRID, width=2)
        _draw_users_panel(draw, separator + 24, per_user, currency)
    return _encode(canvas, "png")


def as_input(prepared: PreparedImage) -> InputImage:
    """The turn runner's view of a prepared image."""
    return InputImage(
        data=prepared.data,
        mime=prepared.mime,
        filename=prepared.filename,
        sha256=prepared.sha256,
        width=prepared.width,
        height=prepared.height,
        note=prepared.note,
    )
