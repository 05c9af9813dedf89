"""Jobs and their encoding: what a request asks for, who asks, and how it is kept in the ledger."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.core.config import GuildConfig, UserSettings
from bot.core.options import InputImage

# The most images one request may draw at once (`/imagine count`).
MAX_COUNT = 4


class JobKind(StrEnum):
    """What started a job; decides how its parent is found and which images it sends."""

    IMAGINE = "imagine"
    EDIT_UPLOAD = "edit_upload"
    MESSAGE = "message"
    REPLY = "reply"
    REROLL = "reroll"
    VARY = "vary"
    EDIT = "edit"
    REGION = "region"
    EXTEND = "extend"


class ParentMode(StrEnum):
    """Where a job continues from."""

    # The conversation's head when the job starts (turns in one thread chain in order).
    LATEST = "latest"
    # A given response: a reply to an earlier image, or a button under it.
    RESPONSE = "response"
    # Nothing: a fresh start.
    NONE = "none"


class Engine(StrEnum):
    """Which OpenAI API draws: the Responses API's image tool, or the Image API."""

    RESPONSES = "responses"
    IMAGES = "images"


@dataclass(frozen=True, slots=True)
class Requester:
    """Who asks, where, and what the bot keeps about them (loaded once per request)."""

    user_id: int
    guild_id: int | None
    channel_id: int
    locale: str = "en"
    role_ids: tuple[int, ...] = ()
    is_admin: bool = False
    parent_channel_id: int | None = None
    # Whether the channel (or the thread's parent) is age-restricted.
    channel_nsfw: bool = False
    settings: UserSettings = field(default_factory=UserSettings)
    config: GuildConfig = field(default_factory=GuildConfig)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything a job needs to run, also after a restart (it is stored as the job payload)."""

    kind: JobKind
    prompt: str
    options: Mapping[str, object] = field(default_factory=dict)
    images: tuple[InputImage, ...] = ()
    mask: bytes | None = None
    mask_cells: tuple[int, ...] = ()
    parent: ParentMode = ParentMode.LATEST
    parent_response_id: str | None = None
    parent_turn_id: int | None = None
    engine: Engine | None = None
    # Post the result behind a spoiler (the member's /settings or the server's /config).
    spoiler: bool = False
    # How an EXTEND job grows its parent's canvas (a key of images.EXTENSIONS).
    extend: str | None = None
    # How many images to draw at once (`/imagine count`), posted together as one grid.
    count: int = 1

    @property
    def continues(self) -> bool:
        """Whether the job builds on an earlier image (so it sends one more input)."""
        if self.parent is ParentMode.RESPONSE:
            return self.parent_response_id is not None
        return self.parent is ParentMode.LATEST and self.kind is not JobKind.IMAGINE

    def to_payload(self) -> dict[str, object]:
        """A JSON-ready dict (images as base64)."""
        return {
            "kind": self.kind.value,
            "prompt": self.prompt,
            "options": dict(self.options),
            "images": [
                {
                    "filename": i.filename,
                    "mime": i.mime,
                    "sha256": i.sha256,
                    "width": i.width,
                    "height": i.height,
                    "b64": base64.b64encode(i.data).decode(),
                }
                for i in self.images
            ],
            "mask": base64.b64encode(self.mask).decode() if self.mask else None,
            "mask_cells": list(self.mask_cells),
            "parent": self.parent.value,
            "parent_response_id": self.parent_response_id,
            "parent_turn_id": self.parent_turn_id,
            "engine": self.engine.value if self.engine else None,
            "spoiler": self.spoiler,
            "extend": self.extend,
            "count": self.count,
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any]) -> JobSpec:
        """The spec stored in a job payload."""
        engine = payload.get("engine")
        return cls(
            kind=JobKind(str(payload["kind"])),
            prompt=str(payload["prompt"]),
            options=dict(payload.get("options") or {}),
            images=tuple(
                InputImage(
                    data=base64.b64decode(i["b64"]),
                    mime=i["mime"],
                    filename=i["filename"],
                    sha256=i["sha256"],
                    width=int(i.get("width") or 0),
                    height=int(i.get("height") or 0),
                )
                for i in payload.get("images") or []
            ),
            mask=base64.b64decode(payload["mask"]) if payload.get("mask") else None,
            mask_cells=tuple(int(c) for c in payload.get("mask_cells") or []),
            parent=ParentMode(str(payload.get("parent") or "latest")),
            parent_response_id=payload.get("parent_response_id"),
            parent_turn_id=payload.get("parent_turn_id"),
            engine=Engine(str(engine)) if engine else None,
            spoiler=bool(payload.get("spoiler")),
            extend=payload.get("extend"),
            count=int(payload.get("count") or 1),
        )


def user_hash(user_id: int) -> str:
    """A stable, non-reversible id for OpenAI's `safety_identifier`."""
    return hashlib.sha256(f"discord:{user_id}".encode()).hexdigest()
