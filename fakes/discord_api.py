"""A local Discord stand-in that the real discord.py client talks to over real sockets.

One aiohttp server on 127.0.0.1 serves the gateway websocket (``/gateway``), the REST API
(``/api/v{N}/...``) and a CDN for uploads (``/attachments/...``). It enforces the rules Discord
enforces (interaction deadlines, message limits, permissions), records every request and every
version of every message, and offers a test driver that plays the users::

    async with FakeDiscord() as fake:
        fake.patch_discord_py()
        ...start the bot with fake.token...
        interaction = await fake.slash("imagine", {"prompt": "a cat"})
        await fake.wait_for(lambda: interaction.followup_ids)

Run ``python -m fakes.discord_api --port 8787`` to keep one running for trying a bot by hand.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from aiohttp import web

from fakes import interruptible
from fakes._discord_gateway import HEARTBEAT_INTERVAL_MS
from fakes._discord_model import (
    DEFAULT_UPLOAD_LIMIT,
    PRIVILEGED_INTENTS,
    SELECT_TYPES,
    ApiError,
    Interaction,
    InteractionRefused,
    MessageRecord,
    MessageVersion,
    Payload,
    RecordedRequest,
    StoredAttachment,
    UploadedFile,
    iter_components,
    snowflake,
)
from fakes._discord_rest import InjectedError, RestApi
from fakes._discord_world import Snowflake, UserRef, World

__all__ = [
    "ApiError",
    "FakeDiscord",
    "Interaction",
    "InteractionRefused",
    "MessageVersion",
    "RecordedRequest",
    "StoredAttachment",
    "UploadedFile",
]

T = TypeVar("T")

# Bot-side state (caches, tasks) changes without any request reaching the stand-in, so
# wait_for() also re-checks on this interval besides waking on every request and dispatch.
POLL_SECONDS = 0.02

OPTION_STRING, OPTION_INTEGER, OPTION_BOOLEAN, OPTION_USER = 3, 4, 5, 6
OPTION_CHANNEL, OPTION_ROLE, OPTION_MENTIONABLE, OPTION_NUMBER, OPTION_ATTACHMENT = 7, 8, 9, 10, 11
SUBCOMMAND_TYPES = (1, 2)
PYTHON_TYPES: dict[int, tuple[type, ...]] = {
    OPTION_STRING: (str,),
    OPTION_INTEGER: (int,),
    OPTION_NUMBER: (int, float),
}


class FakeDiscord(World):
    """A Discord stand-in on 127.0.0.1: gateway, REST, CDN and a driver that plays the users."""

    def __init__(
        self,
        *,
        token: str = "fake-token",
        zlib: bool = False,
        upload_limit: int = DEFAULT_UPLOAD_LIMIT,
        privileged_intents: Iterable[str] = tuple(PRIVILEGED_INTENTS),
        heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS,
        shards: int = 1,
        max_concurrency: int = 1,
    ) -> None:
        """Create the stand-in; ``heartbeat_interval_ms`` is the interval sent in HELLO,
        ``shards`` and ``max_concurrency`` what GET /gateway/bot recommends."""
        super().__init__(
            token=token, upload_limit=upload_limit, privileged_intents=privileged_intents
        )
        self.shards = shards
        self.max_concurrency = max_concurrency
        self.gateway.zlib = zlib
        self.gateway.heartbeat_interval_ms = heartbeat_interval_ms
        self.rest = RestApi(self)
        self._delays: list[tuple[str, re.Pattern[str], float]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None
        self._saved_discord_py: tuple[str, Any] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def start(self, port: int = 0) -> None:
        """Listen on 127.0.0.1 (a random free port by default)."""
        app = web.Application(client_max_size=1 << 30)
        for path in ("/gateway", "/gateway/", "/"):
            app.router.add_route("GET", path, self.gateway.handle)
        app.router.add_route("*", r"/api/v{version:\d+}/{tail:.*}", self._handle_rest)
        app.router.add_route(
            "GET", "/attachments/{channel}/{attachment}/{filename}", self.rest.handle_cdn
        )
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        self.http_base = f"http://127.0.0.1:{self.port}"
        self.gateway_url = f"ws://127.0.0.1:{self.port}/gateway"

    async def _handle_rest(self, request: web.Request) -> web.StreamResponse:
        """Serve a REST request, holding the reply back when a delay set by set_delay() matches."""
        response = await self.rest.handle(request)
        path = "/" + request.match_info["tail"]
        for method, pattern, seconds in self._delays:
            if method in ("*", request.method) and pattern.search(path):
                await asyncio.sleep(seconds)
                break
        return response

    async def close(self) -> None:
        """Close every socket, stop listening and undo patch_discord_py()."""
        self._restore_discord_py()
        await self.gateway.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> FakeDiscord:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def api_base(self) -> str:
        """Return the REST base URL, e.g. ``http://127.0.0.1:PORT/api/v10``."""
        return f"{self.http_base}/api/v10"

    @property
    def zlib(self) -> bool:
        """Return whether new gateway connections asking for zlib-stream get compressed frames."""
        return self.gateway.zlib

    @zlib.setter
    def zlib(self, value: bool) -> None:
        self.gateway.zlib = value

    @property
    def gateway_sessions(self) -> int:
        """Return how many gateway sessions were started (accepted IDENTIFYs)."""
        return self.gateway.identifies

    @property
    def heartbeats(self) -> list[float]:
        """Return the arrival times (``time.monotonic()``) of every op 1 heartbeat received."""
        return self.gateway.heartbeats

    @property
    def resumes(self) -> int:
        """Return how many RESUMEs succeeded."""
        return self.gateway.resumes

    def patch_discord_py(self) -> None:
        """Point an in-process discord.py at this stand-in (REST base and default gateway)."""
        import discord.gateway
        import discord.http
        import yarl

        if self._saved_discord_py is None:
            self._saved_discord_py = (
                discord.http.Route.BASE,
                discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY,
            )
        discord.http.Route.BASE = self.api_base
        discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(self.gateway_url)

    def _restore_discord_py(self) -> None:
        if self._saved_discord_py is None:
            return
        import discord.gateway
        import discord.http

        discord.http.Route.BASE, discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = (
            self._saved_discord_py
        )
        self._saved_discord_py = None

    # -- driver: faults and time -------------------------------------------------

    def inject_error(
        self,
        method: str,
        path_regex: str,
        status: int,
        *,
        code: int = 0,
        message: str = "",
        retry_after: float | None = None,
        times: int | None = 1,
        global_: bool = False,
    ) -> None:
        """Answer the next ``times`` matching requests with an error (``times=None``: until cleared).

        ``method`` is an HTTP method or ``"*"``; ``path_regex`` is searched in the path after
        ``/api/v10`` (e.g. ``r"/channels/\\d+/messages$"``). A 429 carries ``Via`` and a JSON
        body with ``retry_after`` (default 0.05 s) so discord.py retries it.
        """
        self.rest.inject(
            InjectedError(
                method=method.upper(),
                pattern=re.compile(path_regex),
                status=status,
                code=code,
                message=message,
                retry_after=retry_after,
                times=times,
                global_=global_,
            )
        )

    def clear_errors(self) -> None:
        """Forget every injected error not used up yet."""
        self.rest.injected.clear()

    def set_delay(self, method: str, path_regex: str, seconds: float) -> None:
        """Hold back the replies to matching REST requests by ``seconds`` (a slow link or upload).

        The request is handled (and recorded, and any edit applied) on arrival; only the reply
        waits. ``method`` and ``path_regex`` match as in inject_error(); the first match wins.
        """
        self._delays.append((method.upper(), re.compile(path_regex), seconds))

    def clear_delays(self) -> None:
        """Answer every REST request without delay again."""
        self._delays.clear()

    async def drop_gateway(self, *, resumable: bool = True) -> None:
        """Cut every gateway socket without a close frame; the client RESUMEs (or is refused if not resumable)."""
        self.gateway.drop(resumable=resumable)
        self.notify()

    async def force_reconnect(self) -> None:
        """Send op 7 RECONNECT; the client closes and RESUMEs."""
        self.gateway.reconnect()
        await self.gateway.flush()

    async def delete_thread(self, thread_id: Snowflake) -> None:
        """Delete a thread as a moderator would (the bot gets THREAD_DELETE; later requests 404)."""
        channel = self.channel_or_404(int(thread_id))
        self.remove_channel(int(thread_id))
        self.emit(
            "THREAD_DELETE",
            {
                "id": channel["id"],
                "guild_id": channel["guild_id"],
                "parent_id": channel["parent_id"],
                "type": channel["type"],
            },
        )
        await self.gateway.flush()

    def age_message(self, message_id: Snowflake, seconds: float) -> None:
        """Make a message look ``seconds`` older (edits past one hour are refused with 30046)."""
        record = self.stored_message(message_id)
        if record is None:
            raise KeyError(f"no message {message_id}")
        record.aged += seconds

    def age_interaction(self, interaction: Interaction | Snowflake, seconds: float) -> None:
        """Make an interaction (by object, id or token) look ``seconds`` older (3 s and 15 min deadlines)."""
        self.find_interaction(interaction).aged += seconds

    async def wait_for(
        self,
        predicate: Callable[[], T | None],
        timeout: float = 10.0,  # noqa: ASYNC109 - the driver API takes a plain timeout in seconds
    ) -> T:
        """Return the predicate's first truthy result, re-checking on every request and dispatch.

        Raises TimeoutError describing the predicate and the latest traffic if the deadline passes.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            wakeup = self._wakeup
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(self._timeout_report(predicate, timeout))
            try:
                await asyncio.wait_for(wakeup.wait(), min(remaining, POLL_SECONDS))
            except TimeoutError:
                pass

    def _timeout_report(self, predicate: Callable[..., Any], timeout: float) -> str:
        try:
            source = inspect.getsource(predicate).strip()
        except (OSError, TypeError):
            source = repr(predicate)
        lines = [f"wait_for timed out after {timeout}s: {source}", "latest requests:"]
        lines += [f"  {r.method} {r.path} -> {r.status}" for r in self.requests[-8:]] or [
            "  (none)"
        ]
        refused = [f"  interaction {i.id}: {i.error}" for i in self.interactions if i.error]
        if refused:
            lines += ["refused interaction answers:", *refused]
        if self.unhandled:
            lines.append(f"unhandled routes: {self.unhandled}")
        if self.internal_errors:
            lines.append(f"stand-in errors: {self.internal_errors}")
        return "\n".join(lines)

    # -- driver: users acting --------------------------------------------------

    def _user(self, user: UserRef | None, channel: Payload) -> Payload:
        """Return the acting user: the given one, the DM recipient in a DM, else the default member."""
        if user is not None:
            return self.user_or_404(snowflake(user))
        if channel.get("recipients"):
            recipient: Payload = channel["recipients"][0]
            return recipient
        return self.user

    def _command_channel(
        self, channel_id: Snowflake | None, guild_id: Snowflake | None, user: Payload, dm: bool
    ) -> Payload:
        if dm:
            return self.dm_channel(user)
        if channel_id is not None:
            return self.channel_or_404(channel_id)
        if guild_id is not None:
            return self.guild_channels(guild_id)[0]
        return self.channel

    def _find_command(self, name: str, guild_id: int | None) -> Payload:
        """Return a synced chat command by name, guild commands first, as Discord's client lists them."""
        candidates = self._guild_commands.get(guild_id, []) if guild_id is not None else []
        for command in [*candidates, *self._global_commands]:
            if command["name"] == name and command.get("type", 1) == 1:
                if guild_id is None:
                    contexts = command.get("contexts")
                    if command.get("dm_permission") is False or (
                        contexts is not None and 1 not in contexts
                    ):
                        raise ValueError(f"/{name} is not available in DMs")
                return command
        synced = sorted(c["name"] for c in [*candidates, *self._global_commands])
        raise LookupError(f"/{name} was not synced (synced: {synced})")

    def _command_data(
        self,
        name: str,
        options: Mapping[str, Any] | None,
        attachments: Mapping[str, tuple[str, bytes]] | None,
        *,
        channel: Payload,
        subcommand: str | None,
        focused: str | None,
    ) -> Payload:
        """Build ``data`` of a command or autocomplete interaction from the synced definition."""
        guild_id = self.guild_id_of(channel)
        command = self._find_command(name, guild_id)
        data: Payload = {"id": command["id"], "name": name, "type": 1}
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        node = command
        container: list[Payload] = []
        data["options"] = container
        for part in (subcommand or "").split():
            for option in node.get("options") or []:
                if option["name"] == part and option["type"] in SUBCOMMAND_TYPES:
                    break
            else:
                raise LookupError(f"/{name} has no subcommand {part!r}")
            nested: Payload = {"name": part, "type": option["type"], "options": []}
            container.append(nested)
            container = nested["options"]
            node = option
        if any(o["type"] in SUBCOMMAND_TYPES for o in node.get("options") or []):
            raise ValueError(f"/{name} needs a subcommand (subcommand='...')")
        resolved: Payload = {}
        values = dict(options or {})
        for option_name, file in (attachments or {}).items():
            values[option_name] = file
        definitions = {o["name"]: o for o in node.get("options") or []}
        unknown = set(values) - set(definitions)
        if unknown:
            raise ValueError(
                f"/{name} has no options {sorted(unknown)} (it has {sorted(definitions)})"
            )
        for option_name, definition in definitions.items():
            if option_name not in values:
                if definition.get("required") and focused is None:
                    raise ValueError(f"/{name} needs option {option_name!r}")
                continue
            entry: Payload = {"name": option_name, "type": definition["type"]}
            if option_name == focused:
                entry["value"] = values[option_name]
                entry["focused"] = True
            else:
                entry["value"] = self._option_value(
                    definition, values[option_name], channel, resolved
                )
            container.append(entry)
        if focused is not None and focused not in definitions:
            raise ValueError(f"/{name} has no option {focused!r} to focus")
        if focused is not None and focused not in values:
            container.append(
                {
                    "name": focused,
                    "type": definitions[focused]["type"],
                    "value": "",
                    "focused": True,
                }
            )
        if resolved:
            data["resolved"] = resolved
        return data

    def _option_value(
        self, definition: Payload, value: Any, channel: Payload, resolved: Payload
    ) -> Any:
        """Return an option value as Discord sends it, after the checks Discord's client makes."""
        name, kind = definition["name"], definition["type"]
        choices = definition.get("choices")
        if kind == OPTION_ATTACHMENT:
            filename, data = value
            attachment = self.new_attachment(snowflake(channel), filename, data)
            resolved.setdefault("attachments", {})[str(attachment.id)] = attachment.payload(
                self.http_base
            )
            return str(attachment.id)
        if kind in (OPTION_STRING, OPTION_INTEGER, OPTION_NUMBER):
            expected = PYTHON_TYPES[kind]
            if not isinstance(value, expected) or isinstance(value, bool):
                raise ValueError(f"option {name!r} takes {expected[0].__name__}, got {value!r}")
            if choices and value not in [c["value"] for c in choices]:
                raise ValueError(
                    f"option {name!r} must be one of {[c['value'] for c in choices]}, got {value!r}"
                )
            if isinstance(value, str):
                low, high = definition.get("min_length", 0), definition.get("max_length", 6000)
                if not low <= len(value) <= high:
                    raise ValueError(f"option {name!r} must be {low}..{high} characters long")
            else:
                low, high = definition.get("min_value"), definition.get("max_value")
                if (low is not None and value < low) or (high is not None and value > high):
                    raise ValueError(f"option {name!r} must be within {low}..{high}, got {value}")
            return value
        if kind == OPTION_BOOLEAN:
            if not isinstance(value, bool):
                raise ValueError(f"option {name!r} takes bool, got {value!r}")
            return value
        if kind in (OPTION_USER, OPTION_MENTIONABLE) and self._is_user(value):
            self._resolve_user(self.user_or_404(snowflake(value)), channel, resolved)
            return str(snowflake(value))
        if kind in (OPTION_ROLE, OPTION_MENTIONABLE):
            self._resolve_role(snowflake(value), channel, resolved)
            return str(snowflake(value))
        if kind == OPTION_CHANNEL:
            self._resolve_channel(self.channel_or_404(snowflake(value)), resolved)
            return str(snowflake(value))
        raise ValueError(f"option {name!r} has unsupported type {kind}")

    def _is_user(self, value: Any) -> bool:
        try:
            return snowflake(value) in self._users
        except (TypeError, ValueError, KeyError):
            return False

    def _resolve_user(self, user: Payload, channel: Payload, resolved: Payload) -> None:
        resolved.setdefault("users", {})[user["id"]] = user
        guild_id = self.guild_id_of(channel)
        if guild_id is not None:
            member = self._guilds[guild_id].members.get(snowflake(user))
            if member is not None:
                partial = {k: v for k, v in member.items() if k != "user"}
                partial["permissions"] = str(self.permissions(snowflake(user), snowflake(channel)))
                resolved.setdefault("members", {})[user["id"]] = partial

    def _resolve_role(self, role_id: int, channel: Payload, resolved: Payload) -> None:
        guild_id = self.guild_id_of(channel)
        roles = self._guilds[guild_id].roles if guild_id is not None else []
        for role in roles:
            if int(role["id"]) == role_id:
                resolved.setdefault("roles", {})[role["id"]] = role
                return
        raise ValueError(f"no role {role_id} in this guild")

    def _resolve_channel(self, target: Payload, resolved: Payload) -> None:
        keys = ("id", "name", "type", "parent_id", "thread_metadata")
        partial: Payload = {k: target[k] for k in keys if k in target}
        partial["permissions"] = str(self.permissions(snowflake(self.user), snowflake(target)))
        resolved.setdefault("channels", {})[target["id"]] = partial

    async def slash(
        self,
        name: str,
        options: Mapping[str, Any] | None = None,
        *,
        attachments: Mapping[str, tuple[str, bytes]] | None = None,
        user: UserRef | None = None,
        channel_id: Snowflake | None = None,
        guild_id: Snowflake | None = None,
        locale: str = "en-US",
        dm: bool = False,
        subcommand: str | None = None,
    ) -> Interaction:
        """Run a synced slash command as a user and return the interaction (without waiting for the bot).

        Option names and values are checked against the synced definition as Discord's client
        does (required, choices, ranges). ``attachments`` maps option names to (filename, bytes);
        they reach the bot through ``data.resolved.attachments``. ``dm=True`` runs it in the
        user's DM with the bot. ``subcommand`` is "sub" or "group sub".
        """
        acting = self.user_or_404(snowflake(user)) if user is not None else self.user
        channel = self._command_channel(channel_id, guild_id, acting, dm)
        data = self._command_data(
            name, options, attachments, channel=channel, subcommand=subcommand, focused=None
        )
        interaction = self.start_interaction(
            2, data, user=acting, channel_id=snowflake(channel), locale=locale
        )
        await self.gateway.flush()
        return interaction

    async def message_command(
        self,
        name: str,
        message_id: Snowflake,
        *,
        user: UserRef | None = None,
        locale: str = "en-US",
    ) -> Interaction:
        """Run a synced message context-menu command (type 3) on a message, from its Apps menu."""
        record = self._live_message(message_id)
        channel = self.channel_or_404(record.channel_id)
        guild_id = self.guild_id_of(channel)
        candidates = self._guild_commands.get(guild_id, []) if guild_id is not None else []
        for command in [*candidates, *self._global_commands]:
            if command["name"] == name and command.get("type") == 3:
                break
        else:
            raise LookupError(f"no message command {name!r} was synced")
        data: Payload = {
            "id": command["id"],
            "name": name,
            "type": 3,
            "target_id": str(snowflake(message_id)),
            "resolved": {"messages": {str(snowflake(message_id)): self.message_payload(record)}},
        }
        if "guild_id" in command:
            data["guild_id"] = command["guild_id"]
        interaction = self.start_interaction(
            2, data, user=self._user(user, channel), channel_id=record.channel_id, locale=locale
        )
        await self.gateway.flush()
        return interaction

    async def autocomplete(
        self,
        name: str,
        options: Mapping[str, Any] | None,
        focused: str,
        *,
        user: UserRef | None = None,
        channel_id: Snowflake | None = None,
        guild_id: Snowflake | None = None,
        locale: str = "en-US",
        dm: bool = False,
        subcommand: str | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - the driver API takes a plain timeout in seconds
    ) -> list[Payload]:
        """Type into an option with autocomplete and return the choices the bot answered.

        Raises InteractionRefused if the stand-in refused the bot's answer (e.g. over 25 choices).
        """
        acting = self.user_or_404(snowflake(user)) if user is not None else self.user
        channel = self._command_channel(channel_id, guild_id, acting, dm)
        data = self._command_data(
            name, options, None, channel=channel, subcommand=subcommand, focused=focused
        )
        interaction = self.start_interaction(
            4, data, user=acting, channel_id=snowflake(channel), locale=locale
        )
        await self.wait_for(lambda: interaction.choices is not None or interaction.error, timeout)
        if interaction.choices is None:
            raise InteractionRefused(interaction)
        return interaction.choices

    def _component(self, record: MessageRecord, custom_id: str) -> Payload:
        for component in iter_components(record.components):
            if component.get("custom_id") == custom_id:
                if component.get("disabled"):
                    raise ValueError(f"component {custom_id!r} is disabled")
                return component
        present = [c["custom_id"] for c in iter_components(record.components) if "custom_id" in c]
        raise LookupError(f"message {record.id} has no component {custom_id!r} (it has {present})")

    def _live_message(self, message_id: Snowflake) -> MessageRecord:
        try:
            return self.message_or_404(message_id)
        except ApiError:
            raise LookupError(f"no message {message_id} (unknown or deleted)") from None

    async def click(
        self, message_id: Snowflake, custom_id: str, *, user: UserRef | None = None
    ) -> Interaction:
        """Click a button on a message and return the interaction (without waiting for the bot)."""
        record = self._live_message(message_id)
        component = self._component(record, custom_id)
        if component["type"] != 2:
            raise ValueError(f"component {custom_id!r} is not a button; use select()")
        data = {"custom_id": custom_id, "component_type": 2, "id": component.get("id")}
        channel = self._channels[record.channel_id]
        interaction = self.start_interaction(
            3, data, user=self._user(user, channel), channel_id=record.channel_id, message=record
        )
        await self.gateway.flush()
        return interaction

    async def select(
        self,
        message_id: Snowflake,
        custom_id: str,
        values: Sequence[Any],
        *,
        user: UserRef | None = None,
    ) -> Interaction:
        """Pick values in a select menu on a message and return the interaction."""
        record = self._live_message(message_id)
        component = self._component(record, custom_id)
        kind = component["type"]
        if kind not in SELECT_TYPES:
            raise ValueError(f"component {custom_id!r} is not a select menu; use click()")
        low, high = component.get("min_values", 1), component.get("max_values", 1)
        if not low <= len(values) <= high:
            raise ValueError(f"select {custom_id!r} takes {low}..{high} values, got {len(values)}")
        channel = self._channels[record.channel_id]
        data: Payload = {"custom_id": custom_id, "component_type": kind, "id": component.get("id")}
        if kind == 3:
            allowed = [option["value"] for option in component.get("options") or []]
            wrong = [value for value in values if value not in allowed]
            if wrong:
                raise ValueError(f"select {custom_id!r} has no options {wrong} (it has {allowed})")
            data["values"] = list(values)
        else:
            resolved: Payload = {}
            for value in values:
                if self._is_user(value):
                    self._resolve_user(self.user_or_404(snowflake(value)), channel, resolved)
                elif snowflake(value) in self._channels:
                    self._resolve_channel(self._channels[snowflake(value)], resolved)
                else:
                    self._resolve_role(snowflake(value), channel, resolved)
            data["values"] = [str(snowflake(value)) for value in values]
            data["resolved"] = resolved
        interaction = self.start_interaction(
            3, data, user=self._user(user, channel), channel_id=record.channel_id, message=record
        )
        await self.gateway.flush()
        return interaction

    async def submit_modal(
        self,
        interaction: Interaction | Snowflake,
        fields: Mapping[str, str | Sequence[str]],
        *,
        user: UserRef | None = None,
        timeout: float = 10.0,  # noqa: ASYNC109 - the driver API takes a plain timeout in seconds
    ) -> Interaction:
        """Fill in and submit the modal the bot opened in answer to ``interaction``.

        ``fields`` maps the modal's field custom_ids to values (a list for selects in a modal);
        fields left out keep their default value. Waits for the modal to be opened.
        """
        origin = self.find_interaction(interaction)
        await self.wait_for(lambda: origin.modal is not None or origin.error, timeout)
        if origin.modal is None:
            raise InteractionRefused(origin)
        modal = origin.modal
        remaining = dict(fields)
        components: list[Payload] = []
        for component in modal["components"]:
            if component["type"] == 1:
                inner = component["components"][0]
            elif component["type"] == 18:
                inner = component["component"]
            else:
                continue
            custom_id = inner["custom_id"]
            value = remaining.pop(custom_id, None)
            submitted: Payload
            if inner["type"] == 4:
                text = str(value) if value is not None else inner.get("value") or ""
                if inner.get("required", True) and not text:
                    raise ValueError(f"modal field {custom_id!r} is required")
                low, high = inner.get("min_length", 0), inner.get("max_length", 4000)
                if text and not low <= len(text) <= high:
                    raise ValueError(
                        f"modal field {custom_id!r} must be {low}..{high} characters long"
                    )
                submitted = {"type": 4, "custom_id": custom_id, "value": text}
            else:
                chosen = [value] if isinstance(value, str) else list(value or [])
                submitted = {"type": inner["type"], "custom_id": custom_id, "values": chosen}
            if "id" in inner:
                submitted["id"] = inner["id"]
            if component["type"] == 1:
                components.append({"type": 1, "components": [submitted]})
            else:
                components.append({"type": 18, "component": submitted})
        if remaining:
            raise ValueError(f"modal {modal['custom_id']!r} has no fields {sorted(remaining)}")
        message = None
        if "message" in origin.payload:
            message = self.stored_message(origin.payload["message"]["id"])
        acting = self.user_or_404(snowflake(user)) if user is not None else origin.user
        submit = self.start_interaction(
            5,
            {"custom_id": modal["custom_id"], "components": components},
            user=acting,
            channel_id=origin.channel_id,
            locale=origin.payload["locale"],
            message=message if message is not None and not message.deleted else None,
        )
        await self.gateway.flush()
        return submit

    async def user_message(
        self,
        channel_id: Snowflake,
        content: str,
        *,
        files: Sequence[tuple[str, bytes]] | None = None,
        reply_to: Snowflake | None = None,
        user: UserRef | None = None,
        stickers: list[Payload] | None = None,
    ) -> Payload:
        """Post a message as a user (with files, as a reply, with stickers), dispatch it and return it."""
        cid = snowflake(channel_id)
        channel = self.channel_or_404(cid)
        author = self._user(user, channel)
        guild_id = self.guild_id_of(channel)
        if guild_id is not None and snowflake(author) not in self._guilds[guild_id].members:
            raise ValueError(f"{author['username']} is not a member of this guild")
        if guild_id is None and author not in channel["recipients"]:
            raise ValueError(f"{author['username']} is not in this DM")
        attachments = [self.new_attachment(cid, filename, data) for filename, data in files or []]
        reference = (
            self.reference_to(self._live_message(reply_to)) if reply_to is not None else None
        )
        record = self.create_message(
            cid,
            author,
            content=content,
            attachments=attachments,
            message_type=19 if reference else 0,
            reference=reference,
            sticker_items=stickers,
        )
        self.emit_message("MESSAGE_CREATE", record)
        await self.gateway.flush()
        return self.message_payload(record, gateway=True)


async def _serve(port: int, token: str, zlib: bool) -> None:
    """Run a stand-in until interrupted, printing how to point a bot at it."""
    fake = FakeDiscord(token=token, zlib=zlib)
    async with interruptible() as stop:
        await fake.start(port)
        try:
            print(f"api_base={fake.api_base}", flush=True)
            print(f"gateway_url={fake.gateway_url}", flush=True)
            print(f"token={fake.token}", flush=True)
            print(
                f"# DISCORD_API_BASE_URL={fake.api_base} DISCORD_GATEWAY_URL={fake.gateway_url} "
                f"DISCORD_TOKEN={fake.token}",
                flush=True,
            )
            await stop.wait()
        finally:
            await fake.close()


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point: ``python -m fakes.discord_api --port N``."""
    parser = argparse.ArgumentParser(
        prog="python -m fakes.discord_api", description="Run the Discord stand-in."
    )
    parser.add_argument(
        "--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)"
    )
    parser.add_argument("--token", default="fake-token", help="bot token the stand-in accepts")
    parser.add_argument(
        "--zlib", action="store_true", help="send zlib-stream compressed gateway frames"
    )
    args = parser.parse_args(argv)
    try:
        asyncio.run(_serve(args.port, args.token, args.zlib))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
