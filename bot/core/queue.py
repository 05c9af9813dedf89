"""The queue: which admitted job runs next, within the concurrency limits, one per channel."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from storage.base import Job

log = logging.getLogger(__name__)


class PositionSink(Protocol):
    """Shows a waiting job its place in the queue."""

    async def queued(self, position: int) -> None: ...


S = TypeVar("S", bound=PositionSink)


class SharedQueue(Protocol):
    """A job queue every bot process on one database shares (storage.pgqueue on PostgreSQL).

    It holds a ticket per queued ledger job, deferred by the store in the transaction that
    queues the job; the ledger stays the source of truth, a ticket only says which job to run.
    """

    async def open(self, *, slots: int) -> None:
        """Open its connections (`slots`: jobs that may hold a fleet place at once here)."""
        ...

    async def close(self) -> None: ...

    async def run_worker(
        self,
        runner: Callable[[int, Callable[[], bool]], Awaitable[None]],
        *,
        name: str,
        concurrency: int,
        heartbeat_seconds: float,
        stale_after_seconds: float,
        graceful_seconds: float,
    ) -> None:
        """Run tickets until cancelled: `runner(job_id, cancelled_by_user)` for each."""
        ...

    async def abort(self, job_id: int) -> bool:
        """Ask whichever process runs ledger job `job_id` to cancel it."""
        ...

    async def forget(self, job_ids: Sequence[int]) -> int:
        """Drop the running tickets of ledger jobs whose process is gone (settled elsewhere)."""
        ...

    async def requeue_stalled(self, stale_after_seconds: float) -> int:
        """Put the tickets of silent workers back in the queue."""
        ...

    async def depth(self) -> int:
        """How many tickets wait, fleet-wide."""
        ...

    def slot(
        self, user_id: int, *, global_cap: int, user_cap: int
    ) -> AbstractAsyncContextManager[None]:
        """Hold a fleet-wide place and one of the user's while a job runs."""
        ...


@dataclass
class _Waiting(Generic[S]):
    job: Job
    sink: S
    position: int = 0


class JobQueue(Generic[S]):
    """Starts jobs in order: at most `global_concurrency` at once, `user_concurrency` per member
    and one per channel (so turns in one thread chain instead of forking from the same parent).
    """

    def __init__(
        self,
        *,
        run: Callable[[Job, S], Awaitable[None]],
        global_concurrency: int,
        user_concurrency: int,
    ) -> None:
        self._run = run
        self._global = global_concurrency
        self._per_user = user_concurrency
        self._waiting: list[_Waiting[S]] = []
        self._running_by_user: dict[int, int] = {}
        self._busy_channels: set[int] = set()
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._by_job: dict[int, asyncio.Task[None]] = {}
        self._closing = False

    async def put(self, job: Job, sink: S) -> None:
        """Add a job at the back and start whatever may start now."""
        self._waiting.append(_Waiting(job=job, sink=sink))
        await self._pump()

    async def _pump(self) -> None:
        """Start every waiting job that may run now; tell the others their new position."""
        if self._closing:
            return
        still: list[_Waiting[S]] = []
        for waiting in self._waiting:
            job = waiting.job
            if (
                self._running < self._global
                and self._running_by_user.get(job.user_id, 0) < self._per_user
                and job.channel_id not in self._busy_channels
            ):
                self._running += 1
                self._running_by_user[job.user_id] = self._running_by_user.get(job.user_id, 0) + 1
                self._busy_channels.add(job.channel_id)
                task = asyncio.create_task(self._guarded(waiting), name=f"job-{job.id}")
                self._tasks.add(task)
                self._by_job[job.id] = task
                task.add_done_callback(self._tasks.discard)
            else:
                still.append(waiting)
        self._waiting = still
        for position, waiting in enumerate(self._waiting, start=1):
            if waiting.position != position:
                waiting.position = position
                try:
                    await waiting.sink.queued(position)
                except Exception:
                    log.exception("could not show the queue position of job %s", waiting.job.id)

    async def _guarded(self, waiting: _Waiting[S]) -> None:
        job = waiting.job
        try:
            await self._run(job, waiting.sink)
        finally:
            self._by_job.pop(job.id, None)
            self._running -= 1
            self._running_by_user[job.user_id] -= 1
            self._busy_channels.discard(job.channel_id)
            if not self._closing:
                await self._pump()

    async def remove(self, job_id: int) -> bool:
        """Take a waiting job out of the queue; False if it is not waiting."""
        kept = [w for w in self._waiting if w.job.id != job_id]
        if len(kept) == len(self._waiting):
            return False
        self._waiting = kept
        await self._pump()
        return True

    def stop(self, job_id: int) -> bool:
        """Cancel a running job's task; False if it is not running."""
        task = self._by_job.get(job_id)
        if task is None or task.done():
            return False
        task.cancel()
        return True

    async def wait_idle(self) -> None:
        """Wait until no job runs; wrap in asyncio.timeout for a deadline."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    @property
    def closing(self) -> bool:
        """Whether the queue stopped taking jobs (shutdown)."""
        return self._closing

    async def close(self, grace: float) -> None:
        """Start nothing more; give running jobs `grace` seconds, then cancel them."""
        self._closing = True
        tasks = list(self._tasks)
        if tasks:
            await asyncio.wait(tasks, timeout=grace)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def running(self) -> int:
        """How many jobs run now."""
        return self._running

    def waiting_jobs(self) -> Sequence[Job]:
        """The jobs waiting to run, in order."""
        return [w.job for w in self._waiting]
