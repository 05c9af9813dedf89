"""Helpers for end-to-end tests: the bot in-process against both stand-ins, and reading what users see."""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from fakes.discord_api import FakeDiscord
from fakes.openai_api import FakeOpenAI
from tests.conftest import cli_env


def png(size: tuple[int, int] = (1024, 1024), color: tuple[int, int, int] = (200, 40, 40)) -> bytes:
    """A one-colour PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return buffer.getvalue()


def custom_ids(message: dict[str, Any]) -> list[str]:
    """Every component custom_id of a message."""
    found: list[str] = []
    for row in message.get("components") or []:
        for component in row.get("components") or []:
            if "custom_id" in component:
                found.append(component["custom_id"])
    return found


def finals(fake: FakeDiscord, channel_id: Any) -> list[dict[str, Any]]:
    """Messages in a channel that show a final image (they carry the Reroll button)."""
    return [
        m
        for m in fake.messages(channel_id)
        if any(c.startswith("img:reroll:") for c in custom_ids(m))
    ]


def failures(fake: FakeDiscord, channel_id: Any) -> list[dict[str, Any]]:
    """Messages in a channel that report a failure (they carry the Retry button)."""
    return [
        m
        for m in fake.messages(channel_id)
        if any(c.startswith("img:retry:") for c in custom_ids(m))
    ]


def ephemeral_texts(fake: FakeDiscord) -> list[str]:
    """The content of every ephemeral (flag 64) message anywhere."""
    texts: list[str] = []
    for channel_id in {m["channel_id"] for t in fake.threads() for m in fake.messages(t["id"])} | {
        fake.channel["id"]
    }:
        texts += [m["content"] for m in fake.messages(channel_id) if int(m.get("flags") or 0) & 64]
    return texts


def button(message: dict[str, Any], action: str) -> str:
    """The custom_id of the button for `action` on a message."""
    for custom_id in custom_ids(message):
        if custom_id.startswith(f"img:{action}:"):
            return custom_id
    raise AssertionError(f"no {action} button on message {message['id']}: {custom_ids(message)}")


class ErrorLog(logging.Handler):
    """Collects ERROR records, so a swallowed exception fails the test."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextlib.contextmanager
def no_errors_logged() -> Iterator[ErrorLog]:
    """Collect ERROR records while the block runs; fail if any was logged."""
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
    assert [r.getMessage() for r in handler.records] == []


@pytest.fixture
def error_log() -> Iterator[ErrorLog]:
    with no_errors_logged() as handler:
        yield handler


class BotProcess:
    """One `python -m bot run` process, logging to a file."""

    def __init__(
        self,
        discord: FakeDiscord,
        openai: FakeOpenAI,
        workdir: Path,
        *,
        shard_ids: str | None = None,
        shard_count: int | None = None,
        database_url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """`shard_ids` ("0-3", "0,2") and `shard_count` run it on some shards; `database_url`
        (a PostgreSQL one, say) replaces the SQLite file in `workdir`; `env` goes to every run."""
        self.discord = discord
        self.openai = openai
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.env = dict(env or {})
        if shard_ids is not None:
            self.env["SHARD_IDS"] = shard_ids
        if shard_count is not None:
            self.env["SHARD_COUNT"] = str(shard_count)
        if database_url is not None:
            self.env["DATABASE_URL"] = database_url
        self.process: asyncio.subprocess.Process | None = None
        self.runs = 0

    @property
    def log(self) -> str:
        return "".join(p.read_text() for p in sorted(self.workdir.glob("bot-*.log")))

    async def start(self, env_extra: dict[str, str] | None = None, *, ready: bool = True) -> None:
        """Start the bot; wait until it is ready (or, with `ready=False`, connected)."""
        sessions = self.discord.gateway_sessions
        self.runs += 1
        env = cli_env(
            self.openai,
            self.workdir,
            {
                "DISCORD_TOKEN": self.discord.token,
                "DISCORD_API_BASE_URL": self.discord.api_base,
                "DISCORD_GATEWAY_URL": self.discord.gateway_url,
                "LOG_LEVEL": "INFO",
                **self.env,
                **(env_extra or {}),
            },
        )
        log = (self.workdir / f"bot-{self.runs}.log").open("w")
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bot", "run", cwd=self.workdir, env=env, stdout=log, stderr=log
        )
        log.close()
        await self.discord.wait_for(lambda: self.discord.gateway_sessions > sessions, timeout=30)
        if ready:
            await self.discord.wait_for(lambda: self.log.count("ready as") >= self.runs, timeout=30)

    async def exited(self, timeout: float = 30) -> int:
        """Wait for the process to end by itself; return its exit code."""
        assert self.process is not None
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
        self.process = None
        return code

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        async with asyncio.timeout(30):
            code = await self.process.wait()
        self.process = None
        return code


@pytest.fixture
async def stand_ins(tmp_path: Path) -> AsyncIterator[tuple[FakeDiscord, FakeOpenAI, BotProcess]]:
    """Both stand-ins and a `python -m bot run` process (started by the test); no traceback."""
    async with FakeDiscord() as discord, FakeOpenAI() as openai:
        bot = BotProcess(discord, openai, tmp_path)
        try:
            yield discord, openai, bot
        finally:
            if bot.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    bot.process.kill()
                await bot.process.wait()
        assert "Traceback" not in bot.log, bot.log[-4000:]
        assert discord.unhandled == []
