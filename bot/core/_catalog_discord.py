"""Messages of the Discord layer: command names, descriptions, choices, replies."""

from __future__ import annotations

DISCORD_MESSAGES: dict[str, dict[str, str]] = {}
