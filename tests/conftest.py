"""Shared fixtures: the stand-ins on random ports, and waiting on conditions with a deadline."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from fakes.openai_api import FakeOpenAI

ROOT = Path(__file__).resolve().parent.parent
T = TypeVar("T")


async def wait_until(
    predicate: Callable[[], T | bool | None], *, timeout: float = 10.0, what: str = "condition"
) -> T:
    """Poll `predicate` until it is truthy (returning its value), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.01)


@pytest.fixture
async def fake_openai() -> AsyncIterator[FakeOpenAI]:
    async with FakeOpenAI() as fake:
        yield fake


@dataclass
class CliResult:
    code: int
    stdout: str
    stderr: str


def cli_env(
    fake: FakeOpenAI, tmp_path: Path, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    """An environment for `python -m bot` against the stand-in, isolated from any local .env."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPENAI_", "DISCORD_", "DATABASE_"))
    }
    env.update(
        {
            "OPENAI_API_KEY": "sk-test-not-a-real-key-000000",
            "OPENAI_BASE_URL": fake.base_url,
            "OPENAI_MAX_RETRIES": "0",
            "DATABASE_URL": f"sqlite:///{tmp_path / 'bot.db'}",
            "PYTHONPATH": str(ROOT),
        }
    )
    env.update(extra or {})
    return env


async def run_cli(
    args: list[str],
    env: Mapping[str, str],
    cwd: Path,
    *,
    while_running: Callable[[], Awaitable[None]] | None = None,
    timeout: float = 60.0,
) -> CliResult:
    """Run `python -m bot ARGS` as its own process (cwd without a .env) and collect its output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bot",
        *args,
        cwd=cwd,
        env=dict(env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    communicate = asyncio.ensure_future(process.communicate())
    if while_running is not None:
        watcher = asyncio.ensure_future(while_running())
        await asyncio.wait(
            {watcher, communicate}, return_when=asyncio.FIRST_COMPLETED, timeout=timeout
        )
        if not watcher.done():
            watcher.cancel()
            _out, err = await communicate
            raise AssertionError(
                f"the process ended first (exit {process.returncode}): {err.decode()[-2000:]}"
            )
        watcher.result()
    async with asyncio.timeout(timeout):
        stdout, stderr = await communicate
    assert process.returncode is not None
    return CliResult(process.returncode, stdout.decode(), stderr.decode())
