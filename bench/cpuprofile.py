"""`python -m bench.cpuprofile`: where the bot's fixed CPU per turn goes (20 KB pictures).

The bot runs as its own process with bench/probe/sitecustomize.py: cProfile covers the event
loop's thread for `--turns` turns of `/imagine` with 2 partials at 1024x1024 (the stand-in's
own 20 KB gradients), 4 at a time, after a warm-up. Prints the CPU per turn from /proc (the
whole process, profiler off in a second pass) and the top functions by own and cumulative time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pstats
import signal
import tempfile
from pathlib import Path

from bench.harness import ROOT, BotSession, bot_session
from bench.realsize import _turns
from fakes.openai_api import Timeline

PROBE = Path(__file__).resolve().parent / "probe"


async def _stand_in_turns(session: BotSession, count: int, label: str) -> None:
    await _turns(session, count, 4, label, size="1024x1024")


async def profile(workdir: Path, turns: int, out: Path | None) -> float:
    """CPU seconds per turn of the bot process; with `out`, cProfile's stats written there."""
    bot_root = os.environ.get("BENCH_BOT_ROOT", str(ROOT))
    env = {"PYTHONPATH": f"{PROBE}{os.pathsep}{bot_root}", "GLOBAL_CONCURRENCY": "4"}
    if out is not None:
        env["CPUPROBE_OUT"] = str(out)
    async with bot_session(workdir, users=8, env=env, photo_like=False) as session:
        session.openai.photo_like = False
        session.openai.set_timeline(Timeline(0.02, 0.02, 0.02))
        await _stand_in_turns(session, 8, "warm-up")
        if out is not None:
            os.kill(session.pid, signal.SIGUSR2)
        before = session.cpu_seconds()
        await _stand_in_turns(session, turns, "profiled")
        await asyncio.sleep(0.3)
        per_turn = (session.cpu_seconds() - before) / turns
        if out is not None:
            os.kill(session.pid, signal.SIGUSR1)
            for _ in range(300):  # the bot writes the stats from its signal handler
                if out.exists():
                    break
                await asyncio.sleep(0.1)
    return per_turn


def main() -> None:
    """Parse, run (unprofiled for the figure, then profiled), print."""
    parser = argparse.ArgumentParser(prog="python -m bench.cpuprofile")
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--lines", type=int, default=30)
    parser.add_argument("--stats", type=Path, help="keep cProfile's stats here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imagine-cpu-") as tmp:
        plain = [
            asyncio.run(profile(Path(tmp) / f"plain{i}", args.turns, None))
            for i in range(args.repeats)
        ]
        out = args.stats or Path(tmp) / "bot.pstats"
        profiled = asyncio.run(profile(Path(tmp) / "profiled", args.turns, out))
        print(
            "CPU per turn (20 KB, 2 partials, 4 at a time), unprofiled: "
            + ", ".join(f"{v * 1000:.1f} ms" for v in plain)
            + f"; min {min(plain) * 1000:.1f} ms, median {sorted(plain)[len(plain) // 2] * 1000:.1f}"
            f" ms; profiled {profiled * 1000:.1f} ms"
        )
        stats = pstats.Stats(str(out))
        stats.sort_stats("tottime").print_stats(args.lines)
        stats.sort_stats("cumulative").print_stats(args.lines)


if __name__ == "__main__":
    main()
