"""Logging set-up: one format, and secrets scrubbed from every record."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

# Shapes of credentials that must never reach a log even if they are not ours.
_PATTERNS = (
    re.compile(r"sk-[A-Za-z0-9_\-]{8,}"),
    re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(bot|bearer)\s+[^\s'\"]+"),
    re.compile(r"/webhooks/(\d+)/[A-Za-z0-9_\-.]+"),
    re.compile(r"/interactions/(\d+)/[A-Za-z0-9_\-.]+"),
)


class RedactingFilter(logging.Filter):
    """Replaces known secrets and credential-shaped strings in log messages."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if s and len(s) >= 6]

    def redact(self, text: str) -> str:
        """`text` with secrets replaced by `<redacted>`."""
        for secret in self._secrets:
            text = text.replace(secret, "<redacted>")
        text = _PATTERNS[0].sub("<redacted>", text)
        text = _PATTERNS[1].sub(r"\1\2 <redacted>", text)
        text = _PATTERNS[2].sub(r"/webhooks/\1/<redacted>", text)
        return _PATTERNS[3].sub(r"/interactions/\1/<redacted>", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            # Tracebacks are rendered later by the formatter: render now and scrub.
            formatter = logging.Formatter()
            cleaned = cleaned + "\n" + self.redact(formatter.formatException(record.exc_info))
            record.exc_info = None
            record.exc_text = None
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = ()
        return True


def setup_logging(level: str, secrets: Iterable[str]) -> None:
    """Log to stderr at `level`, with secrets scrubbed from every handler's output."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The HTTP clients log request lines at INFO; keep them at WARNING.
    for name in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
