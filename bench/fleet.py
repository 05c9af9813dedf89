"""Turns per second with 1, 2 and 3 bot processes on PostgreSQL, and with SQLite in one.

`python -m bench.fleet [--quick]` (also `python -m bench --only fleet`). Each configuration
starts its bot processes (`python -m bot run`, one shard each) against the zero-latency
stand-ins (no delay before any event, no partials, the stand-in's small pictures), so what is
measured is the bot and its database, not OpenAI. A throw-away PostgreSQL cluster is made from
the system's binaries (/usr/lib/postgresql/*/bin), a fresh database per configuration.

Every configuration's bot processes are up for the whole run (idle ones cost next to
nothing). Per configuration, after the same warm-up turns per process:
- throughput: a burst of /imagine commands spread over the processes' guilds and users, timed
  from the first command to the last job done (the ledger says done once the posting is
  recorded); at least 3 repeats, min and median. The bursts take turns: one of each
  configuration per round, so anything else the machine runs meanwhile weighs on every row;
- claim latency: single turns one after another, each from its admission to its start
  (the ledger's `created_at` -> `started_at`: placing it, the ticket, fetching it, a place);
- queue depth over time: the ledger's queued jobs, sampled every 0.1 s during a burst.

The stand-ins run in this process and share the machine's cores with every bot process and
the PostgreSQL server: on a 2-core machine, 2 or 3 bot processes compete for the same cores.
The CPU each row reports is over its own bursts: bots, stand-ins, the PostgreSQL server, the
whole machine, and what else ran on it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import pwd
import secrets
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg

from bench.harness import BOT_TOKEN, READY_TIMEOUT, ROOT, cpu_seconds
from bench.payload import BenchOpenAI
from bench.report import Row, machine, markdown_table, ms, revision, text_table
from bench.stats import median, percentile
from fakes.discord_api import FakeDiscord
from fakes.openai_api import Timeline
from storage.urls import postgres_conninfo

ZERO = Timeline(first_partial=0.0, between_partials=0.0, final=0.0)
# GLOBAL_CONCURRENCY of every configuration: high enough that the fleet-wide cap never binds,
# so the figures compare the processes' capacity (with a cap of C, turns per second are at most
# C / the turn's latency, however many processes there are).
FLEET_CONCURRENCY = 64
PG_ONE_TARGET = 0.9  # PostgreSQL with one process: at least 90% of SQLite's turns per second
SCALE_TARGET = 1.6  # two processes: at least 1.6x one


@dataclass(frozen=True)
class FleetConfig:
    """How big the fleet benchmark is."""

    burst: int
    repeats: int
    latency_turns: int
    warm_up: int


FULL = FleetConfig(burst=120, repeats=5, latency_turns=30, warm_up=6)
QUICK = FleetConfig(burst=30, repeats=3, latency_turns=10, warm_up=2)


@dataclass
class FleetResult:
    """What one configuration (backend, processes) measured."""

    backend: str
    processes: int
    turns_per_second: list[float] = field(default_factory=list)
    claim_seconds: list[float] = field(default_factory=list)
    depth: list[tuple[float, int]] = field(default_factory=list)
    # Share of one core used during the bursts by the stand-ins (this process) and the bots.
    stand_in_cpu: float = 0.0
    bot_cpu: float = 0.0
    # The benchmark's PostgreSQL server (0 with SQLite).
    server_cpu: float = 0.0
    # The whole machine (bots, stand-ins, PostgreSQL, anything else), from /proc/stat.
    machine_cpu: float = 0.0

    @property
    def label(self) -> str:
        noun = "process" if self.processes == 1 else "processes"
        return f"{self.backend}, {self.processes} {noun}"

    @property
    def median_tps(self) -> float:
        return median(self.turns_per_second)


class PostgresCluster:
    """A throw-away PostgreSQL cluster from the system's binaries."""

    def __init__(self) -> None:
        found = sorted(
            Path("/usr/lib/postgresql").glob("*/bin/initdb"),
            key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
        )
        initdb = found[-1] if found else Path(shutil.which("initdb") or "initdb")
        if not initdb.is_file():
            raise RuntimeError("PostgreSQL's initdb was not found (apt-get install postgresql)")
        self.bindir = initdb.parent
        self.owner = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="imagine-bench-pg-"))
        self.password = secrets.token_hex(12)
        self.port = 0

    def _run(self, program: str, *args: str) -> subprocess.CompletedProcess[str]:
        ids: dict[str, Any] = {}
        if self.owner is not None:
            entry = pwd.getpwnam(self.owner)
            ids = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        return subprocess.run(
            [str(self.bindir / program), *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **ids,
        )

    def start(self) -> None:
        if self.owner is not None:
            entry = pwd.getpwnam(self.owner)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        secret = self.root / "password"
        secret.write_text(self.password)
        data = self.root / "data"
        done = self._run(
            "initdb", "-D", str(data), "-U", "postgres", "--auth-host=scram-sha-256",
            "--auth-local=trust", f"--pwfile={secret}", "--no-sync", "--no-instructions",
        )  # fmt: skip
        secret.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed: {done.stderr[-1000:]}")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        # The bot's own settings for a database (fsync stays on: the ledger's commits count).
        (data / "postgresql.auto.conf").write_text(
            f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{self.root}'\nmax_connections = 200\n"
        )
        started = self._run(
            "pg_ctl", "-D", str(data), "-l", str(self.root / "server.log"), "-w", "start"
        )
        if started.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {started.stderr[-1000:]}")

    def url(self, database: str = "postgres") -> str:
        password = quote(self.password, safe="")
        return f"postgresql://postgres:{password}@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        name = "bench_" + secrets.token_hex(6)
        with psycopg.connect(postgres_conninfo(self.url()), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def cpu_seconds(self) -> float:
        """CPU seconds the server has used so far: its postmaster, the live backends and
        helpers, and those that have exited (counted in the postmaster's children's time)."""
        try:
            pid = int((self.root / "data" / "postmaster.pid").read_text().split()[0])
            ticks = 0
            for stat in Path("/proc").glob("[0-9]*/stat"):
                with contextlib.suppress(OSError, ValueError, IndexError):
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    if stat.parent.name == str(pid):
                        ticks += sum(int(v) for v in fields[11:15])
                    elif int(fields[1]) == pid:
                        ticks += int(fields[11]) + int(fields[12])
        except (OSError, ValueError, IndexError):
            return 0.0
        return ticks / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def postgres_cluster() -> Iterator[PostgresCluster]:
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


class Ledger:
    """Reads the jobs table of either backend."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url
        self._pg: psycopg.Connection[Any] | None = None
        self._sqlite: sqlite3.Connection | None = None
        if database_url.startswith("sqlite:///"):
            self._sqlite = sqlite3.connect(
                database_url.removeprefix("sqlite:///"), check_same_thread=False
            )
        else:
            self._pg = psycopg.connect(postgres_conninfo(database_url), autocommit=True)

    def rows(self, sql: str) -> list[tuple[Any, ...]]:
        if self._pg is not None:
            return [tuple(r) for r in self._pg.execute(sql).fetchall()]
        assert self._sqlite is not None
        return list(self._sqlite.execute(sql).fetchall())

    def counts(self) -> dict[str, int]:
        return {
            str(s): int(n)
            for s, n in self.rows("SELECT status, count(*) FROM jobs GROUP BY status")
        }

    def close(self) -> None:
        if self._pg is not None:
            self._pg.close()
        if self._sqlite is not None:
            self._sqlite.close()


class Fleet:
    """The stand-ins and N bot processes on one database, one shard each."""

    def __init__(self, discord: FakeDiscord, openai: BenchOpenAI, workdir: Path, url: str) -> None:
        self.discord = discord
        self.openai = openai
        self.workdir = workdir
        self.url = url
        self.processes: list[asyncio.subprocess.Process] = []
        self.channels: list[int] = []
        self.users: list[dict[str, Any]] = []
        self._serial = 0

    def environment(self, index: int, count: int) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("OPENAI_", "DISCORD_", "DATABASE_", "LOOP_LAG", "SHARD_"))
        }
        env.update(
            {
                "PYTHONPATH": os.environ.get("BENCH_BOT_ROOT", str(ROOT)),
                "DISCORD_TOKEN": BOT_TOKEN,
                "OPENAI_API_KEY": "sk-bench-local-only",
                "OPENAI_BASE_URL": self.openai.base_url,
                "OPENAI_MAX_RETRIES": "0",
                "DISCORD_API_BASE_URL": self.discord.api_base,
                "DISCORD_GATEWAY_URL": self.discord.gateway_url,
                "DATABASE_URL": self.url,
                "GLOBAL_CONCURRENCY": str(FLEET_CONCURRENCY),
                "USER_CONCURRENCY": str(FLEET_CONCURRENCY),
                "LOG_LEVEL": "WARNING",
                "SHARD_IDS": str(index),
                "SHARD_COUNT": str(count),
                "WORKER_ID": f"bench-{index}",
            }
        )
        return env

    async def start(self, count: int) -> None:
        for index in range(count):
            log = self.workdir / f"bot-{index}.log"
            with log.open("wb") as out:
                process = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "bot", "run",
                    cwd=self.workdir, env=self.environment(index, count),
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=asyncio.subprocess.STDOUT,
                )  # fmt: skip
            self.processes.append(process)
            # One at a time: each identifies once the previous one is in (max_concurrency 1).
            deadline = time.monotonic() + READY_TIMEOUT
            while self.discord.gateway_sessions < index + 1 or not self.discord.commands():
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"bot {index} did not start:\n{log.read_text()[-2000:]}")
                await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for process in self.processes:
            if process.returncode is None:
                process.terminate()
        for process in self.processes:
            try:
                await asyncio.wait_for(process.wait(), 20)
            except TimeoutError:
                process.kill()
                await process.wait()

    def bot_cpu_seconds(self) -> float:
        """CPU seconds every bot process has used so far."""
        return sum(cpu_seconds(p.pid) for p in self.processes if p.returncode is None)

    async def imagine(self, index: int) -> None:
        self._serial += 1
        channel = self.channels[index % len(self.channels)]
        user = self.users[index % len(self.users)]
        await self.discord.slash(
            "imagine",
            {"prompt": f"bench fleet {self._serial:05d}: a harbour", "partials": 0},
            user=user,
            channel_id=channel,
        )


async def wait_done(ledger: Ledger, total: int, within: float) -> float:
    """Wait until `total` jobs are done; when that was seen (time.monotonic())."""
    deadline = time.monotonic() + within
    while True:
        counts = await asyncio.to_thread(ledger.counts)
        if counts.get("done", 0) >= total:
            return time.monotonic()
        if counts.get("failed", 0) or counts.get("interrupted", 0):
            raise RuntimeError(f"jobs failed: {counts}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {counts} of {total} jobs after {within} s")
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def fleet_of(workdir: Path, url: str, processes: int) -> AsyncIterator[Fleet]:
    workdir.mkdir(parents=True, exist_ok=True)
    openai = BenchOpenAI(photo_like=False)
    openai.set_timeline(ZERO)
    async with FakeDiscord(token=BOT_TOKEN, shards=processes) as discord, openai:
        fleet = Fleet(discord, openai, workdir, url)
        for shard in range(processes):
            guild = discord.add_guild(f"Bench {shard}", shard=(shard, processes))
            fleet.channels.append(int(discord.guild_channels(guild["id"])[0]["id"]))
        # Enough members that a burst never meets the per-member cap of jobs in progress (5).
        fleet.users = [discord.add_user(f"bench-user-{i:03d}") for i in range(64)]
        try:
            await fleet.start(processes)
            yield fleet
        finally:
            await fleet.stop()


@dataclass
class Running:
    """One configuration's fleet, up for the whole run, and what its bursts have used so far."""

    result: FleetResult
    fleet: Fleet
    ledger: Ledger
    server: PostgresCluster | None = None
    issued: int = 0
    wall: float = 0.0
    cpu: dict[str, float] = field(default_factory=dict)

    def cpu_now(self) -> dict[str, float]:
        return {
            "stand_in": time.process_time(),
            "bot": self.fleet.bot_cpu_seconds(),
            "server": self.server.cpu_seconds() if self.server is not None else 0.0,
            "machine": machine_busy_seconds(),
        }


async def warm_up(config: FleetConfig, run: Running) -> None:
    """Warm-up turns (the same number per process in every configuration), then the claim
    latency: single turns one after another, so no queueing is counted."""
    processes = run.result.processes
    for i in range(config.warm_up * processes):
        await run.fleet.imagine(i)
    run.issued += config.warm_up * processes
    await wait_done(run.ledger, run.issued, 120)
    for i in range(config.latency_turns):
        await run.fleet.imagine(i)
        run.issued += 1
        await wait_done(run.ledger, run.issued, 60)
    rows = await asyncio.to_thread(
        run.ledger.rows,
        f"SELECT started_at - created_at FROM jobs ORDER BY id DESC LIMIT {config.latency_turns}",
    )
    run.result.claim_seconds = [float(r[0]) for r in rows]


async def burst(config: FleetConfig, run: Running) -> None:
    """One timed burst, with the queue depth (kept for the first) and the CPU it used."""
    before = run.cpu_now()
    started = time.monotonic()
    await asyncio.gather(*(run.fleet.imagine(i) for i in range(config.burst)))
    run.issued += config.burst
    sampler = asyncio.create_task(sample_depth(run.ledger, started))
    try:
        finished = await wait_done(run.ledger, run.issued, 300)
    finally:
        sampler.cancel()
        samples = await asyncio.gather(sampler, return_exceptions=True)
    run.result.turns_per_second.append(config.burst / (finished - started))
    if not run.result.depth and isinstance(samples[0], list):
        run.result.depth = samples[0]
    run.wall += time.monotonic() - started
    for key, value in run.cpu_now().items():
        run.cpu[key] = run.cpu.get(key, 0.0) + value - before[key]


def settle_cpu(run: Running) -> None:
    """The bursts' CPU as shares of a core over the bursts' wall time."""
    wall = run.wall or 1.0
    run.result.stand_in_cpu = run.cpu.get("stand_in", 0.0) / wall
    run.result.bot_cpu = run.cpu.get("bot", 0.0) / wall
    run.result.server_cpu = run.cpu.get("server", 0.0) / wall
    run.result.machine_cpu = run.cpu.get("machine", 0.0) / wall


async def sample_depth(ledger: Ledger, started: float) -> list[tuple[float, int]]:
    """The ledger's queued jobs every 0.1 s, until cancelled: (seconds since start, depth)."""
    samples: list[tuple[float, int]] = []
    try:
        while True:
            counts = await asyncio.to_thread(ledger.counts)
            samples.append((time.monotonic() - started, counts.get("queued", 0)))
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        return samples


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine spent busy so far (every core; /proc/stat), 0 elsewhere."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except OSError:
        return 0.0
    # user nice system idle iowait irq softirq steal ...: idle and iowait are not busy.
    busy = sum(fields[:8]) - fields[3] - fields[4]
    return busy / os.sysconf("SC_CLK_TCK")


def other_cpu(result: FleetResult) -> float:
    """Cores the machine spent on neither the bots, the stand-ins nor PostgreSQL."""
    return max(0.0, result.machine_cpu - result.bot_cpu - result.stand_in_cpu - result.server_cpu)


def depth_line(samples: Sequence[tuple[float, int]]) -> str:
    """The depth series, one sample per half second."""
    shown: list[str] = []
    next_at = 0.0
    for at, depth in samples:
        if at >= next_at:
            shown.append(f"{at:.1f}s:{depth}")
            next_at = at + 0.5
    return " ".join(shown) or "-"


def fleet_rows(results: Sequence[FleetResult]) -> list[Row]:
    """The table rows: each configuration's throughput and claim latency, and the two targets."""
    by = {(r.backend, r.processes): r for r in results}
    sqlite_one = by.get(("SQLite", 1))
    pg_one = by.get(("PostgreSQL", 1))
    rows: list[Row] = []
    for result in results:
        tps = result.turns_per_second
        target, passed, baseline = "-", True, "-"
        if result.backend == "PostgreSQL" and result.processes == 1 and sqlite_one is not None:
            baseline = f"SQLite {sqlite_one.median_tps:.1f}/s"
            target = f">= {PG_ONE_TARGET:.0%} of SQLite"
            passed = result.median_tps >= PG_ONE_TARGET * sqlite_one.median_tps
        elif result.backend == "PostgreSQL" and result.processes == 2 and pg_one is not None:
            baseline = f"1 process {pg_one.median_tps:.1f}/s"
            target = f">= {SCALE_TARGET}x 1 process"
            passed = result.median_tps >= SCALE_TARGET * pg_one.median_tps
        elif result.backend == "PostgreSQL" and pg_one is not None:
            baseline = f"1 process {pg_one.median_tps:.1f}/s"
        claim = result.claim_seconds
        rows.append(
            Row(
                figure=f"turns per second ({result.label})",
                baseline=baseline,
                measured=f"median {median(tps):.1f}/s, min {min(tps):.1f}/s",
                target=target,
                passed=passed,
                details=[
                    f"{result.label}: {len(tps)} bursts, turns/s "
                    + ", ".join(f"{v:.1f}" for v in tps),
                    f"claim latency (admission -> start, one turn at a time): p50 "
                    f"{ms(percentile(claim, 0.5))}, p99 {ms(percentile(claim, 0.99))} "
                    f"over {len(claim)} turns",
                    f"queue depth during the first burst: {depth_line(result.depth)}",
                    f"CPU during the bursts, in cores: bot processes {result.bot_cpu:.2f}, "
                    f"stand-ins {result.stand_in_cpu:.2f}, PostgreSQL server "
                    f"{result.server_cpu:.2f}, the whole machine {result.machine_cpu:.2f} (of "
                    f"{os.cpu_count()}; anything else on it: {other_cpu(result):.2f})",
                ],
            )
        )
    return rows


async def run_fleet(
    config: FleetConfig, workdir: Path, counts: Sequence[int] = (1, 2, 3)
) -> list[FleetResult]:
    """Every configuration (SQLite first) up at once; then their bursts in turn, round after
    round, so a change in the machine's load (anything else running) falls on all of them."""
    async with contextlib.AsyncExitStack() as stack:
        cluster = stack.enter_context(postgres_cluster())
        configurations: list[tuple[str, int, str, PostgresCluster | None]] = [
            ("SQLite", 1, f"sqlite:///{(workdir / 'sqlite' / 'bot.db').resolve()}", None)
        ]
        configurations += [
            ("PostgreSQL", count, cluster.new_database(), cluster) for count in counts
        ]
        runs: list[Running] = []
        for backend, count, url, server in configurations:
            folder = workdir / ("sqlite" if server is None else f"pg{count}")
            fleet = await stack.enter_async_context(fleet_of(folder, url, count))
            ledger = Ledger(url)
            stack.callback(ledger.close)
            run = Running(FleetResult(backend, count), fleet, ledger, server)
            await warm_up(config, run)
            runs.append(run)
        for repeat in range(config.repeats):
            for run in runs:
                await burst(config, run)
            print(
                f"  round {repeat + 1}: "
                + ", ".join(
                    f"{r.result.label} {r.result.turns_per_second[-1]:.1f}/s" for r in runs
                ),
                flush=True,
            )
        for run in runs:
            settle_cpu(run)
        return [run.result for run in runs]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller bursts (~2 minutes)")
    parser.add_argument("--out", type=Path, default=None, help="also write the results here (.md)")
    args = parser.parse_args(argv)
    config = QUICK if args.quick else FULL
    started = time.monotonic()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="imagine-bench-fleet-") as tmp:
        results = asyncio.run(run_fleet(config, Path(tmp)))
    rows = fleet_rows(results)
    # Whatever else runs on the machine takes cores from the bots too: the load says how much.
    cores = (
        f"{os.cpu_count()} cores; the stand-ins and PostgreSQL share them with the bots; "
        f"load average (1 min) {load_before:.1f} before the run, {os.getloadavg()[0]:.1f} after."
    )
    print()
    print(text_table(rows))
    for row in rows:
        for line in row.details:
            print(f"  {line}")
    print(f"\n{cores}")
    if args.out is not None:
        lines = [
            "# Several processes on PostgreSQL",
            "",
            f"`python -m bench.fleet{' --quick' if args.quick else ''}` on {machine()}, "
            f"{revision() or 'this checkout'}; {time.monotonic() - started:.0f} s. "
            f"Bursts of {config.burst} turns, {config.repeats} repeats, GLOBAL_CONCURRENCY "
            f"{FLEET_CONCURRENCY}, zero-latency stand-ins. {cores}",
            "",
            markdown_table(rows),
            "",
        ]
        for row in rows:
            lines += [f"### {row.figure}: {row.verdict}", ""]
            lines += [f"- {line}" for line in row.details] + [""]
        args.out.write_text("\n".join(lines), encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
