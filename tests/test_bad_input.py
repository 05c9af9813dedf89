"""A corpus of bad input, each case run end to end through the real bot in the sandbox.

Every case is sent the way a Discord user would send it (`/imagine` or `/edit` options and
attachments, or a message in a conversation thread) and must get the specific catalog sentence
for its problem while no request at all reaches the OpenAI stand-in and no job is queued. A
slash-command refusal must be private (ephemeral, with the public "thinking…" message gone); a
thread message gets a reply. Attachments are read from the attachment itself, each once, and one
over the size limit is refused without its bytes being fetched from the CDN (real 60 MB files).

CMYK JPEG and 16-bit PNG are not refused but converted: those two tests check that the request
carries an 8-bit RGB JPEG or PNG and that the user is told about the conversion.

Some limits cannot be reached through Discord at all, because Discord's own client refuses the
input first: option strings are at most 6,000 characters and messages 2,000 (4,000 with Nitro),
so a prompt over the 32,000-character limit never arrives; `partials` and `compression` are
integer ranges Discord enforces; a command carries at most 3 images and a message at most 10
attachments, fewer than the 16 reference images allowed. Those cases check that the stand-in
refuses them as Discord does, and run the bot's own check at the service level
(`Studio.check` of the running bot, which calls the same `validate_request` that
`python -m bot generate` runs).

The last test prints the whole table (case, expected, got), even under `-q`.
"""

from __future__ import annotations

import base64
import io
import random
import struct
import zipfile
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

import pytest
import pytest_asyncio
from PIL import Image

from bot.core import i18n
from bot.core.errors import BadInput
from bot.core.jobs import JobKind, JobSpec, Requester
from bot.core.models import MODELS
from bot.core.options import MAX_INPUT_IMAGES, MAX_PROMPT_CHARS, InputImage
from bot.sandbox import Sandbox, sandbox
from fakes.discord_api import FakeDiscord, Interaction
from fakes.openai_api import Timeline
from tests.e2e import ErrorLog, finals, no_errors_logged

module_loop = pytest.mark.asyncio(loop_scope="module")

TIMELINE = Timeline(first_partial=0.05, between_partials=0.05, final=0.05)
MB = 1024 * 1024
WAIT = 15.0

# --- the corpus: bytes -----------------------------------------------------------------------


def encode(im: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **params)
    return buffer.getvalue()


def noise(size: tuple[int, int], seed: int = 1) -> Image.Image:
    return Image.frombytes("RGB", size, random.Random(seed).randbytes(size[0] * size[1] * 3))


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def raw_png(width: int, height: int, depth: int, color_type: int, body: bytes) -> bytes:
    """A PNG written by hand: any declared size and bit depth, with `body` as its pixel stream."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", ihdr)
        + png_chunk(b"IDAT", zlib.compress(body, 9))
        + png_chunk(b"IEND", b"")
    )


@cache
def image_png(side: int = 256, color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    return encode(Image.new("RGB", (side, side), color), "PNG")


@cache
def mask_png(side: int, *, white: bool) -> bytes:
    """A black mask, with its top-left quarter white (the area to edit) when `white`."""
    im = Image.new("L", (side, side), 0)
    if white:
        im.paste(255, (0, 0, side // 2, side // 2))
    return encode(im, "PNG")


def pdf_bytes() -> bytes:
    return b"%PDF-1.7\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\ntrailer\n%%EOF\n"


def zip_bytes() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("cat.png", image_png())
    return buffer.getvalue()


def random_bytes() -> bytes:
    return random.Random(7).randbytes(64 * 1024)


def text_bytes() -> bytes:
    return b"shopping list: eggs, milk, a picture of a cat\n" * 40


@cache
def truncated(fmt: str) -> bytes:
    data = encode(noise((256, 192)), fmt)
    return data[: len(data) // 2]


def bomb_png() -> bytes:
    """A PNG of about 100 bytes whose header declares 30000x30000 pixels (900 million)."""
    return raw_png(30_000, 30_000, 1, 0, bytes(64))


@cache
def sixty_megabytes() -> bytes:
    # Real bytes: the stand-in keeps them on its CDN, so a download would really move 60 MB.
    return b"\x89PNG\r\n\x1a\n" + bytes(60 * MB - 8)


def animated(fmt: str) -> bytes:
    first, *rest = [Image.new("RGB", (64, 64), color) for color in ("red", "green", "blue")]
    return encode(first, fmt, save_all=True, append_images=rest, duration=100, loop=0)


def heic_bytes() -> bytes:
    return b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(256)


def svg_bytes() -> bytes:
    return b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="64"/>'


def tiny_png() -> bytes:
    return encode(Image.new("RGB", (8, 40), "white"), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(Image.new("CMYK", (64, 64), (0, 255, 0, 0)), "JPEG", quality=95)


def deep_png() -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow cannot write one, so it is written by hand)."""
    row = b"\x00" + b"\xff\xff\x00\x00\x80\x00" * 64
    return raw_png(64, 64, 16, 2, row * 64)


# --- the corpus: cases -----------------------------------------------------------------------

Via = Literal["imagine", "edit", "thread", "service"]
Files = tuple[tuple[str, str, Callable[[], bytes]], ...]


def en(key: str, **params: object) -> str:
    """The exact English catalog sentence the user must see."""
    return i18n.t("en", key, **params)


def choices(values: Sequence[str]) -> str:
    return ", ".join(f"`{v}`" for v in values)


@dataclass(frozen=True)
class Case:
    """One bad input: how it is sent, and the sentence the user must get for it."""

    id: str
    via: Via
    expected: str
    options: Mapping[str, Any] = field(default_factory=dict)
    # (slash option name, or "" in a thread message; filename; bytes)
    files: Files = ()
    text: str = "make it better"
    stickers: tuple[dict[str, Any], ...] = ()
    # Filenames the bot downloads (each once; the others never); None: every file of the case.
    fetched: tuple[str, ...] | None = None
    # Service level: the spec handed to the running bot's Studio.check.
    spec: Callable[[], JobSpec] | None = None
    # What Discord's own client refuses before the bot sees anything (service-level cases).
    client_refuses: Mapping[str, Any] | None = None
    why: str = ""


def imagine(case_id: str, expected: str, **kwargs: Any) -> Case:
    options = {"prompt": "a cat on a sofa", **kwargs.pop("options", {})}
    return Case(case_id, "imagine", expected, options=options, **kwargs)


def edit(case_id: str, expected: str, **kwargs: Any) -> Case:
    options = {"prompt": "make it blue", **kwargs.pop("options", {})}
    files = kwargs.pop("files", (("image", "photo.png", image_png),))
    return Case(case_id, "edit", expected, options=options, files=files, **kwargs)


def thread(case_id: str, expected: str, **kwargs: Any) -> Case:
    return Case(case_id, "thread", expected, **kwargs)


def service(case_id: str, expected: str, spec: Callable[[], JobSpec], **kwargs: Any) -> Case:
    return Case(case_id, "service", expected, spec=spec, **kwargs)


def size_rules(size: str, rule: str) -> str:
    return en("bad.size_rules", size=size, model=FREE, rule=rule)


def reference(index: int) -> InputImage:
    return InputImage(data=b"png", mime="image/png", filename=f"r{index}.png", sha256=str(index))


def slot(filename: str, data: Callable[[], bytes], option: str = "image") -> Files:
    return ((option, filename, data),)


NOT_AN_IMAGE = en("images.not_an_image")
TRUNCATED = en("images.truncated")
ANIMATED = en("images.animated")
TOO_BIG = en("images.too_large_bytes", size=60.0, limit=50.0)
WRONG_SIZE = en("mask.wrong_size", mask_width=512, mask_height=512, width=256, height=256)
NOTHING = en("mask.nothing_to_edit")
INVISIBLE = en("bad.prompt_invisible")
FREE = "gpt-image-2.5-sunburst"  # the SDK grants free sizes to the 2 and 2.5 families

CASES: tuple[Case, ...] = (
    # Files that are not images, or not usable ones, as /imagine attachments.
    imagine("pdf", NOT_AN_IMAGE, files=slot("report.pdf", pdf_bytes)),
    imagine("zip", NOT_AN_IMAGE, files=slot("cats.zip", zip_bytes)),
    imagine("random bytes", NOT_AN_IMAGE, files=slot("photo.jpg", random_bytes)),
    imagine("text named .png", NOT_AN_IMAGE, files=slot("notes.png", text_bytes)),
    imagine("empty file", en("images.empty"), files=slot("empty.png", lambda: b"")),
    imagine("truncated png", TRUNCATED, files=slot("cut.png", lambda: truncated("PNG"))),
    imagine("truncated jpeg", TRUNCATED, files=slot("cut.jpg", lambda: truncated("JPEG"))),
    imagine(
        "decompression bomb",
        en("images.too_many_pixels", width=30_000, height=30_000, limit=40_000_000),
        files=slot("bomb.png", bomb_png),
    ),
    imagine("60 MB file", TOO_BIG, files=slot("huge.png", sixty_megabytes), fetched=()),
    imagine("animated gif", ANIMATED, files=slot("dance.gif", lambda: animated("GIF"))),
    imagine("animated webp", ANIMATED, files=slot("dance.webp", lambda: animated("WEBP"))),
    imagine("animated png", ANIMATED, files=slot("dance.png", lambda: animated("PNG"))),
    imagine(
        "heic photo",
        en("images.unsupported_format", format="HEIC"),
        files=slot("IMG_0001.HEIC", heic_bytes),
    ),
    imagine(
        "svg drawing",
        en("images.unsupported_format", format="SVG"),
        files=slot("logo.svg", svg_bytes),
    ),
    imagine(
        "image too small",
        en("images.too_small", width=8, height=40, min=16),
        files=slot("line.png", tiny_png),
    ),
    imagine(
        "bad second image",
        NOT_AN_IMAGE,
        files=(("image", "ok.png", image_png), ("image2", "notes.png", text_bytes)),
    ),
    # Masks.
    edit(
        "mask of another size",
        WRONG_SIZE,
        files=(
            ("image", "photo.png", image_png),
            ("mask", "mask.png", lambda: mask_png(512, white=True)),
        ),
    ),
    edit(
        "mask all black",
        NOTHING,
        files=(
            ("image", "photo.png", image_png),
            ("mask", "mask.png", lambda: mask_png(256, white=False)),
        ),
    ),
    imagine(
        "mask without image",
        en("bad.mask_without_image"),
        files=slot("mask.png", lambda: mask_png(256, white=True), option="mask"),
        fetched=(),
    ),
    edit(
        "mask not an image",
        NOT_AN_IMAGE,
        files=(("image", "photo.png", image_png), ("mask", "mask.png", text_bytes)),
    ),
    edit(
        "60 MB mask",
        TOO_BIG,
        files=(("image", "photo.png", image_png), ("mask", "mask.png", sixty_megabytes)),
        fetched=("photo.png",),
    ),
    edit("broken /edit image", TRUNCATED, files=slot("photo.png", lambda: truncated("PNG"))),
    # Options.
    imagine("empty prompt", en("bad.prompt_empty"), options={"prompt": "   "}),
    imagine(
        "prompt of zero-width characters",
        INVISIBLE,
        options={"prompt": "\u200b\u200c\u200d\u2060\ufeff"},
    ),
    imagine(
        "prompt of blank-looking characters",
        INVISIBLE,
        options={"prompt": " \u00ad\u3164 \u2800\u180e\u202e "},
        why="soft hyphen, Hangul filler, braille blank, Mongolian vowel separator, bidi override",
    ),
    edit("invisible /edit instruction", INVISIBLE, options={"prompt": "\u200b"}, fetched=()),
    imagine(
        "transparent + jpeg",
        en("bad.transparent_jpeg"),
        options={"background": "transparent", "format": "jpeg"},
    ),
    imagine(
        "compression + png", en("bad.compression_png"), options={"compression": 80, "format": "png"}
    ),
    edit(
        "transparent + jpeg on /edit",
        en("bad.transparent_jpeg"),
        options={"background": "transparent", "format": "jpeg"},
        # Options are checked first, so the image is never downloaded.
        fetched=(),
    ),
    imagine(
        "transparent on gpt-image-2",
        en("bad.transparent_model", model="gpt-image-2"),
        options={"background": "transparent", "model": "gpt-image-2"},
    ),
    imagine(
        "xhigh on gpt-image-2",
        en(
            "bad.unknown_quality",
            quality="xhigh",
            model="gpt-image-2",
            choices=choices(("auto", "low", "medium", "high")),
        ),
        options={"quality": "xhigh", "model": "gpt-image-2"},
    ),
    imagine(
        "max on gpt-image-1.5",
        en(
            "bad.unknown_quality",
            quality="max",
            model="gpt-image-1.5",
            choices=choices(("auto", "low", "medium", "high")),
        ),
        options={"quality": "max", "model": "gpt-image-1.5"},
    ),
    imagine(
        "retired dall-e-3",
        en("bad.retired_model", model="dall-e-3", suggestion="gpt-image-2.6-sunburst"),
        options={"model": "dall-e-3"},
    ),
    imagine(
        "retired dall-e-2",
        en("bad.retired_model", model="dall-e-2", suggestion="gpt-image-1-mini"),
        options={"model": "dall-e-2"},
    ),
    imagine(
        "retired gpt-image-1",
        en("bad.retired_model", model="gpt-image-1", suggestion="gpt-image-1.5"),
        options={"model": "gpt-image-1"},
    ),
    imagine(
        "unknown model",
        en("bad.unknown_model", model="midjourney-7", choices=choices(list(MODELS))),
        options={"model": "midjourney-7"},
    ),
    imagine(
        "size unknown to a fixed-size model",
        en(
            "bad.unknown_size",
            size="1920x1080",
            model="gpt-image-1.5",
            choices=choices(
                (
                    "auto",
                    "1024x1024",
                    "1536x1024",
                    "1024x1536",
                    "square",
                    "portrait",
                    "landscape",
                    "wide",
                    "tall",
                )
            ),
        ),
        options={"size": "1920x1080", "model": "gpt-image-1.5"},
    ),
    imagine(
        "size not a multiple of 16",
        en(
            "bad.size_rules",
            size="1000x1000",
            model=FREE,
            rule="each side must be a multiple of 16",
        ),
        options={"size": "1000x1000", "model": FREE},
    ),
    imagine(
        "size ratio over 3:1",
        en(
            "bad.size_rules",
            size="3840x1024",
            model=FREE,
            rule="the aspect ratio must be between 1:3 and 3:1",
        ),
        options={"size": "3840x1024", "model": FREE},
    ),
    imagine(
        "size over 3840x2160",
        en("bad.size_rules", size="4096x2304", model=FREE, rule="the largest size is 3840x2160"),
        options={"size": "4096x2304", "model": FREE},
    ),
    imagine(
        "size under 256x256",
        en(
            "bad.size_rules", size="128x128", model=FREE, rule="the smallest size is 256x256 pixels"
        ),
        options={"size": "128x128", "model": FREE},
    ),
    imagine(
        "size in fullwidth digits",
        size_rules("１０２４x１０２４", "write it as WIDTHxHEIGHT, e.g. 1536x864"),
        options={"size": "１０２４x１０２４", "model": FREE},
        why="int() reads any script's digits; the API takes ASCII only",
    ),
    imagine(
        "size in Arabic-Indic digits",
        size_rules("١٠٢٤x١٠٢٤", "write it as WIDTHxHEIGHT, e.g. 1536x864"),
        options={"size": "١٠٢٤x١٠٢٤", "model": FREE},
    ),
    imagine(
        "size with underscores",
        size_rules("1_024x1_024", "write it as WIDTHxHEIGHT, e.g. 1536x864"),
        options={"size": "1_024x1_024", "model": FREE},
        why="int() accepts digit separators; the API does not",
    ),
    imagine(
        "size with a space inside",
        size_rules("1024 x 1024", "write it as WIDTHxHEIGHT, e.g. 1536x864"),
        options={"size": "1024 x 1024", "model": FREE},
    ),
    imagine(
        "fullwidth size on a fixed-size model",
        en(
            "bad.unknown_size",
            size="１０２４x１０２４",
            model="gpt-image-1.5",
            choices=choices(
                (
                    "auto",
                    "1024x1024",
                    "1536x1024",
                    "1024x1536",
                    "square",
                    "portrait",
                    "landscape",
                    "wide",
                    "tall",
                )
            ),
        ),
        options={"size": "１０２４x１０２４", "model": "gpt-image-1.5"},
    ),
    imagine(
        "size not WxH",
        en(
            "bad.size_rules",
            size="huge",
            model=FREE,
            rule="write it as WIDTHxHEIGHT, e.g. 1536x864",
        ),
        options={"size": "huge", "model": FREE},
    ),
    # Messages in a conversation thread (a file named mask*.png is the mask).
    thread(
        "sticker only",
        en("discord.sticker_only"),
        text="",
        stickers=({"id": "749054660769218631", "name": "Wave", "format_type": 1},),
        why="a sticker is not an attachment; the message has no text",
    ),
    thread(
        "empty message",
        en("discord.empty_message"),
        text="",
        why="Discord's client sends no empty message; a forward or a poll arrives without content",
    ),
    thread("zero-width message in a thread", INVISIBLE, text="\u200b\u2060"),
    thread(
        "two masks on one message",
        en("discord.several_masks", count=2),
        files=(
            ("", "mask.png", lambda: mask_png(1024, white=True)),
            ("", "mask-2.png", lambda: mask_png(1024, white=True)),
        ),
        fetched=(),
        why="which of the two was meant cannot be guessed; neither is downloaded",
    ),
    thread(
        "two masks and an image",
        en("discord.several_masks", count=2),
        files=(
            ("", "photo.png", image_png),
            ("", "Mask_a.png", lambda: mask_png(256, white=True)),
            ("", "mask_b.png", lambda: mask_png(256, white=True)),
        ),
        fetched=(),
    ),
    thread("text named .png in a thread", NOT_AN_IMAGE, files=(("", "notes.png", text_bytes),)),
    thread("pdf in a thread", NOT_AN_IMAGE, files=(("", "scan.pdf", pdf_bytes),)),
    thread(
        "animated gif in a thread", ANIMATED, files=(("", "dance.gif", lambda: animated("GIF")),)
    ),
    thread(
        "60 MB file in a thread", TOO_BIG, files=(("", "huge.png", sixty_megabytes),), fetched=()
    ),
    thread(
        "mask of another size than the thread image",
        en("mask.wrong_size", mask_width=512, mask_height=512, width=1024, height=1024),
        files=(("", "mask.png", lambda: mask_png(512, white=True)),),
    ),
    thread(
        "mask of another size than the attached image",
        WRONG_SIZE,
        files=(("", "ref.png", image_png), ("", "mask.png", lambda: mask_png(512, white=True))),
    ),
    thread(
        "all-black mask in a thread",
        NOTHING,
        files=(("", "mask.png", lambda: mask_png(1024, white=False)),),
    ),
    thread(
        "60 MB mask in a thread", TOO_BIG, files=(("", "mask.png", sixty_megabytes),), fetched=()
    ),
    # Limits Discord's own client enforces: the bot's check runs at the service level.
    service(
        "prompt over 32,000 characters",
        en("bad.prompt_too_long", length=MAX_PROMPT_CHARS + 1, limit=MAX_PROMPT_CHARS),
        lambda: JobSpec(kind=JobKind.IMAGINE, prompt="x" * (MAX_PROMPT_CHARS + 1)),
        client_refuses={"prompt": "x" * 6001},
        why="Discord caps option strings at 6,000 and messages at 2,000 characters",
    ),
    service(
        "partials out of range",
        en("bad.partials_range", value=5),
        lambda: JobSpec(kind=JobKind.IMAGINE, prompt="a cat", options={"partials": 5}),
        client_refuses={"prompt": "a cat", "partials": 5},
        why="`partials` is an integer option with the range 0-3, enforced by Discord",
    ),
    service(
        "compression out of range",
        en("bad.compression_range", value=150),
        lambda: JobSpec(
            kind=JobKind.IMAGINE, prompt="a cat", options={"compression": 150, "format": "jpeg"}
        ),
        client_refuses={"prompt": "a cat", "compression": 150},
        why="`compression` is an integer option with the range 0-100, enforced by Discord",
    ),
    service(
        "too many images",
        en("bad.too_many_images", limit=MAX_INPUT_IMAGES, count=MAX_INPUT_IMAGES + 1),
        lambda: JobSpec(
            kind=JobKind.IMAGINE,
            prompt="a collage",
            images=tuple(reference(i) for i in range(MAX_INPUT_IMAGES + 1)),
        ),
        why="a command takes 3 images and a message 10 attachments, both under 16",
    ),
)


CASE_IDS = [case.id for case in CASES]
assert len(set(CASE_IDS)) == len(CASE_IDS)


@dataclass
class Outcome:
    case: Case
    got: str = "(nothing)"
    where: str = ""
    ok: bool = False


RESULTS: dict[str, Outcome] = {}


# --- the sandbox -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def error_log() -> Iterator[ErrorLog]:
    with no_errors_logged() as handler:
        yield handler


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def box(
    tmp_path_factory: pytest.TempPathFactory, error_log: ErrorLog
) -> AsyncIterator[Sandbox]:
    async with sandbox(tmp_path_factory.mktemp("bad-input"), timeline=TIMELINE) as running:
        yield running
        assert running.discord.unhandled == []
        assert running.discord.internal_errors == []


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def conversation(box: Sandbox) -> dict[str, Any]:
    """A thread with one finished 1024x1024 image: thread messages are its next turns."""
    d = box.discord
    before = {t["id"] for t in d.threads(d.channel["id"])}
    await d.slash("imagine", {"prompt": "a vase on a table", "size": "1024x1024", "partials": 0})
    found = await d.wait_for(
        lambda: next((t for t in d.threads(d.channel["id"]) if t["id"] not in before), None),
        timeout=WAIT,
    )
    await d.wait_for(lambda: finals(d, found["id"]), timeout=WAIT)
    await box.wait_idle()
    return found


# --- running a case --------------------------------------------------------------------------


def cdn_gets(d: FakeDiscord, attachment_ids: Mapping[str, str]) -> dict[str, int]:
    """How many times each file (filename -> attachment id) was fetched from the CDN."""
    return {
        filename: sum(
            1
            for r in d.requests
            if r.method == "GET"
            and r.path.startswith("/attachments/")
            and r.path.split("/")[3] == attachment_id
        )
        for filename, attachment_id in attachment_ids.items()
    }


def interaction_answer(d: FakeDiscord, interaction: Interaction) -> Any:
    """The bot's live warning among the messages of an interaction, if there is one yet."""
    for message_id in sorted(interaction.message_ids()):
        record = d.stored_message(message_id)
        if record is not None and not record.deleted and record.content.startswith("⚠️"):
            return record
    return None


async def run_slash(box: Sandbox, case: Case) -> tuple[str, dict[str, str], list[str]]:
    d = box.discord
    threads_before = len(d.threads())
    attachments = {option: (filename, data()) for option, filename, data in case.files}
    interaction = await d.slash(case.via, case.options, attachments=attachments)
    record = await d.wait_for(lambda: interaction_answer(d, interaction), timeout=WAIT)
    resolved = interaction.data.get("resolved", {}).get("attachments", {})
    ids = {a["filename"]: attachment_id for attachment_id, a in resolved.items()}
    problems = []
    # Private: the reply is ephemeral, and nothing the interaction posted stays visible to others.
    if not record.ephemeral:
        problems.append("the refusal is visible to the whole channel")
    public = [
        m.content
        for m in (d.stored_message(i) for i in interaction.message_ids())
        if m is not None and not m.deleted and not m.ephemeral
    ]
    if public:
        problems.append(f"public messages left behind: {public}")
    if len(d.threads()) != threads_before:
        problems.append("a thread was opened")
    return record.content, ids, problems


async def run_thread(
    box: Sandbox, case: Case, channel_id: Any
) -> tuple[str, dict[str, str], list[str]]:
    d = box.discord
    files = [(filename, data()) for _, filename, data in case.files]
    sent = await d.user_message(
        channel_id, case.text, files=files, stickers=list(case.stickers) or None
    )

    def answer() -> dict[str, Any] | None:
        for m in d.messages(channel_id):
            reference = m.get("message_reference") or {}
            if (
                reference.get("message_id") == sent["id"]
                and m["author"]["id"] != sent["author"]["id"]
            ):
                return m
        return None

    reply = await d.wait_for(answer, timeout=WAIT)
    ids = {a["filename"]: a["id"] for a in sent["attachments"]}
    return reply["content"], ids, []


async def run_service(box: Sandbox, case: Case) -> tuple[str, dict[str, str], list[str]]:
    d = box.discord
    assert case.spec is not None
    if case.client_refuses is not None:
        # Discord's client refuses this before the bot hears of it (the stand-in checks as it does).
        with pytest.raises(ValueError, match="must be"):
            await d.slash("imagine", case.client_refuses)
    requester = Requester(
        user_id=int(d.user["id"]), guild_id=int(d.guild["id"]), channel_id=int(d.channel["id"])
    )
    with pytest.raises(BadInput) as caught:
        box.bot.studio.check(case.spec(), requester)
    return caught.value.localized("en"), {}, []


async def run_case(box: Sandbox, conversation: dict[str, Any], case: Case) -> None:
    d = box.discord
    outcome = RESULTS[case.id] = Outcome(case)
    openai_before = len(box.openai.requests)
    if case.via == "thread":
        got, ids, problems = await run_thread(box, case, conversation["id"])
        outcome.where = "thread reply"
    elif case.via == "service":
        got, ids, problems = await run_service(box, case)
        outcome.where = "service (Discord refuses)" if case.client_refuses else "service"
    else:
        got, ids, problems = await run_slash(box, case)
        outcome.where = f"/{case.via}, ephemeral"
    outcome.got = got.removeprefix("⚠️ ")
    await box.wait_idle()

    if case.expected not in got:
        problems.append(f"expected {case.expected!r}, got {got!r}")
    sent = [r.path for r in box.openai.requests[openai_before:]]
    if sent:
        problems.append(f"requests reached OpenAI: {sent}")
    if await box.services.store.count_active_jobs(int(d.user["id"])):
        problems.append("a job was queued")
    # Attachments are read from the attachment itself (its CDN URL), once; the ones over the
    # size limit (and those never needed) not at all.
    expected_gets = {name: int(case.fetched is None or name in case.fetched) for name in ids}
    gets = cdn_gets(d, ids)
    if gets != expected_gets:
        problems.append(f"CDN downloads {gets}, expected {expected_gets}")
    outcome.ok = not problems
    assert not problems, "\n".join(problems)


@module_loop
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_bad_input_is_refused_with_a_specific_message_and_costs_nothing(
    box: Sandbox, conversation: dict[str, Any], case: Case
) -> None:
    await run_case(box, conversation, case)


# --- accepted after conversion -------------------------------------------------------------


def sent_images(box: Sandbox, since: int) -> list[Image.Image]:
    """The input images of the Responses requests after the first `since` requests."""
    found: list[Image.Image] = []
    for request in box.openai.requests[since:]:
        if request.path != "/v1/responses" or request.json is None:
            continue
        for item in request.json["input"]:
            for part in item.get("content") or []:
                if part.get("type") != "input_image":
                    continue
                if "file_id" in part:
                    data = box.openai.files[part["file_id"]]
                else:
                    header, b64 = part["image_url"].split(",", 1)
                    assert header.startswith(("data:image/png;", "data:image/jpeg;"))
                    data = base64.b64decode(b64)
                im = Image.open(io.BytesIO(data))
                im.load()
                found.append(im)
    return found


@module_loop
async def test_a_cmyk_jpeg_is_converted_sent_as_rgb_jpeg_and_the_user_is_told(
    box: Sandbox,
) -> None:
    d = box.discord
    before = len(box.openai.requests)
    threads = {t["id"] for t in d.threads()}
    interaction = await d.slash(
        "imagine",
        {"prompt": "this poster as a painting"},
        attachments={"image": ("print.jpg", cmyk_jpeg())},
    )
    new = await d.wait_for(lambda: next((t for t in d.threads() if t["id"] not in threads), None))
    await d.wait_for(lambda: finals(d, new["id"]), timeout=WAIT)
    await box.wait_idle()
    [sent] = sent_images(box, before)
    assert (sent.format, sent.mode) == ("JPEG", "RGB")
    red, green, blue = sent.getpixel((32, 32))  # type: ignore[misc]
    assert red > 200 and green < 60 and blue > 200  # magenta, as the CMYK ink said
    note = en("images.converted_cmyk")
    told = [
        m
        for m in (d.stored_message(i) for i in interaction.message_ids())
        if m is not None and note in m.content
    ]
    assert told and told[0].ephemeral
    RESULTS["cmyk jpeg (accepted)"] = Outcome(
        Case("cmyk jpeg (accepted)", "imagine", note),
        got=told[0].content.removeprefix("ℹ️ "),
        where="/imagine, ephemeral; sent as RGB JPEG",
        ok=True,
    )


@module_loop
async def test_a_16bit_png_is_converted_sent_as_8bit_png_and_the_user_is_told(
    box: Sandbox, conversation: dict[str, Any]
) -> None:
    d = box.discord
    before = len(box.openai.requests)
    finals_before = len(finals(d, conversation["id"]))
    sent_message = await d.user_message(
        conversation["id"], "use this as the new background", files=[("deep.png", deep_png())]
    )
    await d.wait_for(lambda: len(finals(d, conversation["id"])) > finals_before, timeout=WAIT)
    await box.wait_idle()
    [sent] = sent_images(box, before)
    assert (sent.format, sent.mode) == ("PNG", "RGB")
    assert sent.getpixel((3, 3)) == (255, 0, 128)
    note = en("images.converted_16bit")
    told = [
        m
        for m in d.messages(conversation["id"])
        if (m.get("message_reference") or {}).get("message_id") == sent_message["id"]
        and note in m["content"]
    ]
    assert told
    RESULTS["16-bit png (accepted)"] = Outcome(
        Case("16-bit png (accepted)", "thread", note),
        got=told[0]["content"].removeprefix("ℹ️ "),
        where="thread reply; sent as 8-bit PNG",
        ok=True,
    )


# --- the table -----------------------------------------------------------------------------


def test_summary_table(capsys: pytest.CaptureFixture[str]) -> None:
    """Print every case with what was expected and what the user got; all must have run."""
    rows = list(RESULTS.values())
    lines = ["", f"{'case':<46} {'where':<38} ok", "=" * 88]
    for o in rows:
        lines += [
            f"{o.case.id:<46} {o.where:<38} {'✓' if o.ok else '✗'}",
            f"    expected: {o.case.expected}",
            f"    got:      {o.got}",
        ]
        if o.case.why:
            lines.append(f"    note:     {o.case.why}")
    end_to_end = [o for o in rows if o.ok and o.case.via != "service" and o.case.id in CASE_IDS]
    service_level = [o for o in rows if o.ok and o.case.via == "service"]
    converted = [o for o in rows if o.ok and o.case.id not in CASE_IDS]
    lines += [
        "=" * 88,
        f"{len(end_to_end)} bad inputs refused end to end through Discord, "
        f"{len(service_level)} refused at the service level (Discord refuses them first), "
        f"{len(converted)} accepted after conversion; 0 OpenAI requests for any refusal.",
    ]
    with capsys.disabled():
        print("\n".join(lines))
    missing = [case_id for case_id in CASE_IDS if case_id not in RESULTS]
    assert missing == [], f"cases that did not run: {missing}"
    assert [o.case.id for o in rows if not o.ok] == []
    assert len(CASES) >= 30 and len(converted) == 2
