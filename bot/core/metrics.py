"""Operational metrics in the Prometheus text format (version 0.0.4), without a dependency.

Counters, gauges and histograms with labels, kept in one registry per bot, and `MeteredSink`,
which wraps the sink of a job and records what the job went through (waiting, first partial,
duration, outcome, cost) from the events it is shown, so the ledger's code needs no hooks.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, TypeVar

from bot.core.events import Completed, Failed, Partial, Started

if TYPE_CHECKING:
    from bot.core.studio import TurnSink
    from storage.base import Job, Turn

log = logging.getLogger(__name__)

__all__ = ["Counter", "Gauge", "Histogram", "MeteredSink", "Metrics", "Registry"]

Labels = tuple[tuple[str, str], ...]
M = TypeVar("M", bound="_Metric")

# Seconds: a queue wait or first partial is short; a whole generation can take minutes.
WAIT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300)
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: Labels, extra: Labels = ()) -> str:
    pairs = labels + extra
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = ""

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: Mapping[str, str]) -> Labels:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} takes labels {self.label_names}, got {sorted(labels)}")
        return tuple((name, str(labels[name])) for name in self.label_names)

    def samples(self) -> Iterable[str]:
        raise NotImplementedError

    def render(self) -> str:
        head = f"# HELP {self.name} {self.help}\n# TYPE {self.name} {self.kind}\n"
        return head + "".join(f"{line}\n" for line in self.samples())


class Counter(_Metric):
    """A value that only goes up."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add `amount` (never negative) to the series of `labels`."""
        if amount < 0:
            raise ValueError("a counter cannot go down")
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        """The current value of one series (0 when it was never touched)."""
        return self._values.get(self._key(labels), 0.0)

    def samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted(self._values.items())
        for key, value in items:
            yield f"{self.name}{_labels(key)} {_number(value)}"


class Gauge(_Metric):
    """A value read when scraped (a callback), or set."""

    kind = "gauge"

    def __init__(
        self,
        name: str,
        help_text: str,
        read: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(name, help_text)
        self._read = read
        self._value = 0.0

    def set(self, value: float) -> None:
        """Set the value (for a gauge without a callback)."""
        self._value = value

    def value(self) -> float:
        """The current value."""
        return float(self._read()) if self._read is not None else self._value

    def samples(self) -> Iterable[str]:
        yield f"{self.name} {_number(self.value())}"


class Histogram(_Metric):
    """Observations counted into cumulative buckets, with their sum and count."""

    kind = "histogram"

    def __init__(
        self,
        name: str,
        help_text: str,
        label_names: Sequence[str] = (),
        buckets: Sequence[float] = DURATION_BUCKETS,
    ) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(buckets))
        # labels -> (per-bucket counts, +Inf count, sum)
        self._series: dict[Labels, tuple[list[int], list[float]]] = {}

    def observe(self, value: float, **labels: str) -> None:
        """Count one observation."""
        key = self._key(labels)
        with self._lock:
            counts, totals = self._series.setdefault(key, ([0] * len(self.buckets), [0.0, 0.0]))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
            totals[0] += 1
            totals[1] += value

    def count(self, **labels: str) -> int:
        """How many observations one series has."""
        series = self._series.get(self._key(labels))
        return int(series[1][0]) if series else 0

    def samples(self) -> Iterable[str]:
        with self._lock:
            items = sorted((k, (list(c), list(t))) for k, (c, t) in self._series.items())
        for key, (counts, (count, total)) in items:
            for bound, cumulative in zip(self.buckets, counts, strict=True):
                yield f"{self.name}_bucket{_labels(key, (('le', _number(bound)),))} {cumulative}"
            yield f"{self.name}_bucket{_labels(key, (('le', '+Inf'),))} {int(count)}"
            yield f"{self.name}_sum{_labels(key)} {_number(total)}"
            yield f"{self.name}_count{_labels(key)} {int(count)}"


class Registry:
    """Metrics in the order they were added, rendered together."""

    def __init__(self) -> None:
        self._metrics: dict[str, _Metric] = {}

    def add(self, metric: M) -> M:
        """Register a metric (names are unique)."""
        if metric.name in self._metrics:
            raise ValueError(f"metric {metric.name} is registered twice")
        self._metrics[metric.name] = metric
        return metric

    def render(self) -> str:
        """Every metric in the text exposition format."""
        return "".join(metric.render() for metric in self._metrics.values())


class Metrics:
    """The bot's metrics: jobs, OpenAI, Discord and the event loop."""

    def __init__(self) -> None:
        self.registry = Registry()
        add = self.registry.add
        self.job_wait = add(
            Histogram(
                "imagine_job_wait_seconds",
                "Time from queueing a job to sending its request.",
                buckets=WAIT_BUCKETS,
            )
        )
        self.first_partial = add(
            Histogram(
                "imagine_job_first_partial_seconds",
                "Time from sending a request to its first partial image.",
                ("engine", "model"),
                buckets=WAIT_BUCKETS,
            )
        )
        self.job_duration = add(
            Histogram(
                "imagine_job_duration_seconds",
                "Time from sending a request to its end, by engine, model and outcome.",
                ("engine", "model", "outcome"),
            )
        )
        self.openai_responses = add(
            Counter(
                "imagine_openai_responses_total",
                "OpenAI responses by how they ended (completed, or the failure kind).",
                ("status",),
            )
        )
        self.cost = add(
            Counter(
                "imagine_cost_usd_total",
                "Estimated cost of finished images, in US dollars.",
                ("engine", "model"),
            )
        )
        self.images = add(
            Counter("imagine_images_total", "Final images saved.", ("engine", "model"))
        )
        self.discord_responses = add(
            Counter(
                "imagine_discord_http_responses_total",
                "Responses of Discord's REST API, by status code.",
                ("status",),
            )
        )
        self.discord_429 = add(
            Counter("imagine_discord_rate_limited_total", "Discord REST responses with 429.")
        )
        self.loop_lag = add(
            Histogram(
                "imagine_event_loop_lag_seconds",
                "How late the event loop woke a periodic probe.",
                buckets=LAG_BUCKETS,
            )
        )
        self.paint_submissions = add(
            Counter(
                "imagine_web_paint_submissions_total",
                "Paint submissions by outcome (queued, refused, forbidden).",
                ("outcome",),
            )
        )

    def watch_queue(self, queued: Callable[[], float], running: Callable[[], float]) -> None:
        """Gauges of the queue, read when scraped."""
        self.registry.add(Gauge("imagine_jobs_queued", "Jobs waiting to run.", queued))
        self.registry.add(Gauge("imagine_jobs_running", "Jobs running now.", running))

    def discord_status(self, status: int) -> None:
        """Count one Discord REST response."""
        self.discord_responses.inc(status=str(status))
        if status == 429:
            self.discord_429.inc()

    def render(self) -> str:
        """The exposition text."""
        return self.registry.render()

    def metered(self, sink: TurnSink, job: Job) -> TurnSink:
        """`sink`, recording the job's timings and outcome on the way through."""
        return MeteredSink(sink, self, job)


class MeteredSink:
    """Forwards every event to the real sink; measures on the way."""

    def __init__(
        self,
        inner: TurnSink,
        metrics: Metrics,
        job: Job,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._metrics = metrics
        self._job = job
        self._clock = clock
        self._queued_at = clock()
        self._started_at: float | None = None
        self._engine = ""
        self._model = ""
        self._partials = 0

    def __getattr__(self, name: str) -> object:
        # Anything else the real sink offers (its channel, its message) stays reachable.
        return getattr(self._inner, name)

    async def queued(self, position: int) -> None:
        await self._inner.queued(position)

    async def started(self, event: Started) -> None:
        now = self._clock()
        if self._started_at is None:
            self._metrics.job_wait.observe(now - self._queued_at)
        self._started_at = now
        self._engine, self._model = event.engine, event.model
        await self._inner.started(event)

    async def partial(self, event: Partial) -> None:
        if self._partials == 0 and self._started_at is not None:
            self._metrics.first_partial.observe(
                self._clock() - self._started_at, engine=self._engine, model=self._model
            )
        self._partials += 1
        await self._inner.partial(event)

    async def completed(self, event: Completed, turn: Turn) -> tuple[int | None, str | None]:
        if self._started_at is not None:
            # Posting can be retried: only the first attempt ends the generation.
            engine, model = event.engine or self._engine, event.model or self._model
            self._metrics.job_duration.observe(
                self._clock() - self._started_at, engine=engine, model=model, outcome="completed"
            )
            self._metrics.openai_responses.inc(status="completed")
            self._metrics.cost.inc(max(event.cost, 0.0), engine=engine, model=model)
            self._metrics.images.inc(engine=engine, model=model)
            # One line per finished turn; the job, thread and OpenAI request ids follow it.
            log.info(
                "turn finished: %s %s in %.1fs, $%.4f",
                engine,
                model,
                self._clock() - self._started_at,
                event.cost,
            )
            self._started_at = None
        return await self._inner.completed(event, turn)

    async def completed_grid(
        self, events: Sequence[Completed], turns: Sequence[Turn], failed: int
    ) -> tuple[int | None, str | None]:
        if self._started_at is not None and events:
            first = events[0]
            engine, model = first.engine or self._engine, first.model or self._model
            self._metrics.job_duration.observe(
                self._clock() - self._started_at, engine=engine, model=model, outcome="completed"
            )
            cost = 0.0
            for event in events:
                self._metrics.openai_responses.inc(status="completed")
                self._metrics.images.inc(engine=engine, model=model)
                cost += max(event.cost, 0.0)
            self._metrics.cost.inc(cost, engine=engine, model=model)
            log.info(
                "turn finished: %d images (%d failed), %s %s in %.1fs, $%.4f",
                len(events),
                failed,
                engine,
                model,
                self._clock() - self._started_at,
                cost,
            )
            self._started_at = None
        return await self._inner.completed_grid(events, turns, failed)

    async def failed(self, event: Failed, job: Job) -> None:
        if self._started_at is not None:
            self._metrics.job_duration.observe(
                self._clock() - self._started_at,
                engine=self._engine,
                model=self._model,
                outcome=event.kind.value,
            )
            self._metrics.openai_responses.inc(status=event.kind.value)
            self._started_at = None
        await self._inner.failed(event, job)

    async def cancelled(self, job: Job) -> None:
        if self._started_at is not None:
            self._metrics.job_duration.observe(
                self._clock() - self._started_at,
                engine=self._engine,
                model=self._model,
                outcome="cancelled",
            )
            self._started_at = None
        await self._inner.cancelled(job)
