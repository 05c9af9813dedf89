"""Server-sent events of an image stream with the base64 images kept out of `str`, JSON and models.

The SDK turns every event into a `str`, `json.loads` it and builds pydantic models: for a
partial image that is 3.6 MB of base64 copied three times and parsed char by char. Here the
bytes are scanned once: inside a `data:` line the value of an image key (`partial_image_b64`,
`result`, `b64_json`) is cut out into a `Span` (one copy, into a bytearray) and replaced by a
short marker, so that only the small rest of the event meets `json.loads`. A span can also be
*skipped*: its bytes are counted and dropped (the final image repeated in `response.completed`).

`LeanEvent.restored()` gives the same data with the spans put back: built into the SDK's typed
event (`openai._models.construct_type`), the tests hold it equal to what the SDK parses from the
same bytes. (Only the adapter imports `openai`; this module stays free of it.)

Span text is written into buffers taken from a `SpanBuffers` pool and given back once the image
is decoded: a real-size span is ~3.6 MB, and a fresh buffer of that size is fresh pages from the
system, faulted in one by one as they are written (and grown by copying while the size is
unknown). A reused buffer is written in place.

SSE framing follows the SDK's decoder (openai/_streaming.py): lines end at CR, LF or CRLF; a
blank line dispatches; `:` starts a comment; `event`, `data` (joined with LF), `id` (kept across
events, ignored if it holds NUL) and `retry` (an int) are read; one space after the colon is
dropped; a `data` of `[DONE]...` ends the stream.
"""

from __future__ import annotations

import collections
import ctypes
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bot.core.b64 import b64decode

SPAN_KEYS = (b'"partial_image_b64":"', b'"result":"', b'"b64_json":"')
_LONGEST_KEY = max(len(k) for k in SPAN_KEYS)
# What a kept span is replaced by inside the JSON: a string "\x00<n>" (base64 never holds NUL).
_MARK = "\x00"
# Events whose `result` repeats the final image already taken from `response.output_item.done`.
_REPEATS = (b'{"type":"response.completed"', b'{"type":"response.incomplete"')
_SPECIALS = (b'"', b"\\", b"\r", b"\n")


def _sized_without_filling() -> Any:
    """CPython's `PyByteArray_Resize` (None elsewhere): it sizes a bytearray without zeroing it."""
    if sys.implementation.name != "cpython":
        return None
    try:
        resize = ctypes.pythonapi.PyByteArray_Resize
    except AttributeError:  # pragma: no cover - part of CPython's stable ABI
        return None
    resize.argtypes = (ctypes.py_object, ctypes.c_ssize_t)
    resize.restype = ctypes.c_int
    return resize


_resize = _sized_without_filling()


def unfilled(size: int) -> bytearray:
    """A bytearray of `size` bytes whose content is undefined until written.

    `bytearray(size)` writes zeros over all of it at once: for a span buffer (4 MiB) that is
    ~2 ms of page faults in one step of the event loop, and at 100 concurrent turns the spans
    of a round of events begin together. Left unwritten, a page is faulted in when the span's
    text first reaches it, spread over the reads that bring the text.
    """
    if _resize is None or size <= 0:
        return bytearray(size)
    buffer = bytearray()
    _resize(buffer, size)
    return buffer


class SpanBuffers:
    """Reusable buffers for span text, shared by the streams of a process.

    `take()` gives a buffer at least as long as the spans seen lately (its length is its
    capacity; a span records how much it used); `give()` takes it back for the next span. At
    most `keep` buffers wait here unused; any beyond that go back to the allocator.
    """

    # Before any span was seen: room for a real-size image's base64 (1536x1024 PNG ~3.6 MB).
    FIRST_SIZE = 4 * 1024 * 1024
    # Buffers are sized in these steps, so that spans of about the same size share them.
    STEP = 256 * 1024

    def __init__(self, keep: int = 4) -> None:
        if keep < 0:
            raise ValueError("keep must not be negative")
        self.keep = keep
        self._idle: list[bytearray] = []
        self._recent: collections.deque[int] = collections.deque(maxlen=16)
        self.taken = 0
        self.reused = 0

    @property
    def idle_bytes(self) -> int:
        """Bytes held here, unused."""
        return sum(len(b) for b in self._idle)

    def size_hint(self) -> int:
        """How long a new buffer should be: the longest recent span, rounded up to a step."""
        return self._rounded(max(self._recent, default=self.FIRST_SIZE))

    def _rounded(self, size: int) -> int:
        return -(-size // self.STEP) * self.STEP

    def take(self, at_least: int = 0) -> bytearray:
        """A buffer of at least `at_least` bytes (and of the usual span size)."""
        want = max(at_least, 1)
        self.taken += 1
        best = -1
        for n, buffer in enumerate(self._idle):
            if len(buffer) >= want and (best < 0 or len(buffer) > len(self._idle[best])):
                best = n
        if best >= 0:
            self.reused += 1
            return self._idle.pop(best)
        return unfilled(max(self._rounded(want), self.size_hint()))

    def give(self, buffer: bytearray, used: int) -> None:
        """Take back a buffer whose first `used` bytes held a span."""
        self._recent.append(used)
        if len(buffer) < self.size_hint():
            # Too small for what spans are now: let the allocator have it.
            return
        self._idle.append(buffer)
        if len(self._idle) > self.keep:
            self._idle.remove(min(self._idle, key=len))


@dataclass(eq=False, slots=True)
class Span:
    """The raw text of one image value (base64), cut out of an event; `data` None if skipped.

    `data` is a buffer of which the first `length` bytes are the text; `pool` (if any) is where
    the buffer goes back on `release()`.
    """

    key: str
    data: bytearray | None = field(default_factory=bytearray)
    length: int = 0
    escaped: bool = False
    pool: SpanBuffers | None = None

    @property
    def skipped(self) -> bool:
        """Whether the bytes were dropped as they streamed by."""
        return self.data is None

    def raw(self) -> bytes | memoryview:
        """The value's base64 text (JSON escapes resolved)."""
        if self.data is None:
            raise ValueError("a skipped span has no data")
        if self.escaped:
            text: str = json.loads(b'"' + bytes(self.data[: self.length]) + b'"')
            return text.encode("utf-8")
        return memoryview(self.data)[: self.length]

    def text(self) -> str:
        """The value as the SDK would hold it (a `str`)."""
        return bytes(self.raw()).decode("utf-8")

    def decode(self) -> bytes:
        """The image bytes."""
        return b64decode(self.raw())

    def write(self, chunk: bytes | memoryview, start: int, stop: int) -> None:
        """Append `chunk[start:stop]` to the text."""
        data = self.data
        assert data is not None
        end = self.length + stop - start
        if end > len(data):
            # Longer than its buffer: move to one with room (growth copies once, not per chunk).
            grown = self.pool.take(end) if self.pool is not None else unfilled(end + end // 4)
            grown[: self.length] = memoryview(data)[: self.length]
            self._give_back()
            self.data = data = grown
        with memoryview(data) as into, memoryview(chunk) as source:
            into[self.length : end] = source[start:stop]
        self.length = end

    def release(self) -> None:
        """Drop the text (after decoding) so that only the image stays alive."""
        self._give_back()
        self.data = None

    def _give_back(self) -> None:
        data, pool = self.data, self.pool
        if data and pool is not None:
            pool.give(data, self.length)


@dataclass(eq=False, slots=True)
class LeanEvent:
    """One SSE event: its JSON without the image values, and those values as spans."""

    event: str | None
    data: Any
    spans: list[Span]
    id: str | None = None
    retry: int | None = None

    @property
    def type(self) -> str:
        """The `type` field of the data ("" when there is none)."""
        value = self.data.get("type") if isinstance(self.data, dict) else None
        return value if isinstance(value, str) else ""

    def span(self, value: Any) -> Span | None:
        """The span a value of `data` stands for, or None for an ordinary value."""
        if isinstance(value, str) and value.startswith(_MARK):
            try:
                return self.spans[int(value[1:])]
            except (ValueError, IndexError):
                return None
        return None

    def restored(self) -> Any:
        """`data` with the spans' text put back (skipped spans as ""): what the SDK parses."""

        def walk(value: Any) -> Any:
            if isinstance(value, dict):
                return {k: walk(v) for k, v in value.items()}
            if isinstance(value, list):
                return [walk(v) for v in value]
            span = self.span(value)
            if span is not None:
                return "" if span.skipped else span.text()
            return value

        return walk(self.data)


class StreamProtocolError(ValueError):
    """The stream broke SSE/JSON rules the SDK would also have failed on."""


class LeanSSEParser:
    """Incremental parser: `feed()` bytes as they arrive, get complete `LeanEvent`s back.

    `skip_repeated_results` makes the `result` of a `response.completed`/`.incomplete` event a
    skipped span (the consumer already holds the final image from `output_item.done`);
    `auto_skip_repeats` sets it as soon as an `output_item.done` with a `result` is parsed.
    """

    def __init__(
        self,
        *,
        auto_skip_repeats: bool = False,
        pause_at_spans: bool = False,
        buffers: SpanBuffers | None = None,
    ) -> None:
        self.auto_skip_repeats = auto_skip_repeats
        # With `pause_at_spans`, `feed()` returns as soon as a kept image value opens, and
        # `resume_at` says where the unread rest of the chunk starts (None: all was read), so
        # that the caller can wait for memory before the image's bytes are taken.
        self.pause_at_spans = pause_at_spans
        self.resume_at: int | None = None
        self.skip_repeated_results = False
        self.done = False
        self.skipped_bytes = 0
        self.kept_bytes = 0
        self.span_opened = False
        self._line = bytearray()
        self._searched = 0
        self._is_data: bool | None = None
        self._raw_line = False
        self._span: Span | None = None
        self._escape_pending = False
        self._skip_lf = False
        self._event: str | None = None
        self._data: list[bytes] = []
        self._spans: list[Span] = []
        self._last_id: str | None = None
        self._retry: int | None = None
        self._broken = False
        self._buffers = buffers

    # --- bytes in ---------------------------------------------------------------------

    def feed(self, chunk: bytes, start: int = 0) -> list[LeanEvent]:
        """Consume `chunk[start:]`; return the events it completed."""
        out: list[LeanEvent] = []
        self.resume_at = None
        if self.done:
            return out
        i, size = start, len(chunk)
        if self._skip_lf and i < size:
            if chunk[i] == 10:
                i += 1
            self._skip_lf = False
        while i < size:
            if self._span is not None:
                i = self._feed_span(chunk, i, size)
                continue
            cr, lf = chunk.find(b"\r", i), chunk.find(b"\n", i)
            ends = [p for p in (cr, lf) if p >= 0]
            end = min(ends) if ends else size
            if end > i:
                self._line += chunk[i:end] if (i or end != size) else chunk
                if self._maybe_open_span():
                    # The key ended in this chunk: what follows it is the span's, read anew.
                    after = len(self._line) - self._value_start
                    del self._line[self._value_start :]
                    i = end - after
                    if self.pause_at_spans and self.span_opened and i < size:
                        self.resume_at = i
                        return out
                    continue
            if end == size:
                break
            i = end + 1
            if chunk[end] == 13:
                if i < size:
                    if chunk[i] == 10:
                        i += 1
                else:
                    self._skip_lf = True
            self._end_line(out)
            if self.done:
                break
        return out

    def finish(self) -> list[LeanEvent]:
        """The body ended: a last line without its end still counts (as in the SDK)."""
        out: list[LeanEvent] = []
        if self.done:
            return out
        if self._span is not None:
            self._abandon_span()
        if self._line:
            self._end_line(out)
        return out

    # --- spans --------------------------------------------------------------------------

    _value_start = 0
    # Where the key search starts again: after the last span's marker.
    _floor = 0

    def _maybe_open_span(self) -> bool:
        line = self._line
        if self._is_data is None and (len(line) >= 5 or not b"data:".startswith(bytes(line))):
            self._is_data = line.startswith(b"data:")
        if not self._is_data or self._raw_line:
            return False
        start = max(self._floor, self._searched - _LONGEST_KEY + 1)
        best, key = -1, b""
        for candidate in SPAN_KEYS:
            at = line.find(candidate, start)
            if at >= 0 and (best < 0 or at < best):
                best, key = at, candidate
        self._searched = len(line)
        if best < 0:
            return False
        name = key[1 : key.index(b'"', 1)].decode()
        skip = (
            self.skip_repeated_results
            and name == "result"
            and not self._data
            and bytes(line[5:6]) in (b" ", b"{")
            and bytes(line[5:]).lstrip(b" ").startswith(_REPEATS)
        )
        # A kept span's pooled buffer is taken when its first bytes come: a stream paused here
        # (waiting for memory) holds none.
        self._span = Span(key=name, data=None) if skip else Span(key=name, pool=self._buffers)
        self._value_start = best + len(key)
        if not skip:
            self.span_opened = True
        return True

    def _feed_span(self, chunk: bytes, i: int, size: int) -> int:
        """Consume span bytes from chunk[i:]; return where the span's input ended."""
        span = self._span
        assert span is not None
        if self._escape_pending and i < size:
            self._escape_pending = False
            if chunk[i] in (13, 10):
                self._abandon_span()
                return i
            self._take(span, chunk, i, i + 1)
            i += 1
        while i < size:
            stop, which = size, -1
            for n, special in enumerate(_SPECIALS):
                at = chunk.find(special, i, stop)
                if at >= 0:
                    stop, which = at, n
            self._take(span, chunk, i, stop)
            if which < 0:
                return size
            if which == 0:
                self._close_span()
                return stop + 1
            if which == 1:
                span.escaped = True
                if stop + 1 >= size:
                    self._take(span, chunk, stop, stop + 1)
                    self._escape_pending = True
                    return size
                if chunk[stop + 1] in (13, 10):
                    self._take(span, chunk, stop, stop + 1)
                    self._abandon_span()
                    return stop + 1
                self._take(span, chunk, stop, stop + 2)
                i = stop + 2
                continue
            # A raw line break inside a JSON string: the event cannot parse (nor in the SDK).
            self._abandon_span()
            return stop
        return i

    def _take(self, span: Span, chunk: bytes, start: int, stop: int) -> None:
        if stop <= start:
            return
        if span.data is None:
            span.length += stop - start
            self.skipped_bytes += stop - start
        else:
            span.write(chunk, start, stop)
            self.kept_bytes += stop - start

    def _close_span(self) -> None:
        span = self._span
        assert span is not None
        self._span = None
        self._line += f'\\u0000{len(self._spans)}"'.encode()
        self._spans.append(span)
        self._searched = self._floor = len(self._line)

    def _abandon_span(self) -> None:
        """The value was no plain string: put its text back so the JSON fails as it would."""
        span = self._span
        assert span is not None
        self._span = None
        self._escape_pending = False
        if span.data is None:
            self._broken = True
        else:
            self._line += span.data[: span.length]
            span.release()
        self._raw_line = True
        self._floor = len(self._line)

    # --- lines and events ---------------------------------------------------------------

    def _end_line(self, out: list[LeanEvent]) -> None:
        line = bytes(self._line)
        self._line.clear()
        self._searched = self._floor = 0
        self._is_data = None
        self._raw_line = False
        if not line:
            event = self._dispatch()
            if event is not None:
                out.append(event)
            return
        if line.startswith(b":"):
            return
        name, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            self._data.append(value)
        elif name == b"event":
            self._event = value.decode("utf-8")
        elif name == b"id":
            if b"\0" not in value:
                self._last_id = value.decode("utf-8")
        elif name == b"retry":
            try:
                self._retry = int(value)
            except ValueError:
                pass

    def _dispatch(self) -> LeanEvent | None:
        if not self._event and not self._data and not self._last_id and self._retry is None:
            return None
        data = b"\n".join(self._data)
        spans, broken = self._spans, self._broken
        event = LeanEvent(self._event, None, spans, id=self._last_id, retry=self._retry)
        self._event, self._data, self._spans, self._retry = None, [], [], None
        self._broken = False
        if data.startswith(b"[DONE]"):
            self.done = True
            return None
        if broken:
            raise StreamProtocolError("an image value in the stream was not a JSON string")
        try:
            event.data = json.loads(data)
        except ValueError as exc:
            raise StreamProtocolError(f"an event's data is not JSON: {exc}") from exc
        if (
            self.auto_skip_repeats
            and event.type == "response.output_item.done"
            and any(s.key == "result" and not s.skipped for s in spans)
        ):
            # Decided here, before the next event's bytes: response.completed often starts in
            # the same chunk, before the consumer could say it holds the final.
            self.skip_repeated_results = True
        return event


def events_of(chunks: Iterator[bytes], parser: LeanSSEParser | None = None) -> Iterator[LeanEvent]:
    """Every event of a byte stream (for tests and benchmarks)."""
    parser = parser or LeanSSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
        if parser.done:
            return
    yield from parser.finish()
