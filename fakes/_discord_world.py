"""The state of the Discord stand-in: users, guilds, channels, messages, commands, interactions."""

from __future__ import annotations

import asyncio
import copy
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fakes._discord_gateway import Gateway
from fakes._discord_model import (
    ADMIN_PERMISSIONS,
    ALL_PERMISSIONS,
    BOT_PERMISSIONS,
    CHANNEL_ANNOUNCEMENT,
    CHANNEL_DM,
    CHANNEL_TEXT,
    DEFAULT_UPLOAD_LIMIT,
    EVERYONE_PERMISSIONS,
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    PERMISSION_ALIASES,
    PERMISSIONS,
    PRIVILEGED_APP_FLAGS,
    PRIVILEGED_INTENTS,
    SETTABLE_MESSAGE_FLAGS,
    THREAD_TYPES,
    ApiError,
    Interaction,
    MessageRecord,
    MessageVersion,
    Payload,
    RecordedRequest,
    SnowflakeFactory,
    StoredAttachment,
    UploadedFile,
    form_error,
    iso_timestamp,
    iter_components,
    make_attachment,
    not_found,
    snowflake,
    validate_message_fields,
)

Snowflake = int | str
UserRef = Payload | Snowflake

MAX_ATTACHMENTS = 10
USER_MENTION = re.compile(r"<@!?(\d+)>")
ROLE_MENTION = re.compile(r"<@&(\d+)>")


@dataclass(eq=False)
class GuildState:
    """A guild with its roles, members and upload limit."""

    data: Payload
    roles: list[Payload]
    members: dict[int, Payload]
    upload_limit: int
    admin_role_id: int
    joined_at: str


def premium_tier_for(upload_limit: int) -> int:
    """Return the boost tier whose upload limit discord.py would derive for this limit."""
    if upload_limit >= 100 * 1024 * 1024:
        return 3
    if upload_limit >= 50 * 1024 * 1024:
        return 2
    return 0


class World:
    """Everything the stand-in knows, with builders for the test driver and helpers for the routes."""

    def __init__(
        self,
        *,
        token: str,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        privileged_intents: Iterable[str] = tuple(PRIVILEGED_INTENTS),
    ) -> None:
        self.token = token
        self.default_upload_limit = upload_limit
        self.privileged_intents = frozenset(privileged_intents)
        unknown = self.privileged_intents - PRIVILEGED_INTENTS.keys()
        if unknown:
            raise ValueError(
                f"unknown privileged intents {sorted(unknown)}; known: {sorted(PRIVILEGED_INTENTS)}"
            )
        self.new_id = SnowflakeFactory()
        self.http_base = "http://127.0.0.1:0"
        self.gateway_url = "ws://127.0.0.1:0/gateway"
        # What GET /gateway/bot recommends: the shard count, and how many shards may identify
        # at once (one per bucket `shard_id % max_concurrency`, every 5 seconds).
        self.shards = 1
        self.max_concurrency = 1
        self.gateway = Gateway(self)
        self.requests: list[RecordedRequest] = []
        self.unhandled: list[str] = []
        self.internal_errors: list[str] = []
        self.interactions: list[Interaction] = []
        self._users: dict[int, Payload] = {}
        self._admins: set[int] = set()
        self._guilds: dict[int, GuildState] = {}
        self._channels: dict[int, Payload] = {}
        self._dm_channels: dict[int, int] = {}
        self._messages: dict[int, MessageRecord] = {}
        self._attachments: dict[int, StoredAttachment] = {}
        self._global_commands: list[Payload] = []
        self._guild_commands: dict[int, list[Payload]] = {}
        self._denied: dict[int, int] = {}
        self._interactions_by_id: dict[int, Interaction] = {}
        self._interactions_by_token: dict[str, Interaction] = {}
        self._wakeup = asyncio.Event()

        self.application_id: int = self.new_id()
        self.bot_user: Payload = self._new_user("Test Bot", bot=True)
        self.admin: Payload = self._new_user("admin")
        self._admins.add(snowflake(self.admin))
        self.guild: Payload = self.add_guild("Test Server")
        self.channel: Payload = self.guild_channels(snowflake(self.guild))[0]
        self.user: Payload = self.add_user("alice")

    # -- change notification ----------------------------------------------

    def notify(self) -> None:
        """Wake every wait_for() so it re-checks its predicate."""
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    def emit(self, event: str, data: Payload) -> None:
        """Dispatch a gateway event to every session that may see it."""
        # Frames are serialised later by the socket writers; a copy keeps later edits out of them.
        self._emit_own(event, copy.deepcopy(data))

    def _emit_own(self, event: str, data: Payload) -> None:
        """`emit` for a payload nothing else holds (a fresh copy already)."""
        self.gateway.dispatch(event, data)
        self.notify()

    # -- builders -----------------------------------------------------------

    def _new_user(self, name: str, *, bot: bool = False) -> Payload:
        user: Payload = {
            "id": str(self.new_id()),
            "username": name,
            "discriminator": "0",
            "global_name": None if bot else name,
            "avatar": None,
            "bot": bot,
            "system": False,
            "public_flags": 0,
            "flags": 0,
            "banner": None,
            "accent_color": None,
            "avatar_decoration_data": None,
        }
        self._users[snowflake(user)] = user
        return user

    def _role(
        self, role_id: int, name: str, permissions: int, position: int, **extra: Any
    ) -> Payload:
        return {
            "id": str(role_id),
            "name": name,
            "color": 0,
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": position,
            "permissions": str(permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
            **extra,
        }

    def _member(self, guild: GuildState, user: Payload, roles: Sequence[int]) -> Payload:
        member: Payload = {
            "user": user,
            "nick": None,
            "avatar": None,
            "banner": None,
            "roles": [str(role) for role in roles],
            "joined_at": iso_timestamp(),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "flags": 0,
            "pending": False,
            "communication_disabled_until": None,
        }
        guild.members[snowflake(user)] = member
        return member

    def add_guild(
        self,
        name: str,
        *,
        locale: str = "en-US",
        upload_limit: int | None = None,
        shard: tuple[int, int] | None = None,
    ) -> Payload:
        """Create a guild with roles, the bot, every user as a member and a "general" channel.

        `shard` = (id, count): an id that this shard of that many receives (sharding tests).
        """
        guild_id = self.new_id.on_shard(*shard) if shard is not None else self.new_id()
        limit = upload_limit if upload_limit is not None else self.default_upload_limit
        data: Payload = {
            "id": str(guild_id),
            "name": name,
            "icon": None,
            "splash": None,
            "discovery_splash": None,
            "banner": None,
            "description": None,
            "owner_id": self.admin["id"],
            "afk_channel_id": None,
            "afk_timeout": 300,
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "features": [],
            "mfa_level": 0,
            "system_channel_id": None,
            "system_channel_flags": 0,
            "rules_channel_id": None,
            "public_updates_channel_id": None,
            "safety_alerts_channel_id": None,
            "vanity_url_code": None,
            "premium_tier": premium_tier_for(limit),
            "premium_subscription_count": 0,
            "preferred_locale": locale,
            "nsfw_level": 0,
            "premium_progress_bar_enabled": False,
            "max_members": 500000,
            "max_video_channel_users": 25,
            "application_id": None,
        }
        bot_role_id = self.new_id()
        admin_role_id = self.new_id()
        guild = GuildState(
            data=data,
            roles=[
                self._role(guild_id, "@everyone", EVERYONE_PERMISSIONS, 0),
                self._role(
                    bot_role_id,
                    self.bot_user["username"],
                    BOT_PERMISSIONS,
                    1,
                    managed=True,
                    tags={"bot_id": self.bot_user["id"]},
                ),
                self._role(admin_role_id, "Admin", ADMIN_PERMISSIONS, 2),
            ],
            members={},
            upload_limit=limit,
            admin_role_id=admin_role_id,
            joined_at=iso_timestamp(),
        )
        self._guilds[guild_id] = guild
        self._member(guild, self.bot_user, [bot_role_id])
        for user_id, user in self._users.items():
            if not user["bot"]:
                self._member(guild, user, [admin_role_id] if user_id in self._admins else [])
        self._new_text_channel(guild_id, "general")
        self.emit("GUILD_CREATE", self.guild_create_payload(guild_id))
        return data

    def add_user(
        self, name: str, *, admin: bool = False, roles: Sequence[Snowflake] = ()
    ) -> Payload:
        """Create a user who is a member of every guild (with the Admin role there if ``admin``)."""
        user = self._new_user(name)
        user_id = snowflake(user)
        if admin:
            self._admins.add(user_id)
        wanted = {snowflake(role) for role in roles}
        for guild_id, guild in self._guilds.items():
            role_ids = [int(role["id"]) for role in guild.roles if int(role["id"]) in wanted]
            if admin:
                role_ids.append(guild.admin_role_id)
            member = self._member(guild, user, role_ids)
            self.emit("GUILD_MEMBER_ADD", {**member, "guild_id": str(guild_id)})
        return user

    def add_role(
        self, name: str, guild_id: Snowflake | None = None, *, permissions: int = 0
    ) -> Payload:
        """Create a role in a guild (the default guild unless given)."""
        guild_id = snowflake(guild_id) if guild_id is not None else snowflake(self.guild)
        guild = self._guilds[guild_id]
        role = self._role(self.new_id(), name, permissions, len(guild.roles))
        guild.roles.append(role)
        self.emit("GUILD_ROLE_CREATE", {"guild_id": str(guild_id), "role": role})
        return role

    def add_channel(self, name: str, *, guild_id: Snowflake | None = None) -> Payload:
        """Create a text channel in a guild (the default guild unless given)."""
        channel = self._new_text_channel(
            snowflake(guild_id) if guild_id is not None else snowflake(self.guild), name
        )
        self.emit("CHANNEL_CREATE", channel)
        return channel

    def _new_text_channel(self, guild_id: int, name: str) -> Payload:
        channel: Payload = {
            "id": str(self.new_id()),
            "type": CHANNEL_TEXT,
            "guild_id": str(guild_id),
            "name": name,
            "position": len(self.guild_channels(guild_id)),
            "permission_overwrites": [],
            "parent_id": None,
            "topic": None,
            "nsfw": False,
            "rate_limit_per_user": 0,
            "last_message_id": None,
            "last_pin_timestamp": None,
            "flags": 0,
            "default_auto_archive_duration": 1440,
            "default_thread_rate_limit_per_user": 0,
        }
        self._channels[snowflake(channel)] = channel
        return channel

    def dm_channel(self, user: UserRef) -> Payload:
        """Return the bot's DM channel with a user, creating it on first use."""
        user_id = snowflake(user)
        recipient = self.user_or_404(user_id)
        channel_id = self._dm_channels.get(user_id)
        if channel_id is None:
            channel: Payload = {
                "id": str(self.new_id()),
                "type": CHANNEL_DM,
                "last_message_id": None,
                "recipients": [recipient],
                "flags": 0,
            }
            channel_id = snowflake(channel)
            self._channels[channel_id] = channel
            self._dm_channels[user_id] = channel_id
        return self._channels[channel_id]

    def create_thread(
        self,
        parent_id: int,
        name: str,
        *,
        thread_type: int,
        owner_id: int,
        auto_archive_duration: int = 1440,
        rate_limit_per_user: int = 0,
        invitable: bool = True,
        thread_id: int | None = None,
    ) -> Payload:
        """Create a thread in a channel and dispatch THREAD_CREATE (newly_created)."""
        parent = self._channels[parent_id]
        now = iso_timestamp()
        thread: Payload = {
            "id": str(thread_id if thread_id is not None else self.new_id()),
            "type": thread_type,
            "guild_id": parent["guild_id"],
            "parent_id": parent["id"],
            "owner_id": str(owner_id),
            "name": name,
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "rate_limit_per_user": rate_limit_per_user,
            "flags": 0,
            "applied_tags": [],
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": auto_archive_duration,
                "archive_timestamp": now,
                "locked": False,
                "invitable": invitable,
                "create_timestamp": now,
            },
            "member": {
                "id": None,
                "user_id": self.bot_user["id"],
                "join_timestamp": now,
                "flags": 0,
            },
        }
        thread["member"]["id"] = thread["id"]
        self._channels[snowflake(thread)] = thread
        self.emit("THREAD_CREATE", {**thread, "newly_created": True})
        return thread

    # -- lookups ------------------------------------------------------------

    def guild_ids(self) -> list[int]:
        """Return every guild id, oldest first."""
        return list(self._guilds)

    def guild_state(self, guild_id: Snowflake) -> GuildState:
        """Return a guild's state, or raise 404 Unknown Guild."""
        try:
            return self._guilds[snowflake(guild_id)]
        except KeyError:
            raise not_found(10004, "Guild") from None

    def guild_channels(self, guild_id: Snowflake) -> list[Payload]:
        """Return a guild's channels (not threads), oldest first."""
        gid = str(snowflake(guild_id))
        return [
            c
            for c in self._channels.values()
            if c.get("guild_id") == gid and c["type"] not in THREAD_TYPES
        ]

    def guild_members(self, guild_id: Snowflake) -> list[Payload]:
        """Return a guild's members, with their users."""
        return list(self.guild_state(guild_id).members.values())

    def guild_payload(self, guild_id: Snowflake) -> Payload:
        """Return the guild object of GET /guilds/{id}."""
        guild = self.guild_state(guild_id)
        return {**guild.data, "roles": guild.roles, "emojis": [], "stickers": []}

    def guild_create_payload(self, guild_id: Snowflake) -> Payload:
        """Return a full GUILD_CREATE payload: roles, members, channels, active threads."""
        guild = self.guild_state(guild_id)
        gid = guild.data["id"]
        threads = [
            c
            for c in self._channels.values()
            if c.get("guild_id") == gid
            and c["type"] in THREAD_TYPES
            and not c["thread_metadata"]["archived"]
        ]
        return copy.deepcopy(
            {
                **self.guild_payload(guild_id),
                "unavailable": False,
                "large": False,
                "lazy": True,
                "joined_at": guild.joined_at,
                "member_count": len(guild.members),
                "members": list(guild.members.values()),
                "channels": self.guild_channels(guild_id),
                "threads": threads,
                "presences": [],
                "voice_states": [],
                "stage_instances": [],
                "guild_scheduled_events": [],
                "soundboard_sounds": [],
            }
        )

    def application_flags(self) -> int:
        """Return the application flags, which say which privileged intents are approved."""
        flags = 0
        for name in self.privileged_intents:
            flags |= PRIVILEGED_APP_FLAGS[name]
        return flags

    def user_or_404(self, user_id: Snowflake) -> Payload:
        """Return a user, or raise 404 Unknown User."""
        try:
            return self._users[snowflake(user_id)]
        except KeyError:
            raise not_found(10013, "User") from None

    def channel_or_404(self, channel_id: Snowflake) -> Payload:
        """Return a channel or thread, or raise 404 Unknown Channel."""
        try:
            return self._channels[snowflake(channel_id)]
        except KeyError:
            raise not_found(10003, "Channel") from None

    def message_or_404(
        self, message_id: Snowflake, channel_id: Snowflake | None = None
    ) -> MessageRecord:
        """Return a live message (in that channel, if given), or raise 404 Unknown Message."""
        record = self._messages.get(snowflake(message_id))
        if record is None or record.deleted:
            raise not_found(10008, "Message")
        if channel_id is not None and record.channel_id != snowflake(channel_id):
            raise not_found(10008, "Message")
        return record

    def stored_message(self, message_id: Snowflake | None) -> MessageRecord | None:
        """Return a stored message (even a deleted or ephemeral one), or None."""
        return None if message_id is None else self._messages.get(snowflake(message_id))

    def remove_channel(self, channel_id: int) -> None:
        """Forget a deleted channel or thread (its messages stay readable by the driver)."""
        self._channels.pop(channel_id, None)

    def guild_id_of(self, channel: Payload) -> int | None:
        """Return the id of the guild a channel belongs to, or None for DMs."""
        guild_id = channel.get("guild_id")
        return int(guild_id) if guild_id is not None else None

    def upload_limit(self, channel_id: int) -> int:
        """Return the upload size limit for a channel (its guild's, or the default in DMs)."""
        guild_id = self.guild_id_of(self._channels[channel_id])
        return (
            self._guilds[guild_id].upload_limit
            if guild_id is not None
            else self.default_upload_limit
        )

    def find_interaction(self, key: Interaction | Snowflake) -> Interaction:
        """Return an interaction by object, id or token."""
        if isinstance(key, Interaction):
            return key
        if isinstance(key, str) and key in self._interactions_by_token:
            return self._interactions_by_token[key]
        try:
            return self._interactions_by_id[int(key)]
        except (KeyError, ValueError):
            raise KeyError(f"no interaction with id or token {key!r}") from None

    # -- permissions -------------------------------------------------------

    def permissions(self, user_id: int, channel_id: int) -> int:
        """Return a user's permissions in a channel (thread permissions come from the parent)."""
        channel = self._channels[channel_id]
        guild_id = self.guild_id_of(channel)
        if guild_id is None:
            return EVERYONE_PERMISSIONS
        guild = self._guilds[guild_id]
        if str(user_id) == guild.data["owner_id"]:
            return ALL_PERMISSIONS
        member = guild.members.get(user_id)
        roles = set(member["roles"]) if member else set()
        bits = 0
        for role in guild.roles:
            if role["id"] == guild.data["id"] or role["id"] in roles:
                bits |= int(role["permissions"])
        if bits & PERMISSIONS["administrator"]:
            return ALL_PERMISSIONS
        denied = self._denied.get(channel_id, 0)
        if channel.get("parent_id") is not None:
            denied |= self._denied.get(int(channel["parent_id"]), 0)
        if str(user_id) == self.bot_user["id"]:
            bits &= ~denied
        return bits

    def bot_can(self, channel_id: int, permission: str) -> bool:
        """Return whether the bot holds a permission in a channel."""
        return bool(
            self.permissions(snowflake(self.bot_user), channel_id) & PERMISSIONS[permission]
        )

    def require(self, channel_id: int, *permissions: str) -> None:
        """Raise 403 Missing Permissions unless the bot holds every permission in the channel."""
        for permission in permissions:
            if not self.bot_can(channel_id, permission):
                raise ApiError(403, 50013, "Missing Permissions")

    def deny(self, channel_id: Snowflake, permission: str) -> None:
        """Take a permission away from the bot in one channel (a member overwrite, as an admin would)."""
        names = PERMISSION_ALIASES.get(permission, (permission,))
        unknown = [name for name in names if name not in PERMISSIONS]
        if unknown:
            raise ValueError(
                f"unknown permission {permission!r}; known: {sorted([*PERMISSIONS, *PERMISSION_ALIASES])}"
            )
        channel_id = snowflake(channel_id)
        channel = self.channel_or_404(channel_id)
        bits = self._denied.get(channel_id, 0)
        for name in names:
            bits |= PERMISSIONS[name]
        self._denied[channel_id] = bits
        if channel["type"] in THREAD_TYPES or channel["type"] == CHANNEL_DM:
            return
        overwrites = [o for o in channel["permission_overwrites"] if o["id"] != self.bot_user["id"]]
        overwrites.append({"id": self.bot_user["id"], "type": 1, "allow": "0", "deny": str(bits)})
        channel["permission_overwrites"] = overwrites
        self.emit("CHANNEL_UPDATE", channel)

    # -- attachments ----------------------------------------------------------

    def new_attachment(
        self,
        channel_id: int,
        filename: str,
        data: bytes,
        *,
        declared_type: str | None = None,
        description: str | None = None,
    ) -> StoredAttachment:
        """Store bytes on the CDN and return the attachment describing them."""
        attachment = make_attachment(
            self.new_id(),
            channel_id,
            filename,
            data,
            declared_type=declared_type,
            description=description,
        )
        self._attachments[attachment.id] = attachment
        return attachment

    def cdn_file(self, attachment_id: int) -> StoredAttachment | None:
        """Return a stored attachment by id."""
        return self._attachments.get(attachment_id)

    def resolve_attachments(
        self,
        body: Payload,
        files: Sequence[UploadedFile],
        channel_id: int,
        current: Sequence[StoredAttachment],
    ) -> list[StoredAttachment]:
        """Return a message's attachments after a create or edit request.

        With an ``attachments`` list, it is the complete list: existing ids are kept, small ids
        point at ``files[n]`` parts and anything not listed is removed. Without it, existing
        attachments stay and uploaded files are added.
        """
        if len(files) > MAX_ATTACHMENTS:
            raise form_error(
                ["files"], "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_ATTACHMENTS} or fewer in length."
            )
        # The limit is per file (the interaction's attachment_size_limit), not per request.
        if any(len(f.data) > self.upload_limit(channel_id) for f in files):
            raise ApiError(413, 40005, "Request entity too large")
        uploads = {
            f.index if f.index is not None else position: f for position, f in enumerate(files)
        }
        entries = body.get("attachments")
        result: list[StoredAttachment] = []
        used: set[int] = set()
        if entries is None:
            result.extend(current)
        else:
            kept = {attachment.id: attachment for attachment in current}
            for position, entry in enumerate(entries):
                try:
                    key = int(entry["id"])
                except (KeyError, TypeError, ValueError):
                    raise form_error(
                        ["attachments", position, "id"],
                        "BASE_TYPE_REQUIRED",
                        "This field is required",
                    ) from None
                description = entry.get("description")
                if key in kept:
                    old = kept[key]
                    result.append(
                        old if description is None else replace(old, description=description)
                    )
                elif key in uploads:
                    upload = uploads[key]
                    used.add(key)
                    result.append(
                        self.new_attachment(
                            channel_id,
                            entry.get("filename") or upload.filename,
                            upload.data,
                            declared_type=upload.content_type,
                            description=description,
                        )
                    )
                else:
                    raise form_error(
                        ["attachments", position, "id"],
                        "ATTACHMENT_NOT_FOUND",
                        "Unknown attachment",
                    )
        for key, upload in uploads.items():
            if key not in used:
                result.append(
                    self.new_attachment(
                        channel_id, upload.filename, upload.data, declared_type=upload.content_type
                    )
                )
        if len(result) > MAX_ATTACHMENTS:
            raise form_error(
                ["attachments"],
                "BASE_TYPE_MAX_LENGTH",
                f"Must be {MAX_ATTACHMENTS} or fewer in length.",
            )
        return result

    # -- messages -------------------------------------------------------------

    def _number_components(self, components: list[Payload]) -> list[Payload]:
        """Return a copy of components with the numeric ``id`` Discord gives each one."""
        components = copy.deepcopy(components)
        used = {c["id"] for c in iter_components(components) if isinstance(c.get("id"), int)}
        next_id = 1
        for component in iter_components(components):
            if not isinstance(component.get("id"), int):
                while next_id in used:
                    next_id += 1
                component["id"] = next_id
                used.add(next_id)
        return components

    def create_message(
        self,
        channel_id: int,
        author: Payload,
        *,
        content: str = "",
        attachments: Sequence[StoredAttachment] = (),
        components: list[Payload] | None = None,
        embeds: list[Payload] | None = None,
        flags: int = 0,
        message_type: int = 0,
        reference: Payload | None = None,
        webhook_id: int | None = None,
        interaction_metadata: Payload | None = None,
        sticker_items: list[Payload] | None = None,
        nonce: str | int | None = None,
    ) -> MessageRecord:
        """Store a new message (recording its first version); dispatching is up to the caller."""
        channel = self._channels[channel_id]
        record = MessageRecord(
            id=self.new_id(),
            channel_id=channel_id,
            guild_id=self.guild_id_of(channel),
            author=author,
            content=content,
            created=time.monotonic(),
            type=message_type,
            flags=flags,
            attachments=list(attachments),
            components=self._number_components(components or []),
            embeds=copy.deepcopy(embeds or []),
            sticker_items=sticker_items or [],
            reference=reference,
            webhook_id=webhook_id,
            interaction_metadata=interaction_metadata,
            nonce=nonce,
        )
        record.snapshot()
        self._messages[record.id] = record
        if not record.ephemeral:
            channel["last_message_id"] = str(record.id)
            if channel["type"] in THREAD_TYPES:
                channel["message_count"] += 1
                channel["total_message_sent"] += 1
        return record

    def message_from_body(
        self,
        channel_id: int,
        author: Payload,
        body: Payload,
        files: Sequence[UploadedFile],
        *,
        allow_ephemeral: bool = False,
        **extra: Any,
    ) -> MessageRecord:
        """Validate a bot's message body and store the message it describes."""
        validate_message_fields(body)
        attachments = self.resolve_attachments(body, files, channel_id, [])
        flags = int(body.get("flags") or 0) & SETTABLE_MESSAGE_FLAGS
        if not allow_ephemeral:
            flags &= ~FLAG_EPHEMERAL
        content = body.get("content") or ""
        components = body.get("components") or []
        embeds = body.get("embeds") or []
        stickers = body.get("sticker_ids") or []
        if not (content or attachments or components or embeds or stickers or body.get("poll")):
            raise ApiError(400, 50006, "Cannot send an empty message")
        reference = None
        message_type = extra.pop("message_type", 0)
        raw_reference = body.get("message_reference")
        if raw_reference and raw_reference.get("message_id") is not None:
            try:
                target = self.message_or_404(raw_reference["message_id"])
            except ApiError:
                if raw_reference.get("fail_if_not_exists", True):
                    raise form_error(
                        ["message_reference"], "REPLIES_UNKNOWN_MESSAGE", "Unknown message"
                    ) from None
            else:
                reference = self.reference_to(target)
                message_type = 19
        return self.create_message(
            channel_id,
            author,
            content=content,
            attachments=attachments,
            components=components,
            embeds=embeds,
            flags=flags,
            message_type=message_type,
            reference=reference,
            sticker_items=[{"id": str(s), "name": "sticker", "format_type": 1} for s in stickers],
            nonce=body.get("nonce"),
            **extra,
        )

    def reference_to(self, target: MessageRecord) -> Payload:
        """Return a message_reference pointing at a message (a reply)."""
        reference: Payload = {
            "type": 0,
            "message_id": str(target.id),
            "channel_id": str(target.channel_id),
        }
        if target.guild_id is not None:
            reference["guild_id"] = str(target.guild_id)
        return reference

    def edit_from_body(
        self, record: MessageRecord, body: Payload, files: Sequence[UploadedFile]
    ) -> None:
        """Apply an edit request to a message and record the new version."""
        validate_message_fields(body)
        attachments = self.resolve_attachments(body, files, record.channel_id, record.attachments)
        content = record.content if "content" not in body else body["content"] or ""
        components = record.components if "components" not in body else body["components"] or []
        embeds = record.embeds if "embeds" not in body else body["embeds"] or []
        if not (content or attachments or components or embeds or record.sticker_items):
            raise ApiError(400, 50006, "Cannot send an empty message")
        flags = record.flags & ~FLAG_LOADING
        if body.get("flags") is not None:
            flags = (flags & FLAG_EPHEMERAL) | (
                int(body["flags"]) & SETTABLE_MESSAGE_FLAGS & ~FLAG_EPHEMERAL
            )
        record.content = content
        record.attachments = attachments
        if "components" in body:
            record.components = self._number_components(components)
        if "embeds" in body:
            record.embeds = copy.deepcopy(embeds)
        record.flags = flags
        record.edited_timestamp = iso_timestamp()
        record.snapshot()

    def delete_message(self, record: MessageRecord) -> None:
        """Delete a message and dispatch MESSAGE_DELETE (unless it was ephemeral)."""
        record.deleted = True
        if record.ephemeral:
            self.notify()
            return
        data: Payload = {"id": str(record.id), "channel_id": str(record.channel_id)}
        if record.guild_id is not None:
            data["guild_id"] = str(record.guild_id)
        self.emit("MESSAGE_DELETE", data)

    def emit_message(self, event: str, record: MessageRecord) -> None:
        """Dispatch MESSAGE_CREATE or MESSAGE_UPDATE for a message; ephemeral ones stay private."""
        if record.ephemeral:
            self.notify()
            return
        # message_payload returns a copy of its own.
        self._emit_own(event, self.message_payload(record, gateway=True))

    def message_payload(
        self, record: MessageRecord, *, nested: bool = False, gateway: bool = False
    ) -> Payload:
        """Return the message object Discord would send for a stored message.

        ``guild_id`` and ``member`` are extra fields of the MESSAGE_CREATE and MESSAGE_UPDATE
        gateway events (discord-api-docs, events/gateway-events.mdx); REST replies carry the
        plain message object without them, so only ``gateway=True`` adds them.
        """
        mentions = []
        for match in USER_MENTION.finditer(record.content):
            user = self._users.get(int(match.group(1)))
            if user is not None and user not in mentions:
                mentions.append(user)
        data: Payload = {
            "id": str(record.id),
            "channel_id": str(record.channel_id),
            "author": record.author,
            "content": record.content,
            "timestamp": record.timestamp,
            "edited_timestamp": record.edited_timestamp,
            "tts": False,
            "mention_everyone": "@everyone" in record.content,
            "mentions": mentions,
            "mention_roles": ROLE_MENTION.findall(record.content),
            "attachments": [a.payload(self.http_base) for a in record.attachments],
            "embeds": record.embeds,
            "reactions": list(record.reactions.values()),
            "pinned": False,
            "type": record.type,
            "flags": record.flags,
            "components": record.components,
        }
        if record.guild_id is not None and gateway:
            data["guild_id"] = str(record.guild_id)
            member = self._guilds[record.guild_id].members.get(snowflake(record.author))
            if member is not None and record.webhook_id is None:
                data["member"] = {k: v for k, v in member.items() if k != "user"}
        if record.webhook_id is not None:
            data["webhook_id"] = str(record.webhook_id)
            data["application_id"] = str(self.application_id)
        if record.interaction_metadata is not None:
            data["interaction_metadata"] = record.interaction_metadata
            data["interaction"] = {
                "id": record.interaction_metadata["id"],
                "type": record.interaction_metadata["type"],
                "name": record.interaction_metadata.get("name", ""),
                "user": record.interaction_metadata["user"],
            }
        if record.sticker_items:
            data["sticker_items"] = record.sticker_items
        if record.nonce is not None:
            data["nonce"] = record.nonce
        if record.reference is not None:
            data["message_reference"] = record.reference
            if not nested:
                target = self._messages.get(int(record.reference["message_id"]))
                alive = target is not None and not target.deleted
                data["referenced_message"] = (
                    self.message_payload(target, nested=True) if target and alive else None
                )
        if record.thread_id is not None and record.thread_id in self._channels:
            data["thread"] = self._channels[record.thread_id]
        return copy.deepcopy(data)

    # -- interactions -------------------------------------------------------------

    def start_interaction(
        self,
        interaction_type: int,
        data: Payload,
        *,
        user: Payload,
        channel_id: int,
        locale: str = "en-US",
        message: MessageRecord | None = None,
    ) -> Interaction:
        """Create an interaction from a user in a channel and dispatch INTERACTION_CREATE."""
        channel = self._channels[channel_id]
        guild_id = self.guild_id_of(channel)
        user_id = snowflake(user)
        interaction_id = self.new_id()
        token = f"itok-{interaction_id}-{secrets.token_urlsafe(24)}"
        payload: Payload = {
            "id": str(interaction_id),
            "application_id": str(self.application_id),
            "type": interaction_type,
            "data": data,
            "token": token,
            "version": 1,
            "channel_id": str(channel_id),
            "channel": {**channel, "permissions": str(self.permissions(user_id, channel_id))},
            "locale": locale,
            "app_permissions": str(self.permissions(snowflake(self.bot_user), channel_id)),
            "entitlements": [],
            "attachment_size_limit": self.upload_limit(channel_id),
        }
        if guild_id is not None:
            guild = self._guilds[guild_id]
            member = guild.members.get(user_id)
            if member is None:
                raise ValueError(
                    f"user {user['username']} is not a member of guild {guild.data['name']}"
                )
            payload["guild_id"] = str(guild_id)
            payload["guild"] = {
                "id": str(guild_id),
                "locale": guild.data["preferred_locale"],
                "features": [],
            }
            payload["guild_locale"] = guild.data["preferred_locale"]
            payload["member"] = {
                **member,
                "permissions": str(self.permissions(user_id, channel_id)),
            }
            payload["context"] = 0
            payload["authorizing_integration_owners"] = {"0": str(guild_id)}
        else:
            payload["user"] = user
            payload["context"] = 1
            payload["authorizing_integration_owners"] = {"0": "0"}
        if message is not None:
            payload["message"] = self.message_payload(message)
        interaction = Interaction(
            id=interaction_id,
            token=token,
            type=interaction_type,
            data=data,
            payload=payload,
            channel_id=channel_id,
            guild_id=guild_id,
            user=user,
        )
        self.interactions.append(interaction)
        self._interactions_by_id[interaction_id] = interaction
        self._interactions_by_token[token] = interaction
        self.emit("INTERACTION_CREATE", payload)
        return interaction

    def interaction_by_token(self, token: str) -> Interaction | None:
        """Return the interaction a webhook token belongs to."""
        return self._interactions_by_token.get(token)

    def interaction_metadata(
        self, interaction: Interaction, *, followup_of: int | None = None
    ) -> Payload:
        """Return the interaction_metadata Discord attaches to response messages."""
        metadata: Payload = {
            "id": str(interaction.id),
            "type": interaction.type,
            "user": interaction.user,
            "authorizing_integration_owners": interaction.payload["authorizing_integration_owners"],
        }
        if interaction.type == 2:
            metadata["name"] = interaction.data.get("name", "")
        if interaction.type == 3 and "message" in interaction.payload:
            metadata["interacted_message_id"] = interaction.payload["message"]["id"]
        if followup_of is not None:
            metadata["original_response_message_id"] = str(followup_of)
        return metadata

    # -- commands ---------------------------------------------------------------------

    def store_commands(self, commands: list[Payload], guild_id: int | None) -> list[Payload]:
        """Replace the global or one guild's commands, keeping ids of commands that stay."""
        previous = (
            self._global_commands if guild_id is None else self._guild_commands.get(guild_id, [])
        )
        old_ids = {(c.get("type", 1), c["name"]): c["id"] for c in previous}
        stored = []
        for command in commands:
            kind = command.get("type", 1)
            entry: Payload = {
                "type": kind,
                "description": "",
                "options": [],
                "default_member_permissions": None,
                "dm_permission": True,
                "contexts": None,
                "integration_types": [0],
                "nsfw": False,
                "name_localizations": None,
                "description_localizations": None,
                **copy.deepcopy(command),
                "id": old_ids.get((kind, command["name"]), str(self.new_id())),
                "application_id": str(self.application_id),
                "version": str(self.new_id()),
            }
            if guild_id is not None:
                entry["guild_id"] = str(guild_id)
            stored.append(entry)
        if guild_id is None:
            self._global_commands = stored
        else:
            self._guild_commands[guild_id] = stored
        return copy.deepcopy(stored)

    def commands(self, guild_id: int | None = None) -> list[Payload]:
        """Return the synced commands: global ones, or one guild's."""
        stored = (
            self._global_commands if guild_id is None else self._guild_commands.get(guild_id, [])
        )
        return copy.deepcopy(stored)

    # -- reading state (test driver) --------------------------------------------------

    def messages(self, channel_id: Snowflake) -> list[Payload]:
        """Return a channel's current messages, oldest first (ephemeral ones included, flagged 64)."""
        cid = snowflake(channel_id)
        # The driver sees messages as the bot's gateway does, with guild_id and member.
        return [
            self.message_payload(record, gateway=True)
            for record in self._messages.values()
            if record.channel_id == cid and not record.deleted
        ]

    def message(self, message_id: Snowflake) -> Payload:
        """Return a message's current state; KeyError if unknown or deleted."""
        record = self._messages.get(snowflake(message_id))
        if record is None:
            raise KeyError(f"no message {message_id}")
        if record.deleted:
            raise KeyError(f"message {message_id} was deleted")
        return self.message_payload(record, gateway=True)

    def versions(self, message_id: Snowflake) -> list[MessageVersion]:
        """Return every state a message went through (creation, then each edit), with timestamps."""
        record = self._messages.get(snowflake(message_id))
        if record is None:
            raise KeyError(f"no message {message_id}")
        return list(record.versions)

    def threads(self, parent_id: Snowflake | None = None) -> list[Payload]:
        """Return threads (of one channel, if given), oldest first."""
        parent = None if parent_id is None else str(snowflake(parent_id))
        return [
            copy.deepcopy(c)
            for c in self._channels.values()
            if c["type"] in THREAD_TYPES and (parent is None or c["parent_id"] == parent)
        ]

    def attachment_bytes(self, attachment: Payload | Snowflake) -> bytes:
        """Return the bytes behind an attachment object (or attachment id)."""
        return self._attachments[snowflake(attachment)].data

    def is_text_parent(self, channel: Payload) -> bool:
        """Return whether threads can be started in this channel."""
        return channel["type"] in (CHANNEL_TEXT, CHANNEL_ANNOUNCEMENT)
