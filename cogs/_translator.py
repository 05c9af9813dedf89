"""Command names, descriptions and choices in every supported language, through discord.py's Translator."""

from __future__ import annotations

import discord
from discord import app_commands

from bot.core import i18n


def L(key: str) -> app_commands.locale_str:
    """A translatable command string: English text, with its catalog key for other languages."""
    return app_commands.locale_str(i18n.t("en", key), key=key)


def choices(prefix: str, values: tuple[str, ...]) -> list[app_commands.Choice[str]]:
    """Localized choices: the label of `value` is the catalog key `prefix.value`."""
    return [app_commands.Choice(name=L(f"{prefix}.{value}"), value=value) for value in values]


class ImagineTranslator(app_commands.Translator):
    """Looks command strings up in the message catalog by key."""

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        key = string.extras.get("key")
        if not key or not i18n.has_key(key):
            return None
        language = i18n.normalize_locale(locale.value)
        if language == i18n.DEFAULT_LOCALE:
            return None
        return i18n.CATALOG[key].get(language)
