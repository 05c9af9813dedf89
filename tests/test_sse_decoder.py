"""The adapter's SSE decoder yields exactly the events of the SDK's own decoder, however bytes are split."""

from __future__ import annotations

import json
import random

from openai._streaming import SSEDecoder

from bot.core.openai_adapter import _FastSSEDecoder


def stream_bytes(rng: random.Random) -> bytes:
    """An SSE body with every line ending style, long data lines and comments."""
    blocks: list[bytes] = []
    for number in range(12):
        newline = rng.choice([b"\n", b"\r\n", b"\r"])
        payload = json.dumps({"n": number, "b64": "A" * rng.randint(0, 5000)}).encode()
        lines = [b"event: response.image_generation_call.partial_image", b"data: " + payload]
        if rng.random() < 0.3:
            lines.insert(0, b": keep-alive")
        if rng.random() < 0.3:
            lines.append(b"id: " + str(number).encode())
        blocks.append(newline.join(lines) + newline + newline)
    blocks.append(b"data: [DONE]\n\n")
    return b"".join(blocks)


def chunked(data: bytes, rng: random.Random) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, rng.randint(1, 60))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def events(decoder: SSEDecoder, chunks: list[bytes]) -> list[tuple[str | None, str, str | None]]:
    return [(e.event, e.data, e.id) for e in decoder.iter_bytes(iter(chunks))]


def test_same_events_as_the_sdk_for_any_chunking() -> None:
    rng = random.Random(20261126)
    for _ in range(300):
        data = stream_bytes(rng)
        expected = events(SSEDecoder(), [data])
        assert len(expected) == 13
        for chunks in (
            [data],
            chunked(data, rng),
            [data[i : i + 1] for i in range(0, min(len(data), 4000))],
        ):
            if b"".join(chunks) != data:
                chunks = [*chunks, data[len(b"".join(chunks)) :]]
            assert events(_FastSSEDecoder(), chunks) == expected


async def test_async_path_matches_too() -> None:
    rng = random.Random(7)
    data = stream_bytes(rng)
    chunks = chunked(data, rng)

    async def source():  # type: ignore[no-untyped-def]
        for chunk in chunks:
            yield chunk

    got = [(e.event, e.data, e.id) async for e in _FastSSEDecoder().aiter_bytes(source())]
    assert got == events(SSEDecoder(), [data])
