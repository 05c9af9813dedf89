"""The bot as its own process (`python -m bot run`) against both stand-ins, and what it did.

`bot_session()` starts FakeDiscord and the OpenAI stand-in in this process, the bot as a child
process pointed at them, waits until it is ready, and stops everything on exit. `Tracker` reads
the Discord stand-in's request log incrementally and ties every upload to its generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.payload import BenchOpenAI
from bot.loopmonitor import LoopLagMonitor
from fakes.discord_api import FakeDiscord, MessageVersion, RecordedRequest

ROOT = Path(__file__).resolve().parent.parent
BOT_TOKEN = "fake.token"
READY_TIMEOUT = 60.0
# discord.py waits this long after the last GUILD_CREATE before on_ready (guild_ready_timeout).
READY_GRACE = 3.0
THREAD_PATH = re.compile(r"^/channels/(\d+)/messages/(\d+)/threads$")
MESSAGE_PATH = re.compile(r"^/channels/(\d+)/messages(?:/(\d+))?$")
PARTIAL_EVENT = "response.image_generation_call.partial_image"
FINAL_EVENT = "response.completed"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used (all its threads), from /proc/<pid>/stat."""
    raw = Path(f"/proc/{pid}/stat").read_text()
    fields = raw.rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def memory_bytes(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process in bytes, from /proc/<pid>/status."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


@dataclass
class LagSnapshot:
    """One reading of a LOOP_LAG_FILE: the cumulative histogram and when it was written."""

    histogram: dict[int, int]
    samples: int
    updated_at: float

    @classmethod
    def read(cls, path: Path) -> LagSnapshot | None:
        """The file's current content, or None before its first write."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        histogram = {int(k): int(v) for k, v in data["histogram_ms"].items()}
        return cls(histogram, int(data["samples"]), float(data["updated_at"]))

    @classmethod
    def of(cls, monitor: LoopLagMonitor) -> LagSnapshot:
        """A snapshot of a monitor running in this process."""
        return cls(dict(monitor.histogram), monitor.samples, time.monotonic())


@dataclass
class Generation:
    """One /imagine as the driver sent it and as the Discord stand-in saw it answered."""

    prompt: str
    user_id: int
    partials: int
    size: str
    started: float
    thread_id: int | None = None
    message_id: int | None = None
    final_message_id: int | None = None
    uploads: list[tuple[int, float]] = field(default_factory=list)
    final_at: float | None = None
    failed: str | None = None

    @property
    def done(self) -> bool:
        """Whether the final image (or a failure) reached Discord."""
        return self.final_at is not None or self.failed is not None


class Tracker:
    """Follows the Discord stand-in's request log and fills in each generation's uploads."""

    def __init__(self, discord: FakeDiscord) -> None:
        self.discord = discord
        self.by_name: dict[str, Generation] = {}
        self.by_thread: dict[int, Generation] = {}
        self._next = 0
        self._open: list[RecordedRequest] = []
        self.last_partial: bytes = b""

    def add(self, generation: Generation) -> None:
        """Start following a generation (its prompt is its thread's name)."""
        self.by_name[generation.prompt] = generation

    def scan(self) -> None:
        """Read the requests answered since the last scan."""
        requests = self.discord.requests
        self._open.extend(requests[self._next :])
        self._next = len(requests)
        waiting: list[RecordedRequest] = []
        for request in self._open:
            if request.status == 0:
                waiting.append(request)
            else:
                self._apply(request)
        self._open = waiting

    def _apply(self, request: RecordedRequest) -> None:
        if request.method == "POST" and (match := THREAD_PATH.match(request.path)):
            body = request.json if isinstance(request.json, dict) else {}
            generation = self.by_name.get(str(body.get("name")))
            if generation is not None and request.status < 300:
                generation.thread_id = int(match.group(2))
                self.by_thread[generation.thread_id] = generation
            return
        match = MESSAGE_PATH.match(request.path)
        if match is None or request.method not in ("POST", "PATCH"):
            return
        generation = self.by_thread.get(int(match.group(1)))
        if generation is None:
            return
        if request.status >= 300:
            generation.failed = f"{request.method} {request.path} -> {request.status}"
            return
        message_id = int(match.group(2)) if match.group(2) else None
        if message_id is not None and generation.message_id is None:
            generation.message_id = message_id
        body = request.json if isinstance(request.json, dict) else {}
        if not request.files and "\u26a0" in str(body.get("content") or ""):
            generation.failed = str(body.get("content"))
        for upload in request.files:
            stem = upload.filename.rsplit(".", 1)[0]
            if stem.startswith("partial-") and stem[8:].isdigit():
                generation.uploads.append((int(stem[8:]), request.at))
                self.last_partial = upload.data
            elif stem == "image":
                generation.final_at = request.at
                generation.final_message_id = message_id or generation.message_id


def prompt_of(body: Mapping[str, Any] | None) -> str | None:
    """The user text of a Responses API request body, as the bot sends a new turn."""
    try:
        return str(body["input"][0]["content"][0]["text"]) if body else None
    except (KeyError, IndexError, TypeError):
        return None


@dataclass(frozen=True)
class OpenAITimes:
    """When the OpenAI stand-in sent each partial and the final of one generation."""

    partials: dict[int, float]
    final: float | None


def openai_times(openai: BenchOpenAI) -> dict[str, OpenAITimes]:
    """Per prompt: when the stand-in flushed each partial image and the completed response."""
    index_of: dict[int, str] = {}
    for index, request in enumerate(openai.requests):
        prompt = prompt_of(request.json) if request.path == "/v1/responses" else None
        if prompt is not None:
            index_of[index] = prompt
    partials: dict[str, dict[int, float]] = {}
    finals: dict[str, float] = {}
    for event in list(openai.sent):
        prompt = index_of.get(event.request_index)
        if prompt is None:
            continue
        if event.type == PARTIAL_EVENT and event.partial_index is not None:
            partials.setdefault(prompt, {})[event.partial_index] = event.at
        elif event.type == FINAL_EVENT:
            finals[prompt] = event.at
    return {
        prompt: OpenAITimes(partials.get(prompt, {}), finals.get(prompt))
        for prompt in set(partials) | set(finals)
    }


class BotSession:
    """The stand-ins, the bot process, and helpers to drive and observe them."""

    def __init__(
        self,
        discord: FakeDiscord,
        openai: BenchOpenAI,
        workdir: Path,
        users: list[dict[str, Any]],
    ) -> None:
        self.discord = discord
        self.openai = openai
        self.workdir = workdir
        self.users = users
        self.tracker = Tracker(discord)
        self.lag_file = workdir / "loop-lag.json"
        self.log_file = workdir / "bot.log"
        self.process: asyncio.subprocess.Process | None = None
        self.monitor = LoopLagMonitor(workdir / "bench-loop-lag.json")
        self._serial = 0

    @property
    def pid(self) -> int:
        """The bot process id."""
        assert self.process is not None
        return self.process.pid

    def environment(self, extra: Mapping[str, str]) -> dict[str, str]:
        """The bot's environment: the stand-ins' URLs, a fresh database, no inherited secrets."""
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPENAI_", "DISCORD_", "DATABASE_", "LOOP_LAG"))
        }
        env.update(
            {
                # BENCH_BOT_ROOT runs another checkout's bot (e.g. the base commit) under the
                # same benchmark, for a before/after measured the same way.
                "PYTHONPATH": os.environ.get("BENCH_BOT_ROOT", str(ROOT)),
                "DISCORD_TOKEN": BOT_TOKEN,
                "OPENAI_API_KEY": "sk-bench-local-only",
                "OPENAI_BASE_URL": self.openai.base_url,
                "OPENAI_MAX_RETRIES": "0",
                "DISCORD_API_BASE_URL": self.discord.api_base,
                "DISCORD_GATEWAY_URL": self.discord.gateway_url,
                "DATABASE_URL": f"sqlite:///{(self.workdir / 'bot.db').resolve()}",
                "GLOBAL_CONCURRENCY": "256",
                "USER_CONCURRENCY": "8",
                "LOOP_LAG_FILE": str(self.lag_file),
                "LOG_LEVEL": "INFO",
            }
        )
        env.update(extra)
        return env

    def log_tail(self, lines: int = 30) -> str:
        """The end of the bot's log, for error reports."""
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    async def start(self, extra_env: Mapping[str, str]) -> None:
        """Start the bot process and wait until it is ready to take commands."""
        with self.log_file.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bot",
                "run",
                cwd=self.workdir,
                env=self.environment(extra_env),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        connected: float | None = None
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(
                    f"the bot exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            now = loop.time()
            if connected is None and self.discord.gateway_sessions and self.discord.commands():
                connected = now
            ready_logged = "ready as" in self.log_file.read_text(errors="replace")
            if connected is not None and (ready_logged or now - connected > READY_GRACE):
                break
            if now > deadline:
                raise TimeoutError(f"the bot was not ready in {READY_TIMEOUT}s:\n{self.log_tail()}")
            await asyncio.sleep(0.05)
        self.monitor.start()

    async def stop(self) -> None:
        """Stop the bot (SIGTERM, then SIGKILL after 15 s) and the in-process lag monitor."""
        await self.monitor.stop()
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 15)
        except TimeoutError:
            process.kill()
            await process.wait()

    def cpu_seconds(self) -> float:
        """CPU seconds the bot process has used so far."""
        return cpu_seconds(self.pid)

    def memory(self) -> dict[str, int]:
        """The bot process's VmRSS and VmHWM in bytes."""
        return memory_bytes(self.pid)

    async def lag_snapshot(self, newer_than: float = 0.0, within: float = 10.0) -> LagSnapshot:
        """The bot's loop-lag file once it was written after `newer_than` (time.monotonic())."""
        deadline = time.monotonic() + within
        while True:
            snapshot = LagSnapshot.read(self.lag_file)
            if snapshot is not None and snapshot.updated_at > newer_than:
                return snapshot
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.lag_file} was not updated:\n{self.log_tail()}")
            await asyncio.sleep(0.05)

    def user(self, index: int) -> dict[str, Any]:
        """The index-th bench user (wrapping around)."""
        return self.users[index % len(self.users)]

    async def imagine(
        self, label: str, *, user: dict[str, Any], partials: int, size: str = "1024x1024"
    ) -> Generation:
        """Run `/imagine` as `user` with a unique prompt and start following it."""
        self._serial += 1
        prompt = f"bench {label} {self._serial:04d}: a lighthouse in a storm"
        generation = Generation(
            prompt=prompt,
            user_id=int(user["id"]),
            partials=partials,
            size=size,
            started=time.monotonic(),
        )
        self.tracker.add(generation)
        await self.discord.slash(
            "imagine", {"prompt": prompt, "partials": partials, "size": size}, user=user
        )
        return generation

    async def wait_done(self, generations: list[Generation], within: float) -> None:
        """Wait until every generation's final image (or failure) reached the stand-in."""

        def finished() -> bool:
            self.tracker.scan()
            return all(g.done for g in generations)

        try:
            await self.discord.wait_for(finished, timeout=within)
        except TimeoutError:
            missing = [g.prompt for g in generations if not g.done]
            raise TimeoutError(
                f"{len(missing)} of {len(generations)} generations did not finish in "
                f"{within}s (e.g. {missing[:3]}):\n{self.log_tail()}"
            ) from None
        failed = [g for g in generations if g.failed]
        if failed:
            raise RuntimeError(
                f"{len(failed)} generation(s) failed, e.g. {failed[0].prompt!r}: "
                f"{failed[0].failed}\n{self.log_tail()}"
            )

    def versions(self, message_id: int) -> list[MessageVersion]:
        """Every state of a message on the Discord stand-in."""
        return self.discord.versions(message_id)

    def first_image_at(self, generation: Generation) -> float:
        """When the generation's progress message first showed an image (partial or final)."""
        message_id = generation.message_id or generation.final_message_id
        assert message_id is not None, generation.prompt
        for version in self.versions(message_id):
            if version.attachments:
                return version.at
        raise LookupError(f"no image was ever shown for {generation.prompt!r}")

    def final_shown_at(self, generation: Generation) -> float:
        """When the generation's final image became visible."""
        message_id = generation.final_message_id or generation.message_id
        assert message_id is not None, generation.prompt
        for version in self.versions(message_id):
            if any(a.filename.startswith("image.") for a in version.attachments):
                return version.at
        raise LookupError(f"the final of {generation.prompt!r} was never shown")


@contextlib.asynccontextmanager
async def bot_session(
    workdir: Path,
    *,
    users: int = 8,
    heartbeat_interval_ms: int | None = None,
    photo_like: bool = True,
    env: Mapping[str, str] | None = None,
    before_start: Callable[[BotSession], None] | None = None,
) -> AsyncIterator[BotSession]:
    """Both stand-ins in this process and the bot as its own process, ready; all stopped on exit."""
    workdir.mkdir(parents=True, exist_ok=True)
    options: dict[str, Any] = {"token": BOT_TOKEN}
    if heartbeat_interval_ms is not None:
        options["heartbeat_interval_ms"] = heartbeat_interval_ms
    openai = BenchOpenAI(photo_like=photo_like)
    async with FakeDiscord(**options) as discord, openai:
        members = [discord.add_user(f"bench-user-{i:03d}") for i in range(users)]
        session = BotSession(discord, openai, workdir, members)
        if before_start is not None:
            before_start(session)
        try:
            await session.start(env or {})
            yield session
        finally:
            await session.stop()
