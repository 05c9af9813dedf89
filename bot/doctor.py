"""`python -m bot doctor`: checks settings, the database and the tokens, in plain words."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp

from bot.core import images
from bot.core.errors import BadInput
from bot.core.openai_adapter import OpenAIImageClient
from bot.core.options import ImageOptions, validate_options
from bot.services import client_config, default_options
from bot.settings import Settings
from storage import describe_database, open_store, url_passwords


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One line of the report."""

    name: str
    ok: bool
    text: str
    # Works, but something users will notice is missing (shown as [warn], not a failure).
    warning: bool = False


# The environment variable behind each default option (see `bot.services.default_options`).
DEFAULT_SETTINGS = (
    ("size", "DEFAULT_SIZE"),
    ("quality", "DEFAULT_QUALITY"),
    ("format", "DEFAULT_FORMAT"),
    ("moderation", "DEFAULT_MODERATION"),
    ("partials", "DEFAULT_PARTIALS"),
)


async def check_defaults(settings: Settings) -> CheckResult:
    """The default image options pass the same validation every turn gets."""
    options = default_options(settings)
    alone = ImageOptions(model=options.model)
    try:
        validate_options(alone)
    except BadInput as exc:
        return CheckResult("defaults", False, f"change IMAGE_MODEL (now {options.model}): {exc}")
    # One option at a time on the model's own defaults, so each message names its setting.
    problems: list[str] = []
    for option, variable in DEFAULT_SETTINGS:
        value = getattr(options, option)
        try:
            validate_options(alone.merged({option: value}).with_preset_size())
        except BadInput as exc:
            problems.append(f"change {variable} (now {value}): {exc}")
    if not problems:
        try:
            validate_options(options.with_preset_size())
        except BadInput as exc:
            names = ", ".join(variable for _, variable in DEFAULT_SETTINGS)
            problems.append(f"these defaults do not work together; change one of {names}: {exc}")
    if problems:
        return CheckResult("defaults", False, "; ".join(problems))
    return CheckResult(
        "defaults",
        True,
        f"{options.model}, size {options.size}, quality {options.quality}, {options.format}, "
        f"{options.partials} partial image(s)",
    )


async def check_database(settings: Settings) -> CheckResult:
    """The database opens and its schema is current; says which backend, never the password."""
    url = settings.database_url
    try:
        where = describe_database(url)
    except ValueError as exc:
        return CheckResult("database", False, f"DATABASE_URL: {exc}")
    try:
        store = await open_store(url)
    except Exception as exc:
        problem = str(exc)
        for password in url_passwords(url):
            problem = problem.replace(password, "***")
        return CheckResult("database", False, f"cannot open {where}: {problem}")
    await store.close()
    return CheckResult("database", True, f"{where} opens and is up to date")


async def check_discord(settings: Settings) -> CheckResult:
    """Discord accepts the bot token."""
    if settings.discord_token is None:
        return CheckResult("discord", False, "DISCORD_TOKEN is not set (needed to run the bot)")
    url = settings.discord_api_base_url.rstrip("/") + "/users/@me"
    headers = {"Authorization": f"Bot {settings.discord_token.get_secret_value()}"}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session,
            session.get(url, headers=headers) as response,
        ):
            body = await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return CheckResult(
            "discord", False, f"cannot reach {settings.discord_api_base_url}: {exc!r}"
        )
    if response.status == 401:
        return CheckResult(
            "discord",
            False,
            "Discord refused DISCORD_TOKEN (401): copy it again from the Developer Portal",
        )
    if response.status != 200:
        return CheckResult("discord", False, f"Discord answered {response.status}")
    try:
        name = json.loads(body).get("username", "?")
    except ValueError:
        name = "?"
    return CheckResult("discord", True, f"the token belongs to the bot user {name}")


async def check_openai(settings: Settings) -> CheckResult:
    """OpenAI accepts the API key."""
    try:
        client = OpenAIImageClient(client_config(settings))
    except ValueError:
        return CheckResult("openai", False, "OPENAI_API_KEY is not set (needed to make images)")
    try:
        text = await client.check()
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        if status == 401:
            return CheckResult("openai", False, "OpenAI refused OPENAI_API_KEY (401)")
        return CheckResult("openai", False, f"cannot use the OpenAI API: {type(exc).__name__}")
    finally:
        await client.close()
    return CheckResult("openai", True, f"the API key works ({text})")


async def check_korean_font(settings: Settings) -> CheckResult:
    """A font with Hangul is installed, so Korean labels in /usage charts are not boxes."""
    if images.draws_hangul():
        return CheckResult("korean font", True, "chart labels in Korean are drawn")
    return CheckResult(
        "korean font",
        True,
        "no font with Hangul found: Korean labels in /usage charts would be empty boxes; "
        f"install {images.CJK_FONT_PACKAGES} (Debian/Ubuntu: apt install fonts-nanum)",
        warning=True,
    )


async def run_checks(settings: Settings, *, out: Callable[[str], object] = print) -> int:
    """Run every check, print one line each; 0 when all pass."""
    checks: list[Callable[[Settings], Awaitable[CheckResult]]] = [
        check_defaults,
        check_database,
        check_discord,
        check_openai,
        check_korean_font,
    ]
    failures = 0
    out(f"settings: engine={settings.engine}, image model={settings.image_model}")
    for check in checks:
        result = await check(settings)
        failures += not result.ok
        mark = "FAIL" if not result.ok else "warn" if result.warning else "ok"
        out(f"[{mark}] {result.name}: {result.text}")
    out("all good" if failures == 0 else f"{failures} problem(s) found")
    return 0 if failures == 0 else 1
