"""What the web studio shows and takes, as plain records: no storage types reach the web side.

- a painted layer (the browser's canvas, transparent where nothing was painted) becomes the
  alpha mask OpenAI expects (transparent = change), checked in bytes and pixels first;
- a thread's turns become a tree (which image each turn branched from);
- `WebAccess` holds the link signer and what each issued link grants.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

from PIL import Image

from bot.core import images
from bot.core.errors import BadInput
from bot.core.tokens import TokenSigner

if TYPE_CHECKING:
    from bot.core.jobs import Requester
    from storage.base import Turn

__all__ = [
    "GALLERY_TTL",
    "PAINT_TTL",
    "PaintPage",
    "TurnNode",
    "WebAccess",
    "painted_layer_mask",
    "thumbnail",
    "turn_tree",
]

# A paint link lives ten minutes and works once; a gallery link is read-only and lives an hour.
PAINT_TTL: Final = 600.0
GALLERY_TTL: Final = 3600.0
# A painted pixel is one at least half opaque: the brush's soft rim below that is not edited.
PAINTED_ALPHA: Final = 128
# The most turns a gallery shows (the newest).
GALLERY_TURNS: Final = 200
THUMBNAIL_SIDE: Final = 256


@dataclass
class WebAccess:
    """The signer of this process's links, the public base URL, and each link's grant."""

    signer: TokenSigner
    base_url: str | None
    # nonce -> the requester a link was issued to (their roles and rights at the time), and
    # when the link expires.
    grants: dict[str, tuple[Requester, float]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class PaintPage:
    """What the painter needs: the image's size and prompt, and the page's language."""

    turn_id: int
    width: int
    height: int
    prompt: str
    locale: str
    expires_at: float


@dataclass(frozen=True, slots=True)
class TurnNode:
    """One image of a thread in its tree: `depth` 0 is a root, `parent_id` what it came from."""

    turn_id: int
    parent_id: int | None
    depth: int
    prompt: str
    revised_prompt: str | None
    model: str
    engine: str
    cost_usd: float
    seconds: float | None
    created_at: float
    children: int


def turn_tree(turns: Sequence[Turn]) -> list[TurnNode]:
    """The turns of one thread as a tree, depth first, oldest sibling first.

    A turn's parent is the turn whose response it continued; a turn whose parent is not among
    `turns` (a fresh start, a reroll of the first image, a deleted parent) is a root.
    """
    ordered = sorted(turns, key=lambda t: t.id)
    by_response: dict[str, Turn] = {}
    for turn in ordered:
        if turn.response_id:
            by_response.setdefault(turn.response_id, turn)
    parent_of: dict[int, int | None] = {}
    children: dict[int | None, list[Turn]] = {}
    for turn in ordered:
        parent = by_response.get(turn.parent_response_id or "")
        parent_id = parent.id if parent is not None and parent.id != turn.id else None
        parent_of[turn.id] = parent_id
        children.setdefault(parent_id, []).append(turn)
    nodes: list[TurnNode] = []
    stack: list[tuple[Turn, int]] = [(t, 0) for t in reversed(children.get(None, []))]
    while stack:
        turn, depth = stack.pop()
        seconds = turn.result.get("seconds")
        nodes.append(
            TurnNode(
                turn_id=turn.id,
                parent_id=parent_of[turn.id],
                depth=depth,
                prompt=turn.prompt,
                revised_prompt=turn.revised_prompt,
                model=turn.model,
                engine=turn.engine,
                cost_usd=turn.cost_usd,
                seconds=float(seconds) if isinstance(seconds, int | float) else None,
                created_at=turn.created_at,
                children=len(children.get(turn.id, [])),
            )
        )
        stack.extend((child, depth + 1) for child in reversed(children.get(turn.id, [])))
    return nodes


def painted_layer_mask(
    layer: bytes, width: int, height: int, *, max_bytes: int, max_pixels: int
) -> bytes:
    """The API's mask (PNG RGBA, transparent = change) for a layer painted in the browser.

    The layer must be a PNG of exactly the image's size; its painted pixels (alpha at least
    half) are the area to change, everything else is kept. Bounded before decoding.
    """
    if len(layer) > max_bytes:
        raise BadInput(
            "images.too_large_bytes",
            size=round(len(layer) / 1024 / 1024, 1),
            limit=round(max_bytes / 1024 / 1024, 1),
        )
    if not layer.startswith(b"\x89PNG\r\n\x1a\n"):
        raise BadInput("images.not_an_image")
    mask_width, mask_height = images.image_size(layer)
    if (mask_width, mask_height) != (width, height):
        raise BadInput(
            "mask.wrong_size",
            mask_width=mask_width,
            mask_height=mask_height,
            width=width,
            height=height,
        )
    # Checks bytes, pixels, integrity and frames the way every user image is checked.
    images.inspect_image(layer, max_bytes=max_bytes, max_pixels=max_pixels)
    with Image.open(io.BytesIO(layer), formats=("PNG",)) as im:
        alpha = im.convert("RGBA").getchannel("A")
    keep = alpha.point(lambda value: 0 if value >= PAINTED_ALPHA else 255)
    if keep.getextrema()[0] != 0:
        raise BadInput("mask.nothing_to_edit")
    black = Image.new("L", keep.size, 0)
    out = io.BytesIO()
    Image.merge("RGBA", (black, black, black, keep)).save(out, "PNG", optimize=True)
    return out.getvalue()


def thumbnail(data: bytes, side: int = THUMBNAIL_SIDE) -> bytes:
    """A small PNG of one of the bot's own images, for the gallery."""
    with Image.open(io.BytesIO(data)) as im:
        im.thumbnail((side, side))
        out = io.BytesIO()
        im.convert("RGBA" if "A" in im.getbands() else "RGB").save(out, "PNG")
    return out.getvalue()
