"""The results table: one row per figure, printed and written to results.md with the details."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

HEADERS = ("figure", "baseline (same run)", "measured", "target", "result")


@dataclass
class Row:
    """One figure of the table, with the lines that explain how it came out."""

    figure: str
    baseline: str
    measured: str
    target: str
    passed: bool
    details: list[str] = field(default_factory=list)

    @property
    def verdict(self) -> str:
        """PASS or FAIL."""
        return "PASS" if self.passed else "FAIL"

    def cells(self) -> tuple[str, str, str, str, str]:
        """The five cells of the row."""
        return (self.figure, self.baseline, self.measured, self.target, self.verdict)


def ms(seconds: float) -> str:
    """Seconds as milliseconds with one decimal."""
    return f"{seconds * 1000:.1f} ms"


def mib(size: float) -> str:
    """Bytes as MiB with one decimal."""
    return f"{size / 1024 / 1024:.1f} MiB"


def text_table(rows: Sequence[Row]) -> str:
    """The table for a terminal."""
    grid = [HEADERS, *(row.cells() for row in rows)]
    widths = [max(len(line[i]) for line in grid) for i in range(len(HEADERS))]
    rule = "  ".join("-" * w for w in widths)
    lines = ["  ".join(c.ljust(w) for c, w in zip(grid[0], widths, strict=True)), rule]
    lines += ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) for line in grid[1:]]
    return "\n".join(lines)


def markdown_table(rows: Sequence[Row]) -> str:
    """The table in Markdown."""
    lines = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    for row in rows:
        cells = list(row.cells())
        cells[-1] = f"**{cells[-1]}**"
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def revision() -> str:
    """The git commit the tree is at (and whether it has changes), or "" outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""
    return f"commit {commit}" + (" with local changes" if dirty else "")


def machine() -> str:
    """A one-line description of where the run happened."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} CPU(s), {cpu}, Python {sys.version.split()[0]}, {platform.system()}"


def write_results(
    path: Path,
    rows: Sequence[Row],
    *,
    mode: str,
    seconds: float,
    notes: Sequence[str],
    plot: str | None,
) -> None:
    """Write results.md: the table, and how each figure was measured and came out."""
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    where = revision()
    parts = [
        "# Benchmarks",
        "",
        f"`python -m bench{' --quick' if mode == 'quick' else ''}` on {stamp}"
        f"{', ' + where if where else ''}, {machine()}; "
        f"the whole run took {seconds:.0f} s. Every baseline was measured in the same run, "
        "against the same stand-ins (FakeDiscord and the OpenAI stand-in, in the benchmark "
        "process), with the bot as its own process (`python -m bot run`) except for storage.",
        "",
        markdown_table(rows),
        "",
    ]
    if plot:
        parts += [f"![time to first image and overhead per partial]({plot})", ""]
    parts += ["## How each figure was measured", ""]
    for row in rows:
        parts.append(f"### {row.figure}: {row.verdict}")
        parts.append("")
        parts += [f"- {line}" for line in row.details]
        parts.append("")
    if notes:
        parts += ["## Notes", "", *[f"- {note}" for note in notes], ""]
    path.write_text("\n".join(parts), encoding="utf-8")
