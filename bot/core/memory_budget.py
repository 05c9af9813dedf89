"""A byte budget for image data in flight, shared by every turn of the process.

A turn reserves room before it reads an image's bytes off the socket; while the budget is
spent it waits, reads nothing, and TCP holds the sender back. Its reservation then follows the
image: it is tied to the event that carries it (`Partial`, `Completed`) and returned when that
event is freed (the upload is done and nothing holds it), or when the same turn starts reading
a newer image.

Why a waiting turn gives its older image back first: a turn's last delivered event is held by
its consumers' loop variables until its next event arrives. If a waiting turn kept its
reservation, every turn could wait on the others' reservations at once.

A consumer that promises to let go of a preview on its own (the Discord sink: when the upload
ends, or when a newer preview replaces it) takes the preview's reservation over
(`Partial.hold()`, `TurnAllowance.hand_over`): the preview stays counted while it waits and
uploads, and is returned by `Partial.release()`. Those releases do not depend on the stream
reading on, so no turn waits on a reservation that only its own progress would return.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import logging
import sys
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

MIB = 1024 * 1024
DEFAULT_BUDGET_MB = 128
# What a turn reserves before it knows an image's size: the largest of the last few seen.
FIRST_ESTIMATE = 4 * MIB
# How glibc is set up for image data (bench/memprofile.py, bench/results.md):
# - Blocks below MMAP_THRESHOLD come from the heap. glibc's default (128 KiB, raising itself to
#   the size of each large block freed, up to 32 MiB) ends with every image from the heap, whose
#   free space fragments and is kept: measured with 60 concurrent real-size turns, RSS after the
#   burst stayed at its peak (741 MiB). With every block of 1 MiB or more mmapped instead, each
#   decoded image (2.7 MB at 1536x1024) was fresh pages, faulted in one by one and unmapped
#   again: ~2,000 page faults and a fifth of the bot's CPU per turn. At 3 MiB, images of that
#   size reuse the heap's freed blocks; larger ones, and the stream's text buffers (kept for
#   reuse by bot/core/lean_stream.py), still get pages of their own.
# - TRIM_THRESHOLD: free space at the top of a heap is given back only above this, so that the
#   space a turn frees is there for the next one instead of being unmapped and faulted in anew.
# - What the heap keeps after a burst goes back once no image is in flight for IDLE_TRIM_SECONDS
#   (`malloc_trim`, which also returns free pages inside the heap, off the event loop).
MMAP_THRESHOLD = 3 * MIB
TRIM_THRESHOLD = 4 * MIB
IDLE_TRIM_SECONDS = 1.0
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_tuned = False
_libc: Any = None


def _glibc() -> Any:
    """glibc, or None where the C library is another (musl, macOS)."""
    global _libc
    if _libc is None:
        _libc = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                libc.mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
                libc.mallopt.restype = ctypes.c_int
                libc.malloc_trim.argtypes = (ctypes.c_size_t,)
                libc.malloc_trim.restype = ctypes.c_int
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc or None


def return_large_buffers_to_os(
    threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Set glibc's mmap and trim thresholds for image data (once per process).

    False where that is not glibc: nothing is changed there.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    libc = _glibc()
    if libc is None:
        return False
    _allocator_tuned = bool(libc.mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        libc.mallopt(_M_TRIM_THRESHOLD, trim_threshold)
    )
    if not _allocator_tuned:
        log.info("the C allocator did not take its thresholds; image buffers may be kept")
    return _allocator_tuned


def give_back_free_memory() -> bool:
    """Return the heap's free pages to the system (glibc's `malloc_trim`); False elsewhere."""
    libc = _glibc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True


@dataclass
class BudgetStats:
    """What the budget saw (for logs and benchmarks)."""

    peak: int = 0
    waits: int = 0
    wait_seconds: float = 0.0
    partials_decoded: int = 0
    partials_dropped: int = 0
    skipped_bytes: int = 0


class Lease:
    """Bytes taken from a budget; `release()` gives them back once (later calls do nothing)."""

    __slots__ = ("__weakref__", "_budget", "size")

    def __init__(self, budget: ImageMemoryBudget, size: int) -> None:
        self._budget: ImageMemoryBudget | None = budget
        self.size = size

    def resize(self, size: int) -> None:
        """Count `size` bytes instead (growing never waits: the bytes are already read)."""
        if self._budget is None:
            return
        self._budget._adjust(size - self.size)
        self.size = size

    def release(self) -> None:
        """Give the bytes back."""
        budget, self._budget = self._budget, None
        if budget is not None:
            budget._adjust(-self.size)

    @property
    def released(self) -> bool:
        """Whether the bytes were given back."""
        return self._budget is None


class ImageMemoryBudget:
    """At most `capacity` bytes of image data in flight; waiters are served first come, first served."""

    def __init__(
        self,
        capacity: int,
        *,
        on_idle: Callable[[], object] | None = None,
        idle_seconds: float = IDLE_TRIM_SECONDS,
    ) -> None:
        if capacity <= 0:
            raise ValueError("the image memory budget must be positive")
        self.capacity = capacity
        self.used = 0
        # Called (off the event loop) once nothing was held for `idle_seconds`.
        self._on_idle = on_idle
        self._idle_seconds = idle_seconds
        self._idle_timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle_run: asyncio.Future[object] | None = None
        self.idle_runs = 0
        self.stats = BudgetStats()
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._recent: collections.deque[int] = collections.deque(maxlen=16)

    @property
    def estimate(self) -> int:
        """What an image of unknown size is expected to take."""
        return min(self.capacity, max(self._recent, default=FIRST_ESTIMATE))

    def observe(self, size: int) -> None:
        """Remember the size of an image that was read."""
        self._recent.append(size)

    async def acquire(self, size: int) -> Lease:
        """Take `size` bytes (at most the capacity), waiting while they do not fit."""
        size = max(0, min(size, self.capacity))
        self._loop = asyncio.get_running_loop()
        if not self._waiters and self.used + size <= self.capacity:
            self._adjust(size)
            return Lease(self, size)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (size, future)
        self._waiters.append(entry)
        self.stats.waits += 1
        started = time.monotonic()
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                # Granted and cancelled at once: the bytes were counted; give them back.
                self._adjust(-size)
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        finally:
            self.stats.wait_seconds += time.monotonic() - started
        return Lease(self, size)

    def _adjust(self, delta: int) -> None:
        self.used += delta
        self.stats.peak = max(self.stats.peak, self.used)
        if delta < 0:
            self._wake()
        if (
            self._on_idle is not None
            and (self.used == 0 or self._idle_timer is not None)
            and self._loop is not None
            and not self._loop.is_closed()
        ):
            # Only when the idle timer is to start or stop: while images are held and no timer
            # runs there is nothing to do, and each call wakes the loop's selector. Leases may
            # be given back from another thread (a freed event's finalizer); `_idle` checks
            # again before it trims.
            self._loop.call_soon_threadsafe(self._watch_idle)

    def _watch_idle(self) -> None:
        """Start the idle timer when nothing is held, stop it when something is."""
        if self.used > 0 or self._waiters:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
        elif self._idle_timer is None and self._loop is not None:
            self._idle_timer = self._loop.call_later(self._idle_seconds, self._idle)

    def _idle(self) -> None:
        self._idle_timer = None
        if self.used == 0 and not self._waiters and self._on_idle is not None:
            self.idle_runs += 1
            assert self._loop is not None
            self._idle_run = self._loop.run_in_executor(None, self._on_idle)

    def _wake(self) -> None:
        while self._waiters:
            size, future = self._waiters[0]
            if future.done():
                self._waiters.popleft()
                continue
            if self.used + size > self.capacity:
                return
            self._waiters.popleft()
            self.used += size
            self.stats.peak = max(self.stats.peak, self.used)
            future.set_result(None)


class TurnAllowance:
    """One turn's share of the budget: the reservation for its newest image."""

    def __init__(self, budget: ImageMemoryBudget | None) -> None:
        self._budget = budget
        self._lease: Lease | None = None

    @property
    def held(self) -> int:
        """Bytes this turn counts now."""
        lease = self._lease
        return 0 if lease is None or lease.released else lease.size

    async def reserve(self) -> None:
        """Make room for a new image (giving back the older one's): may wait."""
        if self._budget is None:
            return
        self.release()
        self._lease = await self._budget.acquire(self._budget.estimate)

    def settle(self, size: int) -> None:
        """The image turned out to be `size` bytes."""
        if self._budget is None:
            return
        self._budget.observe(size)
        if self._lease is not None:
            self._lease.resize(min(size, self._budget.capacity))

    @property
    def lease(self) -> Lease | None:
        """The reservation for this turn's newest image (None before the first)."""
        return self._lease

    def hand_over(self, lease: Lease | None) -> bool:
        """A consumer keeps `lease` until it releases it: the turn's next image no longer gives it back.

        Only the turn's newest image can be handed over (an older one's was already given back);
        False when `lease` is not that, or was released.
        """
        if lease is None or lease is not self._lease or lease.released:
            return False
        self._lease = None
        return True

    def attach(self, owner: object) -> None:
        """Give the reservation back when `owner` (the event carrying the image) is freed."""
        if self._lease is not None and not self._lease.released:
            weakref.finalize(owner, self._lease.release)

    def release(self) -> None:
        """Give the reservation back now."""
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    def finish(self, *, delivered: bool) -> None:
        """The stream ended: a reservation no delivered event carries goes back now."""
        if not delivered:
            self.release()
        else:
            self._lease = None
