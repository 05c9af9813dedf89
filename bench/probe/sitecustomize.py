"""Memory probe loaded into the bot process by bench/memprofile.py (via PYTHONPATH).

With MEMPROBE_OUT set: tracemalloc traces allocations (MEMPROBE_FRAMES deep); a thread takes a
snapshot whenever traced memory reaches a new high, reads VmRSS and glibc's mallinfo2, and at
exit writes the top allocation sites at the peak, and the allocator's account, as JSON.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import signal
import threading
import time
import tracemalloc
from typing import Any

OUT = os.environ.get("MEMPROBE_OUT")
PROFILE_OUT = os.environ.get("CPUPROBE_OUT")
HEARTBEAT_OUT = os.environ.get("HBPROBE_OUT")
SLOW_OUT = os.environ.get("SLOWPROBE_OUT")
GC_OUT = os.environ.get("GCPROBE_OUT")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mallinfo() -> dict[str, int]:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {field[0]: int(getattr(info, field[0])) for field in _MallInfo2._fields_}


def _rss() -> int:
    with open(f"/proc/{os.getpid()}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _describe(obj: object) -> str:
    kind = type(obj).__qualname__
    if isinstance(obj, dict):
        return f"dict(keys={sorted(map(str, obj))[:8]})"
    if hasattr(obj, "f_code"):
        code = obj.f_code
        return f"frame {code.co_filename}:{code.co_name}"
    return kind


def _holders() -> list[list[str]]:
    """Chains of referrers (3 deep) of big BytesIO buffers and big bytes still alive."""
    import gc
    import io

    gc.collect()
    found: list[list[str]] = []
    for obj in gc.get_objects():
        if isinstance(obj, io.BytesIO) and not obj.closed and len(obj.getbuffer()) > 1_000_000:
            chain = [f"BytesIO {len(obj.getbuffer())}"]
            current: object = obj
            for _ in range(4):
                referrers = [
                    r
                    for r in gc.get_referrers(current)
                    if r is not found and not isinstance(r, list)
                ]
                if not referrers:
                    break
                current = referrers[0]
                chain.append(" | ".join(_describe(r) for r in referrers[:4]))
            found.append(chain)
        if len(found) >= 6:
            break
    seen = 0
    for obj in gc.get_objects():
        for ref in gc.get_referents(obj):
            if type(ref) is bytes and len(ref) > 1_000_000 and seen < 12:
                seen += 1
                chain = [f"bytes {len(ref)} in {_describe(obj)}"]
                current = obj
                for _ in range(5):
                    referrers = [r for r in gc.get_referrers(current) if not isinstance(r, list)]
                    if not referrers:
                        break
                    current = referrers[0]
                    chain.append(" | ".join(_describe(r) for r in referrers[:4]))
                found.append(chain)
    return found


def _start() -> None:
    frames = int(os.environ.get("MEMPROBE_FRAMES", "12"))
    state: dict[str, Any] = {"best": 0, "snapshot": None, "rss_at_best": 0, "samples": []}
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.1):
            current, _ = tracemalloc.get_traced_memory()
            rss = _rss()
            samples = state["samples"]
            assert isinstance(samples, list)
            samples.append((round(time.monotonic(), 2), current, rss))
            if current > int(state["best"]):
                state["best"] = current
                state["rss_at_best"] = rss
                state["mallinfo_at_best"] = _mallinfo()
                state["snapshot"] = tracemalloc.take_snapshot()

    thread = threading.Thread(target=watch, name="memprobe", daemon=True)

    def begin(*_: object) -> None:
        # Tracing from the start makes start-up minutes long: the benchmark starts it after
        # its warm-up (SIGUSR2).
        tracemalloc.start(frames)
        thread.start()

    def dump() -> None:
        if not tracemalloc.is_tracing():
            return
        stop.set()
        if threading.current_thread() is not thread:
            thread.join(1)
        snapshot = state["snapshot"]
        report: dict[str, Any] = {
            "peak_traced": state["best"],
            "rss_at_peak": state["rss_at_best"],
            "mallinfo_at_peak": state.get("mallinfo_at_best", {}),
            "mallinfo_at_exit": _mallinfo(),
            "rss_at_exit": _rss(),
            "traced_at_exit": tracemalloc.get_traced_memory()[0],
            "samples": state["samples"],
        }
        exiting = tracemalloc.take_snapshot()
        for prefix, taken in (("", snapshot), ("exit_", exiting)):
            if not isinstance(taken, tracemalloc.Snapshot):
                continue
            taken = taken.filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
            for key, limit in (("by_line", 40), ("by_traceback", 15)):
                stats = taken.statistics("lineno" if key == "by_line" else "traceback")
                report[prefix + key] = [
                    {
                        "size": stat.size,
                        "count": stat.count,
                        "where": [f"{f.filename}:{f.lineno}" for f in stat.traceback],
                    }
                    for stat in stats[:limit]
                ]
        report["holders"] = _holders()
        assert OUT is not None
        with open(OUT, "w") as out:
            json.dump(report, out)

    atexit.register(dump)
    # The benchmark asks for the report before it stops the bot (SIGTERM skips atexit).
    signal.signal(signal.SIGUSR1, lambda *_: dump())
    signal.signal(signal.SIGUSR2, begin)


def _profile() -> None:
    """cProfile of the event loop's thread between SIGUSR2 (start) and SIGUSR1 (write pstats)."""
    import cProfile

    profiler = cProfile.Profile()
    signal.signal(signal.SIGUSR2, lambda *_: profiler.enable())

    def dump(*_: object) -> None:
        profiler.disable()
        assert PROFILE_OUT is not None
        profiler.dump_stats(PROFILE_OUT)

    signal.signal(signal.SIGUSR1, dump)


def _heartbeats() -> None:
    """Append the time.monotonic() of every heartbeat the bot hands to its socket."""
    from discord import gateway

    original = gateway.DiscordWebSocket.send_heartbeat
    assert HEARTBEAT_OUT is not None
    # Open for the life of the process; line-buffered, so each send reaches the file at once.
    out = open(HEARTBEAT_OUT, "a", buffering=1)

    async def send_heartbeat(self: Any, data: Any) -> None:
        out.write(f"{time.monotonic():.6f}\n")
        await original(self, data)

    gateway.DiscordWebSocket.send_heartbeat = send_heartbeat  # type: ignore[method-assign]


def _slow_callbacks() -> None:
    """Log every event-loop callback over 20 ms, with the coroutine it ran, to SLOWPROBE_OUT."""
    import asyncio
    import logging

    threshold = float(os.environ.get("SLOWPROBE_MS", "20")) / 1000
    handler = logging.FileHandler(str(SLOW_OUT))
    handler.setFormatter(logging.Formatter("%(created).3f %(message)s"))
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(handler)
    asyncio_log.setLevel(logging.WARNING)
    asyncio_log.propagate = False
    original = asyncio.BaseEventLoop.run_forever

    def run_forever(self: asyncio.BaseEventLoop) -> None:
        self.set_debug(True)
        self.slow_callback_duration = threshold
        original(self)

    asyncio.BaseEventLoop.run_forever = run_forever  # type: ignore[method-assign]


def _collections() -> None:
    """Append generation, duration (s) and objects collected of every garbage collection."""
    import gc

    assert GC_OUT is not None
    # Open for the life of the process; line-buffered, so each line reaches the file at once.
    out = open(GC_OUT, "a", buffering=1)
    started: list[float] = [0.0]

    def watch(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            took = time.perf_counter() - started[0]
            out.write(
                f"{time.monotonic():.3f} {info['generation']} {took:.6f} {info['collected']}\n"
            )

    gc.callbacks.append(watch)


if GC_OUT:
    _collections()
if HEARTBEAT_OUT:
    _heartbeats()
if SLOW_OUT:
    _slow_callbacks()
if OUT:
    _start()
elif PROFILE_OUT:
    _profile()
