"""The `e2e` marker: put on tests that run the bot or a process, found without decoration; the
default run still runs everything."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bot.sandbox import sandbox
from tests.conftest import E2E_MODULES, ROOT, _runs_end_to_end


def _starts_the_bot(tmp_path: Path) -> object:
    return sandbox(tmp_path)


def _goes_through_a_helper(tmp_path: Path) -> object:
    return _starts_the_bot(tmp_path)


def _stays_in_process(value: int) -> int:
    return value + 1


def test_a_sandbox_call_is_found_through_the_helpers_a_test_calls() -> None:
    assert _runs_end_to_end(_starts_the_bot, globals())
    assert _runs_end_to_end(_goes_through_a_helper, globals())
    assert not _runs_end_to_end(_stays_in_process, globals())


def test_whole_modules_that_run_processes_are_e2e() -> None:
    for name in ("test_e2e_discord", "test_e2e_restart", "test_bench_smoke", "test_demo"):
        assert E2E_MODULES.match(name), name
    for name in ("test_images", "test_runner", "test_fake_openai"):
        assert not E2E_MODULES.match(name), name


def test_this_unit_test_is_not_e2e(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("e2e") is None


def test_the_marker_is_registered_and_the_default_run_selects_everything(
    request: pytest.FixtureRequest,
) -> None:
    assert any(line.startswith("e2e:") for line in request.config.getini("markers"))
    options = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    addopts = options["tool"]["pytest"]["ini_options"].get("addopts", "")
    assert "-m" not in str(addopts).split()
