"""Data types, constants and payload validation shared by the Discord stand-in."""

from __future__ import annotations

import datetime
import io
import mimetypes
import re
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

Payload = dict[str, Any]

DISCORD_EPOCH_MS = 1_420_070_400_000
DEFAULT_UPLOAD_LIMIT = 10 * 1024 * 1024

# Deadlines Discord applies to interactions and to edits.
INITIAL_RESPONSE_SECONDS = 3.0
INTERACTION_TOKEN_SECONDS = 15 * 60.0
OLD_MESSAGE_SECONDS = 3600.0

PERMISSIONS: dict[str, int] = {
    "create_instant_invite": 1 << 0,
    "kick_members": 1 << 1,
    "ban_members": 1 << 2,
    "administrator": 1 << 3,
    "manage_channels": 1 << 4,
    "manage_guild": 1 << 5,
    "add_reactions": 1 << 6,
    "view_audit_log": 1 << 7,
    "view_channel": 1 << 10,
    "send_messages": 1 << 11,
    "send_tts_messages": 1 << 12,
    "manage_messages": 1 << 13,
    "embed_links": 1 << 14,
    "attach_files": 1 << 15,
    "read_message_history": 1 << 16,
    "mention_everyone": 1 << 17,
    "use_external_emojis": 1 << 18,
    "change_nickname": 1 << 26,
    "manage_roles": 1 << 28,
    "manage_webhooks": 1 << 29,
    "use_application_commands": 1 << 31,
    "manage_threads": 1 << 34,
    "create_public_threads": 1 << 35,
    "create_private_threads": 1 << 36,
    "use_external_stickers": 1 << 37,
    "send_messages_in_threads": 1 << 38,
    "moderate_members": 1 << 40,
}
# Names accepted by FakeDiscord.deny() that stand for several permissions at once.
PERMISSION_ALIASES: dict[str, tuple[str, ...]] = {
    "create_threads": ("create_public_threads", "create_private_threads"),
}
ALL_PERMISSIONS = (1 << 51) - 1


def permission_bits(*names: str) -> int:
    """Return the permission bit field for the given permission names."""
    bits = 0
    for name in names:
        bits |= PERMISSIONS[name]
    return bits


EVERYONE_PERMISSIONS = permission_bits(
    "create_instant_invite",
    "add_reactions",
    "view_channel",
    "send_messages",
    "embed_links",
    "attach_files",
    "read_message_history",
    "mention_everyone",
    "use_external_emojis",
    "change_nickname",
    "use_application_commands",
    "create_public_threads",
    "create_private_threads",
    "use_external_stickers",
    "send_messages_in_threads",
)
BOT_PERMISSIONS = EVERYONE_PERMISSIONS | permission_bits("manage_messages", "manage_threads")
ADMIN_PERMISSIONS = EVERYONE_PERMISSIONS | permission_bits(
    "manage_guild", "manage_messages", "manage_threads", "manage_channels"
)

INTENT_GUILDS = 1 << 0
INTENT_GUILD_MEMBERS = 1 << 1
INTENT_GUILD_PRESENCES = 1 << 8
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_GUILD_MESSAGE_REACTIONS = 1 << 10
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_DIRECT_MESSAGE_REACTIONS = 1 << 13
INTENT_MESSAGE_CONTENT = 1 << 15
PRIVILEGED_INTENTS: dict[str, int] = {
    "members": INTENT_GUILD_MEMBERS,
    "presences": INTENT_GUILD_PRESENCES,
    "message_content": INTENT_MESSAGE_CONTENT,
}
# Application flags that tell a client which privileged intents the app may use.
PRIVILEGED_APP_FLAGS: dict[str, int] = {
    "presences": 1 << 12,
    "members": 1 << 14,
    "message_content": 1 << 18,
}

FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_COMPONENTS_V2 = 1 << 15
SETTABLE_MESSAGE_FLAGS = (
    FLAG_SUPPRESS_EMBEDS | FLAG_EPHEMERAL | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_COMPONENTS_V2
)

CHANNEL_TEXT = 0
CHANNEL_DM = 1
CHANNEL_ANNOUNCEMENT = 5
CHANNEL_ANNOUNCEMENT_THREAD = 10
CHANNEL_PUBLIC_THREAD = 11
CHANNEL_PRIVATE_THREAD = 12
THREAD_TYPES = frozenset(
    {CHANNEL_ANNOUNCEMENT_THREAD, CHANNEL_PUBLIC_THREAD, CHANNEL_PRIVATE_THREAD}
)

SELECT_TYPES = frozenset({3, 5, 6, 7, 8})
BUTTON = 2
TEXT_INPUT = 4
ACTION_ROW = 1
LABEL = 18


class ApiError(Exception):
    """An error reply in Discord's JSON error format."""

    def __init__(
        self, status: int, code: int, message: str, *, errors: Payload | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.code = code
        self.message = message
        self.errors = errors

    def body(self) -> Payload:
        """Return the JSON body Discord sends for this error."""
        body: Payload = {"message": self.message, "code": self.code}
        if self.errors is not None:
            body["errors"] = self.errors
        return body


def form_error(path: Sequence[str | int], code: str, message: str) -> ApiError:
    """Return a 400 "Invalid Form Body" error pointing at one field, nested like Discord's."""
    errors: Payload = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path):
        errors = {str(key): errors}
    return ApiError(400, 50035, "Invalid Form Body", errors=errors)


def not_found(code: int, what: str) -> ApiError:
    """Return Discord's 404 for an unknown entity (``what`` is e.g. "Message")."""
    return ApiError(404, code, f"Unknown {what}")


MISSING_PERMISSIONS = (403, 50013, "Missing Permissions")


def missing_permissions() -> ApiError:
    """Return the 403 Discord sends when the bot lacks a channel permission."""
    return ApiError(*MISSING_PERMISSIONS)


class SnowflakeFactory:
    """Hands out strictly increasing snowflakes laid out like Discord's (creation time in the top bits)."""

    def __init__(self) -> None:
        self._last = 0

    def __call__(self) -> int:
        """Return a new snowflake whose timestamp is now."""
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        self._last = max(candidate, self._last + 1)
        return self._last

    def on_shard(self, shard_id: int, shard_count: int) -> int:
        """Return a new snowflake that shard `shard_id` of `shard_count` receives as a guild id.

        Discord routes a guild to shard `(guild_id >> 22) % shard_count`: the timestamp is moved
        on by at most `shard_count - 1` milliseconds to land there.
        """
        if not 0 <= shard_id < shard_count:
            raise ValueError(f"shard {shard_id} is not one of {shard_count}")
        stamp = max(self() >> 22, 0)
        stamp += (shard_id - stamp) % shard_count
        self._last = max(stamp << 22, self._last + 1)
        return self._last


def shard_of(guild_id: int | None, shard_count: int) -> int:
    """The shard that receives a guild's events; events outside guilds (DMs) go to shard 0."""
    return 0 if guild_id is None else (guild_id >> 22) % shard_count


def iso_timestamp(unix: float | None = None) -> str:
    """Return an ISO 8601 UTC timestamp as Discord writes it."""
    moment = datetime.datetime.fromtimestamp(time.time() if unix is None else unix, datetime.UTC)
    return moment.isoformat()


def snowflake(value: int | str | Payload) -> int:
    """Return the integer id of a snowflake given as int, str or a payload with an ``id``."""
    if isinstance(value, dict):
        return int(value["id"])
    return int(value)


@dataclass(frozen=True)
class UploadedFile:
    """One file part of a multipart request."""

    field: str
    index: int | None
    filename: str
    content_type: str
    data: bytes


@dataclass
class RecordedRequest:
    """One HTTP request the stand-in received, with its outcome."""

    method: str
    path: str
    query: dict[str, str]
    json: Any
    files: list[UploadedFile]
    at: float
    status: int = 0


@dataclass(frozen=True)
class StoredAttachment:
    """An uploaded file as the CDN keeps it."""

    id: int
    channel_id: int
    filename: str
    content_type: str | None
    data: bytes
    width: int | None = None
    height: int | None = None
    description: str | None = None

    @property
    def size(self) -> int:
        """Return the size in bytes."""
        return len(self.data)

    def path(self) -> str:
        """Return the CDN path that serves this attachment."""
        return f"/attachments/{self.channel_id}/{self.id}/{self.filename}"

    def payload(self, cdn_base: str) -> Payload:
        """Return the attachment object Discord puts in messages and resolved data."""
        url = cdn_base + self.path()
        data: Payload = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": url,
            "proxy_url": url,
            "flags": 0,
        }
        if self.content_type is not None:
            data["content_type"] = self.content_type
        if self.width is not None and self.height is not None:
            data["width"] = self.width
            data["height"] = self.height
        if self.description is not None:
            data["description"] = self.description
        return data


def guess_content_type(filename: str, declared: str | None = None) -> str | None:
    """Return the MIME type Discord would report for a file, guessed from its name."""
    guessed, _ = mimetypes.guess_type(filename)
    if guessed is not None:
        return guessed
    if declared and declared != "application/octet-stream":
        return declared
    return None


def image_size(data: bytes) -> tuple[int, int] | None:
    """Return (width, height) of an image, or None if the bytes are not a readable image."""
    from PIL import Image

    try:
        # Only the header is read; bomb warnings are irrelevant for reporting a size.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Exception:
        return None


def make_attachment(
    attachment_id: int,
    channel_id: int,
    filename: str,
    data: bytes,
    *,
    declared_type: str | None = None,
    description: str | None = None,
) -> StoredAttachment:
    """Return a stored attachment with content type and, for images, dimensions filled in."""
    content_type = guess_content_type(filename, declared_type)
    size = image_size(data) if content_type is None or content_type.startswith("image/") else None
    return StoredAttachment(
        id=attachment_id,
        channel_id=channel_id,
        filename=filename,
        content_type=content_type,
        data=data,
        width=size[0] if size else None,
        height=size[1] if size else None,
        description=description,
    )


@dataclass(frozen=True)
class MessageVersion:
    """One state of a message: after its creation or after one edit."""

    at: float
    content: str
    attachments: tuple[StoredAttachment, ...]
    components: list[Payload]
    embeds: list[Payload]
    flags: int


@dataclass(eq=False)
class MessageRecord:
    """A message as the stand-in stores it."""

    id: int
    channel_id: int
    guild_id: int | None
    author: Payload
    content: str
    created: float
    type: int = 0
    flags: int = 0
    attachments: list[StoredAttachment] = field(default_factory=list)
    components: list[Payload] = field(default_factory=list)
    embeds: list[Payload] = field(default_factory=list)
    sticker_items: list[Payload] = field(default_factory=list)
    reference: Payload | None = None
    webhook_id: int | None = None
    interaction_metadata: Payload | None = None
    edited_timestamp: str | None = None
    thread_id: int | None = None
    reactions: dict[str, Payload] = field(default_factory=dict)
    nonce: str | int | None = None
    timestamp: str = field(default_factory=iso_timestamp)
    aged: float = 0.0
    deleted: bool = False
    versions: list[MessageVersion] = field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        """Return whether only the invoking user can see this message."""
        return bool(self.flags & FLAG_EPHEMERAL)

    def age(self) -> float:
        """Return how many seconds old the message is, counting any ageing by the driver."""
        return time.monotonic() - self.created + self.aged

    def snapshot(self) -> None:
        """Record the current state as a new version."""
        self.versions.append(
            MessageVersion(
                at=time.monotonic(),
                content=self.content,
                attachments=tuple(self.attachments),
                components=self.components,
                embeds=self.embeds,
                flags=self.flags,
            )
        )


@dataclass(eq=False)
class Interaction:
    """An interaction the driver sent, and what the bot answered."""

    id: int
    token: str
    type: int
    data: Payload
    payload: Payload
    channel_id: int
    guild_id: int | None
    user: Payload
    created: float = field(default_factory=time.monotonic)
    response_type: int | None = None
    responded_at: float | None = None
    original_message_id: int | None = None
    followup_ids: list[int] = field(default_factory=list)
    modal: Payload | None = None
    choices: list[Payload] | None = None
    error: Payload | None = None
    aged: float = 0.0

    def age(self) -> float:
        """Return how many seconds old the interaction is, counting any ageing by the driver."""
        return time.monotonic() - self.created + self.aged

    def message_ids(self) -> set[int]:
        """Return the ids of every message this interaction's token may touch."""
        ids = set(self.followup_ids)
        if self.original_message_id is not None:
            ids.add(self.original_message_id)
        return ids


class InteractionRefused(Exception):
    """The bot's answer to an interaction was refused by the stand-in, as Discord would refuse it."""

    def __init__(self, interaction: Interaction) -> None:
        super().__init__(f"interaction {interaction.id} refused: {interaction.error}")
        self.interaction = interaction


# ---------------------------------------------------------------------------
# Validation of what the bot sends, with Discord's limits.
# ---------------------------------------------------------------------------


def _too_long(path: Sequence[str | int], limit: int) -> ApiError:
    return form_error(path, "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length.")


def _bad_length(path: Sequence[str | int], low: int, high: int) -> ApiError:
    return form_error(path, "BASE_TYPE_BAD_LENGTH", f"Must be between {low} and {high} in length.")


def check_length(value: Any, path: Sequence[str | int], low: int, high: int) -> None:
    """Raise a form error unless ``value`` is a string or list with length in [low, high]."""
    if value is None:
        if low > 0:
            raise form_error(path, "BASE_TYPE_REQUIRED", "This field is required")
        return
    if not isinstance(value, str | list):
        raise form_error(path, "BASE_TYPE_STRING", "Must be a string.")
    if not low <= len(value) <= high:
        raise _bad_length(path, low, high) if low > 0 else _too_long(path, high)


def iter_components(components: Sequence[Payload]) -> Iterator[Payload]:
    """Yield every component in a tree, depth first (rows, containers, sections, labels)."""
    for component in components:
        yield component
        yield from iter_components(component.get("components") or [])
        for key in ("accessory", "component"):
            child = component.get(key)
            if isinstance(child, dict):
                yield from iter_components([child])


def validate_components(components: Any, *, v2: bool) -> None:
    """Raise a form error if message components break Discord's limits."""
    if components is None:
        return
    if not isinstance(components, list):
        raise form_error(
            ["components"], "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType"
        )
    if not v2:
        check_length(components, ["components"], 0, 5)
    seen: set[str] = set()
    for index, component in enumerate(components):
        path: list[str | int] = ["components", index]
        if not v2 and component.get("type") != ACTION_ROW:
            raise form_error(
                [*path, "type"], "UNION_TYPE_CHOICES", 'Value of field "type" must be 1.'
            )
        _validate_component(component, path, seen)
    if v2 and sum(1 for _ in iter_components(components)) > 40:
        raise _too_long(["components"], 40)


def _validate_component(component: Payload, path: list[str | int], seen: set[str]) -> None:
    kind = component.get("type")
    custom_id = component.get("custom_id")
    if custom_id is not None:
        check_length(custom_id, [*path, "custom_id"], 1, 100)
        if custom_id in seen:
            raise form_error(
                [*path, "custom_id"],
                "COMPONENT_CUSTOM_ID_DUPLICATED",
                "Component custom id cannot be duplicated",
            )
        seen.add(custom_id)
    if kind == ACTION_ROW:
        children = component.get("components") or []
        check_length(children, [*path, "components"], 1, 5)
        if any(child.get("type") in SELECT_TYPES for child in children) and len(children) > 1:
            raise form_error(
                [*path, "components"],
                "COMPONENT_LAYOUT_WIDTH_EXCEEDED",
                "The specified component exceeds the maximum width",
            )
        for index, child in enumerate(children):
            if child.get("type") == TEXT_INPUT:
                raise form_error(
                    [*path, "components", index, "type"],
                    "COMPONENT_TYPE_INVALID",
                    "Text inputs only go in modals",
                )
            _validate_component(child, [*path, "components", index], seen)
        return
    if kind == BUTTON:
        style = component.get("style")
        if style == 5:
            if not component.get("url") or custom_id is not None:
                raise form_error(
                    [*path, "url"],
                    "BUTTON_COMPONENT_URL_REQUIRED",
                    "A link button needs a url and no custom_id",
                )
        elif style == 6:
            if not component.get("sku_id"):
                raise form_error([*path, "sku_id"], "BASE_TYPE_REQUIRED", "This field is required")
        elif custom_id is None:
            raise form_error([*path, "custom_id"], "BASE_TYPE_REQUIRED", "This field is required")
        if component.get("label") is not None:
            check_length(component["label"], [*path, "label"], 0, 80)
        return
    if kind in SELECT_TYPES:
        if custom_id is None:
            raise form_error([*path, "custom_id"], "BASE_TYPE_REQUIRED", "This field is required")
        if kind == 3:
            options = component.get("options") or []
            check_length(options, [*path, "options"], 1, 25)
            for index, option in enumerate(options):
                check_length(option.get("label"), [*path, "options", index, "label"], 1, 100)
                check_length(option.get("value"), [*path, "options", index, "value"], 1, 100)
                if option.get("description") is not None:
                    check_length(
                        option["description"], [*path, "options", index, "description"], 0, 100
                    )
        for key in ("min_values", "max_values"):
            value = component.get(key)
            if value is not None and not 0 <= value <= 25:
                raise form_error(
                    [*path, key], "NUMBER_TYPE_MAX", "int value should be less than or equal to 25."
                )
        if component.get("placeholder") is not None:
            check_length(component["placeholder"], [*path, "placeholder"], 0, 150)
        return
    for key in ("components",):
        for index, child in enumerate(component.get(key) or []):
            _validate_component(child, [*path, key, index], seen)
    for key in ("accessory", "component"):
        child = component.get(key)
        if isinstance(child, dict):
            _validate_component(child, [*path, key], seen)


def validate_embeds(embeds: Any) -> None:
    """Raise a form error if embeds break Discord's limits."""
    if embeds is None:
        return
    check_length(embeds, ["embeds"], 0, 10)
    total = 0
    for index, embed in enumerate(embeds):
        path: list[str | int] = ["embeds", index]
        for key, limit in (("title", 256), ("description", 4096)):
            if embed.get(key) is not None:
                check_length(embed[key], [*path, key], 0, limit)
                total += len(embed[key])
        for part, key, limit in (("footer", "text", 2048), ("author", "name", 256)):
            inner = embed.get(part)
            if isinstance(inner, dict):
                check_length(inner.get(key), [*path, part, key], 1, limit)
                total += len(inner[key])
        fields = embed.get("fields") or []
        check_length(fields, [*path, "fields"], 0, 25)
        for field_index, embed_field in enumerate(fields):
            check_length(embed_field.get("name"), [*path, "fields", field_index, "name"], 1, 256)
            check_length(embed_field.get("value"), [*path, "fields", field_index, "value"], 1, 1024)
            total += len(embed_field["name"]) + len(embed_field["value"])
    if total > 6000:
        raise form_error(
            ["embeds"], "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
        )


def validate_message_fields(body: Payload) -> None:
    """Raise a form error if content, embeds or components break Discord's limits."""
    content = body.get("content")
    if content is not None:
        if not isinstance(content, str):
            raise form_error(["content"], "BASE_TYPE_STRING", "Must be a string.")
        check_length(content, ["content"], 0, 2000)
    validate_embeds(body.get("embeds"))
    validate_components(
        body.get("components"), v2=bool((body.get("flags") or 0) & FLAG_COMPONENTS_V2)
    )


def validate_choices(choices: Any) -> list[Payload]:
    """Return autocomplete choices, or raise a form error if they break Discord's limits."""
    if not isinstance(choices, list):
        raise form_error(["data", "choices"], "BASE_TYPE_REQUIRED", "This field is required")
    check_length(choices, ["data", "choices"], 0, 25)
    for index, choice in enumerate(choices):
        check_length(choice.get("name"), ["data", "choices", index, "name"], 1, 100)
        value = choice.get("value")
        if isinstance(value, str):
            check_length(value, ["data", "choices", index, "value"], 1, 100)
    return choices


def validate_modal(data: Any) -> Payload:
    """Return the modal a bot opened, or raise a form error if it breaks Discord's limits."""
    if not isinstance(data, dict):
        raise form_error(["data"], "BASE_TYPE_REQUIRED", "This field is required")
    check_length(data.get("custom_id"), ["data", "custom_id"], 1, 100)
    check_length(data.get("title"), ["data", "title"], 1, 45)
    components = data.get("components") or []
    check_length(components, ["data", "components"], 1, 5)
    for index, component in enumerate(components):
        path: list[str | int] = ["data", "components", index]
        if component.get("type") == ACTION_ROW:
            children = component.get("components") or []
            check_length(children, [*path, "components"], 1, 1)
            inner, inner_path = children[0], [*path, "components", 0]
        elif component.get("type") == LABEL:
            check_length(component.get("label"), [*path, "label"], 1, 45)
            inner, inner_path = component.get("component") or {}, [*path, "component"]
        else:
            # Text displays and other read-only parts carry no input.
            continue
        check_length(inner.get("custom_id"), [*inner_path, "custom_id"], 1, 100)
        if inner.get("type") == TEXT_INPUT:
            if component.get("type") == ACTION_ROW:
                check_length(inner.get("label"), [*inner_path, "label"], 1, 45)
            for key, low, high in (("min_length", 0, 4000), ("max_length", 1, 4000)):
                value = inner.get(key)
                if value is not None and not low <= value <= high:
                    raise form_error(
                        [*inner_path, key], "NUMBER_TYPE_MAX", f"Must be between {low} and {high}."
                    )
            if inner.get("value") is not None:
                check_length(inner["value"], [*inner_path, "value"], 0, 4000)
            if inner.get("placeholder") is not None:
                check_length(inner["placeholder"], [*inner_path, "placeholder"], 0, 100)
        elif inner.get("type") not in SELECT_TYPES and inner.get("type") != 19:
            raise form_error(
                [*inner_path, "type"],
                "COMPONENT_TYPE_INVALID",
                "Component type is not allowed in a modal",
            )
    return data


COMMAND_NAME = re.compile(r"^[-_'\w]{1,32}$")
# discord-api-docs reference.mdx, "Locales": the only keys a *_localizations map may have.
LOCALES = frozenset(
    {
        "id", "da", "de", "en-GB", "en-US", "es-ES", "es-419", "fr", "hr", "it", "lt", "hu",
        "nl", "no", "pl", "pt-BR", "ro", "fi", "sv-SE", "vi", "tr", "cs", "el", "bg", "ru",
        "uk", "hi", "th", "zh-CN", "ja", "zh-TW", "ko",
    }
)  # fmt: skip
# interactions/application-commands.mdx: name, description and value of a command, its
# options and choices, counting the longest of each field's localizations, at most 8000.
COMMAND_CHARACTERS = 8000


def _check_locales(node: Payload, path: list[str | int]) -> None:
    for key in ("name_localizations", "description_localizations"):
        for locale in node.get(key) or {}:
            if locale not in LOCALES:
                raise form_error(
                    [*path, key, locale], "LOCALE_INVALID", f"Invalid locale: {locale!r}"
                )


def _longest(node: Payload, key: str) -> int:
    values = [node.get(key), *(node.get(f"{key}_localizations") or {}).values()]
    return max((len(str(v)) for v in values if v is not None), default=0)


def command_characters(node: Payload) -> int:
    """The characters of a command counted against the 8000 limit (longest localization)."""
    total = _longest(node, "name") + _longest(node, "description")
    for option in node.get("options") or []:
        total += command_characters(option)
    for choice in node.get("choices") or []:
        total += _longest(choice, "name")
        if isinstance(choice.get("value"), str):
            total += len(choice["value"])
    return total


def validate_commands(commands: Any) -> list[Payload]:
    """Return synced commands, or raise a form error if they break Discord's limits."""
    if not isinstance(commands, list):
        raise form_error([], "LIST_TYPE_CONVERT", "Only iterables may be used in a ListType")
    check_length(commands, [], 0, 100)
    seen: set[tuple[int, str]] = set()
    for index, command in enumerate(commands):
        kind = command.get("type", 1)
        name = command.get("name") or ""
        key = (kind, name)
        if key in seen:
            raise form_error(
                [index, "name"],
                "APPLICATION_COMMANDS_DUPLICATE_NAME",
                f"Application command names must be unique: {name}",
            )
        seen.add(key)
        _validate_command_node(command, [index], chat_input=kind == 1)
        if command_characters(command) > COMMAND_CHARACTERS:
            raise form_error(
                [index],
                "APPLICATION_COMMAND_TOO_LARGE",
                f"Command exceeds maximum size ({COMMAND_CHARACTERS})",
            )
    return commands


def _validate_command_node(node: Payload, path: list[str | int], *, chat_input: bool) -> None:
    name = node.get("name") or ""
    _check_locales(node, path)
    if chat_input and (not COMMAND_NAME.match(name) or name != name.lower()):
        raise form_error(
            [*path, "name"],
            "APPLICATION_COMMAND_INVALID_NAME",
            f"Command name is invalid: {name!r}",
        )
    for locale, value in (node.get("name_localizations") or {}).items():
        check_length(value, [*path, "name_localizations", locale], 1, 32)
    if chat_input:
        check_length(node.get("description"), [*path, "description"], 1, 100)
        for locale, value in (node.get("description_localizations") or {}).items():
            check_length(value, [*path, "description_localizations", locale], 1, 100)
    options = node.get("options") or []
    check_length(options, [*path, "options"], 0, 25)
    names: set[str] = set()
    optional_seen = False
    for index, option in enumerate(options):
        option_path = [*path, "options", index]
        if option.get("name") in names:
            raise form_error(
                [*option_path, "name"],
                "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS",
                "Option names must be unique",
            )
        names.add(option.get("name"))
        if option.get("type") in (1, 2):
            _validate_command_node(option, option_path, chat_input=True)
            continue
        if option.get("required"):
            if optional_seen:
                raise form_error(
                    [*option_path, "required"],
                    "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                    "Required options must be placed before non-required options",
                )
        else:
            optional_seen = True
        _validate_command_node(option, option_path, chat_input=True)
        choices = option.get("choices") or []
        check_length(choices, [*option_path, "choices"], 0, 25)
        if choices and option.get("autocomplete"):
            raise form_error(
                [*option_path, "autocomplete"],
                "APPLICATION_COMMAND_AUTOCOMPLETE_INVALID",
                "Autocomplete cannot be used with choices",
            )
        for choice_index, choice in enumerate(choices):
            _check_locales(choice, [*option_path, "choices", choice_index])
            check_length(
                choice.get("name"), [*option_path, "choices", choice_index, "name"], 1, 100
            )
            if isinstance(choice.get("value"), str):
                check_length(
                    choice["value"], [*option_path, "choices", choice_index, "value"], 1, 100
                )


_COMMANDS_PATH = re.compile(r"/applications/\d+(/guilds/\d+)?/commands")
_MESSAGE_PATH = re.compile(r"/channels/\d+/messages(/\d+)?|/webhooks/\d+/[^/]+(/messages/[^/]+)?")
_CALLBACK_PATH = re.compile(r"/interactions/\d+/[^/]+/callback")


def check_request_body(method: str, path: str, body: Any) -> ApiError | None:
    """The form error Discord gives for a request's body alone, or None (state not looked at).

    Commands, message content, embeds and components, modals and autocomplete choices: the
    rules the REST routes apply, for re-checking requests recorded elsewhere.
    """
    try:
        if method == "PUT" and _COMMANDS_PATH.fullmatch(path):
            validate_commands(body)
        elif method in ("POST", "PATCH") and _MESSAGE_PATH.fullmatch(path):
            validate_message_fields(body if isinstance(body, dict) else {})
        elif method == "POST" and _CALLBACK_PATH.fullmatch(path) and isinstance(body, dict):
            data = body.get("data")
            if body.get("type") in (4, 7) and isinstance(data, dict):
                validate_message_fields(data)
            elif body.get("type") == 8:
                validate_choices((data or {}).get("choices"))
            elif body.get("type") == 9:
                validate_modal(data)
    except ApiError as error:
        return error
    return None
