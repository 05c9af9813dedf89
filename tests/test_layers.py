"""The layers hold: `cogs -> bot.core -> storage`, one front door, stand-ins kept to the sandbox.

Imports are read with `ast` from every source file, so a violation fails here before review.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _modules(path: Path) -> set[str]:
    """Every module a file imports, by its full dotted name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _tops(path: Path) -> set[str]:
    return {name.split(".")[0] for name in _modules(path)}


def _sources(*patterns: str) -> list[Path]:
    return sorted(path for pattern in patterns for path in ROOT.glob(pattern))


def test_the_scan_sees_the_tree() -> None:
    assert len(_sources("bot/core/*.py")) >= 10
    assert len(_sources("cogs/*.py")) >= 7
    assert "bot.core.studio.Studio" in _modules(ROOT / "cogs" / "app.py")


def test_the_core_never_imports_upward_or_discord() -> None:
    for path in _sources("bot/core/*.py"):
        modules = _modules(path)
        assert not _tops(path) & {"discord", "cogs", "fakes", "aiosqlite"}, path
        upward = {m for m in modules if m.startswith("bot.") and not m.startswith("bot.core")}
        assert upward == set(), path
        if path.name != "openai_adapter.py":
            assert "openai" not in _tops(path), path


def test_storage_stands_alone() -> None:
    for path in _sources("storage/*.py"):
        assert not _tops(path) & {"discord", "openai", "bot", "cogs", "fakes"}, path


def test_the_discord_side_reaches_the_core_through_the_studio_only() -> None:
    for path in _sources("cogs/*.py"):
        modules = _modules(path)
        assert not _tops(path) & {"aiosqlite", "openai", "sqlite3", "fakes"}, path
        # Records (Job, Turn) may be named; the store itself may not be touched.
        storage = {m for m in modules if m.split(".")[0] == "storage"}
        records = {m for m in storage if m.startswith("storage.base.") and m[13:14].isupper()}
        assert storage - records - {"storage.base"} == set(), path
        assert "storage.base.Store" not in records, path
        if path.name in ("app.py", "_webapp.py"):
            continue  # the wiring: builds the studio (and the web studio) from the services
        tree = ast.parse(path.read_text())
        touched = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in ("store", "services", "settings")
        }
        assert touched == set(), f"{path.name} reaches past the studio: {touched}"


def test_the_web_side_reaches_the_core_only() -> None:
    sources = _sources("web/*.py")
    assert len(sources) >= 3
    for path in sources:
        tops = _tops(path)
        assert not tops & {"discord", "storage", "cogs", "fakes", "aiosqlite", "openai"}, path
        assert not tops & {"sqlite3"}, path
        modules = _modules(path)
        # The core through its front door and its plain records, never the bot's wiring.
        outside = {m for m in modules if m.startswith("bot.") and not m.startswith("bot.core")}
        assert outside == set(), path
        tree = ast.parse(path.read_text())
        touched = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and node.attr in ("store", "_store", "settings")
        }
        assert touched == set(), f"{path.name} reaches past the studio: {touched}"


def test_the_core_never_imports_the_web_side() -> None:
    for path in _sources("bot/core/*.py", "storage/*.py"):
        assert "web" not in _tops(path), path


def test_only_the_sandbox_and_the_demo_use_the_stand_ins() -> None:
    users = {
        path.relative_to(ROOT).as_posix()
        for path in _sources("bot/**/*.py", "cogs/*.py", "storage/*.py", "web/*.py")
        if "fakes" in _tops(path)
    }
    assert users == {"bot/sandbox.py", "bot/demo.py"}


def test_only_the_job_queue_module_imports_procrastinate() -> None:
    tree = _sources("bot/**/*.py", "cogs/*.py", "storage/*.py", "web/*.py", "bench/*.py")
    importers = {
        path.relative_to(ROOT).as_posix() for path in tree if "procrastinate" in _tops(path)
    }
    assert importers == {"storage/pgqueue.py"}
