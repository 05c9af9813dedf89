"""Signed, expiring, single-use links for the web studio (paint a mask, browse a thread).

A token is `<claims>.<signature>`: the claims (purpose, subject, user, expiry, a random nonce)
in URL-safe base64, signed with HMAC-SHA256 under a key that lives only in this process. The
key is made at start-up and never stored, so a restart invalidates every link (they live ten
minutes anyway), and the record of used nonces can stay in memory: it dies with the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["Claims", "Purpose", "TokenError", "TokenSigner"]

# Longer than any real token, so an oversized one is refused before it is decoded.
MAX_TOKEN_LENGTH = 512


class Purpose(StrEnum):
    """What a token lets its holder do."""

    PAINT = "paint"
    GALLERY = "gallery"


class TokenError(Exception):
    """A token that is forged, malformed, for something else, expired or already used."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a valid token says: who may do what with which turn (or thread), until when."""

    purpose: Purpose
    subject: int
    user_id: int
    expires_at: float
    nonce: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenSigner:
    """Issues and checks tokens; remembers which single-use ones were spent."""

    def __init__(self, key: bytes | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        if len(self._key) < 16:
            raise ValueError("a token key needs at least 16 bytes")
        self._clock = clock
        # nonce -> expiry; a spent nonce is remembered until its token would have expired.
        self._spent: dict[str, float] = {}

    def issue(self, purpose: Purpose, subject: int, user_id: int, *, ttl: float) -> str:
        """A token for `user_id` to use `subject` for `purpose` during the next `ttl` seconds."""
        claims = {
            "p": purpose.value,
            "s": subject,
            "u": user_id,
            "e": round(self._clock() + ttl, 3),
            "n": secrets.token_urlsafe(12),
        }
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest())

    def verify(self, token: str, purpose: Purpose) -> Claims:
        """The claims of a genuine, unexpired, unspent token for `purpose`; TokenError otherwise."""
        if len(token) > MAX_TOKEN_LENGTH or token.count(".") != 1 or not token.isascii():
            raise TokenError("malformed")
        body, signature = token.split(".")
        if not hmac.compare_digest(self._sign(body), signature):
            raise TokenError("bad signature")
        try:
            raw = json.loads(_unb64(body))
            claims = Claims(
                purpose=Purpose(raw["p"]),
                subject=int(raw["s"]),
                user_id=int(raw["u"]),
                expires_at=float(raw["e"]),
                nonce=str(raw["n"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TokenError("malformed") from exc
        if claims.purpose is not purpose:
            raise TokenError("wrong purpose")
        if self._clock() >= claims.expires_at:
            raise TokenError("expired")
        if claims.nonce in self._spent:
            raise TokenError("used")
        return claims

    def spend(self, claims: Claims) -> None:
        """Mark a single-use token used (call it before acting, so a second request fails)."""
        if claims.nonce in self._spent:
            raise TokenError("used")
        now = self._clock()
        for nonce in [n for n, expiry in self._spent.items() if expiry <= now]:
            del self._spent[nonce]
        self._spent[claims.nonce] = claims.expires_at

    def refund(self, claims: Claims) -> None:
        """Give a spent token back (the request it carried was refused for its content)."""
        self._spent.pop(claims.nonce, None)
