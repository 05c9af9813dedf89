"""The REST half of the Discord stand-in: /api/v{N} routes, the CDN, error injection."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import BodyPartReader, web

from fakes._discord_model import (
    FLAG_EPHEMERAL,
    FLAG_LOADING,
    INITIAL_RESPONSE_SECONDS,
    INTERACTION_TOKEN_SECONDS,
    OLD_MESSAGE_SECONDS,
    THREAD_TYPES,
    ApiError,
    Interaction,
    MessageRecord,
    Payload,
    RecordedRequest,
    UploadedFile,
    check_length,
    form_error,
    iso_timestamp,
    not_found,
    snowflake,
    validate_choices,
    validate_commands,
    validate_modal,
)

if TYPE_CHECKING:
    from fakes._discord_world import World

log = logging.getLogger(__name__)

FILE_FIELD = re.compile(r"files?\[(\d+)\]")
ARCHIVE_DURATIONS = (60, 1440, 4320, 10080)
Handler = Callable[["RestApi", "ApiRequest"], Awaitable[Any]]


@dataclass(frozen=True)
class _Route:
    method: str
    template: str
    pattern: re.Pattern[str]
    handler: Handler
    auth: bool
    bucket: str
    status: int


_ROUTES: list[_Route] = []


def route(
    method: str, template: str, *, auth: bool = True, status: int = 200
) -> Callable[[Handler], Handler]:
    """Register a handler for a method and a path template such as ``/channels/{channel}``.

    ``status`` is what a success answers with a body (201 where Discord documents it).
    """
    regex = re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(template))

    def register(handler: Handler) -> Handler:
        bucket = hashlib.md5(f"{method} {template}".encode()).hexdigest()[:16]
        _ROUTES.append(_Route(method, template, re.compile(regex), handler, auth, bucket, status))
        return handler

    return register


@dataclass
class ApiRequest:
    """A parsed REST request handed to a route handler."""

    method: str
    path: str
    params: dict[str, str]
    query: Mapping[str, str]
    json: Any
    files: list[UploadedFile]

    @property
    def body(self) -> Payload:
        """Return the JSON body if it is an object, else an empty dict."""
        return self.json if isinstance(self.json, dict) else {}

    def id(self, name: str) -> int:
        """Return a snowflake path parameter, or raise Discord's 400 for a malformed one."""
        value = self.params[name]
        try:
            return int(value)
        except ValueError:
            raise form_error(
                [name], "NUMBER_TYPE_COERCE", f'Value "{value}" is not snowflake.'
            ) from None

    def flag(self, name: str) -> bool:
        """Return whether a boolean query parameter is set."""
        return self.query.get(name, "").lower() in ("1", "true")


@dataclass
class InjectedError:
    """An error the driver asked the stand-in to return instead of handling a request."""

    method: str
    pattern: re.Pattern[str]
    status: int
    code: int
    message: str
    retry_after: float | None
    times: int | None
    global_: bool


def ratelimit_headers(bucket: str) -> dict[str, str]:
    """Return generous X-RateLimit-* headers, so discord.py's bucket code runs but never waits."""
    return {
        "X-RateLimit-Limit": "50",
        "X-RateLimit-Remaining": "49",
        "X-RateLimit-Reset": f"{time.time() + 1:.3f}",
        "X-RateLimit-Reset-After": "1.000",
        "X-RateLimit-Bucket": bucket,
    }


def json_response(status: int, body: Any, headers: Mapping[str, str]) -> web.Response:
    """Return JSON with Content-Type exactly ``application/json``: discord.py ignores any charset variant."""
    return web.Response(
        status=status,
        body=json.dumps(body).encode(),
        headers={**headers, "Content-Type": "application/json"},
    )


def old_message_error() -> ApiError:
    """Return the error Discord gives for edits to messages older than an hour."""
    return ApiError(
        400,
        30046,
        "Maximum number of edits to messages older than 1 hour reached. Try again later.",
    )


class RestApi:
    """Parses, records and routes REST requests; the handlers below implement the routes."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.injected: list[InjectedError] = []

    # -- plumbing ---------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one /api/v{N}/... request."""
        path = "/" + request.match_info["tail"]
        record = RecordedRequest(
            method=request.method,
            path=path,
            query=dict(request.query),
            json=None,
            files=[],
            at=time.monotonic(),
        )
        self.world.requests.append(record)
        try:
            record.json, record.files = await self._read_body(request)
        except ValueError:
            response = json_response(
                400,
                {"message": "The request body contains invalid JSON.", "code": 50109},
                ratelimit_headers("body"),
            )
        else:
            response = await self._route(request, path, record)
        record.status = response.status
        self.world.notify()
        return response

    async def handle_cdn(self, request: web.Request) -> web.StreamResponse:
        """Serve uploaded bytes at /attachments/{channel}/{id}/{filename}, as Discord's CDN does."""
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            query=dict(request.query),
            json=None,
            files=[],
            at=time.monotonic(),
        )
        self.world.requests.append(record)
        attachment = None
        if request.match_info["attachment"].isdigit():
            attachment = self.world.cdn_file(int(request.match_info["attachment"]))
        if (
            attachment is None
            or str(attachment.channel_id) != request.match_info["channel"]
            or attachment.filename != request.match_info["filename"]
        ):
            response = web.Response(status=404, text="Not Found", headers=ratelimit_headers("cdn"))
        else:
            response = web.Response(
                body=attachment.data,
                content_type=attachment.content_type or "application/octet-stream",
                headers=ratelimit_headers("cdn"),
            )
        record.status = response.status
        self.world.notify()
        return response

    async def _read_body(self, request: web.Request) -> tuple[Any, list[UploadedFile]]:
        """Return the JSON body and uploaded files (multipart ``payload_json`` + ``files[n]``)."""
        if request.content_type.startswith("multipart/"):
            reader = await request.multipart()
            body: Any = None
            files: list[UploadedFile] = []
            while (part := await reader.next()) is not None:
                if not isinstance(part, BodyPartReader):
                    continue
                data = await _read_part(part)
                name = part.name or ""
                if name == "payload_json":
                    body = json.loads(data)
                elif part.filename is not None or name.startswith("file"):
                    index = FILE_FIELD.fullmatch(name)
                    files.append(
                        UploadedFile(
                            field=name,
                            index=int(index.group(1)) if index else None,
                            filename=part.filename or name,
                            content_type=part.headers.get(
                                "Content-Type", "application/octet-stream"
                            ),
                            data=data,
                        )
                    )
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), []

    async def _route(
        self, request: web.Request, path: str, record: RecordedRequest
    ) -> web.Response:
        """Find the handler, check auth and injected errors, run it and build the response."""
        method = request.method
        path_known = False
        for candidate in _ROUTES:
            match = candidate.pattern.fullmatch(path)
            if match is None:
                continue
            path_known = True
            if candidate.method == method:
                break
        else:
            self.world.unhandled.append(f"{method} {path}")
            status = 405 if path_known else 404
            body = {
                "message": "405: Method Not Allowed" if path_known else "404: Not Found",
                "code": 0,
            }
            return json_response(status, body, ratelimit_headers("unknown"))
        headers = ratelimit_headers(candidate.bucket)
        if candidate.auth and request.headers.get("Authorization") != f"Bot {self.world.token}":
            return json_response(401, {"message": "401: Unauthorized", "code": 0}, headers)
        injected = self._take_injected(method, path)
        if injected is not None:
            return self._injected_response(injected, headers)
        api_request = ApiRequest(
            method, path, match.groupdict(), request.query, record.json, record.files
        )
        try:
            result = await candidate.handler(self, api_request)
        except ApiError as error:
            return json_response(error.status, error.body(), headers)
        except Exception as error:
            # A bug in the stand-in, not a Discord error: fail fast (no 5xx retries) and keep the trace.
            log.exception("stand-in error on %s %s", method, path)
            self.world.internal_errors.append(f"{method} {path}: {traceback.format_exc()}")
            return json_response(
                400, {"message": f"stand-in internal error: {error!r}", "code": 0}, headers
            )
        if result is None:
            return web.Response(status=204, headers=headers)
        return json_response(candidate.status, result, headers)

    def inject(self, error: InjectedError) -> None:
        """Queue an error to return for matching requests."""
        self.injected.append(error)

    def _take_injected(self, method: str, path: str) -> InjectedError | None:
        for error in self.injected:
            if error.method in ("*", method) and error.pattern.search(path):
                if error.times is not None:
                    error.times -= 1
                    if error.times <= 0:
                        self.injected.remove(error)
                return error
        return None

    def _injected_response(self, error: InjectedError, headers: dict[str, str]) -> web.Response:
        if error.status == 429:
            retry_after = 0.05 if error.retry_after is None else error.retry_after
            body: Payload = {
                "message": error.message or "You are being rate limited.",
                "retry_after": retry_after,
                "global": error.global_,
            }
            if error.code:
                body["code"] = error.code
            headers = {
                **headers,
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": f"{retry_after:.3f}",
                "X-RateLimit-Scope": "global" if error.global_ else "user",
                "Retry-After": str(math.ceil(retry_after)),
                # discord.py treats a 429 without Via as a Cloudflare ban and gives up.
                "Via": "1.1 google",
            }
            if error.global_:
                headers["X-RateLimit-Global"] = "true"
            return json_response(429, body, headers)
        if error.retry_after is not None:
            headers = {**headers, "Retry-After": str(math.ceil(error.retry_after))}
        message = error.message or _REASONS.get(error.status, "Error")
        return json_response(error.status, {"message": message, "code": error.code}, headers)

    # -- helpers -----------------------------------------------------------------

    @property
    def bot_id(self) -> int:
        """Return the bot user's id."""
        return snowflake(self.world.bot_user)

    def _app(self, request: ApiRequest) -> None:
        if request.id("app") != self.world.application_id:
            raise ApiError(
                403, 20012, "You are not authorized to perform this action on this application"
            )

    def _guild_for_commands(self, request: ApiRequest) -> int:
        self._app(request)
        guild_id = request.id("guild")
        if guild_id not in self.world.guild_ids():
            raise ApiError(403, 50001, "Missing Access")
        return guild_id

    def _channel_message(self, request: ApiRequest) -> MessageRecord:
        """Return the message of a /channels/{channel}/messages/{message} route; ephemeral ones are invisible."""
        self.world.channel_or_404(request.id("channel"))
        record = self.world.message_or_404(request.id("message"), request.id("channel"))
        if record.ephemeral:
            raise not_found(10008, "Message")
        return record

    # -- users, application, gateway -----------------------------------------------

    @route("GET", "/users/@me")
    async def get_me(self, request: ApiRequest) -> Any:
        """Return the bot user (discord.py's login check)."""
        return {**self.world.bot_user, "verified": True, "mfa_enabled": False, "locale": "en-US"}

    @route("GET", "/users/{user}")
    async def get_user(self, request: ApiRequest) -> Any:
        """Return a user."""
        return self.world.user_or_404(request.id("user"))

    @route("POST", "/users/@me/channels")
    async def create_dm(self, request: ApiRequest) -> Any:
        """Open (or return) the DM channel with a user."""
        recipient = request.body.get("recipient_id")
        if recipient is None:
            raise form_error(["recipient_id"], "BASE_TYPE_REQUIRED", "This field is required")
        return self.world.dm_channel(recipient)

    @route("GET", "/oauth2/applications/@me")
    async def get_application(self, request: ApiRequest) -> Any:
        """Return the application info discord.py reads at login."""
        return {
            "id": str(self.world.application_id),
            "name": self.world.bot_user["username"],
            "icon": None,
            "description": "",
            "summary": "",
            "type": None,
            "hook": True,
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "owner": self.world.admin,
            "team": None,
            "flags": self.world.application_flags(),
            "bot": self.world.bot_user,
            "rpc_origins": [],
            "tags": [],
            "redirect_uris": [],
            "interactions_endpoint_url": None,
            "approximate_guild_count": len(self.world.guild_ids()),
        }

    route("GET", "/applications/@me")(get_application)

    @route("GET", "/gateway", auth=False)
    async def get_gateway(self, request: ApiRequest) -> Any:
        """Return the gateway URL."""
        return {"url": self.world.gateway_url}

    @route("GET", "/gateway/bot")
    async def get_gateway_bot(self, request: ApiRequest) -> Any:
        """Return the gateway URL with sharding and session-start information."""
        total = 1000
        return {
            "url": self.world.gateway_url,
            "shards": self.world.shards,
            "session_start_limit": {
                "total": total,
                "remaining": max(total - self.world.gateway.identifies, 0),
                "reset_after": 14400000,
                "max_concurrency": self.world.max_concurrency,
            },
        }

    # -- application commands -------------------------------------------------------

    @route("GET", "/applications/{app}/commands")
    async def get_global_commands(self, request: ApiRequest) -> Any:
        """Return the global commands."""
        self._app(request)
        return self.world.commands()

    @route("PUT", "/applications/{app}/commands")
    async def put_global_commands(self, request: ApiRequest) -> Any:
        """Replace the global commands (tree.sync())."""
        self._app(request)
        return self.world.store_commands(validate_commands(request.json), None)

    @route("GET", "/applications/{app}/commands/{command}")
    async def get_global_command(self, request: ApiRequest) -> Any:
        """Return one global command."""
        self._app(request)
        return self._one_command(self.world.commands(), request.params["command"])

    @route("GET", "/applications/{app}/guilds/{guild}/commands")
    async def get_guild_commands(self, request: ApiRequest) -> Any:
        """Return one guild's commands."""
        return self.world.commands(self._guild_for_commands(request))

    @route("PUT", "/applications/{app}/guilds/{guild}/commands")
    async def put_guild_commands(self, request: ApiRequest) -> Any:
        """Replace one guild's commands (tree.sync(guild=...))."""
        guild_id = self._guild_for_commands(request)
        return self.world.store_commands(validate_commands(request.json), guild_id)

    @route("GET", "/applications/{app}/guilds/{guild}/commands/{command}")
    async def get_guild_command(self, request: ApiRequest) -> Any:
        """Return one guild command."""
        return self._one_command(
            self.world.commands(self._guild_for_commands(request)), request.params["command"]
        )

    def _one_command(self, commands: list[Payload], command_id: str) -> Payload:
        for command in commands:
            if command["id"] == command_id:
                return command
        raise not_found(10063, "application command")

    # -- guilds -----------------------------------------------------------------------

    @route("GET", "/guilds/{guild}")
    async def get_guild(self, request: ApiRequest) -> Any:
        """Return a guild."""
        guild_id = request.id("guild")
        payload = self.world.guild_payload(guild_id)
        if request.flag("with_counts"):
            count = len(self.world.guild_members(guild_id))
            payload = {
                **payload,
                "approximate_member_count": count,
                "approximate_presence_count": count,
            }
        return payload

    @route("GET", "/guilds/{guild}/channels")
    async def get_guild_channels(self, request: ApiRequest) -> Any:
        """Return a guild's channels."""
        self.world.guild_state(request.id("guild"))
        return self.world.guild_channels(request.id("guild"))

    @route("GET", "/guilds/{guild}/roles")
    async def get_guild_roles(self, request: ApiRequest) -> Any:
        """Return a guild's roles."""
        return self.world.guild_state(request.id("guild")).roles

    @route("GET", "/guilds/{guild}/members")
    async def get_guild_members(self, request: ApiRequest) -> Any:
        """Return a page of a guild's members, by user id."""
        members = sorted(
            self.world.guild_members(request.id("guild")), key=lambda m: int(m["user"]["id"])
        )
        after = int(request.query.get("after", "0"))
        limit = int(request.query.get("limit", "1"))
        return [m for m in members if int(m["user"]["id"]) > after][:limit]

    @route("GET", "/guilds/{guild}/members/{user}")
    async def get_guild_member(self, request: ApiRequest) -> Any:
        """Return one member of a guild."""
        member = self.world.guild_state(request.id("guild")).members.get(request.id("user"))
        if member is None:
            raise not_found(10007, "Member")
        return member

    @route("GET", "/guilds/{guild}/threads/active")
    async def get_active_threads(self, request: ApiRequest) -> Any:
        """Return a guild's unarchived threads."""
        guild = str(request.id("guild"))
        self.world.guild_state(guild)
        threads = [
            t
            for t in self.world.threads()
            if t["guild_id"] == guild and not t["thread_metadata"]["archived"]
        ]
        return {"threads": threads, "members": [t["member"] for t in threads]}

    # -- channels ---------------------------------------------------------------------

    @route("GET", "/channels/{channel}")
    async def get_channel(self, request: ApiRequest) -> Any:
        """Return a channel, thread or DM channel."""
        return self.world.channel_or_404(request.id("channel"))

    @route("PATCH", "/channels/{channel}")
    async def edit_channel(self, request: ApiRequest) -> Any:
        """Edit a channel or thread (rename, archive, lock, slowmode...)."""
        channel_id = request.id("channel")
        channel = self.world.channel_or_404(channel_id)
        body = request.body
        if channel["type"] in THREAD_TYPES:
            if channel["owner_id"] != str(self.bot_id) or "locked" in body:
                self.world.require(channel_id, "manage_threads")
            if "name" in body:
                check_length(body["name"], ["name"], 1, 100)
                channel["name"] = body["name"]
            metadata = channel["thread_metadata"]
            for key in ("archived", "locked", "invitable", "auto_archive_duration"):
                if key in body:
                    metadata[key] = body[key]
            if "archived" in body:
                metadata["archive_timestamp"] = iso_timestamp()
            for key in ("rate_limit_per_user", "flags", "applied_tags"):
                if key in body:
                    channel[key] = body[key]
            self.world.emit("THREAD_UPDATE", channel)
            return channel
        self.world.require(channel_id, "manage_channels")
        for key in (
            "name",
            "topic",
            "nsfw",
            "rate_limit_per_user",
            "position",
            "default_auto_archive_duration",
        ):
            if key in body:
                channel[key] = body[key]
        self.world.emit("CHANNEL_UPDATE", channel)
        return channel

    @route("DELETE", "/channels/{channel}")
    async def delete_channel(self, request: ApiRequest) -> Any:
        """Delete a channel or thread."""
        channel_id = request.id("channel")
        channel = self.world.channel_or_404(channel_id)
        if channel["type"] in THREAD_TYPES:
            self.world.require(channel_id, "manage_threads")
            self.world.remove_channel(channel_id)
            self.world.emit(
                "THREAD_DELETE",
                {
                    "id": channel["id"],
                    "guild_id": channel["guild_id"],
                    "parent_id": channel["parent_id"],
                    "type": channel["type"],
                },
            )
        else:
            self.world.require(channel_id, "manage_channels")
            self.world.remove_channel(channel_id)
            self.world.emit("CHANNEL_DELETE", channel)
        return channel

    @route("POST", "/channels/{channel}/typing")
    async def typing(self, request: ApiRequest) -> Any:
        """Acknowledge a typing indicator."""
        channel_id = request.id("channel")
        channel = self.world.channel_or_404(channel_id)
        in_thread = channel["type"] in THREAD_TYPES
        self.world.require(
            channel_id, "view_channel", "send_messages_in_threads" if in_thread else "send_messages"
        )
        return None

    # -- messages ---------------------------------------------------------------------

    @route("POST", "/channels/{channel}/messages")
    async def create_message(self, request: ApiRequest) -> Any:
        """Post a message as the bot and dispatch MESSAGE_CREATE."""
        channel_id = request.id("channel")
        channel = self.world.channel_or_404(channel_id)
        in_thread = channel["type"] in THREAD_TYPES
        self.world.require(
            channel_id, "view_channel", "send_messages_in_threads" if in_thread else "send_messages"
        )
        if request.files:
            self.world.require(channel_id, "attach_files")
        if in_thread and channel["thread_metadata"]["archived"]:
            if channel["thread_metadata"]["locked"]:
                raise ApiError(400, 50083, "Thread is archived")
            # Posting in an archived, unlocked thread reopens it.
            channel["thread_metadata"]["archived"] = False
            self.world.emit("THREAD_UPDATE", channel)
        record = self.world.message_from_body(
            channel_id, self.world.bot_user, request.body, request.files
        )
        self.world.emit_message("MESSAGE_CREATE", record)
        return self.world.message_payload(record)

    @route("GET", "/channels/{channel}/messages")
    async def get_history(self, request: ApiRequest) -> Any:
        """Return channel history, newest first, honouring limit/before/after/around."""
        channel_id = request.id("channel")
        self.world.channel_or_404(channel_id)
        self.world.require(channel_id, "view_channel", "read_message_history")
        limit = int(request.query.get("limit", "50"))
        if not 1 <= limit <= 100:
            raise form_error(["limit"], "NUMBER_TYPE_MAX", "int value should be between 1 and 100.")
        visible = [m for m in self.world.messages(channel_id) if not m["flags"] & FLAG_EPHEMERAL]
        ids = [int(m["id"]) for m in visible]
        if "before" in request.query:
            before = int(request.query["before"])
            chosen = [m for m, i in zip(visible, ids, strict=True) if i < before][-limit:]
        elif "after" in request.query:
            after = int(request.query["after"])
            chosen = [m for m, i in zip(visible, ids, strict=True) if i > after][:limit]
        elif "around" in request.query:
            around = int(request.query["around"])
            older = [m for m, i in zip(visible, ids, strict=True) if i <= around]
            newer = [m for m, i in zip(visible, ids, strict=True) if i > around]
            chosen = older[-(limit - limit // 2) :] + newer[: limit // 2]
        else:
            chosen = visible[-limit:]
        return list(reversed(chosen))

    @route("GET", "/channels/{channel}/messages/{message}")
    async def get_message(self, request: ApiRequest) -> Any:
        """Return one message."""
        record = self._channel_message(request)
        self.world.require(record.channel_id, "view_channel", "read_message_history")
        return self.world.message_payload(record)

    @route("PATCH", "/channels/{channel}/messages/{message}")
    async def edit_message(self, request: ApiRequest) -> Any:
        """Edit a message and dispatch MESSAGE_UPDATE."""
        record = self._channel_message(request)
        if snowflake(record.author) != self.bot_id and set(request.body) - {"flags"}:
            raise ApiError(403, 50005, "Cannot edit a message authored by another user")
        if record.age() > OLD_MESSAGE_SECONDS:
            raise old_message_error()
        self.world.edit_from_body(record, request.body, request.files)
        self.world.emit_message("MESSAGE_UPDATE", record)
        return self.world.message_payload(record)

    @route("DELETE", "/channels/{channel}/messages/{message}")
    async def delete_message(self, request: ApiRequest) -> Any:
        """Delete a message and dispatch MESSAGE_DELETE."""
        record = self._channel_message(request)
        if snowflake(record.author) != self.bot_id:
            self.world.require(record.channel_id, "manage_messages")
        self.world.delete_message(record)
        return None

    @route("PUT", "/channels/{channel}/messages/{message}/reactions/{emoji}/@me")
    async def add_reaction(self, request: ApiRequest) -> Any:
        """Add the bot's reaction and dispatch MESSAGE_REACTION_ADD."""
        record = self._channel_message(request)
        self.world.require(record.channel_id, "read_message_history", "add_reactions")
        emoji = self._emoji(request.params["emoji"])
        key = request.params["emoji"]
        reaction = record.reactions.get(key)
        if reaction is None:
            reaction = record.reactions[key] = {
                "count": 0,
                "count_details": {"burst": 0, "normal": 0},
                "me": False,
                "me_burst": False,
                "burst_colors": [],
                "emoji": emoji,
            }
        if not reaction["me"]:
            reaction["me"] = True
            reaction["count"] += 1
            reaction["count_details"]["normal"] += 1
            event: Payload = {
                "user_id": str(self.bot_id),
                "channel_id": str(record.channel_id),
                "message_id": str(record.id),
                "message_author_id": record.author["id"],
                "emoji": emoji,
                "burst": False,
                "type": 0,
            }
            if record.guild_id is not None:
                event["guild_id"] = str(record.guild_id)
            self.world.emit("MESSAGE_REACTION_ADD", event)
        return None

    @route("DELETE", "/channels/{channel}/messages/{message}/reactions/{emoji}/@me")
    async def remove_reaction(self, request: ApiRequest) -> Any:
        """Remove the bot's reaction and dispatch MESSAGE_REACTION_REMOVE."""
        record = self._channel_message(request)
        key = request.params["emoji"]
        reaction = record.reactions.get(key)
        if reaction is not None and reaction["me"]:
            reaction["me"] = False
            reaction["count"] -= 1
            reaction["count_details"]["normal"] -= 1
            if reaction["count"] <= 0:
                del record.reactions[key]
            event: Payload = {
                "user_id": str(self.bot_id),
                "channel_id": str(record.channel_id),
                "message_id": str(record.id),
                "emoji": reaction["emoji"],
                "burst": False,
                "type": 0,
            }
            if record.guild_id is not None:
                event["guild_id"] = str(record.guild_id)
            self.world.emit("MESSAGE_REACTION_REMOVE", event)
        return None

    @staticmethod
    def _emoji(raw: str) -> Payload:
        name, _, emoji_id = raw.partition(":")
        return {"id": emoji_id or None, "name": name}

    # -- threads ----------------------------------------------------------------------

    def _thread_options(self, channel: Payload, body: Payload) -> tuple[str, int, int]:
        name = body.get("name")
        check_length(name, ["name"], 1, 100)
        duration = (
            body.get("auto_archive_duration")
            or channel.get("default_auto_archive_duration")
            or 1440
        )
        if duration not in ARCHIVE_DURATIONS:
            raise form_error(
                ["auto_archive_duration"],
                "BASE_TYPE_CHOICES",
                f"Value must be one of {ARCHIVE_DURATIONS}.",
            )
        return str(name), int(duration), int(body.get("rate_limit_per_user") or 0)

    # Both thread creations answer 201 Created (discord-api-docs, resources/channel.mdx).
    @route("POST", "/channels/{channel}/messages/{message}/threads", status=201)
    async def thread_from_message(self, request: ApiRequest) -> Any:
        """Start a public thread on a message; the thread id is the message id."""
        channel_id = request.id("channel")
        channel = self.world.channel_or_404(channel_id)
        if not self.world.is_text_parent(channel):
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        self.world.require(channel_id, "view_channel", "create_public_threads")
        record = self._channel_message(request)
        if record.thread_id is not None:
            raise ApiError(400, 160004, "A thread has already been created for this message")
        name, duration, slowmode = self._thread_options(channel, request.body)
        thread = self.world.create_thread(
            channel_id,
            name,
            thread_type=10 if channel["type"] == 5 else 11,
            owner_id=self.bot_id,
            auto_archive_duration=duration,
            rate_limit_per_user=slowmode,
            thread_id=record.id,
        )
        record.thread_id = record.id
        self.world.emit_message("MESSAGE_UPDATE", record)
        return thread

    @route("POST", "/channels/{channel}/threads", status=201)
    async def thread_without_message(self, request: ApiRequest) -> Any:
        """Start a thread with no starter message (private by default, as Discord does)."""
        channel_id = request.id("channel")
        channel = self.world.channel_or_404(channel_id)
        body = request.body
        if not self.world.is_text_parent(channel) or "message" in body:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        thread_type = int(body.get("type") or 12)
        if thread_type not in THREAD_TYPES:
            raise form_error(["type"], "BASE_TYPE_CHOICES", "Value must be one of (10, 11, 12).")
        permission = "create_private_threads" if thread_type == 12 else "create_public_threads"
        self.world.require(channel_id, "view_channel", permission)
        name, duration, slowmode = self._thread_options(channel, body)
        return self.world.create_thread(
            channel_id,
            name,
            thread_type=thread_type,
            owner_id=self.bot_id,
            auto_archive_duration=duration,
            rate_limit_per_user=slowmode,
            invitable=bool(body.get("invitable", True)),
        )

    @route("PUT", "/channels/{channel}/thread-members/@me")
    async def join_thread(self, request: ApiRequest) -> Any:
        """Join a thread."""
        self._thread(request)
        return None

    @route("DELETE", "/channels/{channel}/thread-members/@me")
    async def leave_thread(self, request: ApiRequest) -> Any:
        """Leave a thread."""
        self._thread(request)
        return None

    @route("PUT", "/channels/{channel}/thread-members/{user}")
    async def add_thread_member(self, request: ApiRequest) -> Any:
        """Add a user to a thread."""
        thread = self._thread(request)
        self.world.user_or_404(request.id("user"))
        thread["member_count"] += 1
        return None

    def _thread(self, request: ApiRequest) -> Payload:
        channel = self.world.channel_or_404(request.id("channel"))
        if channel["type"] not in THREAD_TYPES:
            raise ApiError(400, 50024, "Cannot execute action on this channel type")
        return channel

    # -- interactions -----------------------------------------------------------------

    def _refused(self, interaction: Interaction, request: ApiRequest, error: ApiError) -> ApiError:
        """Remember on the interaction why Discord refused the bot's answer, and return the error."""
        interaction.error = {
            "status": error.status,
            "code": error.code,
            "message": error.message,
            "errors": error.errors,
            "route": f"{request.method} {request.path}",
        }
        self.world.notify()
        return error

    @route("POST", "/interactions/{interaction}/{token}/callback", auth=False)
    async def interaction_callback(self, request: ApiRequest) -> Any:
        """Answer an interaction (callback types 1, 4, 5, 6, 7, 8, 9)."""
        try:
            interaction = self.world.find_interaction(request.id("interaction"))
        except KeyError:
            raise not_found(10062, "interaction") from None
        if interaction.token != request.params["token"]:
            raise not_found(10062, "interaction")
        try:
            return self._callback(interaction, request)
        except ApiError as error:
            raise self._refused(interaction, request, error) from None

    def _callback(self, interaction: Interaction, request: ApiRequest) -> Any:
        if interaction.response_type is not None:
            raise ApiError(400, 40060, "Interaction has already been acknowledged.")
        if interaction.age() > INITIAL_RESPONSE_SECONDS:
            raise not_found(10062, "interaction")
        body = request.body
        kind = body.get("type")
        data = body.get("data") or {}
        world = self.world
        message: MessageRecord | None = None
        response_message_id: int | None = None
        message_type = 20 if interaction.type == 2 else 0
        if kind == 4:
            message = world.message_from_body(
                interaction.channel_id,
                world.bot_user,
                data,
                request.files,
                allow_ephemeral=True,
                webhook_id=world.application_id,
                interaction_metadata=world.interaction_metadata(interaction),
                message_type=message_type,
            )
            world.emit_message("MESSAGE_CREATE", message)
            interaction.original_message_id = response_message_id = message.id
        elif kind == 5:
            # A deferred response shows a "thinking" message that later edits fill in.
            message = world.create_message(
                interaction.channel_id,
                world.bot_user,
                flags=FLAG_LOADING | (int(data.get("flags") or 0) & FLAG_EPHEMERAL),
                webhook_id=world.application_id,
                interaction_metadata=world.interaction_metadata(interaction),
                message_type=message_type,
            )
            world.emit_message("MESSAGE_CREATE", message)
            interaction.original_message_id = response_message_id = message.id
        elif kind in (6, 7):
            if interaction.type not in (3, 5) or "message" not in interaction.payload:
                raise form_error(
                    ["type"],
                    "INTERACTION_RESPONSE_TYPE_INVALID",
                    "This response type needs a message component interaction",
                )
            target = world.message_or_404(interaction.payload["message"]["id"])
            interaction.original_message_id = target.id
            if kind == 7:
                if target.age() > OLD_MESSAGE_SECONDS:
                    raise old_message_error()
                world.edit_from_body(target, data, request.files)
                world.emit_message("MESSAGE_UPDATE", target)
                message = target
                response_message_id = target.id
        elif kind == 8:
            if interaction.type != 4:
                raise form_error(
                    ["type"],
                    "INTERACTION_RESPONSE_TYPE_INVALID",
                    "Autocomplete results answer autocomplete interactions only",
                )
            interaction.choices = validate_choices(data.get("choices"))
        elif kind == 9:
            if interaction.type in (4, 5):
                raise form_error(
                    ["type"],
                    "INTERACTION_RESPONSE_TYPE_INVALID",
                    "A modal cannot answer this interaction type",
                )
            interaction.modal = validate_modal(data)
        elif kind == 1 and interaction.type == 1:
            pass
        else:
            raise form_error(
                ["type"],
                "INTERACTION_RESPONSE_TYPE_INVALID",
                f"Invalid interaction response type {kind!r}",
            )
        interaction.response_type = kind
        interaction.responded_at = time.monotonic()
        if not request.flag("with_response"):
            return None
        summary: Payload = {
            "id": str(interaction.id),
            "type": interaction.type,
            "response_message_loading": kind == 5,
            "response_message_ephemeral": bool(message is not None and message.ephemeral),
        }
        if response_message_id is not None:
            summary["response_message_id"] = str(response_message_id)
        resource: Payload = {"type": kind}
        if kind in (4, 7) and message is not None:
            resource["message"] = world.message_payload(message)
        return {"interaction": summary, "resource": resource}

    def _webhook_interaction(self, request: ApiRequest) -> Interaction:
        """Return the interaction behind /webhooks/{app}/{token}, or raise what Discord would."""
        if request.id("app") != self.world.application_id:
            raise not_found(10015, "Webhook")
        interaction = self.world.interaction_by_token(request.params["token"])
        if interaction is None:
            raise ApiError(401, 50027, "Invalid Webhook Token")
        return interaction

    def _check_token(self, interaction: Interaction) -> None:
        if interaction.age() > INTERACTION_TOKEN_SECONDS:
            raise ApiError(401, 50027, "Invalid Webhook Token")

    @route("POST", "/webhooks/{app}/{token}", auth=False)
    async def followup(self, request: ApiRequest) -> Any:
        """Send a follow-up; the first one after a deferred response fills in the loading message."""
        interaction = self._webhook_interaction(request)
        try:
            return self._followup(interaction, request)
        except ApiError as error:
            raise self._refused(interaction, request, error) from None

    def _followup(self, interaction: Interaction, request: ApiRequest) -> Any:
        self._check_token(interaction)
        if interaction.response_type is None:
            raise not_found(10015, "Webhook")
        world = self.world
        original = world.stored_message(interaction.original_message_id)
        if (
            interaction.response_type == 5
            and original is not None
            and not original.deleted
            and original.flags & FLAG_LOADING
        ):
            world.edit_from_body(original, request.body, request.files)
            world.emit_message("MESSAGE_UPDATE", original)
            record = original
        else:
            record = world.message_from_body(
                interaction.channel_id,
                world.bot_user,
                request.body,
                request.files,
                allow_ephemeral=True,
                webhook_id=world.application_id,
                interaction_metadata=world.interaction_metadata(
                    interaction, followup_of=interaction.original_message_id
                ),
                message_type=20 if interaction.type == 2 else 0,
            )
            world.emit_message("MESSAGE_CREATE", record)
        interaction.followup_ids.append(record.id)
        if not request.flag("wait"):
            return None
        return world.message_payload(record)

    def _webhook_message(self, interaction: Interaction, request: ApiRequest) -> MessageRecord:
        self._check_token(interaction)
        raw = request.params["message"]
        if raw == "@original":
            if interaction.original_message_id is None:
                raise not_found(10008, "Message")
            message_id = interaction.original_message_id
        else:
            message_id = request.id("message")
            if message_id not in interaction.message_ids():
                raise not_found(10008, "Message")
        return self.world.message_or_404(message_id)

    @route("GET", "/webhooks/{app}/{token}/messages/{message}", auth=False)
    async def get_webhook_message(self, request: ApiRequest) -> Any:
        """Return the original response or a follow-up."""
        interaction = self._webhook_interaction(request)
        try:
            return self.world.message_payload(self._webhook_message(interaction, request))
        except ApiError as error:
            raise self._refused(interaction, request, error) from None

    @route("PATCH", "/webhooks/{app}/{token}/messages/{message}", auth=False)
    async def edit_webhook_message(self, request: ApiRequest) -> Any:
        """Edit the original response or a follow-up."""
        interaction = self._webhook_interaction(request)
        try:
            record = self._webhook_message(interaction, request)
            if record.age() > OLD_MESSAGE_SECONDS:
                raise old_message_error()
            self.world.edit_from_body(record, request.body, request.files)
        except ApiError as error:
            raise self._refused(interaction, request, error) from None
        self.world.emit_message("MESSAGE_UPDATE", record)
        return self.world.message_payload(record)

    @route("DELETE", "/webhooks/{app}/{token}/messages/{message}", auth=False)
    async def delete_webhook_message(self, request: ApiRequest) -> Any:
        """Delete the original response or a follow-up."""
        interaction = self._webhook_interaction(request)
        try:
            record = self._webhook_message(interaction, request)
        except ApiError as error:
            raise self._refused(interaction, request, error) from None
        self.world.delete_message(record)
        return None


_REASONS: dict[int, str] = {
    400: "400: Bad Request",
    401: "401: Unauthorized",
    403: "403: Forbidden",
    404: "404: Not Found",
    500: "500: Internal Server Error",
    502: "502: Bad Gateway",
    503: "503: Service Unavailable",
    504: "504: Gateway Timeout",
}


# aiohttp reads a part 8 KiB at a time, a hundred Python steps per megabyte of upload; the
# stand-in takes what has arrived, up to a MiB at a time.
_PART_CHUNK = 1 << 20


async def _read_part(part: BodyPartReader) -> bytes:
    """The whole content of one multipart part."""
    chunks: list[bytes] = []
    while not part.at_eof():
        chunks.append(await part.read_chunk(_PART_CHUNK))
    return b"".join(chunks)
