"""Tests of bot.core.images against a corpus of images made here with Pillow."""

from __future__ import annotations

import hashlib
import io
import random
import re
import struct
import threading
import warnings
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from PIL import Image, ImageDraw, ImageSequence, features

from bot.core import i18n, images
from bot.core.errors import BadInput
from bot.core.images import (
    FittedImage,
    PreparedImage,
    fit_to_limit,
    grid_mask,
    grid_overlay,
    image_size,
    inspect_image,
    prepare_input_image,
    prepare_mask,
    run_in_thread,
    to_data_url,
    usage_chart,
)

MAX_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 40_000_000
LIMITS: dict[str, int] = {"max_bytes": MAX_BYTES, "max_pixels": MAX_PIXELS}


# --- corpus --------------------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def halves(size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """Red on the left half, blue on the right."""
    im = Image.new("RGB", size, (255, 0, 0))
    im.paste((0, 0, 255), (size[0] // 2, 0, size[0], size[1]))
    return im.convert(mode)


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, depth: int, color_type: int, rows: Callable[[], Any]) -> bytes:
    """A PNG written by hand, for what Pillow cannot save (16-bit RGB, huge declared sizes)."""
    compressor = zlib.compressobj(9)
    idat = b"".join(compressor.compress(row) for row in rows()) + compressor.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", idat)
        + png_chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
    """A 30000x30000 1-bit PNG: about 100 KB on disk, 900 million pixels when decoded."""
    side = 30_000
    row = bytes(1 + side // 8)
    return raw_png(side, side, 1, 0, lambda: (row for _ in range(side)))


def noise(size: tuple[int, int], mode: str = "RGB", seed: int = 1) -> Image.Image:
    bands = len(mode)
    return Image.frombytes(mode, size, random.Random(seed).randbytes(size[0] * size[1] * bands))


def frames_of(*colors: str) -> list[Image.Image]:
    return [Image.new("RGB", (32, 32), color) for color in colors]


def expect_bad(key: str, fn: Callable[[], object]) -> BadInput:
    """Run `fn`, expecting BadInput `key`, and render its message in both locales."""
    with pytest.raises(BadInput) as caught:
        fn()
    assert caught.value.key == key
    for locale in i18n.SUPPORTED_LOCALES:
        assert caught.value.localized(locale)
    return caught.value


def prepare(data: bytes, filename: str = "upload.png", **limits: int) -> PreparedImage:
    return prepare_input_image(data, filename=filename, **{**LIMITS, **limits})


# --- accepted as they are ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "mode", "mime", "filename"),
    [
        ("PNG", "RGB", "image/png", "cat.png"),
        ("PNG", "RGBA", "image/png", "cat.PNG"),
        ("JPEG", "RGB", "image/jpeg", "cat.jpg"),
        ("JPEG", "L", "image/jpeg", "cat.jpeg"),
        ("WEBP", "RGB", "image/webp", "cat.webp"),
        ("WEBP", "RGBA", "image/webp", "cat.webp"),
    ],
)
def test_api_formats_pass_through_unchanged(fmt: str, mode: str, mime: str, filename: str) -> None:
    data = encode(halves(mode=mode), fmt)
    prepared = prepare(data, filename)
    assert prepared.data is data
    assert (prepared.mime, prepared.filename, prepared.note) == (mime, filename, None)
    assert (prepared.width, prepared.height) == (64, 48)
    assert prepared.sha256 == hashlib.sha256(data).hexdigest()


def test_inspect_describes_the_image() -> None:
    see_through = halves(mode="RGBA")
    see_through.putpixel((0, 0), (0, 0, 0, 0))
    data = encode(see_through, "WEBP", lossless=True)
    info = inspect_image(data, **LIMITS)
    assert (info.width, info.height, info.format, info.mime) == (64, 48, "webp", "image/webp")
    assert info.has_alpha and info.mode == "RGBA" and info.size_bytes == len(data)
    bmp = inspect_image(encode(halves(), "BMP"), **LIMITS)
    assert (bmp.format, bmp.mime, bmp.has_alpha) == ("bmp", "image/bmp", False)


def test_filename_extension_follows_the_content() -> None:
    data = encode(halves(), "PNG")
    assert prepare(data, "holiday.jpeg").filename == "holiday.png"
    assert prepare(data, "../../etc/pass:wd").filename == "passwd.png"
    assert prepare(data, "").filename == "image.png"
    jpeg = encode(halves(), "JPEG")
    assert prepare(jpeg, "C:\\photos\\IMG_0001.JPG").filename == "IMG_0001.JPG"


def test_multi_picture_jpeg_is_a_jpeg_not_an_animation() -> None:
    first, second = halves(), halves().transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    data = encode(first, "MPO", save_all=True, append_images=[second])
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "MPO" and getattr(im, "n_frames", 1) == 2
    prepared = prepare(data, "camera.jpg")
    assert prepared.data is data and prepared.mime == "image/jpeg" and prepared.note is None
    assert inspect_image(data, **LIMITS).format == "jpeg"


@pytest.mark.skipif(not features.check("avif"), reason="this Pillow has no AVIF support")
def test_avif_photo_becomes_jpeg() -> None:
    prepared = prepare(encode(halves(), "AVIF"), "shot.avif")
    assert prepared.note == "images.converted_format"
    assert (prepared.mime, prepared.filename) == ("image/jpeg", "shot.jpg")


# --- refused -------------------------------------------------------------------------------


def test_empty_file() -> None:
    expect_bad("images.empty", lambda: prepare(b""))


def test_text_file_named_png() -> None:
    expect_bad("images.not_an_image", lambda: prepare(b"just some notes\n" * 20, "cat.png"))


def test_random_bytes() -> None:
    expect_bad("images.not_an_image", lambda: prepare(random.Random(7).randbytes(4096)))


def test_pdf_and_zip_are_not_images() -> None:
    pdf = b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\ntrailer\n%%EOF\n"
    expect_bad("images.not_an_image", lambda: prepare(pdf, "scan.png"))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat.png", encode(halves(), "PNG"))
    expect_bad("images.not_an_image", lambda: prepare(buffer.getvalue(), "cats.png"))


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"8BPS\x00\x01" + bytes(40), "PSD"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(32), "HEIC"),
        (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>', "SVG"),
    ],
)
def test_known_but_unsupported_formats_are_named(data: bytes, name: str) -> None:
    error = expect_bad("images.unsupported_format", lambda: prepare(data))
    assert error.params["format"] == name


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(fmt: str) -> None:
    data = encode(noise((128, 96)), fmt)
    expect_bad("images.truncated", lambda: prepare(data[: len(data) // 2]))
    # Cut inside the header, too short for Pillow to recognise at all.
    expect_bad("images.truncated", lambda: prepare(data[:20]))


def test_over_max_bytes_is_refused_before_decoding() -> None:
    data = encode(noise((64, 64)), "PNG")
    error = expect_bad("images.too_large_bytes", lambda: prepare(data, max_bytes=1000))
    assert error.params["limit"] == "0.000954"
    assert "MB" in error.localized("en")


def test_decompression_bomb_is_refused_from_its_header(bomb_png: bytes) -> None:
    assert len(bomb_png) < 200_000
    filters_before = list(warnings.filters)
    pillow_limit = Image.MAX_IMAGE_PIXELS
    error = expect_bad("images.too_many_pixels", lambda: prepare(bomb_png))
    assert error.params == {"width": 30_000, "height": 30_000, "limit": MAX_PIXELS}
    # Even with our own limit out of the way, Pillow's bomb check is turned into BadInput.
    error = expect_bad("images.too_many_pixels", lambda: prepare(bomb_png, max_pixels=10**12))
    assert error.params["limit"] == Image.MAX_IMAGE_PIXELS
    assert Image.MAX_IMAGE_PIXELS == pillow_limit
    assert warnings.filters == filters_before


def test_bomb_is_refused_before_pillow_parses_it(
    bomb_png: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_open(*args: object, **kwargs: object) -> None:
        raise AssertionError("Pillow was asked to open a bomb")

    monkeypatch.setattr(Image, "open", no_open)
    expect_bad("images.too_many_pixels", lambda: prepare(bomb_png))


def test_pixel_limit_of_the_caller_applies() -> None:
    data = encode(halves((300, 200)), "PNG")
    error = expect_bad("images.too_many_pixels", lambda: prepare(data, max_pixels=50_000))
    assert (error.params["width"], error.params["height"]) == (300, 200)


@pytest.mark.parametrize(
    ("fmt", "params"),
    [("GIF", {}), ("WEBP", {}), ("PNG", {}), ("TIFF", {})],
    ids=["gif", "webp", "apng", "multipage-tiff"],
)
def test_animated_images_are_refused(fmt: str, params: dict[str, Any]) -> None:
    first, *rest = frames_of("red", "blue", "green")
    data = encode(first, fmt, save_all=True, append_images=rest, duration=100, **params)
    expect_bad("images.animated", lambda: prepare(data))


def test_tiny_image_is_refused() -> None:
    error = expect_bad("images.too_small", lambda: prepare(encode(halves((8, 40)), "PNG")))
    assert error.params == {"width": 8, "height": 40, "min": images.MIN_SIDE}


# --- converted, with a note ----------------------------------------------------------------


def test_cmyk_jpeg_becomes_rgb_jpeg() -> None:
    data = encode(Image.new("CMYK", (40, 40), (0, 255, 0, 0)), "JPEG")
    prepared = prepare(data, "print.jpg")
    assert prepared.note == "images.converted_cmyk"
    assert (prepared.mime, prepared.filename) == ("image/jpeg", "print.jpg")
    with Image.open(io.BytesIO(prepared.data)) as im:
        assert im.mode == "RGB"
        red, green, blue = im.getpixel((20, 20))  # type: ignore[misc]
        assert red > 200 and green < 60 and blue > 200  # magenta


def test_16bit_grayscale_png_becomes_8bit() -> None:
    data = encode(Image.new("I;16", (40, 40), 40_000), "PNG")
    prepared = prepare(data)
    assert prepared.note == "images.converted_16bit"
    with Image.open(io.BytesIO(prepared.data)) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.getpixel((0, 0)) == (155, 155, 155)  # 40000 / 65535 * 255


def test_16bit_rgb_png_becomes_8bit() -> None:
    row = b"\x00" + b"\xff\xff\x00\x00\x80\x00" * 20
    data = raw_png(20, 20, 16, 2, lambda: (row for _ in range(20)))
    prepared = prepare(data)
    assert prepared.note == "images.converted_16bit"
    assert prepared.data[24] == 8
    with Image.open(io.BytesIO(prepared.data)) as im:
        assert im.getpixel((3, 3)) == (255, 0, 128)


def test_palette_png_becomes_rgb_and_keeps_transparency() -> None:
    opaque = encode(halves().convert("P", palette=Image.Palette.ADAPTIVE, colors=4), "PNG")
    prepared = prepare(opaque)
    assert prepared.note == "images.converted_mode"
    with Image.open(io.BytesIO(prepared.data)) as im:
        assert im.mode == "RGB" and im.getpixel((1, 1)) == (255, 0, 0)

    transparent = halves().convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    index = transparent.getpixel((60, 1))
    with Image.open(io.BytesIO(prepare(encode(transparent, "PNG", transparency=index)).data)) as im:
        assert im.mode == "RGBA"
        assert im.getpixel((60, 1))[3] == 0  # type: ignore[index]
        assert im.getpixel((1, 1)) == (255, 0, 0, 255)


@pytest.mark.parametrize("mode", ["LA", "L", "1"])
def test_other_png_modes_become_rgb_or_rgba(mode: str) -> None:
    prepared = prepare(encode(halves(mode=mode), "PNG"))
    assert prepared.note == "images.converted_mode"
    with Image.open(io.BytesIO(prepared.data)) as im:
        assert im.mode == ("RGBA" if mode == "LA" else "RGB")


def test_exif_rotated_jpeg_is_turned_upright() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: display rotated 90 degrees clockwise
    data = encode(halves((40, 20)), "JPEG", exif=exif.tobytes(), quality=95)
    assert image_size(data) == (40, 20)
    prepared = prepare(data, "phone.jpg")
    assert prepared.note == "images.converted_rotation"
    assert (prepared.width, prepared.height, prepared.mime) == (20, 40, "image/jpeg")
    with Image.open(io.BytesIO(prepared.data)) as im:
        assert im.size == (20, 40)
        assert im.getexif().get(0x0112) is None
        top, bottom = im.getpixel((10, 5)), im.getpixel((10, 35))
        assert top[0] > 200 and top[2] < 60  # type: ignore[index]  # the red left half
        assert bottom[2] > 200 and bottom[0] < 60  # type: ignore[index]


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "GIF"])
def test_other_still_formats_become_png(fmt: str) -> None:
    prepared = prepare(encode(halves(), fmt), "drawing." + fmt.lower())
    assert prepared.note == "images.converted_format"
    assert (prepared.mime, prepared.filename) == ("image/png", "drawing.png")
    assert prepared.sha256 == hashlib.sha256(prepared.data).hexdigest()
    with Image.open(io.BytesIO(prepared.data)) as im:
        assert im.format == "PNG" and im.size == (64, 48)
        assert im.convert("RGB").getpixel((60, 1)) == (0, 0, 255)


# --- masks ---------------------------------------------------------------------------------

# Masks only look at the size of the image they belong to.
IMAGE = PreparedImage(b"", "image/png", "i.png", 64, 48, "", None)
LEFT, RIGHT = (5, 5), (60, 40)


def left_white(mode: str) -> Image.Image:
    """White on the left half, black on the right, in `mode`."""
    im = Image.new("L", (64, 48), 0)
    im.paste(255, (0, 0, 32, 48))
    if mode == "P":
        return im.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=2)
    return im.convert(mode)


def mask_alpha(mask: bytes) -> Image.Image:
    with Image.open(io.BytesIO(mask)) as im:
        assert im.format == "PNG" and im.mode == "RGBA" and im.size == (64, 48)
        return im.getchannel("A")


@pytest.mark.parametrize("mode", ["1", "L", "RGB", "RGBA", "LA", "P"])
def test_white_means_edit_in_every_mode(mode: str) -> None:
    alpha = mask_alpha(prepare_mask(encode(left_white(mode), "PNG"), IMAGE, **LIMITS))
    assert alpha.getpixel(LEFT) == 0 and alpha.getpixel(RIGHT) == 255


def test_jpeg_mask_noise_still_gives_a_clean_edge() -> None:
    data = encode(left_white("RGB"), "JPEG", quality=30)
    alpha = mask_alpha(prepare_mask(data, IMAGE, **LIMITS))
    assert sum(alpha.histogram()[1:255]) == 0
    assert alpha.getpixel(LEFT) == 0 and alpha.getpixel(RIGHT) == 255


def test_holes_in_an_opaque_mask_are_the_area_to_edit() -> None:
    # OpenAI's format. All white: by luminance everything would be editable, but the alpha says
    # only the hole (soft edge included) is.
    mask = Image.new("RGBA", (64, 48), (255, 255, 255, 255))
    mask.paste((255, 255, 255, 0), (2, 2, 32, 46))
    mask.paste((255, 255, 255, 100), (32, 2, 40, 46))
    alpha = mask_alpha(prepare_mask(encode(mask, "PNG"), IMAGE, **LIMITS))
    assert (alpha.getpixel(LEFT), alpha.getpixel((35, 5)), alpha.getpixel(RIGHT)) == (0, 100, 255)

    gray = Image.new("LA", (64, 48), (0, 255))
    gray.paste((0, 0), (2, 2, 32, 46))
    alpha = mask_alpha(prepare_mask(encode(gray, "PNG"), IMAGE, **LIMITS))
    assert (alpha.getpixel(LEFT), alpha.getpixel(RIGHT)) == (0, 255)


def test_holes_reaching_an_edge_of_a_photo_mask_are_still_the_area_to_edit() -> None:
    # The photo itself with its top (the sky) erased: a hole along a whole edge.
    pixels = random.Random(3).randbytes(64 * 48 * 3)
    photo = Image.frombytes("RGB", (64, 48), pixels).convert("RGBA")
    photo.paste((0, 0, 0, 0), (0, 0, 64, 16))
    alpha = mask_alpha(prepare_mask(encode(photo, "PNG"), IMAGE, **LIMITS))
    assert alpha.getpixel((30, 5)) == 0 and alpha.getpixel((30, 30)) == 255


def painted_layer(color: tuple[int, int, int]) -> Image.Image:
    """A transparent layer with strokes in `color`: a filled box, a line to the top edge, a soft dab."""
    layer = Image.new("RGBA", (64, 48), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    draw.rectangle((8, 10, 24, 30), fill=(*color, 255))
    draw.line((40, 0, 56, 40), fill=(*color, 255), width=3)
    layer.putpixel((30, 40), (*color, 100))
    return layer


@pytest.mark.parametrize("color", [(255, 255, 255), (255, 0, 0), (0, 0, 0)])
def test_strokes_painted_on_a_transparent_layer_are_the_area_to_edit(
    color: tuple[int, int, int],
) -> None:
    layer = painted_layer(color)
    alpha = mask_alpha(prepare_mask(encode(layer, "PNG"), IMAGE, **LIMITS))
    # Transparent (edit) exactly where paint is, as much as the paint covers; opaque elsewhere.
    painted = layer.getchannel("A")
    assert alpha.tobytes() == bytes(255 - value for value in painted.tobytes())
    assert alpha.getpixel((16, 20)) == 0 and alpha.getpixel(RIGHT) == 255


def test_an_empty_transparent_layer_has_nothing_to_edit() -> None:
    empty = encode(Image.new("RGBA", (64, 48), (255, 255, 255, 0)), "PNG")
    expect_bad("mask.nothing_to_edit", lambda: prepare_mask(empty, IMAGE, **LIMITS))


def test_mask_of_another_size_is_refused() -> None:
    data = encode(Image.new("L", (48, 64), 255), "PNG")
    error = expect_bad("mask.wrong_size", lambda: prepare_mask(data, IMAGE, **LIMITS))
    assert error.params == {"mask_width": 48, "mask_height": 64, "width": 64, "height": 48}


def test_mask_with_nothing_to_edit_is_refused_and_everything_is_allowed() -> None:
    black = encode(Image.new("RGB", (64, 48), "black"), "PNG")
    expect_bad("mask.nothing_to_edit", lambda: prepare_mask(black, IMAGE, **LIMITS))
    white = encode(Image.new("RGB", (64, 48), "white"), "PNG")
    assert mask_alpha(prepare_mask(white, IMAGE, **LIMITS)).getextrema() == (0, 0)


def test_mask_file_gets_the_image_checks(bomb_png: bytes) -> None:
    expect_bad("images.not_an_image", lambda: prepare_mask(b"not a mask" * 9, IMAGE, **LIMITS))
    expect_bad("images.too_many_pixels", lambda: prepare_mask(bomb_png, IMAGE, **LIMITS))
    expect_bad("images.empty", lambda: prepare_mask(b"", IMAGE, **LIMITS))


def test_noisy_alpha_mask_is_hardened_to_fit_the_mask_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A smaller limit stands in for 4 MB so the test needs no multi-megapixel noise.
    monkeypatch.setattr(images, "MASK_MAX_BYTES", 100_000)
    size = (400, 400)
    mask = Image.merge("RGBA", (*Image.new("RGB", size).split(), noise(size, "L", seed=3)))
    data = encode(mask, "PNG", compress_level=1)
    assert len(data) > 100_000
    big = PreparedImage(b"", "image/png", "x.png", *size, "", None)
    out = prepare_mask(data, big, **LIMITS)
    assert len(out) <= 100_000
    assert sum(mask_alpha_any(out).histogram()[1:255]) == 0

    monkeypatch.setattr(images, "MASK_MAX_BYTES", 1_000)
    expect_bad("mask.too_complex", lambda: prepare_mask(data, big, **LIMITS))


def mask_alpha_any(mask: bytes) -> Image.Image:
    with Image.open(io.BytesIO(mask)) as im:
        return im.getchannel("A")


# --- region grid ---------------------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(90, 60), (100, 50), (1536, 1024)])
def test_grid_mask_cells_map_to_the_right_pixels(width: int, height: int) -> None:
    alpha = mask_alpha_any(grid_mask(width, height, [1, 5, 9]))
    assert alpha.size == (width, height)
    for x in range(0, width, max(1, width // 50)):
        for y in range(0, height, max(1, height // 30)):
            # Column c spans c*width//3 <= x < (c+1)*width//3, and rows likewise.
            col = max(c for c in range(3) if c * width // 3 <= x)
            row = max(r for r in range(3) if r * height // 3 <= y)
            cell = row * 3 + col + 1
            assert alpha.getpixel((x, y)) == (0 if cell in (1, 5, 9) else 255), (x, y, cell)


def test_grid_mask_edges_and_errors() -> None:
    alpha = mask_alpha_any(grid_mask(10, 10, range(1, 10)))
    assert alpha.getextrema() == (0, 0)
    alpha = mask_alpha_any(grid_mask(8, 4, [2], rows=2, cols=4))
    assert [alpha.getpixel((x, 0)) for x in range(8)] == [255, 255, 0, 0, 255, 255, 255, 255]
    assert alpha.getpixel((2, 2)) == 255
    with pytest.raises(ValueError):
        grid_mask(10, 10, [10])
    with pytest.raises(ValueError):
        grid_mask(10, 10, [0])
    expect_bad("mask.nothing_to_edit", lambda: grid_mask(10, 10, []))


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_grid_overlay_keeps_the_size_and_draws(mode: str) -> None:
    source = Image.new(mode, (300, 200), (40, 160, 90))
    preview = grid_overlay(encode(source, "PNG"), rows=2, cols=3)
    with Image.open(io.BytesIO(preview)) as im:
        assert im.format == "PNG" and im.size == (300, 200)
        assert im.getpixel((100, 20)) != (40, 160, 90)  # a grid line
        assert im.getpixel((50, 50)) != (40, 160, 90)  # the number in cell 1
        assert im.getpixel((20, 10)) == (40, 160, 90)  # untouched corner


# --- fitting an upload limit ---------------------------------------------------------------


@pytest.fixture(scope="module")
def noisy_png() -> bytes:
    return encode(noise((1536, 1024)), "PNG", compress_level=1)


def test_fit_returns_unchanged_bytes_when_under(noisy_png: bytes) -> None:
    fitted = fit_to_limit(noisy_png, "png", len(noisy_png))
    assert fitted == FittedImage(noisy_png, "png", False)


def test_fit_reencodes_a_noisy_png_under_the_limit(noisy_png: bytes) -> None:
    limit = 1_500_000
    fitted = fit_to_limit(noisy_png, "png", limit)
    assert fitted.reencoded and fitted.format == "jpeg" and len(fitted.data) <= limit
    with Image.open(io.BytesIO(fitted.data)) as im:
        assert im.format == "JPEG" and im.size == (1536, 1024)


def test_fit_downscales_when_quality_is_not_enough(noisy_png: bytes) -> None:
    limit = 60_000
    fitted = fit_to_limit(noisy_png, "png", limit)
    assert len(fitted.data) <= limit
    with Image.open(io.BytesIO(fitted.data)) as im:
        assert im.width < 1536 and abs(im.width / im.height - 1.5) < 0.01


def test_fit_keeps_transparency_and_frames_in_webp() -> None:
    rgba = encode(noise((256, 256), "RGBA"), "PNG")
    fitted = fit_to_limit(rgba, "png", len(rgba) // 2)
    assert fitted.format == "webp" and len(fitted.data) <= len(rgba) // 2
    with Image.open(io.BytesIO(fitted.data)) as im:
        assert im.mode == "RGBA"

    first, *rest = [noise((128, 128), seed=seed) for seed in range(4)]
    gif = encode(first, "GIF", save_all=True, append_images=rest, duration=80, loop=0)
    fitted = fit_to_limit(gif, "gif", len(gif) // 3)
    assert fitted.format == "webp" and len(fitted.data) <= len(gif) // 3
    with Image.open(io.BytesIO(fitted.data)) as im:
        assert sum(1 for _ in ImageSequence.Iterator(im)) == 4


def test_fit_same_format_first_for_webp() -> None:
    data = encode(noise((256, 256)), "WEBP", quality=100)
    fitted = fit_to_limit(data, "webp", len(data) // 2)
    assert fitted.format == "webp" and len(fitted.data) <= len(data) // 2


def test_fit_raises_when_impossible(noisy_png: bytes) -> None:
    with pytest.raises(ValueError):
        fit_to_limit(noisy_png, "png", 100)
    with pytest.raises(ValueError):
        fit_to_limit(b"<svg/>" * 100, "svg", 10)


# --- charts --------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 31])
@pytest.mark.parametrize("zero", [False, True])
def test_usage_chart_is_a_png_for_any_number_of_days(count: int, zero: bool) -> None:
    days = [(f"2026-05-{day:02d}", 0.0 if zero else day * 0.137) for day in range(1, count + 1)]
    users = [(f"user {n} 사용자", 0.0 if zero else n * 0.5) for n in range(15)] if count else None
    chart = usage_chart(days, title="이번 달 사용량 / Usage this month", per_user=users)
    assert chart.startswith(b"\x89PNG\r\n\x1a\n")
    with Image.open(io.BytesIO(chart)) as im:
        im.load()
        assert im.width == 1000 and im.height >= 400
        # Something besides background: bars, labels or at least the axis.
        assert sum(im.convert("L").histogram()[:200]) > 0


def test_usage_chart_other_currency() -> None:
    chart = usage_chart([("05-01", 1200.0), ("05-02", 0.0)], title="KRW", currency="KRW")
    with Image.open(io.BytesIO(chart)) as im:
        assert im.format == "PNG"


# --- small helpers -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "params"),
    [
        ("PNG", {}),
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("GIF", {}),
        ("BMP", {}),
        ("TIFF", {}),
        ("WEBP", {}),
        ("WEBP", {"lossless": True}),
    ],
)
def test_image_size_reads_headers(fmt: str, params: dict[str, Any]) -> None:
    assert image_size(encode(halves((123, 45)), fmt, **params)) == (123, 45)
    assert image_size(encode(halves((77, 33), "RGBA"), "WEBP")) == (77, 33)


def test_image_size_of_garbage_is_bad_input() -> None:
    expect_bad("images.not_an_image", lambda: image_size(b"hello"))


def test_to_data_url() -> None:
    assert to_data_url(b"\x89PNG", "image/png") == "data:image/png;base64,iVBORw=="
    with pytest.raises(ValueError):
        to_data_url(b"x", "")


async def test_run_in_thread_leaves_the_event_loop_thread() -> None:
    loop_thread = threading.get_ident()
    data = encode(halves(), "PNG")
    size, thread = await run_in_thread(lambda: (image_size(data), threading.get_ident()))
    assert size == (64, 48) and thread != loop_thread
    info = await run_in_thread(inspect_image, data, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS)
    assert info.width == 64


# --- messages ------------------------------------------------------------------------------


def keys_used_by_images() -> set[str]:
    source = Path(images.__file__).read_text(encoding="utf-8")
    keys = set(re.findall(r'BadInput\(\s*"([\w.]+)"', source))
    keys |= set(re.findall(r'"(images\.converted_\w+)"', source))
    return keys


def test_every_key_has_english_and_korean() -> None:
    keys = keys_used_by_images()
    assert len(keys) >= 15
    hangul = re.compile("[\uac00-\ud7a3]")
    for key in sorted(keys):
        entry = i18n.CATALOG.get(key)
        assert entry is not None, key
        assert entry.get("en"), key
        assert hangul.search(entry.get("ko", "")), key
        fields = set(re.findall(r"{(\w+)", entry["en"]))
        assert fields == set(re.findall(r"{(\w+)", entry["ko"])), key


def test_notes_render_without_parameters() -> None:
    for key in sorted(k for k in keys_used_by_images() if k.startswith("images.converted_")):
        for locale in i18n.SUPPORTED_LOCALES:
            assert i18n.t(locale, key)
