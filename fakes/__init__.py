"""Local stand-ins for Discord and the OpenAI API (see `discord_api` and `openai_api`)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator


@contextlib.asynccontextmanager
async def interruptible() -> AsyncIterator[asyncio.Event]:
    """An event set by Ctrl-C or SIGTERM, for a stand-in run from the command line.

    The loop's own signal handlers, not the interpreter's: the kernel may deliver a signal to
    any thread (the stand-ins render in worker threads), and only the loop's wake-up file
    descriptor ends its wait at once instead of at its next timer.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    try:
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
