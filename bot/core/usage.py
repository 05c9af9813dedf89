"""The usage report behind /usage: a member's spend, and the server's for its admins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from bot.core.budgets import Limits, day_window, month_window
from storage.base import DayUsage, Store, UsageTotals, UserUsage

CHART_DAYS = 30


@dataclass(frozen=True, slots=True)
class UsageReport:
    """What /usage shows; `server_*` are filled for server admins only."""

    today: UsageTotals
    month: UsageTotals
    limits: Limits
    days: list[DayUsage]
    server_month: UsageTotals | None = None
    top_users: list[UserUsage] | None = None


def calendar(days: list[DayUsage], *, now: float, count: int = CHART_DAYS) -> list[DayUsage]:
    """The last `count` UTC days up to today, oldest first, with empty days as zero."""
    by_day = {d.day: d for d in days}
    today = datetime.fromtimestamp(now, UTC).date()
    axis = [(today - timedelta(days=back)).isoformat() for back in range(count - 1, -1, -1)]
    return [by_day.get(day, DayUsage(day=day, images=0, cost_usd=0.0)) for day in axis]


async def usage_report(
    store: Store,
    *,
    user_id: int,
    guild_id: int | None,
    is_admin: bool,
    limits: Limits,
    now: float,
) -> UsageReport:
    """A member's usage today and this month with a 30-day chart; the server's too for admins."""
    day, month = day_window(now), month_window(now)
    today = await store.usage_totals(since=day.since, until=day.until, user_id=user_id)
    this_month = await store.usage_totals(since=month.since, until=month.until, user_id=user_id)
    since = day_window(now - (CHART_DAYS - 1) * 86400).since
    if guild_id is not None and is_admin:
        server = await store.usage_totals(since=month.since, until=month.until, guild_id=guild_id)
        return UsageReport(
            today=today,
            month=this_month,
            limits=limits,
            days=calendar(await store.usage_by_day(since=since, guild_id=guild_id), now=now),
            server_month=server,
            top_users=(await store.usage_by_user(since=since, guild_id=guild_id))[:10],
        )
    return UsageReport(
        today=today,
        month=this_month,
        limits=limits,
        days=calendar(await store.usage_by_day(since=since, user_id=user_id), now=now),
    )
