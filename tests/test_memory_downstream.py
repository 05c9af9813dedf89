"""Image bytes downstream of the stream: no copy per upload, a shown preview let go at once, and
the C allocator handing large freed buffers back (see bench/memprofile.py for the figures)."""

from __future__ import annotations

import asyncio
import ctypes
import io
import subprocess
import sys
import tracemalloc
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import payload

from bot.core.events import Partial
from bot.core.jobs import JobKind, JobSpec, ParentMode
from cogs._sink import DiscordTurnSink, ImageUpload

IMAGE = bytes(range(256)) * 8192  # 2 MiB
FIELDS = ("fsmblks", "uordblks", "fordblks", "keepcost")


def traced_growth(build: Any) -> int:
    """Bytes allocated by `build()` and still alive while its result is."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = build()
        grown = tracemalloc.get_traced_memory()[0] - before
        del kept
    finally:
        tracemalloc.stop()
    return grown


def test_an_upload_payload_shares_the_image_instead_of_copying_it() -> None:
    plain = traced_growth(lambda: payload.get_payload(io.BytesIO(IMAGE)))
    shared = traced_growth(lambda: payload.get_payload(ImageUpload(IMAGE)))
    # aiohttp's BytesIOPayload asks a plain BytesIO for its buffer, which copies the image.
    assert plain >= len(IMAGE)
    assert shared < 64 * 1024
    upload = ImageUpload(IMAGE)
    body = payload.get_payload(upload)
    assert body.size == len(IMAGE)
    assert upload.read() == IMAGE
    upload.seek(0)
    assert upload.read(10) == IMAGE[:10]


def test_a_discarded_upload_lets_go_of_the_image() -> None:
    data = bytes(IMAGE)
    upload = ImageUpload(data)
    held = sys.getrefcount(data)
    upload.discard()
    assert sys.getrefcount(data) < held
    assert upload.closed
    with pytest.raises(ValueError):
        upload.getbuffer()


def test_a_released_partial_drops_its_bytes_and_its_source() -> None:
    calls: list[int] = []

    def source() -> bytes:
        calls.append(1)
        return IMAGE

    lazy = Partial(0, source=source)
    lazy.release()
    assert lazy.image == b"" and calls == []
    shown = Partial(1, IMAGE)
    assert shown.image == IMAGE
    shown.release()
    assert shown.image == b""


class _Message:
    """Enough of a discord.Message for the sink's partial uploads."""

    def __init__(self) -> None:
        self.id = 1
        self.uploaded: list[bytes] = []
        self.attachments: list[Any] = []

    async def edit(self, **fields: Any) -> _Message:
        for file in fields.get("attachments", []):
            self.uploaded.append(file.fp.read())
        return self


async def test_the_sink_lets_go_of_a_preview_once_it_is_uploaded() -> None:
    job = SimpleNamespace(id=3, user_id=7, locale="en", channel_id=100)
    spec = JobSpec(kind=JobKind.IMAGINE, prompt="a cat", parent=ParentMode.NONE)
    sink = DiscordTurnSink(SimpleNamespace(), job, spec, channel=SimpleNamespace())  # type: ignore[arg-type]
    message = _Message()
    sink.message = message  # type: ignore[assignment]
    event = Partial(0, bytes(IMAGE))
    await sink.partial(event)
    assert sink._uploader is not None
    await asyncio.wait_for(sink._uploader, 5)
    assert message.uploaded == [IMAGE]
    # The runner and the studio still hold the event until the turn's next one: not its bytes.
    assert event.image == b""


_MMAP_CHECK = """
import ctypes
from bot.core.memory_budget import give_back_free_memory, return_large_buffers_to_os

class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split())]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
assert return_large_buffers_to_os()
# By default, freeing a 9 MiB block raises glibc's threshold past 6 MiB: the next 6 MiB
# block would come from the heap. With the threshold fixed it gets pages of its own.
big = bytearray(9 * 1024 * 1024)
del big
before = libc.mallinfo2().hblks
block = bytearray(6 * 1024 * 1024)
assert libc.mallinfo2().hblks == before + 1, "not mmapped"
del block
assert libc.mallinfo2().hblks == before, "not given back"
# An image-sized block comes from the heap, and a freed one is there for the next image.
image = bytearray(2_700_000)
assert libc.mallinfo2().hblks == before, "mmapped"
del image
free = libc.mallinfo2().fordblks
assert free >= 2_700_000, "given back at once"
# Once idle, the heap's free pages go back to the system.
assert give_back_free_memory()
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_large_freed_buffers_go_back_to_the_system() -> None:
    # In a fresh process: glibc serves even a large block from the heap when a free chunk there
    # fits it, so the heap that earlier tests left behind would decide the outcome.
    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 - probing for glibc
    except (OSError, AttributeError):
        pytest.skip("not glibc")
    done = subprocess.run(
        [sys.executable, "-c", _MMAP_CHECK], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr


async def test_the_responses_body_is_what_the_sdk_would_have_sent() -> None:
    """The adapter skips the SDK's transform of the body: it must be the identity on it."""
    from openai._utils import async_maybe_transform
    from openai.types.responses import response_create_params

    from bot.core.openai_adapter import ClientConfig, OpenAIImageClient
    from bot.core.options import ImageOptions, InputImage, TurnRequest

    client = OpenAIImageClient(ClientConfig(api_key="sk-test-000000000000", base_url="http://x"))
    try:
        picture = InputImage(data=b"\x89PNG", mime="image/png", filename="a.png", sha256="ab")
        other = InputImage(data=b"\x89PNG2", mime="image/png", filename="b.png", sha256="cd")
        request = TurnRequest(
            prompt="a lighthouse",
            options=ImageOptions(partials=2, compression=50),
            images=(picture, other),
            mask=b"mask",
            previous_response_id="resp_1",
            user_hash="u",
        )
        params = client.responses_params(request, file_ids={"ab": "file_1"})
        expected = response_create_params.ResponseCreateParamsStreaming
        assert await async_maybe_transform(params, expected) == params
    finally:
        await client.close()


class _GatedMessage(_Message):
    """A progress message whose edits (uploads) finish only when the test lets them."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.editing = 0

    async def edit(self, **fields: Any) -> _GatedMessage:
        self.editing += 1
        await self.gate.wait()
        self.gate.clear()
        await super().edit(**fields)
        return self


def _gated_sink(channel: Any) -> tuple[DiscordTurnSink, _GatedMessage]:
    job = SimpleNamespace(id=3, user_id=7, locale="en", channel_id=100)
    spec = JobSpec(kind=JobKind.IMAGINE, prompt="a cat", parent=ParentMode.NONE)
    sink = DiscordTurnSink(SimpleNamespace(), job, spec, channel=channel)  # type: ignore[arg-type]
    message = _GatedMessage()
    sink.message = message  # type: ignore[assignment]
    return sink, message


async def _until(condition: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, what
        await asyncio.sleep(0.01)


async def test_the_sink_keeps_a_preview_counted_until_its_upload_ends_or_a_newer_one_replaces_it() -> (
    None
):
    sink, message = _gated_sink(SimpleNamespace())
    kept: list[int] = []
    given: list[int] = []
    decoded: list[int] = []

    def preview(index: int) -> Partial:
        def source() -> bytes:
            decoded.append(index)
            return IMAGE

        return Partial(
            index,
            source=source,
            keep=lambda: kept.append(index),
            give_back=lambda: given.append(index),
        )

    await sink.partial(preview(0))
    await _until(lambda: message.editing == 1, "the upload did not start")
    # Uploading: held, not given back.
    assert kept == [0] and given == []
    await sink.partial(preview(1))
    await sink.partial(preview(2))
    # 1 waited and was replaced by 2 (latest wins): given back, never decoded.
    assert kept == [0, 1, 2] and given == [1] and decoded == [0]
    message.gate.set()
    await _until(lambda: message.editing == 2, "the newest preview was not uploaded")
    assert given == [1, 0]
    message.gate.set()
    assert sink._uploader is not None
    await asyncio.wait_for(sink._uploader, 5)
    assert given == [1, 0, 2] and decoded == [0, 2]
    assert message.uploaded == [IMAGE, IMAGE]


async def test_a_preview_waiting_when_the_turn_ends_is_given_back() -> None:
    sink, message = _gated_sink(None)
    given: list[int] = []
    await sink.partial(Partial(0, IMAGE, give_back=lambda: given.append(0)))
    await _until(lambda: message.editing == 1, "the upload did not start")
    await sink.partial(Partial(1, IMAGE, give_back=lambda: given.append(1)))
    assert given == []
    # The turn ends: the preview still waiting is dropped and given back at once...
    ending = asyncio.ensure_future(sink.cancelled(sink.job))
    await _until(lambda: bool(given), "the waiting preview was kept")
    assert given == [1] and not ending.done()
    # ...and the one uploading when its upload ends.
    message.gate.set()
    await asyncio.wait_for(ending, 5)
    assert given == [1, 0]
    assert message.uploaded == [IMAGE]
