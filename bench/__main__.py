"""`python -m bench [--quick]`: every benchmark, one table, bench/results.md and a plot.

Each figure is measured against a baseline taken in the same run, on the stand-ins with a
fixed timeline; the bot runs as its own process (`python -m bot run`) except for storage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
import traceback
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench import fleet, pipeline, realsize
from bench.harness import BotSession, bot_session
from bench.plot import PHOTO, PHOTO_BARE, STREAMED, WAITED, Series, draw_plot
from bench.report import Row, text_table, write_results
from bench.storage_bench import storage_figure, storage_row
from fakes.openai_api import Timeline

HERE = Path(__file__).resolve().parent
FIGURES = ("ttfi", "overhead", "backlog", "cpu", "load", "storage", "fleet")
NOTES = (
    "Sizes: the headline rows (real-size) stream 1536x1024 PNGs of 2.7 MB (faint noise over a "
    "gradient, bench/payload.py; 3.6 MB of base64 per event, 14.4 MB per turn with 2 "
    "partials, the final coming twice), the weight the API returns. Rows marked *stand-in "
    "pictures* stream the stand-in's own 20-40 KB gradients: they measure the fixed cost of a "
    "turn, not the image bytes.",
    "Warm-up: every bot process runs unmeasured turns first (first-use imports, connection "
    "pools, the stand-ins' picture caches).",
    "The stand-ins run in the benchmark process and share the machine's 2 cores with the "
    "bot; every baseline and floor was taken in the same run for that reason.",
)


@dataclass(frozen=True)
class Config:
    """How big each benchmark is."""

    name: str
    ttfi_seconds: float
    ttfi_runs: int
    overhead_generations: int
    backlog_generations: int
    backlog_upload: float
    cpu_turns: int
    load_generations: int
    load_size: str
    load_interval: float
    heartbeat_ms: int
    storage_turns: int
    storage_operations: int
    cpu_repeats: int
    cpu_batch: int
    burst: int
    plateau_turns: int
    # Bot processes per real-size group (memory, plateau, lag): min and median over them.
    process_repeats: int


FULL = Config(
    name="full",
    ttfi_seconds=3.0,
    ttfi_runs=5,
    overhead_generations=30,
    backlog_generations=4,
    backlog_upload=0.5,
    cpu_turns=60,
    load_generations=100,
    load_size="1536x1024",
    load_interval=2.0,
    heartbeat_ms=250,
    storage_turns=1_000_000,
    storage_operations=2000,
    cpu_repeats=3,
    cpu_batch=12,
    burst=100,
    plateau_turns=1000,
    process_repeats=3,
)
QUICK = Config(
    name="quick",
    ttfi_seconds=1.5,
    ttfi_runs=2,
    overhead_generations=4,
    backlog_generations=2,
    backlog_upload=0.4,
    cpu_turns=8,
    load_generations=6,
    load_size="1536x1024",
    load_interval=1.0,
    heartbeat_ms=250,
    storage_turns=20_000,
    storage_operations=300,
    cpu_repeats=3,
    cpu_batch=3,
    burst=6,
    plateau_turns=10,
    process_repeats=2,
)


@dataclass
class Outcome:
    """What a run produced: the rows and the raw series the plot needs."""

    rows: list[Row]
    ttfi: pipeline.TtfiResult | None = None
    overhead: pipeline.OverheadResult | None = None
    overhead_photo: pipeline.OverheadResult | None = None


def error_row(figure: str, exc: BaseException) -> Row:
    """A failed row for a benchmark that could not run to its end."""
    detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return Row(
        figure=figure,
        baseline="-",
        measured="error",
        target="-",
        passed=False,
        details=[f"The benchmark did not finish: {detail}"],
    )


async def warm_up(session: BotSession, size: str = "1024x1024") -> None:
    """Turns nobody measures, with both kinds of pictures: first-use costs are paid here."""
    width, height = (int(v) for v in size.split("x"))
    await session.openai.pictures(width, height)
    session.openai.set_timeline(Timeline(0.05, 0.05, 0.05))
    for index, photo_like in enumerate((True, False)):
        session.openai.photo_like = photo_like
        generation = await session.imagine(
            "warm-up", user=session.user(index), partials=2, size=size
        )
        await session.wait_done([generation], within=60)


async def guarded(
    results: dict[str, list[Row]],
    key: str,
    figure: str,
    step: Callable[[], Awaitable[list[Row]]],
) -> None:
    """Run one benchmark step; a crash becomes a failed row instead of ending the run."""
    started = time.monotonic()
    try:
        produced = await step()
    except Exception as exc:
        produced = [error_row(figure, exc)]
    results[key] = produced
    for row in produced:
        print(
            f"  {row.figure}: {row.measured} (baseline {row.baseline}) -> {row.verdict} "
            f"[{time.monotonic() - started:.0f} s]",
            flush=True,
        )


ORDER = (
    "cpu",
    "load",
    "overhead-photo",
    "ttfi",
    "overhead",
    "backlog",
    "storage",
    "fleet",
)


async def run(config: Config, figures: Sequence[str], workdir: Path, photo: bool) -> Outcome:
    """Run the chosen benchmarks, each group against a fresh bot process; rows in table order."""
    outcome = Outcome(rows=[])
    results: dict[str, list[Row]] = {}
    wanted = set(figures)
    if wanted & {"ttfi", "overhead", "backlog"}:
        async with bot_session(workdir / "pipeline", users=8) as session:
            await warm_up(session)
            if "ttfi" in wanted:

                async def ttfi() -> list[Row]:
                    outcome.ttfi = await pipeline.time_to_first_image(
                        session, config.ttfi_seconds, config.ttfi_runs, photo_like=False
                    )
                    return [pipeline.ttfi_row(outcome.ttfi)]

                await guarded(results, "ttfi", "time to first visible image", ttfi)
            if "overhead" in wanted:

                async def overhead() -> list[Row]:
                    outcome.overhead = await pipeline.overhead_per_partial(
                        session, config.overhead_generations, photo_like=False
                    )
                    return [pipeline.overhead_row(outcome.overhead)]

                await guarded(results, "overhead", "bot overhead per partial", overhead)
            if "overhead" in wanted and photo:

                async def overhead_photo() -> list[Row]:
                    await session.openai.pictures(1536, 1024)
                    outcome.overhead_photo = await pipeline.overhead_per_partial(
                        session, config.overhead_generations, photo_like=True, size="1536x1024"
                    )
                    return [pipeline.overhead_row(outcome.overhead_photo)]

                await guarded(
                    results,
                    "overhead-photo",
                    "bot overhead per partial (real size)",
                    overhead_photo,
                )
            if "backlog" in wanted:

                async def backlog() -> list[Row]:
                    result = await pipeline.partial_backlog(
                        session, config.backlog_upload, config.backlog_generations
                    )
                    return [pipeline.backlog_row(result)]

                await guarded(results, "backlog", "partial backlog", backlog)
    if "cpu" in wanted:

        async def cpu() -> list[Row]:
            runs = [
                await realsize.default_concurrency(
                    workdir / f"cpu{index}",
                    repeats=config.cpu_repeats,
                    batch=config.cpu_batch,
                    burst=config.burst,
                    plateau=config.plateau_turns,
                )
                for index in range(config.process_repeats)
            ]
            return [
                realsize.cpu_row(runs),
                realsize.memory_default_row(runs),
                realsize.plateau_row(runs),
            ]

        await guarded(results, "cpu", "bot CPU per turn (real size)", cpu)
    if "load" in wanted:

        async def concurrent() -> list[Row]:
            runs = [
                await realsize.concurrent(
                    workdir / f"load{index}",
                    config.load_generations,
                    config.load_interval,
                    config.heartbeat_ms,
                )
                for index in range(config.process_repeats)
            ]
            return realsize.concurrent_rows(runs)

        await guarded(results, "load", f"{config.load_generations} concurrent", concurrent)
    if "storage" in wanted:

        async def storage() -> list[Row]:
            result = await storage_figure(
                workdir / "storage", config.storage_turns, config.storage_operations
            )
            return [storage_row(result)]

        await guarded(results, "storage", "storage", storage)
    if "fleet" in wanted:

        async def several() -> list[Row]:
            sizes = fleet.QUICK if config.name == "quick" else fleet.FULL
            return fleet.fleet_rows(await fleet.run_fleet(sizes, workdir / "fleet"))

        await guarded(results, "fleet", "turns per second, 1-3 processes", several)
    for key in ORDER:
        outcome.rows.extend(results.get(key, []))
    return outcome


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m bench", description="Benchmarks of the streaming pipeline."
    )
    parser.add_argument("--quick", action="store_true", help="a smaller smoke run (~1 minute)")
    parser.add_argument(
        "--only",
        default=",".join(FIGURES),
        help=f"comma-separated subset of {','.join(FIGURES)} (default: all)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="where results.md and results.png go (default: bench/ for a full run; "
        "a quick run only prints unless given)",
    )
    parser.add_argument(
        "--no-photo",
        action="store_true",
        help="skip the overhead row at real size",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run, print the table, write results.md and the plot; exit 2 if a benchmark crashed."""
    args = build_parser().parse_args(argv)
    figures = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(figures) - set(FIGURES))
    if unknown:
        print(f"error: unknown figures {unknown}; choose from {', '.join(FIGURES)}")
        return 2
    config = QUICK if args.quick else FULL
    out: Path | None = args.out if args.out is not None else (None if args.quick else HERE)
    print(f"running {config.name} benchmarks: {', '.join(figures)}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="imagine-bench-") as tmp:
        outcome = asyncio.run(run(config, figures, Path(tmp), not args.no_photo))
    seconds = time.monotonic() - started
    rows = outcome.rows
    print()
    print(text_table(rows))
    met = sum(row.passed for row in rows)
    print(f"\n{met} of {len(rows)} targets met in {seconds:.0f} s")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot: str | None = None
        if outcome.ttfi is not None or outcome.overhead is not None:
            plot = "results.png"
            ttfi = outcome.ttfi
            series: list[Series] = []
            for result, colours in (
                (outcome.overhead, (STREAMED, WAITED)),
                (outcome.overhead_photo, (PHOTO, PHOTO_BARE)),
            ):
                if result is not None:
                    series.append((f"bot, {result.pictures}", result.bot, colours[0]))
                    series.append((f"bare upload, {result.pictures}", result.bare, colours[1]))
            draw_plot(
                out / plot,
                streamed=ttfi.streamed if ttfi else [],
                waited=ttfi.waited if ttfi else [],
                seconds=ttfi.seconds if ttfi else 0.0,
                overhead=series,
                p50_target=pipeline.OVERHEAD_P50_TARGET,
                p99_target=pipeline.OVERHEAD_P99_TARGET,
            )
        notes = list(NOTES)
        write_results(
            out / "results.md",
            rows,
            mode=config.name,
            seconds=seconds,
            notes=notes,
            plot=plot,
        )
        print(f"wrote {out / 'results.md'}")
    crashed = any(row.measured == "error" for row in rows)
    return 2 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
