"""Figures at the size users meet: 1536x1024 PNGs of ~2.7 MB (3.6 MB of base64 per event).

Every CPU figure is a ratio to a floor measured in the same run, in this process, on the same
bytes: base64-decoding the images a turn must show with the standard library, plus one copy of
the turn's whole event stream. Figures are min and median over repeats (this machine is noisy);
partials the bot dropped are counted apart from those it uploaded.
"""

from __future__ import annotations

import asyncio
import binascii
import itertools
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.harness import ROOT, BotSession, Generation, LagSnapshot, bot_session, openai_times
from bench.payload import photo_like
from bench.report import Row, mib, ms
from bench.stats import LagWindow, lag_window, median
from bot.core.b64 import b64decode, decoder_name
from fakes import _openai_render as render
from fakes.openai_api import Timeline

SIZE = "1536x1024"
WIDTH, HEIGHT = 1536, 1024
CPU_RATIO_TARGET = 2.0
PEAK_100_TARGET = 400 * 1024 * 1024
PEAK_DEFAULT_TARGET = 250 * 1024 * 1024
PLATEAU_TARGET = 1.3
LAG_TARGET_MS = 100.0
HEARTBEAT_TOLERANCE = 0.1
# bench/probe/sitecustomize.py, loaded into the bot: it records when the bot's loop sends each
# heartbeat (discord.py's keep-alive thread hands the send to the loop).
PROBE = Path(__file__).resolve().parent / "probe"
DEFAULT_CONCURRENCY = 4


@dataclass
class Floor:
    """The physical floor of one turn's bytes, measured here."""

    stream_bytes: int
    image_bytes: int
    stdlib: list[float]
    simd: list[float]


def measure_floor(repeats: int) -> Floor:
    """Decode the turn's three images (2 partials + final) and copy its event stream once."""
    pictures = photo_like(WIDTH, HEIGHT)
    shown = [pictures.partials[0], pictures.partials[1], pictures.final]
    texts = [render.b64(p).encode() for p in shown]
    # The stream carries the final twice (output_item.done and response.completed).
    stream = b"".join([*texts, texts[-1]])
    stdlib: list[float] = []
    simd: list[float] = []
    for _ in range(repeats):
        for decode, out in ((binascii.a2b_base64, stdlib), (b64decode, simd)):
            started = time.perf_counter()
            copy = bytearray(stream)
            images = [decode(t) for t in texts]
            out.append(time.perf_counter() - started)
            del copy, images
    return Floor(len(stream), len(pictures.final), stdlib, simd)


@dataclass
class Batch:
    """One batch of turns: CPU of the bot process, and partials sent vs uploaded."""

    turns: int
    cpu: float
    wall: float
    sent: int
    uploaded: int

    @property
    def per_turn(self) -> float:
        """CPU seconds per turn."""
        return self.cpu / self.turns


@dataclass
class DefaultRun:
    """The bot at the default concurrency: CPU batches, peak RSS, and the RSS plateau."""

    floor: Floor
    batches: list[Batch] = field(default_factory=list)
    rss_warm: int = 0
    hwm_default: int = 0
    burst: int = 0
    plateau_turns: int = 0
    rss_after: list[tuple[int, int]] = field(default_factory=list)
    plateau_sent: int = 0
    plateau_uploaded: int = 0


def _sent_partials(session: BotSession, generations: list[Generation]) -> int:
    times = openai_times(session.openai)
    return sum(len(times[g.prompt].partials) for g in generations if g.prompt in times)


async def _turns(
    session: BotSession,
    count: int,
    concurrency: int,
    label: str,
    user_offset: int = 0,
    size: str = SIZE,
) -> list[Generation]:
    """Run `count` turns (1536x1024 unless told) with 2 partials, `concurrency` at a time."""
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    finished: list[Generation] = []

    async def worker(slot: int) -> None:
        while not queue.empty():
            queue.get_nowait()
            user = session.user(user_offset + slot)
            generation = await session.imagine(label, user=user, partials=2, size=size)
            await session.wait_done([generation], within=120)
            finished.append(generation)

    await asyncio.gather(*(worker(slot) for slot in range(concurrency)))
    return finished


async def _warm_up(session: BotSession) -> None:
    """Unmeasured turns at the default concurrency, until the first-use costs are paid."""
    await session.openai.pictures(WIDTH, HEIGHT)
    session.openai.photo_like = True
    session.openai.set_timeline(Timeline(0.05, 0.05, 0.05))
    await _turns(session, 2 * DEFAULT_CONCURRENCY, DEFAULT_CONCURRENCY, "warm-up")


async def default_concurrency(
    workdir: Path, *, repeats: int, batch: int, burst: int, plateau: int
) -> DefaultRun:
    """One bot at GLOBAL_CONCURRENCY=4: a burst of `burst` turns, CPU batches, the plateau."""
    floor = measure_floor(max(5, repeats * 2))
    run = DefaultRun(floor=floor)
    env = {"GLOBAL_CONCURRENCY": str(DEFAULT_CONCURRENCY)}
    async with bot_session(workdir, users=max(burst, 8), env=env) as session:
        await _warm_up(session)
        await asyncio.sleep(0.5)
        run.rss_warm = session.memory()["VmRSS"]
        # All at once, as a busy server would: the bot queues them, 4 run.
        session.openai.set_timeline(Timeline(0.1, 0.1, 0.1))
        generations = [
            await session.imagine("burst", user=session.user(i), partials=2, size=SIZE)
            for i in range(burst)
        ]
        await session.wait_done(generations, within=600)
        run.burst = len(generations)
        run.hwm_default = session.memory()["VmHWM"]
        # Events 250 ms apart: every partial is uploaded before the next arrives.
        session.openai.set_timeline(Timeline(0.25, 0.25, 0.25))
        for repeat in range(repeats):
            before, started = session.cpu_seconds(), time.monotonic()
            done = await _turns(session, batch, DEFAULT_CONCURRENCY, f"cpu{repeat}")
            await asyncio.sleep(0.3)
            run.batches.append(
                Batch(
                    turns=len(done),
                    cpu=session.cpu_seconds() - before,
                    wall=time.monotonic() - started,
                    sent=_sent_partials(session, done),
                    uploaded=sum(len(g.uploads) for g in done),
                )
            )
        # The plateau only needs turns to pass: events 20 ms apart (some previews are dropped,
        # counted below).
        session.openai.set_timeline(Timeline(0.02, 0.02, 0.02))
        run.plateau_turns = plateau
        step = max(1, plateau // 5)
        all_done: list[Generation] = []
        for start in range(0, plateau, step):
            done = await _turns(session, min(step, plateau - start), DEFAULT_CONCURRENCY, "plateau")
            all_done += done
            await asyncio.sleep(0.3)
            run.rss_after.append((start + len(done), session.memory()["VmRSS"]))
        run.plateau_sent = _sent_partials(session, all_done)
        run.plateau_uploaded = sum(len(g.uploads) for g in all_done)
    return run


def _mm(values: list[float], unit: Callable[[float], str]) -> str:
    return f"min {unit(min(values))}, median {unit(median(values))}"


def _merged(runs: list[DefaultRun]) -> DefaultRun:
    """The batches and floors of several bot processes as one run (for the CPU row)."""
    first = runs[0]
    floor = Floor(
        first.floor.stream_bytes,
        first.floor.image_bytes,
        [v for r in runs for v in r.floor.stdlib],
        [v for r in runs for v in r.floor.simd],
    )
    return DefaultRun(floor=floor, batches=[b for r in runs for b in r.batches])


def cpu_row(runs: list[DefaultRun]) -> Row:
    """Bot CPU per turn at real size, as a ratio to the floor (batches of every bot process)."""
    run = _merged(runs)
    floor = run.floor
    per_turn = [b.per_turn for b in run.batches]
    ratio_min = min(per_turn) / min(floor.stdlib)
    ratio_median = median(per_turn) / median(floor.stdlib)
    sent = sum(b.sent for b in run.batches)
    uploaded = sum(b.uploaded for b in run.batches)
    return Row(
        figure="bot CPU per turn (1536x1024, 2.7 MB PNG, 2 partials)",
        baseline=f"floor {_mm(floor.stdlib, ms)}",
        measured=(
            f"{_mm(per_turn, ms)}; ratio {ratio_min:.2f}x (min) / {ratio_median:.2f}x (median); "
            f"{uploaded} of {sent} partials uploaded"
        ),
        target=f"<= {CPU_RATIO_TARGET:.1f}x the floor",
        passed=ratio_median <= CPU_RATIO_TARGET,
        details=[
            f"{len(run.batches)} batches ({len(runs)} bot processes) of "
            f"{run.batches[0].turns if run.batches else 0} turns "
            f"of `/imagine` at {SIZE} with 2 partials, {DEFAULT_CONCURRENCY} at a time, events "
            "250 ms apart: utime+stime of the bot process (/proc/<pid>/stat) per batch / turns. "
            "Per batch: "
            + "; ".join(
                f"{ms(b.per_turn)} ({b.cpu:.2f} s CPU, {b.wall:.1f} s wall, {b.uploaded} of "
                f"{b.sent} partials uploaded)"
                for b in run.batches
            )
            + ".",
            f"Floor, measured in the benchmark process in the same run on the same bytes "
            f"({len(floor.stdlib)} repeats): one copy of the turn's {floor.stream_bytes / 1e6:.1f} "
            "MB of base64 (2 partials and the final twice) plus `binascii.a2b_base64` of the "
            f"three images the turn shows ({floor.image_bytes / 1e6:.2f} MB PNG each): "
            f"{_mm(floor.stdlib, ms)}.",
            f"With the bot's decoder ({decoder_name()}) the same floor is "
            f"{_mm(floor.simd, ms)}; against it the bot's median is "
            f"{median(per_turn) / median(floor.simd):.1f}x: what remains is the fixed cost of a "
            "turn (Discord, the SDK's request, storage), not the image bytes.",
            "Partials the bot did not upload (dropped for a newer one, latest wins) are "
            "counted above apart from the uploaded ones; a batch with drops does fewer uploads "
            "and would flatter the figure.",
        ],
    )


def _mm_mib(values: list[int]) -> str:
    return f"min {mib(min(values))}, median {mib(int(median([float(v) for v in values])))}"


def memory_default_row(runs: list[DefaultRun]) -> Row:
    """Peak RSS of a burst at the default concurrency (one per bot process)."""
    run = runs[0]
    peaks = [r.hwm_default for r in runs]
    return Row(
        figure=f"peak RSS, {run.burst} turns at the default concurrency ({DEFAULT_CONCURRENCY})",
        baseline=f"{_mm_mib([r.rss_warm for r in runs])} (RSS after warm-up)",
        measured=_mm_mib(peaks),
        target=f"<= {mib(PEAK_DEFAULT_TARGET)}",
        passed=median([float(p) for p in peaks]) <= PEAK_DEFAULT_TARGET,
        details=[
            f"{run.burst} `/imagine` at {SIZE} (2.7 MB PNGs, 2 partials) sent at once to a bot "
            f"with GLOBAL_CONCURRENCY={DEFAULT_CONCURRENCY}; VmHWM of the bot process after "
            f"all finals were posted, one bot process per repeat ({len(runs)}): "
            + ", ".join(mib(p) for p in peaks)
            + ". The verdict takes the median.",
        ],
    )


def plateau_row(runs: list[DefaultRun]) -> Row:
    """RSS after many sequential turns vs. after warm-up (one ratio per bot process)."""
    run = runs[0]
    lasts = [r.rss_after[-1][1] if r.rss_after else 0 for r in runs]
    ratios = [
        last / r.rss_warm if r.rss_warm else float("nan")
        for last, r in zip(lasts, runs, strict=True)
    ]
    return Row(
        figure=f"RSS plateau over {run.plateau_turns} turns, {DEFAULT_CONCURRENCY} at a time",
        baseline=f"{_mm_mib([r.rss_warm for r in runs])} (after warm-up)",
        measured=(f"{_mm_mib(lasts)}; ratio min {min(ratios):.2f}x, median {median(ratios):.2f}x"),
        target=f"<= {PLATEAU_TARGET:.1f}x",
        passed=median(ratios) <= PLATEAU_TARGET,
        details=[
            *(
                f"Bot process {i + 1}: VmRSS after warm-up {mib(r.rss_warm)}, after each fifth "
                "of the turns: "
                + ", ".join(f"{n} turns {mib(rss)}" for n, rss in r.rss_after)
                + f"; {r.plateau_uploaded} of {r.plateau_sent} partials uploaded."
                for i, r in enumerate(runs)
            ),
            "Measured in the same process after the burst and the CPU batches.",
        ],
    )


@dataclass
class ConcurrentRun:
    """100 turns at once: peak RSS, loop lag, heartbeats."""

    turns: int
    rss_warm: int
    hwm: int
    lag: LagWindow
    # Heartbeat gaps as the bot sent them (the verdict) and as the Discord stand-in received them.
    gaps: list[float]
    heartbeat: float
    received_gaps: list[float]
    # The benchmark process's own loop (both stand-ins run on it) over the same window.
    bench_lag: LagWindow
    sent: int
    uploaded: int
    wall: float
    budget_note: str


async def concurrent(
    workdir: Path,
    turns: int,
    interval: float,
    heartbeat_ms: int,
    env: dict[str, str] | None = None,
) -> ConcurrentRun:
    """`turns` concurrent real-size turns in as many threads (GLOBAL_CONCURRENCY above them)."""
    sends = workdir / "heartbeats-sent.txt"
    bot_root = os.environ.get("BENCH_BOT_ROOT", str(ROOT))
    probe = {"PYTHONPATH": f"{PROBE}{os.pathsep}{bot_root}", "HBPROBE_OUT": str(sends)}
    async with bot_session(
        workdir, users=turns, heartbeat_interval_ms=heartbeat_ms, env={**probe, **(env or {})}
    ) as session:
        await _warm_up(session)
        await asyncio.sleep(0.5)
        rss_warm = session.memory()["VmRSS"]
        session.openai.set_timeline(Timeline(interval, interval, interval))
        start = await session.lag_snapshot(time.monotonic())
        bench_start = LagSnapshot.of(session.monitor)
        began = time.monotonic()
        batch = [
            await session.imagine("load", user=session.user(i), partials=2, size=SIZE)
            for i in range(turns)
        ]
        await session.wait_done(batch, within=600)
        ended = time.monotonic()
        end = await session.lag_snapshot(ended)
        bench_end = LagSnapshot.of(session.monitor)
        hwm = session.memory()["VmHWM"]
        window = (start.updated_at, end.updated_at)
        received = [t for t in session.discord.heartbeats if window[0] <= t <= window[1]]
        sent = _sent_partials(session, batch)
        uploaded = sum(len(g.uploads) for g in batch)
    # The bot logs its budget's account when it stops (bot/services.py).
    log = session.log_file.read_text(errors="replace")
    note = next((line for line in reversed(log.splitlines()) if "image memory budget" in line), "")
    sent_at = [float(v) for v in (sends.read_text() if sends.exists() else "").split()]
    beats = [t for t in sent_at if window[0] <= t <= window[1]]
    return ConcurrentRun(
        turns=turns,
        rss_warm=rss_warm,
        hwm=hwm,
        lag=lag_window(start.histogram, end.histogram, end.updated_at - start.updated_at),
        gaps=[b - a for a, b in itertools.pairwise(beats)],
        heartbeat=heartbeat_ms / 1000,
        received_gaps=[b - a for a, b in itertools.pairwise(received)],
        bench_lag=lag_window(
            bench_start.histogram,
            bench_end.histogram,
            bench_end.updated_at - bench_start.updated_at,
        ),
        sent=sent,
        uploaded=uploaded,
        wall=ended - began,
        budget_note=note.split("image memory budget", 1)[-1] if note else "",
    )


def concurrent_rows(runs: list[ConcurrentRun]) -> list[Row]:
    """Peak RSS and loop lag under 100 concurrent real-size turns (one bot process per repeat)."""
    run = runs[0]
    late = [r.heartbeat + HEARTBEAT_TOLERANCE for r in runs]
    lates = [sum(1 for gap in r.gaps if gap > limit) for r, limit in zip(runs, late, strict=True)]
    lates_received = [
        sum(1 for gap in r.received_gaps if gap > limit)
        for r, limit in zip(runs, late, strict=True)
    ]
    details = [
        f"{run.turns} concurrent `/imagine` at {SIZE} (2.7 MB PNGs, 2 partials each) in "
        f"{run.turns} threads, events 2 s apart (partial, partial, final); {len(runs)} bot "
        "processes, one per repeat."
    ]
    for i, r in enumerate(runs):
        details.append(
            f"Bot process {i + 1}: all finals posted {r.wall:.1f} s after the first command; "
            f"{r.uploaded} of {r.sent} partials uploaded; VmHWM {mib(r.hwm)}; loop lag max "
            f"{r.lag.max_ms:.0f} ms, p99 {r.lag.p99_ms:.0f} ms over {r.lag.samples} wake-ups; "
            f"heartbeat gap at the bot's send max {ms(max(r.gaps, default=0.0))}, {lates[i]} "
            f"late of {len(r.gaps)} (at the stand-in's receive max "
            f"{ms(max(r.received_gaps, default=0.0))}, {lates_received[i]} late); the "
            f"benchmark process's own loop lag max {r.bench_lag.max_ms:.0f} ms, p99 "
            f"{r.bench_lag.p99_ms:.0f} ms"
            + (f"; budget{r.budget_note}" if r.budget_note else "")
            + "."
        )
    hwms = [r.hwm for r in runs]
    lags = [r.lag.max_ms for r in runs]
    p99s = [r.lag.p99_ms for r in runs]
    return [
        Row(
            figure=f"peak RSS, {run.turns} concurrent real-size turns",
            baseline=f"{_mm_mib([r.rss_warm for r in runs])} (RSS after warm-up)",
            measured=_mm_mib(hwms),
            target=f"<= {mib(PEAK_100_TARGET)}",
            passed=median([float(h) for h in hwms]) <= PEAK_100_TARGET,
            details=[*details, "VmHWM of the bot process after the run; verdict on the median."],
        ),
        Row(
            figure=f"event-loop lag, {run.turns} concurrent real-size turns",
            baseline=f"heartbeat every {ms(run.heartbeat)}",
            measured=(
                f"max: min {min(lags):.0f} ms, median {median(lags):.0f} ms; p99 median "
                f"{median(p99s):.0f} ms; late heartbeats: min {min(lates)}, median "
                f"{median([float(x) for x in lates]):.0f}"
            ),
            target=f"max <= {LAG_TARGET_MS:.0f} ms, 0 late heartbeats",
            passed=median(lags) <= LAG_TARGET_MS and median([float(x) for x in lates]) == 0,
            details=[
                *details,
                "The bot's LOOP_LAG_FILE monitor; a heartbeat gap above interval + "
                f"{ms(HEARTBEAT_TOLERANCE)} is late. Verdict on the medians.",
                "Heartbeat gaps are taken when the bot's event loop sends each heartbeat "
                "(bench/probe records the send; discord.py's keep-alive thread waits the "
                "interval, then hands the send to the loop and waits for it, so a blocked loop "
                "delays it). The Discord stand-in's receive times are shown beside them: the "
                "stand-ins share the benchmark process's loop, which also streams the OpenAI "
                "stand-in's events and reads every upload, so a stall there delays the receive "
                "without the bot being late (its loop lag is shown).",
            ],
        ),
    ]


Step = Callable[[], Awaitable[list[Row]]]
