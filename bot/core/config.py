"""Typed server configuration (/config) and member settings (/settings), and how they merge."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from bot.core.options import OPTION_NAMES, ImageOptions, validate_options

# The money limits a server's /config can tighten.
BUDGET_KEYS = ("user_daily_usd", "user_daily_images", "guild_monthly_usd", "guild_monthly_images")


class ContinuePolicy(StrEnum):
    """Who may add turns to a conversation (or press the buttons under its images)."""

    ANYONE = "anyone"
    AUTHOR = "author"
    ROLE = "role"


@dataclass(frozen=True, slots=True)
class GuildConfig:
    """One server's /config; every field None (or empty) means "the bot's default"."""

    user_daily_usd: float | None = None
    user_daily_images: int | None = None
    guild_monthly_usd: float | None = None
    guild_monthly_images: int | None = None
    allowed_channels: tuple[int, ...] = ()
    default_model: str | None = None
    allowed_models: tuple[str, ...] = ()
    moderation: str | None = None
    continue_policy: ContinuePolicy = ContinuePolicy.ANYONE
    continue_role_id: int | None = None
    partials_enabled: bool | None = None
    engine: str | None = None
    # Daily image quotas by role, (role id, images a day): a member gets the largest of theirs.
    role_tiers: tuple[tuple[int, int], ...] = ()
    # `moderation: low` only in age-restricted channels.
    low_moderation_nsfw_only: bool = False
    # Every result posted behind a spoiler.
    spoilers: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GuildConfig:
        """The config stored as a JSON object (unknown keys ignored)."""
        defaults = data.get("defaults") or {}
        role = data.get("continue_role_id")
        return cls(
            user_daily_usd=_float(data.get("user_daily_usd")),
            user_daily_images=_int(data.get("user_daily_images")),
            guild_monthly_usd=_float(data.get("guild_monthly_usd")),
            guild_monthly_images=_int(data.get("guild_monthly_images")),
            allowed_channels=tuple(int(c) for c in data.get("allowed_channels") or ()),
            default_model=defaults.get("model") if isinstance(defaults, Mapping) else None,
            allowed_models=tuple(str(m) for m in data.get("allowed_models") or ()),
            moderation=data.get("moderation") or None,
            continue_policy=ContinuePolicy(data.get("continue_policy") or "anyone"),
            continue_role_id=int(str(role)) if role else None,
            partials_enabled=data.get("partials_enabled"),
            engine=data.get("engine") or None,
            role_tiers=tuple(
                sorted(
                    (int(role), int(images))
                    for role, images in (data.get("role_tiers") or {}).items()
                )
            ),
            low_moderation_nsfw_only=bool(data.get("low_moderation_nsfw_only")),
            spoilers=bool(data.get("spoilers")),
        )

    def to_dict(self) -> dict[str, object]:
        """The JSON object to store: only what differs from the defaults."""
        data: dict[str, object] = {}
        for name in BUDGET_KEYS:
            value = getattr(self, name)
            if value is not None:
                data[name] = value
        if self.allowed_channels:
            data["allowed_channels"] = list(self.allowed_channels)
        if self.default_model:
            data["defaults"] = {"model": self.default_model}
        if self.allowed_models:
            data["allowed_models"] = list(self.allowed_models)
        if self.moderation:
            data["moderation"] = self.moderation
        if self.continue_policy is not ContinuePolicy.ANYONE:
            data["continue_policy"] = self.continue_policy.value
        if self.continue_role_id is not None:
            data["continue_role_id"] = self.continue_role_id
        if self.partials_enabled is not None:
            data["partials_enabled"] = self.partials_enabled
        if self.engine:
            data["engine"] = self.engine
        if self.role_tiers:
            data["role_tiers"] = {str(role): images for role, images in self.role_tiers}
        if self.low_moderation_nsfw_only:
            data["low_moderation_nsfw_only"] = True
        if self.spoilers:
            data["spoilers"] = True
        return data

    def with_tier(self, role_id: int, images: int) -> GuildConfig:
        """This config with a role's daily image quota set (0 removes the tier)."""
        tiers = dict(self.role_tiers)
        tiers.pop(role_id, None)
        if images > 0:
            tiers[role_id] = images
        return dataclasses.replace(self, role_tiers=tuple(sorted(tiers.items())))

    def tier_for(self, role_ids: tuple[int, ...]) -> tuple[int, int] | None:
        """The largest daily image quota among the roles given, as (role id, images)."""
        mine = [(images, role) for role, images in self.role_tiers if role in role_ids]
        if not mine:
            return None
        images, role = max(mine)
        return role, images

    def replace(self, **changes: Any) -> GuildConfig:
        """This config with some fields changed."""
        return dataclasses.replace(self, **changes)

    def allows_channel(self, channel_id: int, parent_channel_id: int | None) -> bool:
        """Whether image commands may be used in a channel (or a thread of an allowed one)."""
        if not self.allowed_channels:
            return True
        return channel_id in self.allowed_channels or parent_channel_id in self.allowed_channels


@dataclass(frozen=True, slots=True)
class UserSettings:
    """A member's /settings: their language, spoilers, and their default output options."""

    language: str | None = None
    options: Mapping[str, object] = field(default_factory=dict)
    spoiler: bool = False

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> UserSettings:
        """The settings stored as a JSON object."""
        language = data.get("language")
        return cls(
            language=str(language) if language else None,
            options={k: v for k, v in data.items() if k in OPTION_NAMES and v is not None},
            spoiler=bool(data.get("spoiler")),
        )

    def to_dict(self) -> dict[str, object]:
        """The JSON object to store."""
        data: dict[str, object] = dict(self.options)
        if self.language:
            data["language"] = self.language
        if self.spoiler:
            data["spoiler"] = True
        return data


def resolve_options(
    defaults: ImageOptions,
    config: GuildConfig,
    settings: UserSettings,
    overrides: Mapping[str, object] | None = None,
) -> ImageOptions:
    """The bot's defaults, then the server's, the member's /settings and this command's options.

    Raises BadInput for a combination the API would refuse or the server does not allow.
    """
    options = defaults
    if config.default_model:
        options = options.merged({"model": config.default_model})
    if config.moderation:
        options = options.merged({"moderation": config.moderation})
    options = options.merged(settings.options)
    options = options.merged(overrides or {})
    if config.partials_enabled is False:
        options = options.merged({"partials": 0})
    if config.moderation == "auto" and options.moderation != "auto":
        # The server asked for the stricter level; members cannot loosen it.
        options = options.merged({"moderation": "auto"})
    options = options.with_preset_size()
    validate_options(options, allowed_models=config.allowed_models or None)
    return options


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int | float) else None
