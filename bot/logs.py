"""Logging set-up: one format, and secrets scrubbed from every record."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

from bot.core.logcontext import ContextFilter

_URL_TOKEN = r"[A-Za-z0-9_\-.%]+"

# Shapes of credentials that must never reach a log even if they are not ours. discord.py at
# DEBUG logs interaction tokens in the raw gateway events (a dict repr, or JSON), in webhook
# and interaction callback URLs, and in rate-limit buckets ("<webhook id>+<token>").
_SUBSTITUTIONS = (
    (re.compile(r"sk-[A-Za-z0-9_\-]{8,}"), "<redacted>"),
    (
        re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?)(bot|bearer)\s+[^\s'\"]+"),
        r"\1\2 <redacted>",
    ),
    (re.compile(r"(/webhooks/\d+/)" + _URL_TOKEN), r"\1<redacted>"),
    (re.compile(r"(/interactions/\d+/)" + _URL_TOKEN), r"\1<redacted>"),
    # The same paths with their slashes percent-encoded (a URL inside a query string).
    (re.compile(r"(?i)(%2Fwebhooks%2F\d+%2F)" + _URL_TOKEN), r"\1<redacted>"),
    (re.compile(r"(?i)(%2Finteractions%2F\d+%2F)" + _URL_TOKEN), r"\1<redacted>"),
    # "token": "...", 'webhook_token': '...', "access_token":"..." (JSON, also escaped inside a
    # string, and Python reprs).
    (
        re.compile(r"(?i)(['\"][A-Za-z_]*token\\?['\"]\s*:\s*\\?['\"])[^'\"\\]*"),
        r"\1<redacted>",
    ),
    # token=..., webhook_token='...' (reprs, query strings, keyword arguments).
    (
        re.compile(r"(?i)(\b[A-Za-z_]*token\s*=\s*['\"]?)[^\s'\"&,)>]+"),
        r"\1<redacted>",
    ),
    # Rate-limit bucket keys join the webhook id and its token with "+".
    (
        re.compile(r"(\b\d{5,}\+)(?=[A-Za-z0-9_\-.]*[A-Za-z_\-])[A-Za-z0-9_\-.]{20,}"),
        r"\1<redacted>",
    ),
    # Discord's interaction tokens are base64 of "interaction:...": wherever they turn up.
    (re.compile(r"aW50ZXJhY3Rpb246[A-Za-z0-9_\-.=]*"), "<redacted>"),
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
        for pattern, replacement in _SUBSTITUTIONS:
            text = pattern.sub(replacement, text)
        return text

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
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s%(context)s")
    )
    handler.addFilter(RedactingFilter(secrets))
    # The job, thread and OpenAI request a line belongs to, as key=value pairs at its end.
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The HTTP clients log request lines at INFO; keep them at WARNING.
    for name in ("httpx", "httpx2", "httpcore", "httpcore2", "openai", "aiohttp.access"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # The shared job queue logs every deferred, started and finished ticket at INFO: the
    # ledger's own lines say the same per job.
    logging.getLogger("procrastinate").setLevel(logging.WARNING)
