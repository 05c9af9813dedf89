"""An opt-in monitor of the event loop's lag (`LOOP_LAG_FILE`): how late a short sleep wakes up.

A task sleeps `interval` seconds in a loop and records how much later than asked it woke up: the
time some callback held the loop (a long synchronous step starves the gateway heartbeat and every
other task). The lags go into a histogram of whole milliseconds, written as JSON periodically and
on exit, so another process (an operator's script, the benchmarks) can read it while the bot runs:

    {"pid": 123, "interval_ms": 10.0, "samples": 5000, "max_ms": 3.2, "p50_ms": 1, "p99_ms": 2,
     "histogram_ms": {"0": 4800, "1": 190, "3": 10}, "started_at": 811.2, "updated_at": 861.2}

`histogram_ms` maps the whole-millisecond floor of a lag to how many wake-ups had it; the
percentiles are the upper edges of their buckets. `started_at`/`updated_at` are
`time.monotonic()` seconds (one clock for every process on the machine), so the difference of
two snapshots describes the window between their `updated_at` stamps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 0.01
DEFAULT_WRITE_EVERY = 1.0


def percentile_ms(histogram: Mapping[int, int], fraction: float) -> int:
    """The upper edge (ms) of the bucket holding the `fraction` quantile; 0 when empty."""
    total = sum(histogram.values())
    if total <= 0:
        return 0
    rank = fraction * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return bucket + 1
    return max(histogram) + 1


class LoopLagMonitor:
    """Measures the running loop's lag and keeps a JSON report of it in `path`."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        interval: float = DEFAULT_INTERVAL,
        write_every: float = DEFAULT_WRITE_EVERY,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self.write_every = write_every
        self.histogram: dict[int, int] = {}
        self.samples = 0
        self.max_ms = 0.0
        self.started_at = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def record(self, lag: float) -> None:
        """Count one wake-up that came `lag` seconds late."""
        lag_ms = max(0.0, lag * 1000.0)
        bucket = int(lag_ms)
        self.histogram[bucket] = self.histogram.get(bucket, 0) + 1
        self.samples += 1
        self.max_ms = max(self.max_ms, lag_ms)

    def report(self) -> dict[str, object]:
        """The current figures, as written to the file."""
        return {
            "pid": os.getpid(),
            "interval_ms": self.interval * 1000.0,
            "samples": self.samples,
            "max_ms": round(self.max_ms, 3),
            "p50_ms": percentile_ms(self.histogram, 0.50),
            "p99_ms": percentile_ms(self.histogram, 0.99),
            "histogram_ms": {str(k): v for k, v in sorted(self.histogram.items())},
            "started_at": self.started_at,
            "updated_at": time.monotonic(),
        }

    def write(self) -> None:
        """Replace the file with the current report (atomically: readers never see half of it)."""
        temporary = self.path.with_name(self.path.name + ".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            temporary.write_text(json.dumps(self.report()), encoding="utf-8")
            os.replace(temporary, self.path)
        except OSError as exc:
            log.warning("could not write the loop lag file %s: %s", self.path, exc)

    async def run(self) -> None:
        """Sample until cancelled, writing the file every `write_every` seconds and at the end."""
        loop = asyncio.get_running_loop()
        next_write = loop.time() + self.write_every
        try:
            while True:
                asked = loop.time()
                await asyncio.sleep(self.interval)
                woke = loop.time()
                self.record(woke - asked - self.interval)
                if woke >= next_write:
                    self.write()
                    next_write = woke + self.write_every
        finally:
            self.write()

    def start(self) -> None:
        """Start sampling on the running loop."""
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="loop-lag-monitor")

    async def stop(self) -> None:
        """Stop sampling and write the final report."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
