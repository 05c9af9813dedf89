"""The lean SSE parser yields the SDK's own events, event for event, however the bytes are split."""

from __future__ import annotations

import base64
import json
import os
import random
import sys
from typing import Any

import pytest
from openai._models import construct_type
from openai._streaming import SSEDecoder
from openai.types.image_gen_stream_event import ImageGenStreamEvent
from openai.types.responses import ResponseStreamEvent

from bot.core.lean_stream import (
    LeanEvent,
    LeanSSEParser,
    SpanBuffers,
    StreamProtocolError,
    events_of,
    unfilled,
)

ITEM = "ig_68c589526ff88196987aebdd12e1230d"


def response(status: str, output: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": "resp_1",
        "object": "response",
        "created_at": 1757776209,
        "status": status,
        "model": "gpt-5.5",
        "output": output,
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [{"type": "image_generation", "partial_images": 2}],
        "usage": None,
        "metadata": {},
    }


def image_b64(rng: random.Random, size: int) -> str:
    return base64.b64encode(rng.randbytes(size)).decode()


def turn_events(rng: random.Random, size: int) -> list[dict[str, Any]]:
    """A Responses image turn as the reference (4.3) lays it out, with a message item."""
    final = image_b64(rng, size)
    item = {
        "id": ITEM,
        "type": "image_generation_call",
        "status": "completed",
        "output_format": "png",
        "size": "1536x1024",
        "revised_prompt": 'a "quoted" prompt with \\ and / and ü',
        "result": final,
    }
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": response("in_progress", [])},
        {"type": "response.in_progress", "response": response("in_progress", [])},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": {"id": ITEM, "type": "image_generation_call", "status": "in_progress"},
        },
        {"type": "response.image_generation_call.generating", "output_index": 0, "item_id": ITEM},
    ]
    for index in range(2):
        events.append(
            {
                "type": "response.image_generation_call.partial_image",
                "output_index": 0,
                "item_id": ITEM,
                "partial_image_index": index,
                "partial_image_b64": image_b64(rng, size),
                "output_format": "png",
                "size": "1536x1024",
            }
        )
    events += [
        {"type": "response.output_item.done", "output_index": 0, "item": item},
        {"type": "response.completed", "response": response("completed", [item])},
    ]
    for number, event in enumerate(events):
        event["sequence_number"] = number
    return events


def frame(rng: random.Random, events: list[dict[str, Any]], *, varied: bool) -> bytes:
    """SSE bytes as OpenAI sends them, or (varied) with every framing the SDK accepts."""
    out: list[bytes] = []
    for event in events:
        text = json.dumps(event, separators=(",", ":"), ensure_ascii=rng.random() < 0.5)
        nl = rng.choice([b"\n", b"\r\n", b"\r"]) if varied else b"\n"
        lines = [b"event: " + event["type"].encode()]
        if varied and rng.random() < 0.3:
            lines.insert(0, b": keep-alive")
        if varied and rng.random() < 0.2:
            lines.append(b"id: " + str(rng.randint(1, 99)).encode())
        if varied and rng.random() < 0.2:
            lines.append(b"retry: 1500")
        if varied and rng.random() < 0.2:
            # Two data lines are joined with LF: JSON whitespace between two tokens.
            cut = text.index(',"type"') if ',"type"' in text else text.index(",")
            lines += [b"data: " + text[:cut].encode(), b"data:" + text[cut:].encode()]
        else:
            lines.append(b"data: " + text.encode())
        out.append(nl.join(lines) + nl + nl)
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def sdk_events(data: bytes, cast_to: Any = ResponseStreamEvent) -> list[tuple[Any, ...]]:
    """What the SDK's AsyncStream yields for these bytes: the SSE fields and the typed event."""
    found = []
    for sse in SSEDecoder().iter_bytes(iter([data])):
        if sse.data.startswith("[DONE]"):
            break
        found.append(
            (sse.event, sse.id, sse.retry, construct_type(type_=cast_to, value=sse.json()))
        )
    return found


def model(event: LeanEvent, cast_to: Any = ResponseStreamEvent) -> Any:
    """The SDK's typed event built from the lean event's data, spans put back."""
    return construct_type(type_=cast_to, value=event.restored())


def lean_events(chunks: list[bytes], cast_to: Any = ResponseStreamEvent) -> list[tuple[Any, ...]]:
    return [(e.event, e.id, e.retry, model(e, cast_to)) for e in events_of(iter(chunks))]


def split(data: bytes, rng: random.Random, pieces: int) -> list[bytes]:
    cuts = sorted(rng.sample(range(1, len(data)), k=min(len(data) - 1, pieces)))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def test_random_chunkings_give_the_sdks_events() -> None:
    rng = random.Random(20261126)
    for round_ in range(60):
        data = frame(rng, turn_events(rng, rng.randint(0, 3000)), varied=round_ % 2 == 1)
        expected = sdk_events(data)
        assert len(expected) == 8
        for pieces in (1, 7, 60, 400):
            assert lean_events(split(data, rng, pieces)) == expected


class SmallBuffers(SpanBuffers):
    """A pool whose first buffers are far too short: spans outgrow them mid-stream."""

    FIRST_SIZE = 64
    STEP = 16


def pooled_events(
    chunks: list[bytes], buffers: SpanBuffers | None
) -> tuple[list[tuple[Any, ...]], list[bytes]]:
    """Events of a parser writing spans into `buffers`, each span decoded and given back at
    once (as the client does), and the images decoded."""
    parser = LeanSSEParser(auto_skip_repeats=True, buffers=buffers)
    found: list[tuple[Any, ...]] = []
    images: list[bytes] = []
    for event in events_of(iter(chunks), parser):
        found.append((event.event, event.id, event.retry, model(event)))
        for span in event.spans:
            if not span.skipped:
                images.append(span.decode())
                span.release()
                assert span.data is None
    return found, images


def test_spans_in_reused_buffers_give_the_sdks_events_and_images() -> None:
    rng = random.Random(20261204)
    for buffers in (SpanBuffers(keep=1), SmallBuffers(keep=2), SmallBuffers(keep=0)):
        for round_ in range(12):
            # Sizes up and down, so that a reused buffer holds a longer span's stale bytes.
            events = turn_events(rng, rng.choice([0, 5, 700, 3000, 90]))
            data = frame(rng, events, varied=round_ % 2 == 1)
            expected = sdk_events(data)
            # The images: the two partials and the final once (its repeat is skipped).
            images = [
                base64.b64decode(events[4]["partial_image_b64"]),
                base64.b64decode(events[5]["partial_image_b64"]),
                base64.b64decode(events[6]["item"]["result"]),
            ]
            for pieces in (1, 9, 300):
                chunks = split(data, rng, pieces)
                got, decoded = pooled_events(chunks, buffers)
                # The same as with a fresh buffer per span.
                assert (got, decoded) == pooled_events(chunks, None)
                # The repeated final may be skipped (it then reads ""); the rest is the SDK's.
                assert got[:-1] == expected[:-1]
                assert decoded[:3] == images
                assert decoded[3:] in ([], images[-1:])
        assert len(buffers._idle) <= buffers.keep
    assert buffers.taken > 0


def test_span_buffers_are_reused_and_bounded() -> None:
    buffers = SpanBuffers(keep=2)
    first = buffers.take()
    assert len(first) >= SpanBuffers.FIRST_SIZE
    buffers.give(first, 1000)
    again = buffers.take()
    assert again is first and buffers.reused == 1
    extra = [buffers.take() for _ in range(3)]
    for buffer in [again, *extra]:
        buffers.give(buffer, 1000)
    assert len(buffers._idle) == 2
    # A span longer than any buffer here gets a new one, long enough.
    assert len(buffers.take(SpanBuffers.FIRST_SIZE * 2)) >= SpanBuffers.FIRST_SIZE * 2


def test_a_stream_paused_at_an_image_holds_no_buffer_until_it_reads_on() -> None:
    buffers = SpanBuffers(keep=1)
    parser = LeanSSEParser(pause_at_spans=True, buffers=buffers)
    rng = random.Random(4)
    data = frame(rng, turn_events(rng, 500)[4:5], varied=False)
    assert parser.feed(data) == []
    assert parser.span_opened and parser.resume_at is not None
    # Waiting for memory here: no buffer taken yet.
    assert buffers.taken == 0
    (event,) = parser.feed(data, parser.resume_at)
    assert buffers.taken == 1
    (span,) = event.spans
    assert span.decode() == base64.b64decode(
        json.loads(data.split(b"data: ")[1])["partial_image_b64"]
    )


def test_a_released_span_gives_its_buffer_back_once() -> None:
    buffers = SmallBuffers(keep=4)
    parser = LeanSSEParser(buffers=buffers)
    rng = random.Random(2)
    (event,) = [
        e for e in events_of(iter([frame(rng, turn_events(rng, 500)[4:5], varied=False)]), parser)
    ]
    (span,) = event.spans
    assert span.length > SmallBuffers.FIRST_SIZE
    span.release()
    span.release()
    assert len(buffers._idle) == 1
    with pytest.raises(ValueError):
        span.raw()


def paused_events(chunks: list[bytes]) -> tuple[list[tuple[Any, ...]], int]:
    """Events of a parser that pauses at every image value, resumed where it says; and pauses."""
    parser = LeanSSEParser(pause_at_spans=True)
    events: list[LeanEvent] = []
    pauses = 0
    for chunk in chunks:
        start: int | None = 0
        while start is not None and not parser.done:
            events += parser.feed(chunk, start)
            start = parser.resume_at
            if start is not None:
                assert parser.span_opened
                parser.span_opened = False
                pauses += 1
    if not parser.done:
        events += parser.finish()
    return [(e.event, e.id, e.retry, model(e)) for e in events], pauses


def test_a_parser_that_pauses_at_images_gives_the_same_events() -> None:
    rng = random.Random(20261203)
    for round_ in range(30):
        data = frame(rng, turn_events(rng, rng.randint(1, 3000)), varied=round_ % 2 == 1)
        expected = sdk_events(data)
        # Whole (one chunk: it must pause at each image value inside it) and split.
        events, pauses = paused_events([data])
        assert events == expected
        assert pauses >= data.count(b'"partial_image_b64":"') > 0
        for pieces in (7, 60):
            assert paused_events(split(data, rng, pieces))[0] == expected


def test_every_byte_boundary_inside_the_base64_span() -> None:
    rng = random.Random(5)
    events = turn_events(rng, 600)
    data = frame(rng, events, varied=False)
    expected = sdk_events(data)
    first = data.index(b'"partial_image_b64":"')
    last = data.index(b'"', first + len('"partial_image_b64":"')) + 1
    # Every cut from the key's first byte to the value's closing quote (and a margin), in two
    # chunks, and in three with the second cut a few bytes later (keys and quotes split too).
    for cut in range(first - 5, last + 5):
        assert lean_events([data[:cut], data[cut:]]) == expected, cut
        later = min(len(data) - 1, cut + 1 + cut % 23)
        assert lean_events([data[:cut], data[cut:later], data[later:]]) == expected, cut


def test_one_byte_chunks() -> None:
    rng = random.Random(11)
    data = frame(rng, turn_events(rng, 200), varied=True)
    assert lean_events([data[i : i + 1] for i in range(len(data))]) == sdk_events(data)


def test_images_api_events_and_escaped_base64() -> None:
    rng = random.Random(3)
    b64 = image_b64(rng, 900)
    events = [
        {
            "type": "image_generation.partial_image",
            "b64_json": b64,
            "background": "opaque",
            "created_at": 1,
            "output_format": "png",
            "partial_image_index": 0,
            "quality": "high",
            "size": "1024x1024",
        }
    ]
    # Some JSON encoders escape "/" as "\/": the same string, which the span must resolve.
    data = frame(rng, events, varied=False).replace(b"/", b"\\/")
    assert b"\\/" in data
    expected = sdk_events(data, ImageGenStreamEvent)
    for cut in range(0, len(data), 3):
        got = list(events_of(iter([data[:cut], data[cut:]])))
        assert [(e.event, e.id, e.retry, model(e, ImageGenStreamEvent)) for e in got] == expected
        span = got[0].span(got[0].data["b64_json"])
        assert span is not None and span.decode() == base64.b64decode(b64)


def test_spans_hold_the_base64_out_of_the_json() -> None:
    rng = random.Random(8)
    events = turn_events(rng, 3000)
    parser = LeanSSEParser()
    got = list(events_of(iter(split(frame(rng, events, varied=False), rng, 50)), parser))

    partial = got[4]
    assert partial.type == "response.image_generation_call.partial_image"
    # The JSON the parser built holds a marker, not the 4 KB of base64.
    assert len(partial.data["partial_image_b64"]) < 8
    span = partial.span(partial.data["partial_image_b64"])
    assert span is not None and span.key == "partial_image_b64"
    assert span.decode() == base64.b64decode(events[4]["partial_image_b64"])
    assert parser.skipped_bytes == 0
    assert parser.kept_bytes == sum(len(s.raw()) for e in got for s in e.spans)


def test_the_repeated_final_is_skipped_without_being_kept() -> None:
    rng = random.Random(9)
    events = turn_events(rng, 3000)
    data = frame(rng, events, varied=False)
    expected = sdk_events(data)
    parser = LeanSSEParser()
    got: list[LeanEvent] = []
    for chunk in split(data, rng, 80):
        for event in parser.feed(chunk):
            got.append(event)
            if event.type == "response.output_item.done":
                parser.skip_repeated_results = True
    got += parser.finish()

    final_b64 = events[-1]["response"]["output"][0]["result"]
    completed = got[-1]
    out = completed.data["response"]["output"][0]
    span = completed.span(out["result"])
    assert span is not None and span.skipped and span.length == len(final_b64)
    assert parser.skipped_bytes == len(final_b64)
    # Everything else is the SDK's event; only the skipped image is left out.
    sdk_completed = expected[-1][3]
    ours = model(completed)
    assert ours.response.output[0].result == ""
    assert ours.model_copy(deep=True) != sdk_completed
    ours.response.output[0].result = sdk_completed.response.output[0].result
    assert ours == sdk_completed
    # The final taken from output_item.done is whole.
    done = got[-2]
    kept = done.span(done.data["item"]["result"])
    assert kept is not None and kept.decode() == base64.b64decode(final_b64)


def test_a_completed_event_is_not_skipped_unless_asked() -> None:
    rng = random.Random(10)
    data = frame(rng, turn_events(rng, 100), varied=False)
    got = list(events_of(iter([data])))
    span = got[-1].span(got[-1].data["response"]["output"][0]["result"])
    assert span is not None and not span.skipped


def test_broken_events_fail_as_in_the_sdk() -> None:
    # A line break inside the base64 string: the SDK's json.loads fails, and so does this.
    data = b'data: {"type":"x","result":"QUJD\nREVG"}\n\n'
    with pytest.raises(json.JSONDecodeError):
        sdk_events(data)
    with pytest.raises(StreamProtocolError):
        list(events_of(iter([data])))
    # An event-only block has empty data: json.loads("") fails in the SDK, and here.
    with pytest.raises(StreamProtocolError):
        list(events_of(iter([b"event: response.created\n\n"])))


def test_stream_ends_at_done_and_ignores_what_follows() -> None:
    data = b'data: {"type":"a"}\n\ndata: [DONE]\n\ndata: {"type":"b"}\n\n'
    parser = LeanSSEParser()
    assert [e.type for e in events_of(iter([data]), parser)] == ["a"]
    assert parser.done


def test_the_repeat_is_skipped_even_when_it_shares_a_chunk_with_its_first_copy() -> None:
    rng = random.Random(12)
    events = turn_events(rng, 3000)
    parser = LeanSSEParser(auto_skip_repeats=True)
    got = list(events_of(iter([frame(rng, events, varied=False)]), parser))

    final_b64 = events[-1]["response"]["output"][0]["result"]
    assert parser.skipped_bytes == len(final_b64)
    span = got[-1].span(got[-1].data["response"]["output"][0]["result"])
    assert span is not None and span.skipped


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_fresh_span_buffer_is_not_written_until_text_reaches_it() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("resident pages from /proc")
    size = 64 * 1024 * 1024
    before = _resident_bytes()
    buffer = unfilled(size)
    untouched = _resident_bytes() - before
    assert len(buffer) == size
    # Zero-filled at once (bytearray(size)) all 64 MiB would be resident here.
    assert untouched < size // 8
    buffer[size - 3 :] = b"end"
    assert buffer[-3:] == b"end"
    del buffer
    assert unfilled(0) == bytearray()
