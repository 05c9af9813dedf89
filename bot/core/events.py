"""The typed events a turn yields to whoever shows it (the Discord sink, the CLI sink)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from bot.core import i18n
from bot.core.errors import FailureKind


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens a turn consumed: the mainline model's and the image model's."""

    input_tokens: int = 0
    output_tokens: int = 0
    image_input_tokens: int = 0
    image_input_text_tokens: int = 0
    image_output_tokens: int = 0

    def as_dict(self) -> dict[str, int]:
        """A JSON-ready dict."""
        return {
            "input_tokens": self.input_tokens,
            "output_tokens": self.output_tokens,
            "image_input_tokens": self.image_input_tokens,
            "image_input_text_tokens": self.image_input_text_tokens,
            "image_output_tokens": self.image_output_tokens,
        }


@dataclass(frozen=True, slots=True)
class Queued:
    """The turn waits: `position` jobs are ahead of it (1 = next)."""

    position: int


@dataclass(frozen=True, slots=True)
class Started:
    """The request was sent."""

    engine: str
    model: str
    reseeded: bool = False


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    """OpenAI named the response it is drawing (a finished one can be fetched by this id)."""

    response_id: str


class Partial:
    """A coarse preview of the image (index 0 is the first).

    The image may come still encoded (`source`): it is decoded on the first read of `image`,
    so that a preview the sink drops for a newer one (latest wins) is never decoded at all.
    """

    __slots__ = ("__weakref__", "_give_back", "_image", "_keep", "_source", "format", "index")

    def __init__(
        self,
        index: int,
        image: bytes | None = None,
        format: str = "png",
        *,
        source: Callable[[], bytes] | None = None,
        keep: Callable[[], object] | None = None,
        give_back: Callable[[], object] | None = None,
    ) -> None:
        if (image is None) == (source is None):
            raise TypeError("a Partial takes either the image or its source")
        self.index = index
        self.format = format
        self._image = image
        self._source = source
        # The preview's share of the image memory budget (bot/core/memory_budget.py): `keep`
        # takes it over from the stream, `give_back` returns it.
        self._keep = keep
        self._give_back = give_back

    @property
    def image(self) -> bytes:
        """The preview's bytes (decoded now if they came encoded)."""
        if self._image is None:
            assert self._source is not None
            self._image, self._source = self._source(), None
        return self._image

    async def load(self) -> bytes:
        """The preview's bytes, decoded off the event loop if they came encoded.

        A turn's partials arrive together at 100 concurrent turns: decoding them (a few ms each
        with fresh pages) one after another on the loop would delay every other task.
        """
        if self._image is None:
            return await asyncio.to_thread(lambda: self.image)
        return self._image

    @property
    def decoded(self) -> bool:
        """Whether the bytes exist yet (False: nobody has looked at this preview)."""
        return self._image is not None

    def hold(self) -> None:
        """Keep this preview counted in the memory budget until `release()`.

        For a consumer that always calls `release()` when done with the preview (shown, lost or
        replaced by a newer one) without waiting for the turn's next event. Without it, the
        turn's next image takes the preview's place in the budget while it may still upload.
        """
        keep, self._keep = self._keep, None
        if keep is not None:
            keep()

    def release(self) -> None:
        """Drop the bytes once the preview was shown (`image` is then empty).

        The event itself lives on until the turn's next one (the runner and the studio hold it
        in their loops): without this, every turn in flight would keep its last preview.
        """
        self._image = b""
        self._source = None
        self._keep = None
        give_back, self._give_back = self._give_back, None
        if give_back is not None:
            give_back()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Partial):
            return NotImplemented
        return (self.index, self.format, self.image) == (other.index, other.format, other.image)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        size = f"{len(self._image)} bytes" if self._image is not None else "encoded"
        return f"Partial(index={self.index}, image=<{size}>, format={self.format!r})"


@dataclass(frozen=True, slots=True, weakref_slot=True)
class Completed:
    """The final image and what it cost.

    `incomplete_reason` is set when OpenAI ended the response early (e.g. `max_output_tokens`)
    after the image was made: the image is whole, any text may be cut; `note.incomplete` says so.
    """

    image: bytes
    format: str
    response_id: str | None
    revised_prompt: str | None
    usage: Usage
    cost: float
    text: str | None = None
    size: str | None = None
    quality: str | None = None
    model: str = ""
    engine: str = ""
    seconds: float = 0.0
    reseeded: bool = False
    incomplete_reason: str | None = None
    # Saved as a branch: the conversation had moved on to a newer turn while this one ran.
    branched: bool = False


@dataclass(frozen=True, slots=True)
class Failed:
    """The turn ended without an image; `message_key` + `params` localize the reason."""

    kind: FailureKind
    message_key: str
    params: dict[str, object] = field(default_factory=dict)
    detail: str | None = None
    retry_after: float | None = None
    usage: Usage | None = None

    @property
    def message(self) -> str:
        """The reason in English."""
        return i18n.t("en", self.message_key, **self.params)

    def localized(self, locale: str | None) -> str:
        """The reason in `locale`."""
        return i18n.t(locale, self.message_key, **self.params)


TurnEvent = Queued | Started | ResponseCreated | Partial | Completed | Failed


class TurnFailure(Exception):
    """Raised by a backend call outside a stream (e.g. a file upload); carries the Failed event."""

    def __init__(self, failed: Failed) -> None:
        super().__init__(failed.detail or failed.message_key)
        self.failed = failed
