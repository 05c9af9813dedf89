"""A tiny run of the benchmarks, so that a broken benchmark is noticed (the real run: python -m bench)."""

from __future__ import annotations

from pathlib import Path

from bench import pipeline
from bench.__main__ import main
from bench.harness import bot_session
from bench.plot import STREAMED, WAITED, draw_plot
from bench.storage_bench import storage_figure, storage_row


async def test_storage_benchmark_at_a_small_size(tmp_path: Path) -> None:
    result = await storage_figure(tmp_path, turns=2_000, operations=50)

    assert result.full.turns == 2_000
    assert len(result.full.total) == len(result.empty.total) == 50
    assert all(t > 0 for t in result.full.total)
    row = storage_row(result)
    assert row.measured.startswith("p99 ") and row.target == "p99 <= 2.0 ms"
    assert not list(tmp_path.glob("*.db"))


async def test_bot_process_measurements_in_quick_mode(tmp_path: Path) -> None:
    async with bot_session(tmp_path, users=2, heartbeat_interval_ms=100) as session:
        result = await pipeline.overhead_per_partial(session, 2, photo_like=False)
        backlog = await pipeline.partial_backlog(session, 0.5, 1)
        assert session.process is not None and session.process.returncode is None
        lag = await session.lag_snapshot()
        beats = list(session.discord.heartbeats)

    # Every uploaded partial is paired with the stand-in's event (timing is not judged here:
    # the machine may be busy; `python -m bench` is where the figures are measured).
    assert 2 <= len(result.bot) <= 4
    assert all(0 < v < 5 for v in result.bot)
    assert len(result.bare) == len(result.bot) and result.upload_bytes > 0
    row = pipeline.overhead_row(result)
    assert row.figure.startswith("bot overhead per partial") and "p50" in row.measured
    assert len(backlog.slow) == len(backlog.fast) == 1
    for run in backlog.slow + backlog.fast:
        assert run.shown == sorted(set(run.shown)) and 0 < run.final_delay < 5
    assert pipeline.backlog_row(backlog).measured.startswith("final +")
    # The bot reports its loop lag (LOOP_LAG_FILE) and the stand-in saw its heartbeats.
    assert lag.samples > 0 and sum(lag.histogram.values()) == lag.samples
    assert len(beats) >= 5


def test_command_line_writes_the_results(tmp_path: Path) -> None:
    code = main(["--quick", "--only", "storage", "--out", str(tmp_path)])

    assert code == 0
    text = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "| storage |" in text and "## How each figure was measured" in text
    # Nothing the run did not measure: no fixed profile text.
    assert "## Profile" not in text


def test_plot_is_a_png(tmp_path: Path) -> None:
    draw_plot(
        tmp_path / "plot.png",
        streamed=[1.02, 1.05],
        waited=[3.01, 3.03],
        seconds=3.0,
        overhead=[("bot", [0.002, 0.004], STREAMED), ("bare", [0.001, 0.001], WAITED)],
        p50_target=0.015,
        p99_target=0.05,
    )

    assert (tmp_path / "plot.png").read_bytes().startswith(b"\x89PNG")


def test_the_floor_is_measured_on_real_size_bytes() -> None:
    from bench.realsize import measure_floor

    floor = measure_floor(1)
    # Two partials and the final twice, 3.6 MB of base64 each: the weight issue 10 names.
    assert floor.image_bytes >= 2_500_000 and floor.stream_bytes >= 4 * 3_300_000
    assert len(floor.stdlib) == len(floor.simd) == 1
    assert all(t > 0 for t in floor.stdlib + floor.simd)
