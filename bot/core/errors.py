"""Domain errors of the core: what went wrong, as a kind and a localizable message."""

from __future__ import annotations

from enum import StrEnum

from bot.core import i18n


class FailureKind(StrEnum):
    """Why a turn failed; decides the message, the exit code and whether Retry helps."""

    MODERATION = "moderation"
    RATE_LIMITED = "rate_limited"
    QUOTA = "quota"
    BAD_REQUEST = "bad_request"
    CONTEXT_EXPIRED = "context_expired"
    TRANSIENT = "transient"
    INTERRUPTED = "interrupted"
    AUTH = "auth"
    BUDGET = "budget"


class BotError(Exception):
    """An error whose message is safe to show a user, in any supported locale."""

    def __init__(self, key: str, /, **params: object) -> None:
        self.key = key
        self.params = params
        super().__init__(i18n.t("en", key, **params))

    def localized(self, locale: str | None) -> str:
        """The message in `locale`."""
        return i18n.t(locale, self.key, **self.params)


class BadInput(BotError):
    """The user's input cannot be sent: nothing was spent."""
