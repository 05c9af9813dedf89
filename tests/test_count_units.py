"""Several images at once, at our own interfaces (fast, no sockets): the admission gate counts
every image, usage is shared out without losing a token, the runner draws side by side, and
the studio checks `count` and prices all of it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator

import pytest

from bot.core import i18n
from bot.core.budgets import Limits, admission_gate
from bot.core.costs import PriceTable
from bot.core.errors import BadInput, BotError, FailureKind
from bot.core.events import Completed, Failed, Partial, ResponseCreated, Usage
from bot.core.jobs import JobKind, JobSpec, Requester
from bot.core.openai_adapter import split_usage
from bot.core.options import ImageOptions, TurnRequest
from bot.core.runner import TurnRunner
from bot.core.studio import CheckedRequest, Studio
from storage.base import Occupancy

EMPTY = Occupancy(user_pending=0, user_images=0, user_usd=0.0, guild_images=0, guild_usd=0.0)


def completed(response_id: str, image: bytes = b"img") -> Completed:
    return Completed(
        image=image,
        format="png",
        response_id=response_id,
        revised_prompt=None,
        usage=Usage(image_output_tokens=1056),
        cost=0.0,
        model="gpt-image-2",
        engine="responses",
    )


def test_the_gate_counts_every_image_and_says_how_many_were_asked_for() -> None:
    gate = admission_gate(Limits(user_daily_images=3), estimate=0.4, images=4)
    with pytest.raises(BotError) as refused:
        gate(EMPTY)
    assert refused.value.key == "fail.budget_user_images_asked"
    text = refused.value.localized("en")
    assert "asks for 4 images" in text and "0 of today's 3" in text
    assert "4장" in refused.value.localized("ko")
    admission_gate(Limits(user_daily_images=4), estimate=0.4, images=4)(EMPTY)
    guild = admission_gate(Limits(guild_monthly_images=10), estimate=0.4, images=4)
    with pytest.raises(BotError) as server:
        guild(Occupancy(0, 0, 0.0, 7, 0.0))
    assert server.value.key == "fail.budget_guild_images_asked"
    # One image keeps the message it always had.
    with pytest.raises(BotError) as one:
        admission_gate(Limits(user_daily_images=1), estimate=0.1)(Occupancy(0, 1, 0.0, 0, 0.0))
    assert one.value.key == "fail.budget_user_images"


def test_usage_is_shared_out_without_losing_a_token() -> None:
    total = Usage(image_input_tokens=10, image_input_text_tokens=7, image_output_tokens=4225)
    shares = split_usage(total, 4)
    assert len(shares) == 4
    for name, value in total.as_dict().items():
        assert sum(share.as_dict()[name] for share in shares) == value
    assert [s.image_output_tokens for s in shares] == [1057, 1056, 1056, 1056]


class SideBySide:
    """A backend whose Responses turns end as scripted, one script per call."""

    def __init__(self, *ends: Completed | Failed) -> None:
        self.ends = list(ends)
        self.requests: list[TurnRequest] = []
        self.many: list[int] = []

    async def upload_file(self, image: object) -> str:
        raise AssertionError("no uploads")

    async def _play(
        self, request: TurnRequest
    ) -> AsyncIterator[ResponseCreated | Partial | Completed | Failed]:
        self.requests.append(request)
        index = len(self.requests)
        yield ResponseCreated(f"resp_{index}")
        yield self.ends[index - 1]

    def stream_responses(
        self, request: TurnRequest, *, file_ids: dict[str, str] | None = None
    ) -> AsyncIterator[ResponseCreated | Partial | Completed | Failed]:
        return self._play(request)

    def stream_images(self, request: TurnRequest) -> AsyncIterator[Partial | Completed | Failed]:
        raise AssertionError("not streamed")

    async def finished_image(self, response_id: str, options: ImageOptions) -> Completed | None:
        return None

    async def images_many(self, request: TurnRequest, n: int) -> list[Completed] | Failed:
        self.many.append(n)
        return [completed(f"img_{i}", bytes([i])) for i in range(n)]


async def test_responses_turns_run_side_by_side_and_each_ends_on_its_own() -> None:
    moderated = Failed(FailureKind.MODERATION, "fail.moderation_input")
    backend = SideBySide(completed("a"), moderated, completed("c"), completed("d"))
    created: list[str] = []
    arrived: list[int] = []

    async def on_created(response_id: str) -> None:
        created.append(response_id)

    request = TurnRequest(prompt="a fox", options=ImageOptions(model="gpt-image-2", partials=0))
    ended = await TurnRunner(backend, PriceTable()).run_many(
        request,
        count=4,
        on_created=on_created,
        on_arrived=lambda: arrived.append(1),
    )
    assert [getattr(e, "response_id", None) for e in ended] == ["a", None, "c", "d"]
    assert isinstance(ended[1], Failed) and ended[1].kind is FailureKind.MODERATION
    assert all(e.cost > 0 for e in ended if isinstance(e, Completed))
    assert sorted(created) == ["resp_1", "resp_2", "resp_3", "resp_4"]
    assert len(arrived) == 3
    assert backend.requests == [request] * 4


async def test_the_image_api_draws_them_in_one_call() -> None:
    backend = SideBySide()
    request = TurnRequest(prompt="a fox", options=ImageOptions(model="gpt-image-2", partials=0))
    ended = await TurnRunner(backend, PriceTable()).run_many(request, count=3, engine="images")
    assert backend.many == [3] and backend.requests == []
    assert [e.image for e in ended if isinstance(e, Completed)] == [b"\0", b"\1", b"\2"]


def test_the_studio_checks_count_and_prices_every_image() -> None:
    async def no_sink(job: object, spec: object) -> object:
        raise AssertionError("nothing runs")

    # `check` needs no database: nothing is admitted here.
    studio = Studio(
        store=None,  # type: ignore[arg-type]
        runner=TurnRunner(SideBySide(), PriceTable()),
        prices=PriceTable(),
        defaults=ImageOptions(model="gpt-image-2"),
        sink_factory=no_sink,  # type: ignore[arg-type]
    )
    requester = Requester(user_id=1, guild_id=2, channel_id=3)

    def check(count: int, partials: int = 0) -> CheckedRequest:
        spec = JobSpec(kind=JobKind.IMAGINE, prompt="a fox", count=count)
        return studio.check(dataclasses.replace(spec, options={"partials": partials}), requester)

    one, four = check(1), check(4)
    assert (one.images, four.images) == (1, 4)
    assert four.estimate == pytest.approx(4 * one.estimate)
    # Several at once stream no previews (nor pay for them), whatever the defaults say.
    assert check(2, partials=3).spec.options["partials"] == 0
    assert check(2, partials=3).estimate == pytest.approx(2 * one.estimate)
    for wrong in (0, 5):
        with pytest.raises(BadInput) as refused:
            check(wrong)
        assert refused.value.localized("en") == i18n.t("en", "bad.count_range", value=wrong, most=4)
    assert JobSpec.from_payload(four.spec.to_payload()).count == 4
    assert JobSpec.from_payload({"kind": "imagine", "prompt": "old payload"}).count == 1
