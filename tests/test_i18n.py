"""The message catalog: complete in every language, and matching every key the code uses."""

from __future__ import annotations

import ast
import re
import string
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bot.core import i18n
from bot.core.images import EXTENSIONS
from bot.core.options import OUTPUT_OPTIONS
from cogs._catalog import DISCORD_MESSAGES
from web._catalog import WEB_MESSAGES

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    path
    for pattern in ("cogs/*.py", "bot/*.py", "bot/core/*.py", "web/*.py")
    for path in ROOT.glob(pattern)
    if path.name not in ("i18n.py", "_catalog.py")
)

# Keys built with an f-string, and every value the placeholder can take.
FSTRING_KEYS: dict[str, tuple[str, ...]] = {
    "fail.moderation_{}": ("input", "output", "unknown"),
    "opt.{}.name": OUTPUT_OPTIONS,
    "opt.{}.desc": OUTPUT_OPTIONS,
    "extend.{}": tuple(EXTENSIONS),
}

# Discord's rule for command and option names (Hangul letters count as \w).
NAME_PATTERN = re.compile(r"^[-_\w]{1,32}$")

# Discord's limits for the texts of components (message-component and modal docs).
COMPONENT_LIMITS: dict[str, int] = {
    "button.": 80,
    "modal.edit_title": 45,
    "modal.edit_label": 45,
    "modal.edit_placeholder": 100,
    "discord.region_placeholder": 150,
    "discord.open_link": 80,
}
MESSAGE_LIMIT = 2000

# Key expressions the scan could not resolve (reported by a test, not at import).
UNRESOLVED: list[str] = []


def catalog() -> dict[str, dict[str, str]]:
    """The core catalog with the Discord messages merged in (whether or not i18n merged them)."""
    merged = dict(i18n.CATALOG)
    for key, entry in (*DISCORD_MESSAGES.items(), *WEB_MESSAGES.items()):
        merged.setdefault(key, entry)
    return merged


CATALOG = catalog()


def fields(template: str) -> set[tuple[str, str]]:
    """The `{name:spec}` fields of a str.format template."""
    return {
        (name, spec or "")
        for _, name, spec, _ in string.Formatter().parse(template)
        if name is not None
    }


def placeholders(key: str) -> set[str]:
    """The field names of a key's templates (all languages)."""
    return {name for text in CATALOG[key].values() for name, _ in fields(text)}


# --- collecting the keys the code uses -------------------------------------------------


@dataclass(frozen=True)
class Use:
    """One place where the code names a catalog key."""

    key: str
    where: str
    params: frozenset[str] | None  # None: the parameters cannot be known from the call


def _func_name(call: ast.Call) -> str | None:
    func = call.func
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def _string_tuples(trees: dict[Path, ast.Module]) -> dict[str, tuple[str, ...]]:
    """Module-level `NAME = ("a", "b", ...)` assignments of every source."""
    found: dict[str, tuple[str, ...]] = {}
    for tree in trees.values():
        for node in tree.body:
            target: ast.expr | None = None
            value: ast.expr | None = None
            if isinstance(node, ast.Assign) and len(node.targets) == 1:
                target, value = node.targets[0], node.value
            elif isinstance(node, ast.AnnAssign) and node.value is not None:
                target, value = node.target, node.value
            if not isinstance(target, ast.Name) or not isinstance(value, ast.Tuple):
                continue
            items = value.elts
            if items and all(
                isinstance(e, ast.Constant) and isinstance(e.value, str) for e in items
            ):
                found[target.id] = tuple(str(e.value) for e in items)
    return found


def _keys_of(node: ast.expr, where: str) -> Iterator[str]:
    """The keys an expression can evaluate to: a literal, either side of `a if c else b`, an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    elif isinstance(node, ast.IfExp):
        yield from _keys_of(node.body, where)
        yield from _keys_of(node.orelse, where)
    elif isinstance(node, ast.JoinedStr):
        shape = "".join(
            str(part.value) if isinstance(part, ast.Constant) else "{}" for part in node.values
        )
        if shape.startswith("{}"):
            return  # built entirely from variables (a helper such as choices()): not a key
        if shape not in FSTRING_KEYS:
            UNRESOLVED.append(f"{where}: f-string key {shape!r}: list its values in FSTRING_KEYS")
            return
        for value in FSTRING_KEYS[shape]:
            yield shape.replace("{}", value)


def _keywords(call: ast.Call) -> frozenset[str] | None:
    """The keyword arguments of a call, or None when `**params` hides them."""
    if any(k.arg is None for k in call.keywords):
        return None
    return frozenset(str(k.arg) for k in call.keywords)


def _dict_keys(node: ast.expr | None) -> frozenset[str] | None:
    if node is None:
        return frozenset()
    if isinstance(node, ast.Dict) and all(
        isinstance(k, ast.Constant) and isinstance(k.value, str) for k in node.keys
    ):
        return frozenset(str(k.value) for k in node.keys)
    return None


def _uses_in_call(call: ast.Call, where: str, tuples: dict[str, tuple[str, ...]]) -> Iterator[Use]:
    name = _func_name(call)
    args = call.args
    if name == "t" and len(args) >= 2:
        # t(locale, "key", **params) in cogs, i18n.t(locale, "key", **params) in the core.
        for key in _keys_of(args[1], where):
            yield Use(key, where, _keywords(call))
    elif name == "L" and args:
        # A command string: rendered in English at import time without parameters.
        for key in _keys_of(args[0], where):
            yield Use(key, where, frozenset())
    elif name in ("BadInput", "BotError") and args:
        for key in _keys_of(args[0], where):
            yield Use(key, where, _keywords(call))
    elif name == "Failed" and len(args) >= 2:
        params_node = args[2] if len(args) >= 3 else None
        for keyword in call.keywords:
            if keyword.arg == "params":
                params_node = keyword.value
        for key in _keys_of(args[1], where):
            yield Use(key, where, _dict_keys(params_node))
    elif name == "choices" and len(args) == 2:
        prefix = args[0]
        values = args[1]
        if not (isinstance(prefix, ast.Constant) and isinstance(prefix.value, str)):
            UNRESOLVED.append(f"{where}: choices() needs a literal prefix")
            return
        if isinstance(values, ast.Name) and values.id in tuples:
            names = tuples[values.id]
        elif isinstance(values, ast.Tuple):
            names = tuple(str(e.value) for e in values.elts if isinstance(e, ast.Constant))
        else:
            UNRESOLVED.append(f"{where}: cannot find the values of choices({prefix.value!r}, ...)")
            return
        for value in names:
            yield Use(f"{prefix.value}.{value}", where, frozenset())
    for keyword in call.keywords:
        if keyword.arg == "key":
            # reply_error(interaction, None, key="...") renders the key without parameters.
            others = frozenset(str(k.arg) for k in call.keywords if k.arg not in (None, "key"))
            for key in _keys_of(keyword.value, where):
                yield Use(key, where, others)


def _parse_sources() -> dict[Path, ast.Module]:
    return {
        path: ast.parse(path.read_text(encoding="utf-8"), filename=str(path)) for path in SOURCES
    }


TREES = _parse_sources()
TUPLES = _string_tuples(TREES)


def collect_uses() -> list[Use]:
    """Every catalog key named in a call of the scanned sources."""
    uses: list[Use] = []
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                where = f"{path.relative_to(ROOT)}:{node.lineno}"
                uses.extend(_uses_in_call(node, where, TUPLES))
    return uses


USES = collect_uses()

NAMESPACES = frozenset(key.split(".", 1)[0] for key in CATALOG)
KEY_LIKE = re.compile(r"^[a-z]+(\.[a-z0-9_]+)+$")
FILE_SUFFIXES = frozenset({"png", "jpg", "jpeg", "webp", "gif", "txt", "json", "db", "py", "sql"})


def key_like_strings() -> list[tuple[str, str]]:
    """Every string literal shaped like a catalog key (`discord.queued`), wherever it appears."""
    found: list[tuple[str, str]] = []
    prefixes = {key.rsplit(".", 1)[0] for key in CATALOG}
    for path, tree in TREES.items():
        # Pieces of f-strings are checked through FSTRING_KEYS, not here.
        in_fstrings = {
            id(part)
            for node in ast.walk(tree)
            if isinstance(node, ast.JoinedStr)
            for part in node.values
        }
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
                continue
            text = node.value
            if id(node) in in_fstrings or text in prefixes:
                continue  # a piece of an f-string, or the prefix given to choices()
            if not KEY_LIKE.match(text) or text.split(".", 1)[0] not in NAMESPACES:
                continue
            if text.rsplit(".", 1)[1] in FILE_SUFFIXES:
                continue
            found.append((text, f"{path.relative_to(ROOT)}:{node.lineno}"))
    return found


# --- the catalog itself -------------------------------------------------------------------


def test_the_scan_finds_the_code() -> None:
    # Guards the scanner: if the sources moved or the call shapes changed, the checks below
    # would silently check nothing.
    keys = {use.key for use in USES}
    assert len(SOURCES) >= 10
    assert {
        "discord.queued",
        "cmd.imagine.name",
        "choice.quality.high",
        "choice.continue.role",
    } <= keys
    assert {"fail.moderation_input", "fail.moderation_output", "fail.moderation_unknown"} <= keys
    assert "discord.not_allowed" in keys  # reply_error(..., key="discord.not_allowed")


def test_discord_messages_are_merged_without_clashes() -> None:
    for key, entry in DISCORD_MESSAGES.items():
        assert i18n.CATALOG.get(key, entry) == entry, f"{key} is defined twice, differently"


@pytest.mark.parametrize("key", sorted(CATALOG))
def test_every_key_has_every_language(key: str) -> None:
    entry = CATALOG[key]
    assert set(entry) == set(i18n.SUPPORTED_LOCALES), key
    for locale in i18n.SUPPORTED_LOCALES:
        assert entry[locale].strip(), f"{key} is empty in {locale}"


@pytest.mark.parametrize("key", sorted(CATALOG))
def test_languages_use_the_same_placeholders(key: str) -> None:
    english = fields(CATALOG[key]["en"])
    for locale in i18n.SUPPORTED_LOCALES:
        assert fields(CATALOG[key][locale]) == english, f"{key}: {locale} differs from en"


@pytest.mark.parametrize("key", sorted(CATALOG))
def test_templates_render(key: str) -> None:
    for locale in i18n.SUPPORTED_LOCALES:
        params = {
            name: 3 if spec.endswith(("d", "x", "c")) else 1234.5
            for name, spec in fields(CATALOG[key][locale])
        }
        text = CATALOG[key][locale].format(**params)
        assert "{" not in text.replace("{{", ""), f"{key}/{locale} left a field unfilled"


def test_command_and_option_names_follow_discords_rules() -> None:
    names = [key for key in CATALOG if key.startswith(("cmd.", "opt.")) and key.endswith(".name")]
    assert names
    for key in names:
        for locale, text in CATALOG[key].items():
            assert NAME_PATTERN.match(text), f"{key}/{locale}: {text!r} is not a valid name"
            assert text == text.lower(), f"{key}/{locale}: {text!r} must be lowercase"


def test_descriptions_and_choices_fit_discords_limits() -> None:
    for key, entry in CATALOG.items():
        if key.endswith(".desc") or key.startswith("choice."):
            for locale, text in entry.items():
                assert 1 <= len(text) <= 100, f"{key}/{locale} is {len(text)} characters"
        for prefix, limit in COMPONENT_LIMITS.items():
            if key.startswith(prefix):
                for locale, text in entry.items():
                    assert len(text) <= limit, f"{key}/{locale} is {len(text)} > {limit} characters"


def test_help_fits_in_one_message() -> None:
    for key in ("help.text", "privacy.explain"):
        for locale, text in CATALOG[key].items():
            assert len(text) < 1900, f"{key}/{locale} is {len(text)} characters"
            assert len(text) < MESSAGE_LIMIT


def test_korean_names_are_distinct_unless_english_is() -> None:
    names = {k: v for k, v in CATALOG.items() if k.startswith("opt.") and k.endswith(".name")}
    by_korean: dict[str, set[str]] = defaultdict(set)
    for entry in names.values():
        by_korean[entry["ko"]].add(entry["en"])
    clashes = {ko: en for ko, en in by_korean.items() if len(en) > 1}
    assert not clashes, f"one Korean name for different options: {clashes}"


# --- the commands as declared in the cogs ----------------------------------------------------


@dataclass(frozen=True)
class Command:
    where: str
    function: str
    name_key: str | None
    renames: dict[str, str]  # Python parameter -> catalog key of its name
    parameters: tuple[str, ...]


def _l_key(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call) and _func_name(node) == "L" and node.args:
        arg = node.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return arg.value
    return None


def slash_commands() -> list[Command]:
    """Every `@app_commands.command` in the cogs, with its `rename(...)` block."""
    found: list[Command] = []
    for path, tree in TREES.items():
        for node in ast.walk(tree):
            if not isinstance(node, ast.AsyncFunctionDef | ast.FunctionDef):
                continue
            name_key: str | None = None
            is_command = False
            renames: dict[str, str] = {}
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Name) and decorator.id == "output_option_params":
                    # The shared decorator renames every output option to `opt.<name>.name`.
                    renames.update({name: f"opt.{name}.name" for name in OUTPUT_OPTIONS})
                if not isinstance(decorator, ast.Call):
                    continue
                called = _func_name(decorator)
                if called == "command":
                    is_command = True
                    for keyword in decorator.keywords:
                        if keyword.arg == "name":
                            name_key = _l_key(keyword.value)
                elif called == "rename":
                    for keyword in decorator.keywords:
                        key = _l_key(keyword.value)
                        if keyword.arg is not None and key is not None:
                            renames[keyword.arg] = key
            if is_command:
                parameters = tuple(a.arg for a in node.args.args[2:] + node.args.kwonlyargs)
                found.append(
                    Command(
                        f"{path.relative_to(ROOT)}:{node.lineno}",
                        node.name,
                        name_key,
                        renames,
                        parameters,
                    )
                )
    return found


COMMANDS = slash_commands()


def test_the_seven_commands_are_found() -> None:
    assert {c.function for c in COMMANDS} >= {
        "imagine",
        "edit",
        "settings",
        "usage",
        "config",
        "privacy",
        "help",
    }


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.function)
def test_english_names_are_the_documented_ones(command: Command) -> None:
    # Command and option names are user-facing (DESIGN.md): in English they are the Python names.
    assert command.name_key is not None, f"{command.where}: the command name is not localized"
    assert CATALOG[command.name_key]["en"] == command.function
    for parameter in command.parameters:
        assert parameter in command.renames, f"{command.where}: option {parameter} is not localized"
    for parameter, key in command.renames.items():
        assert parameter in command.parameters, f"{command.where}: rename of unknown {parameter}"
        assert CATALOG[key]["en"] == parameter, f"{command.where}: {key} should be {parameter!r}"


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c.function)
def test_option_names_are_unique_within_a_command(command: Command) -> None:
    for locale in i18n.SUPPORTED_LOCALES:
        names = [CATALOG[key][locale] for key in command.renames.values()]
        assert len(names) == len(set(names)), f"{command.where}: duplicate {locale} option names"


def test_command_names_are_unique() -> None:
    for locale in i18n.SUPPORTED_LOCALES:
        names = [CATALOG[c.name_key][locale] for c in COMMANDS if c.name_key is not None]
        assert len(names) == len(set(names)), f"duplicate {locale} command names"


# --- the code against the catalog -------------------------------------------------------------


def test_every_key_expression_is_understood() -> None:
    assert not UNRESOLVED, "\n".join(UNRESOLVED)


def test_every_key_the_code_uses_exists() -> None:
    missing = sorted({f"{use.key} ({use.where})" for use in USES if use.key not in CATALOG})
    assert not missing, "keys used but not in the catalog:\n" + "\n".join(missing)


def test_every_key_like_string_in_the_code_exists() -> None:
    # Also catches keys kept in a variable first (`key = "a" if x else "b"; t(locale, key)`).
    missing = sorted(
        {f"{text} ({where})" for text, where in key_like_strings() if text not in CATALOG}
    )
    assert not missing, "key-like strings not in the catalog:\n" + "\n".join(missing)


def test_every_call_passes_the_parameters_its_template_needs() -> None:
    problems = []
    for use in USES:
        if use.params is None or use.key not in CATALOG:
            continue
        needed = placeholders(use.key)
        if not needed <= use.params:
            problems.append(f"{use.where}: {use.key} needs {sorted(needed - use.params)}")
    assert not problems, "\n".join(problems)


def test_the_helpers_render_through_t() -> None:
    # The real lookup, in both languages, for a key with parameters and a Discord locale name.
    assert i18n.t("ko", "discord.queued", position=2) != i18n.t("en", "discord.queued", position=2)
    assert "2" in i18n.t("en-US", "discord.queued", position=2)
    assert i18n.t("en", "discord.cost", cost=0.0421) == "≈$0.042"
    assert i18n.t("en", "discord.seconds", seconds=12.34) == "12.3 s"
