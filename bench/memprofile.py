"""`python -m bench.memprofile`: where the bot's memory goes under real-size load.

Runs the bot (as its own process, as the benchmark does) with bench/probe/sitecustomize.py
loaded: tracemalloc snapshots at the traced peak, VmRSS and glibc's mallinfo2 beside them. Prints
the top allocation sites at the peak and the allocator's account (what Python holds vs. what
the heap keeps). Extra environment (e.g. MALLOC_ARENA_MAX=2) compares allocator settings on
evidence; `--no-trace` measures VmHWM without tracemalloc's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ROOT, bot_session
from bench.realsize import SIZE, _turns, _warm_up
from fakes.openai_api import Timeline

PROBE = Path(__file__).resolve().parent / "probe"


async def profile(
    workdir: Path,
    *,
    turns: int,
    concurrency: int,
    interval: float,
    env: dict[str, str],
    trace: bool,
) -> dict[str, Any]:
    """Run `turns` real-size turns, `concurrency` at a time (0: all at once); the probe's report."""
    out = workdir / "memprobe.json"
    bot_root = os.environ.get("BENCH_BOT_ROOT", str(ROOT))
    full_env = {"PYTHONPATH": f"{PROBE}{os.pathsep}{bot_root}", **env}
    if trace:
        full_env["MEMPROBE_OUT"] = str(out)
    if concurrency:
        full_env.setdefault("GLOBAL_CONCURRENCY", str(concurrency))
    users = max(turns, 8)
    async with bot_session(workdir, users=users, env=full_env) as session:
        await _warm_up(session)
        warm = session.memory()
        if trace:
            os.kill(session.pid, signal.SIGUSR2)
            await asyncio.sleep(0.5)
        session.openai.set_timeline(Timeline(interval, interval, interval))
        started = time.monotonic()
        batch = [
            await session.imagine("mem", user=session.user(i), partials=2, size=SIZE)
            for i in range(turns)
        ]
        await session.wait_done(batch, within=900)
        wall = time.monotonic() - started
        after = session.memory()
        # A few sequential turns more: what stays after the burst (retention).
        await _turns(session, 8, 4, "after")
        settled = session.memory()
        report: dict[str, Any] = {}
        if trace:
            os.kill(session.pid, signal.SIGUSR1)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                try:
                    report = json.loads(out.read_text())
                    break
                except (OSError, ValueError):
                    continue
    report.update(
        rss_warm=warm["VmRSS"],
        hwm=after["VmHWM"],
        rss_after=after["VmRSS"],
        rss_settled=settled["VmRSS"],
        wall=wall,
    )
    return report


def _mib(n: Any) -> str:
    return f"{int(n) / 1048576:.1f} MiB"


def main() -> None:
    """Parse, run, print."""
    parser = argparse.ArgumentParser(prog="python -m bench.memprofile")
    parser.add_argument("--turns", type=int, default=40)
    parser.add_argument("--concurrency", type=int, default=0, help="GLOBAL_CONCURRENCY (0: all)")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--env", action="append", default=[], help="NAME=VALUE for the bot")
    parser.add_argument("--no-trace", action="store_true")
    parser.add_argument("--lines", type=int, default=25)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    env = dict(item.split("=", 1) for item in args.env)
    with tempfile.TemporaryDirectory(prefix="imagine-mem-") as tmp:
        report = asyncio.run(
            profile(
                Path(tmp),
                turns=args.turns,
                concurrency=args.concurrency,
                interval=args.interval,
                env=env,
                trace=not args.no_trace,
            )
        )
    if args.json:
        args.json.write_text(json.dumps(report))
    print(
        f"RSS warm {_mib(report['rss_warm'])}, VmHWM {_mib(report['hwm'])}, after "
        f"{_mib(report['rss_after'])}, settled {_mib(report['rss_settled'])} "
        f"({report['wall']:.1f} s)"
    )
    if "peak_traced" in report:
        print(
            f"traced peak {_mib(report['peak_traced'])} with RSS {_mib(report['rss_at_peak'])}; "
            f"at exit traced {_mib(report['traced_at_exit'])}, RSS {_mib(report['rss_at_exit'])}"
        )
        for label in ("mallinfo_at_peak", "mallinfo_at_exit"):
            info = report.get(label) or {}
            assert isinstance(info, dict)
            if info:
                print(
                    f"{label}: heap {_mib(info['arena'])} (in use {_mib(info['uordblks'])}, free "
                    f"{_mib(info['fordblks'])}), mmapped {_mib(info['hblkhd'])} in "
                    f"{info['hblks']} blocks"
                )
        root = str(ROOT) + "/"
        for stat in report.get("by_line", [])[: args.lines]:
            where = stat["where"][0].replace(root, "")
            print(f"  {_mib(stat['size']):>12} {stat['count']:>7}  {where}")
        for chain in report.get("holders", []):
            print("held: " + "  <-  ".join(chain))
        print("alive at the end:")
        for stat in report.get("exit_by_line", [])[:12]:
            where = stat["where"][0].replace(root, "")
            print(f"  {_mib(stat['size']):>12} {stat['count']:>7}  {where}")
        for stat in report.get("exit_by_traceback", [])[:4]:
            print(f"--- alive at the end: {_mib(stat['size'])} in {stat['count']}")
            for frame in stat["where"][-12:]:
                print("      " + frame.replace(root, ""))
        for stat in report.get("by_traceback", [])[:8]:
            print(f"--- {_mib(stat['size'])} in {stat['count']}")
            for frame in stat["where"][-12:]:
                print("      " + frame.replace(root, ""))


if __name__ == "__main__":
    main()
