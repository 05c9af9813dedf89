"""Secrets scrubbed from logs: every shape discord.py logs an interaction token in, and the real
client at DEBUG against the Discord stand-in."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.logs import RedactingFilter
from bot.sandbox import SANDBOX_KEY, sandbox
from fakes.discord_api import FakeDiscord
from fakes.openai_api import Timeline
from tests.e2e import finals

TOKEN = "itok-1577949146042597376-Ozagx9pJ8Cam--IRl-RLaa6M-KAhu91q"
DISCORD_TOKEN = "aW50ZXJhY3Rpb246MTU3Nzk0OTE0NjA0MjU5NzM3NjpPemFneDlwSjhDYW0"

SHAPES = [
    # the raw gateway event, as discord.py logs the dict, and as JSON
    f"WebSocket Event: {{'t': 'INTERACTION_CREATE', 'd': {{'token': '{TOKEN}', 'version': 1}}}}",
    f'Received {{"t":"INTERACTION_CREATE","d":{{"token":"{TOKEN}","version":1}}}}',
    f'{{"token" : "{TOKEN}"}}',
    f'"{{\\"webhook_token\\": \\"{TOKEN}\\"}}"',
    # reprs and keyword arguments
    f"<PartialWebhook id=123 token={TOKEN}>",
    f"Route(webhook_id=123, webhook_token='{TOKEN}')",
    # webhook and interaction URLs, plain and percent-encoded
    f"Webhook ID 1 with POST https://discord.com/api/v10/interactions/1577949146042597376/{TOKEN}/callback has returned status code 204",
    f"Webhook ID 1 with PATCH https://discord.com/api/v10/webhooks/1577949145224708096/{TOKEN}/messages/@original has returned 200",
    f"POST /webhooks/1577949145224708096/{TOKEN}?wait=1",
    f"redirect=https%3A%2F%2Fdiscord.com%2Fapi%2Fv10%2Fwebhooks%2F1577949145224708096%2F{TOKEN}",
    # a rate-limit bucket: webhook id + token
    f"Rate limit is being handled by bucket hash abc with '1577949145224708096+{TOKEN}' major parameters",
]


@pytest.mark.parametrize("line", SHAPES, ids=[f"shape-{i}" for i in range(len(SHAPES))])
def test_every_shape_of_an_interaction_token_is_redacted(line: str) -> None:
    cleaned = RedactingFilter([]).redact(line)
    assert TOKEN not in cleaned
    assert "Ozagx9pJ8Cam" not in cleaned
    assert "<redacted>" in cleaned


def test_a_discord_interaction_token_is_redacted_anywhere() -> None:
    cleaned = RedactingFilter([]).redact(f"the token {DISCORD_TOKEN} showed up")
    assert DISCORD_TOKEN not in cleaned


def test_ordinary_text_is_left_alone() -> None:
    line = "usage: {'input_tokens': 26, 'output_tokens': 10}, max_tokens=100, 1234+5678 images"
    assert RedactingFilter([]).redact(line) == line


class _Seen(logging.Handler):
    """Counts records whose message, before any redaction, contains a string."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@dataclass
class DebugLogs:
    seen: _Seen
    output: io.StringIO
    handler: logging.Handler


@pytest.fixture
def debug_logs() -> Iterator[DebugLogs]:
    """Every record at DEBUG, unfiltered (to know what was logged) and through `handler`."""
    root = logging.getLogger()
    seen = _Seen()
    output = io.StringIO()
    handler = logging.StreamHandler(output)
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    level = root.level
    # `seen` first: the filter rewrites the record for the handlers after it.
    root.addHandler(seen)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield DebugLogs(seen, output, handler)
    finally:
        root.removeHandler(handler)
        root.removeHandler(seen)
        root.setLevel(level)


async def test_the_interaction_token_never_reaches_the_log_at_debug(
    tmp_path: Path, debug_logs: DebugLogs
) -> None:
    seen, output = debug_logs.seen, debug_logs.output
    discord = FakeDiscord()
    # As bot.__main__ sets it up: the filter knows the bot token and the API key.
    debug_logs.handler.addFilter(RedactingFilter([discord.token, SANDBOX_KEY]))
    async with sandbox(tmp_path, timeline=Timeline(0.05, 0.05, 0.05), discord=discord) as box:
        d = box.discord
        interaction = await d.slash("imagine", {"prompt": "a lighthouse at dusk"})
        thread = await d.wait_for(lambda: next(iter(d.threads(d.channel["id"])), None), 15)
        await d.wait_for(lambda: finals(d, thread["id"]) or None, timeout=15)
        await box.wait_idle()
    token = interaction.token
    # discord.py did log it (gateway event, callback and webhook URLs): the check means something.
    raw = [m for m in seen.messages if token in m]
    assert any("INTERACTION_CREATE" in m for m in raw), "no gateway event carried the token"
    assert any("/interactions/" in m for m in raw), "no callback URL carried the token"
    assert any("/webhooks/" in m for m in raw), "no webhook URL carried the token"
    text = output.getvalue()
    assert token not in text
    # The random part alone (the stand-in's tokens are itok-<interaction id>-<random>; the
    # random part may itself contain "-").
    secret = token.split("-", 2)[2]
    assert len(secret) >= 24 and secret not in text
    assert d.token not in text
    assert SANDBOX_KEY not in text
    assert text.count("<redacted>") >= len(raw)
