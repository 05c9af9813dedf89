"""The gateway half of the Discord stand-in: a websocket speaking Discord's gateway protocol v10."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from fakes._discord_model import (
    INTENT_DIRECT_MESSAGE_REACTIONS,
    INTENT_DIRECT_MESSAGES,
    INTENT_GUILD_MEMBERS,
    INTENT_GUILD_MESSAGE_REACTIONS,
    INTENT_GUILD_MESSAGES,
    INTENT_GUILDS,
    INTENT_MESSAGE_CONTENT,
    PRIVILEGED_INTENTS,
    Payload,
    shard_of,
)

if TYPE_CHECKING:
    from fakes._discord_world import World

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL_MS = 41250
MEMBER_EVENTS = frozenset({"GUILD_MEMBER_ADD", "GUILD_MEMBER_UPDATE", "GUILD_MEMBER_REMOVE"})
# Events whose payload is the guild itself (its id is `id`, not `guild_id`).
GUILD_OBJECT_EVENTS = frozenset({"GUILD_CREATE", "GUILD_UPDATE", "GUILD_DELETE"})


def _shard_tuple(value: Any) -> tuple[int, int] | None:
    """IDENTIFY's `shard` as (id, count), or None when Discord would close with 4010."""
    if not isinstance(value, list) or len(value) != 2:
        return None
    shard_id, count = value
    if type(shard_id) is not int or type(count) is not int:
        return None
    if count < 1 or not 0 <= shard_id < count:
        return None
    return shard_id, count


@dataclass(eq=False)
class GatewaySession:
    """A gateway session: survives its socket so that a client can RESUME it."""

    id: str
    intents: int
    seq: int = 0
    # Every dispatch sent in this session, so a RESUME can replay what the client missed.
    log: list[tuple[int, Payload]] = field(default_factory=list)
    connection: Connection | None = None
    resumable: bool = True
    # (shard id, shard count) from IDENTIFY: the session gets only its shard's guilds.
    shard: tuple[int, int] = (0, 1)


@dataclass(eq=False)
class Connection:
    """One websocket connection; frames go out in order through a queue and a writer task."""

    ws: web.WebSocketResponse
    request: web.Request
    compressor: Any  # zlib.compressobj() or None; zlib exposes no public type for it
    queue: asyncio.Queue[Payload] = field(default_factory=asyncio.Queue)
    session: GatewaySession | None = None
    writer: asyncio.Task[None] | None = None
    aborted: bool = False
    # Arrival times (time.monotonic()) of the op 1 heartbeats received on this socket.
    heartbeats: list[float] = field(default_factory=list)

    def send(self, frame: Payload) -> None:
        """Queue a frame; it is written after every frame queued before it."""
        self.queue.put_nowait(frame)


class Gateway:
    """Serves the gateway websocket and fans dispatch events out to sessions."""

    def __init__(self, world: World, *, heartbeat_interval_ms: int = HEARTBEAT_INTERVAL_MS) -> None:
        self.world = world
        self.zlib = False
        self.heartbeat_interval_ms = heartbeat_interval_ms
        # Arrival times (time.monotonic()) of every op 1 heartbeat, all sockets together.
        self.heartbeats: list[float] = []
        self.sessions: dict[str, GatewaySession] = {}
        self.connections: set[Connection] = set()
        self.identifies = 0
        # (time.monotonic(), shard) of every accepted IDENTIFY, oldest first.
        self.identified: list[tuple[float, tuple[int, int]]] = []
        self.resumes = 0
        self.invalid_sessions = 0

    # -- websocket --------------------------------------------------------

    async def handle(self, request: web.Request) -> web.WebSocketResponse:
        """Run one gateway connection until either side closes it."""
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        # Plain TEXT frames are valid whatever the client asked for; zlib only when both agree.
        use_zlib = self.zlib and request.query.get("compress") == "zlib-stream"
        conn = Connection(
            ws=ws, request=request, compressor=zlib.compressobj() if use_zlib else None
        )
        self.connections.add(conn)
        conn.writer = asyncio.create_task(self._write(conn))
        conn.send(
            {
                "op": 10,
                "s": None,
                "t": None,
                "d": {"heartbeat_interval": self.heartbeat_interval_ms},
            }
        )
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    await self._on_frame(conn, json.loads(msg.data))
        finally:
            self.connections.discard(conn)
            conn.writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await conn.writer
            session = conn.session
            if session is not None and session.connection is conn:
                session.connection = None
                # A clean close by the client ends the session; anything else may be resumed.
                if ws.close_code in (1000, 1001) and not conn.aborted:
                    session.resumable = False
            self.world.notify()
        return ws

    async def _write(self, conn: Connection) -> None:
        """Write queued frames to the socket, compressing them into one zlib stream if enabled."""
        while True:
            frame = await conn.queue.get()
            try:
                raw = json.dumps(frame)
                if conn.compressor is not None:
                    data = conn.compressor.compress(raw.encode()) + conn.compressor.flush(
                        zlib.Z_SYNC_FLUSH
                    )
                    await conn.ws.send_bytes(data)
                else:
                    await conn.ws.send_str(raw)
            except (ConnectionError, RuntimeError):
                # The socket went away; the session log keeps the events for a RESUME.
                return
            finally:
                conn.queue.task_done()

    async def _on_frame(self, conn: Connection, msg: Payload) -> None:
        """Handle one frame from the client."""
        op = msg.get("op")
        data: Payload = msg["d"] if isinstance(msg.get("d"), dict) else {}
        if op == 1:
            now = time.monotonic()
            conn.heartbeats.append(now)
            self.heartbeats.append(now)
            conn.send({"op": 11, "s": None, "t": None, "d": None})
        elif op == 2:
            await self._identify(conn, data)
        elif op == 6:
            await self._resume(conn, data)
        elif op == 8:
            self._request_members(conn, data)
        elif op in (3, 4):
            # Presence and voice state updates are accepted; nothing in the stand-in depends on them.
            pass
        else:
            await conn.ws.close(code=4001, message=b"Unknown opcode.")
        self.world.notify()

    async def _identify(self, conn: Connection, data: Payload) -> None:
        """Start a session: READY, then one GUILD_CREATE per guild."""
        if conn.session is not None:
            await conn.ws.close(code=4005, message=b"Already authenticated.")
            return
        if data.get("token") != self.world.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        intents = int(data.get("intents") or 0)
        refused = 0
        for name, bit in PRIVILEGED_INTENTS.items():
            if name not in self.world.privileged_intents:
                refused |= bit
        if intents & refused:
            await conn.ws.close(code=4014, message=b"Disallowed intent(s).")
            return
        shard = _shard_tuple(data.get("shard", [0, 1]))
        if shard is None:
            await conn.ws.close(code=4010, message=b"Invalid shard.")
            return
        session = GatewaySession(id=uuid.uuid4().hex, intents=intents, connection=conn, shard=shard)
        conn.session = session
        self.sessions[session.id] = session
        self.identifies += 1
        self.identified.append((time.monotonic(), shard))
        guild_ids = [gid for gid in self.world.guild_ids() if shard_of(gid, shard[1]) == shard[0]]
        ready: Payload = {
            "v": 10,
            "user": {**self.world.bot_user, "verified": True, "mfa_enabled": False},
            "guilds": [{"id": str(gid), "unavailable": True} for gid in guild_ids],
            "session_id": session.id,
            "session_type": "normal",
            "resume_gateway_url": self.world.gateway_url,
            "application": {
                "id": str(self.world.application_id),
                "flags": self.world.application_flags(),
            },
            "private_channels": [],
            "relationships": [],
            "presences": [],
            "user_settings": {},
            "guild_join_requests": [],
            "geo_ordered_rtc_regions": [],
        }
        if "shard" in data:
            ready["shard"] = data["shard"]
        self._send(session, "READY", ready)
        for guild_id in guild_ids:
            self._send(session, "GUILD_CREATE", self.world.guild_create_payload(guild_id))

    async def _resume(self, conn: Connection, data: Payload) -> None:
        """Reattach a session to this socket and replay what the client missed, or invalidate it."""
        if data.get("token") != self.world.token:
            await conn.ws.close(code=4004, message=b"Authentication failed.")
            return
        session = self.sessions.get(str(data.get("session_id")))
        if session is None or not session.resumable:
            self.invalid_sessions += 1
            conn.send({"op": 9, "s": None, "t": None, "d": False})
            return
        previous = session.connection
        if previous is not None and previous is not conn:
            previous.session = None
        session.connection = conn
        conn.session = session
        seen = int(data.get("seq") or 0)
        for seq, frame in session.log:
            if seq > seen:
                conn.send(frame)
        session.seq += 1
        conn.send({"op": 0, "s": session.seq, "t": "RESUMED", "d": {}})
        self.resumes += 1

    def _request_members(self, conn: Connection, data: Payload) -> None:
        """Answer op 8 with one GUILD_MEMBERS_CHUNK."""
        session = conn.session
        if session is None:
            return
        guild_id = int(data["guild_id"])
        members = self.world.guild_members(guild_id)
        user_ids = data.get("user_ids")
        if user_ids is not None:
            wanted = {str(uid) for uid in (user_ids if isinstance(user_ids, list) else [user_ids])}
            members = [m for m in members if m["user"]["id"] in wanted]
        else:
            query = (data.get("query") or "").lower()
            members = [m for m in members if m["user"]["username"].lower().startswith(query)]
            limit = int(data.get("limit") or 0)
            if limit:
                members = members[:limit]
        chunk: Payload = {
            "guild_id": str(guild_id),
            "members": members,
            "chunk_index": 0,
            "chunk_count": 1,
            "not_found": [],
        }
        if data.get("presences"):
            chunk["presences"] = []
        if data.get("nonce") is not None:
            chunk["nonce"] = data["nonce"]
        self._send(session, "GUILD_MEMBERS_CHUNK", chunk)

    # -- dispatching ------------------------------------------------------

    def dispatch(self, event: str, data: Payload) -> None:
        """Send a dispatch event to every session allowed to see it (queued in order, synchronously)."""
        for session in list(self.sessions.values()):
            if not session.resumable:
                continue
            visible = self._visible(session, event, data)
            if visible is not None:
                self._send(session, event, visible)

    def _send(self, session: GatewaySession, event: str, data: Payload) -> None:
        session.seq += 1
        frame: Payload = {"op": 0, "s": session.seq, "t": event, "d": data}
        session.log.append((session.seq, frame))
        if session.connection is not None:
            session.connection.send(frame)

    def _visible(self, session: GatewaySession, event: str, data: Payload) -> Payload | None:
        """Return the event as this session may see it (intents gate events, blank content), or None."""
        intents = session.intents
        in_guild = "guild_id" in data
        guild_id = data.get("id") if event in GUILD_OBJECT_EVENTS else data.get("guild_id")
        shard_id, shard_count = session.shard
        if shard_of(int(guild_id) if guild_id is not None else None, shard_count) != shard_id:
            return None
        needed = 0
        if event.startswith("MESSAGE_REACTION"):
            needed = INTENT_GUILD_MESSAGE_REACTIONS if in_guild else INTENT_DIRECT_MESSAGE_REACTIONS
        elif event.startswith("MESSAGE_"):
            needed = INTENT_GUILD_MESSAGES if in_guild else INTENT_DIRECT_MESSAGES
        elif event in MEMBER_EVENTS:
            needed = INTENT_GUILD_MEMBERS
        elif event.startswith(("GUILD_", "CHANNEL_", "THREAD_")) and event != "GUILD_MEMBERS_CHUNK":
            needed = INTENT_GUILDS
        if needed and not intents & needed:
            return None
        if (
            event in ("MESSAGE_CREATE", "MESSAGE_UPDATE")
            and in_guild
            and not intents & INTENT_MESSAGE_CONTENT
        ):
            bot_id = self.world.bot_user["id"]
            author_id = (data.get("author") or {}).get("id")
            mentioned = any(user.get("id") == bot_id for user in data.get("mentions") or [])
            if author_id != bot_id and not mentioned:
                # Discord blanks these fields for apps without the message content intent.
                data = {**data, "content": "", "embeds": [], "attachments": [], "components": []}
                data.pop("poll", None)
        return data

    # -- driver controls --------------------------------------------------

    async def flush(self) -> None:
        """Wait until every frame queued on live sockets has been written."""
        for conn in list(self.connections):
            if conn.writer is None or conn.writer.done():
                continue
            drained = asyncio.ensure_future(conn.queue.join())
            # A writer that dies on a dropped socket never drains its queue; stop waiting then.
            await asyncio.wait({drained, conn.writer}, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()

    def reconnect(self) -> None:
        """Send op 7 RECONNECT on every live socket."""
        for conn in list(self.connections):
            if conn.session is not None:
                conn.send({"op": 7, "s": None, "t": None, "d": None})

    def drop(self, *, resumable: bool = True) -> None:
        """Cut every socket without a close frame, as a network failure would."""
        for conn in list(self.connections):
            conn.aborted = True
            if conn.session is not None and not resumable:
                conn.session.resumable = False
            transport = conn.request.transport
            if transport is not None:
                transport.abort()

    async def close(self) -> None:
        """Close every socket with 1001 (going away)."""
        for conn in list(self.connections):
            with contextlib.suppress(ConnectionError, RuntimeError):
                await conn.ws.close(code=1001, message=b"Stand-in shutting down.")
