"""Budgets: the limits that protect the operator's bill, their windows, and the admission gate."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bot.core.config import BUDGET_KEYS, GuildConfig
from bot.core.errors import BotError
from storage.base import AdmissionGate, Occupancy, Window

# Queued plus running jobs one member may have at once.
MAX_PENDING_PER_USER = 5


@dataclass(frozen=True, slots=True)
class Limits:
    """Budgets and concurrency; a server's /config can tighten the money limits."""

    global_concurrency: int = 4
    user_concurrency: int = 1
    user_daily_usd: float | None = None
    user_daily_images: int | None = None
    guild_monthly_usd: float | None = None
    guild_monthly_images: int | None = None
    max_pending_per_user: int = MAX_PENDING_PER_USER
    # The role whose quota tier set `user_daily_images`, if one did.
    tier_role_id: int | None = None

    def tightened_by(self, config: GuildConfig, role_ids: tuple[int, ...] = ()) -> Limits:
        """These limits under a server's /config: its budgets tighten (never loosen) them, and
        a member's quota tier (the largest of their roles') sets their daily images, within
        the operator's own limit.
        """
        changes: dict[str, Any] = {}
        for name in BUDGET_KEYS:
            value = getattr(config, name)
            if value is None:
                continue
            current = getattr(self, name)
            changes[name] = value if current is None else min(current, value)
        tier = config.tier_for(role_ids)
        if tier is not None:
            role, images = tier
            operator = self.user_daily_images
            changes["user_daily_images"] = images if operator is None else min(operator, images)
            changes["tier_role_id"] = role
        return dataclasses.replace(self, **changes)


def day_window(now: float) -> Window:
    """The UTC day of `now`: a clock that ran fast cannot leave rows that count today."""
    d = datetime.fromtimestamp(now, UTC)
    start = datetime(d.year, d.month, d.day, tzinfo=UTC)
    return Window(since=start.timestamp(), until=(start + timedelta(days=1)).timestamp())


def month_window(now: float) -> Window:
    """The UTC calendar month of `now`."""
    d = datetime.fromtimestamp(now, UTC)
    start = datetime(d.year, d.month, 1, tzinfo=UTC)
    following = datetime(d.year + d.month // 12, d.month % 12 + 1, 1, tzinfo=UTC)
    return Window(since=start.timestamp(), until=following.timestamp())


def admission_gate(limits: Limits, *, estimate: float, images: int = 1) -> AdmissionGate:
    """The check run inside the admission transaction: BotError when the job does not fit.

    Budgets count what was spent in their window plus what queued and running jobs have
    reserved; the pending cap counts queued plus running jobs.
    """

    def gate(used: Occupancy) -> None:
        if used.user_pending >= limits.max_pending_per_user:
            raise BotError("fail.too_many_jobs", count=used.user_pending)
        # A request for several images at once says so: the limit may have room for fewer.
        several = images > 1
        if limits.user_daily_images is not None and (
            used.user_images + images > limits.user_daily_images
        ):
            if limits.tier_role_id is not None:
                raise BotError(
                    "fail.budget_user_images_tier_asked"
                    if several
                    else "fail.budget_user_images_tier",
                    used=used.user_images,
                    limit=limits.user_daily_images,
                    role=f"<@&{limits.tier_role_id}>",
                    asked=images,
                )
            raise BotError(
                "fail.budget_user_images_asked" if several else "fail.budget_user_images",
                used=used.user_images,
                limit=limits.user_daily_images,
                asked=images,
            )
        if limits.user_daily_usd is not None and used.user_usd + estimate > limits.user_daily_usd:
            raise BotError(
                "fail.budget_user_usd",
                used=used.user_usd,
                limit=limits.user_daily_usd,
                estimate=estimate,
            )
        if limits.guild_monthly_images is not None and (
            used.guild_images + images > limits.guild_monthly_images
        ):
            raise BotError(
                "fail.budget_guild_images_asked" if several else "fail.budget_guild_images",
                used=used.guild_images,
                limit=limits.guild_monthly_images,
                asked=images,
            )
        if (
            limits.guild_monthly_usd is not None
            and used.guild_usd + estimate > limits.guild_monthly_usd
        ):
            raise BotError(
                "fail.budget_guild_usd", used=used.guild_usd, limit=limits.guild_monthly_usd
            )

    return gate
