"""Settings read from the environment and `.env` (only `bot.__main__` builds them)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting of the bot, with the defaults a new server gets."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", env_ignore_empty=True
    )

    discord_token: SecretStr | None = None
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    discord_api_base_url: str = "https://discord.com/api/v10"
    discord_gateway_url: str | None = None
    database_url: str = "sqlite:///data/bot.db"
    discord_dev_guild_id: int | None = None

    # Several processes on one PostgreSQL database, each running some of the shards:
    # SHARD_IDS is a range ("0-3") or a list ("0,2,4"), SHARD_COUNT the total across processes.
    # Neither set: one process runs the shards Discord recommends.
    shard_ids: str | None = None
    shard_count: int | None = Field(default=None, ge=1, validate_default=True)
    # This process in the database (its jobs carry it). A restart under the same id settles its
    # own previous run's jobs at once; the default is derived from SHARD_IDS.
    worker_id: str | None = None
    # How often a process says it is alive, and after how long without a word another process
    # settles its jobs (interrupted with Retry, or its saved image posted).
    worker_heartbeat_seconds: float = Field(default=10.0, gt=0)
    worker_stale_seconds: float = Field(default=60.0, gt=0)

    # Generation defaults (a server's /config and a member's /settings override them).
    engine: Literal["responses", "images"] = "responses"
    image_model: str = "gpt-image-2.6-sunburst"
    mainline_model: str = "gpt-5.5"
    default_size: str = "auto"
    default_quality: str = "auto"
    default_format: Literal["png", "jpeg", "webp"] = "png"
    default_partials: int = Field(default=2, ge=0, le=3)
    default_moderation: Literal["auto", "low"] = "auto"

    # Client behaviour towards OpenAI. A generation may take two minutes with nothing streamed
    # (no partials), so the stall limit sits well above that; the SDK's timeout is a backstop
    # at or above the stall limit (see `_timeouts_agree`).
    openai_timeout_seconds: float = Field(default=330.0, gt=0)
    openai_max_retries: int = 2
    stream_stall_seconds: float = Field(default=300.0, gt=0)
    use_files_api: bool = False

    # Limits that protect the operator's bill and the machine.
    max_input_bytes: int = 50 * 1024 * 1024
    max_input_pixels: int = 40_000_000
    global_concurrency: int = 4
    # PostgreSQL: jobs of the shared queue this process runs at once (None: GLOBAL_CONCURRENCY;
    # 0: none, it only admits).
    queue_concurrency: int | None = Field(default=None, ge=0)
    # Image bytes (base64 read, images decoded) all turns may hold at once; a turn waits for
    # room before it reads an image, and the socket holds OpenAI back meanwhile.
    image_memory_budget_mb: int = Field(default=128, ge=16)
    user_concurrency: int = 1
    user_daily_usd: float | None = None
    user_daily_images: int | None = None
    guild_monthly_usd: float | None = None
    guild_monthly_images: int | None = None

    # Prices in USD per 1M tokens; JSON in the environment overrides the published defaults.
    prices_json: str | None = None

    # First wait before posting a finished image again when Discord refused it for now
    # (doubling up to a minute); the image is saved, so it is never generated twice.
    post_retry_seconds: float = 1.0
    # Kill tests only: SIGKILL the process right after this ledger step (see bot.core.studio).
    test_crash_at: str | None = None

    # The web studio (painter, gallery, /healthz, /readyz, /metrics): served when WEB_PORT is
    # set (0 = any free port); the Paint and Gallery buttons need PUBLIC_BASE_URL too.
    web_host: str = "127.0.0.1"
    web_port: int | None = Field(default=None, ge=0, le=65535)
    public_base_url: str | None = None

    log_level: str = "INFO"
    # When set, the event loop's lag is measured and written to this JSON file (bot/loopmonitor.py).
    loop_lag_file: str | None = None

    @field_validator("public_base_url")
    @classmethod
    def _public_url(cls, url: str | None) -> str | None:
        """The address people open the web studio at: http(s), without a query."""
        if url is None:
            return None
        if not url.startswith(("http://", "https://")) or "?" in url or "#" in url:
            raise ValueError("PUBLIC_BASE_URL must be an http:// or https:// address")
        return url.rstrip("/")

    @property
    def shards(self) -> tuple[int, ...] | None:
        """The shard ids SHARD_IDS names (None: not set), in order, each once."""
        if self.shard_ids is None:
            return None
        return parse_shard_ids(self.shard_ids)

    @property
    def worker_name(self) -> str:
        """WORKER_ID, or one derived from the shards (stable across restarts)."""
        if self.worker_id:
            return self.worker_id
        shards = self.shards
        if shards is None:
            return "main" if self.shard_count is None else f"shards-all-of-{self.shard_count}"
        return f"shards-{','.join(map(str, shards))}-of-{self.shard_count}"

    @field_validator("shard_count")
    @classmethod
    def _shards_agree(cls, count: int | None, info: ValidationInfo) -> int | None:
        """SHARD_IDS needs SHARD_COUNT and names shards below it (checked per field, so that
        the error quotes these values alone, never the other settings, tokens among them)."""
        text = info.data.get("shard_ids")
        if text is None:
            return count
        if count is None:
            raise ValueError("SHARD_IDS needs SHARD_COUNT (the number of shards in total)")
        outside = [i for i in parse_shard_ids(text) if i >= count]
        if outside:
            raise ValueError(
                f"SHARD_IDS names shard {outside[0]}, but SHARD_COUNT is {count}"
                f" (shards are numbered 0 to {count - 1})"
            )
        return count

    @field_validator("worker_stale_seconds")
    @classmethod
    def _heartbeat_fits(cls, stale: float, info: ValidationInfo) -> float:
        """A process must miss two heartbeats before another settles its jobs."""
        beat = info.data.get("worker_heartbeat_seconds")
        if beat is not None and stale < 2 * beat:
            raise ValueError(
                f"WORKER_STALE_SECONDS ({stale:g}) must be at least twice"
                f" WORKER_HEARTBEAT_SECONDS ({beat:g})"
            )
        return stale

    @field_validator("shard_ids")
    @classmethod
    def _shard_ids_parse(cls, value: str | None) -> str | None:
        if value is not None:
            parse_shard_ids(value)
        return value

    @field_validator("stream_stall_seconds")
    @classmethod
    def _timeouts_agree(cls, stall: float, info: ValidationInfo) -> float:
        """Reject a stall limit above the SDK timeout (checked per field, so that the error
        quotes this value alone and never the other settings, tokens among them).

        The SDK's read timeout would then cut a slow but healthy generation first, and a timeout
        while waiting for the headers is retried by the SDK: a second, billed generation.
        """
        timeout = info.data.get("openai_timeout_seconds")
        if timeout is not None and timeout < stall:
            raise ValueError(
                f"OPENAI_TIMEOUT_SECONDS ({timeout:g}) must not be below "
                f"STREAM_STALL_SECONDS ({stall:g}): raise "
                "OPENAI_TIMEOUT_SECONDS or lower STREAM_STALL_SECONDS"
            )
        return stall


def parse_shard_ids(text: str) -> tuple[int, ...]:
    """Shard ids from "0-3", "0,2,4" or a mix ("0-1,5"); ValueError when they make no sense."""
    ids: list[int] = []
    for part in text.replace(" ", "").split(","):
        if not part:
            continue
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"SHARD_IDS: {part!r} is neither a shard number nor a range like 0-3")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"SHARD_IDS: the range {part!r} goes backwards")
        ids.extend(range(first, last + 1))
    if not ids:
        raise ValueError("SHARD_IDS is empty; give a range like 0-3 or a list like 0,2")
    if len(set(ids)) != len(ids):
        raise ValueError("SHARD_IDS names a shard twice")
    return tuple(sorted(ids))
