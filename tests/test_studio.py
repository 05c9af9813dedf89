"""The Studio on an in-memory store, with a scripted backend and a recording sink: no sockets.

The ledger's rules as units: admission within every limit, save then post (posting retried,
never regenerated), recovery after a stop, conversation rules, and how few store calls a turn
costs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.core.budgets import Limits
from bot.core.config import ContinuePolicy, GuildConfig
from bot.core.costs import PriceTable
from bot.core.errors import BadInput, BotError
from bot.core.events import Completed, Failed, Partial, ResponseCreated, Started, Usage
from bot.core.jobs import JobKind, JobSpec, ParentMode, Requester
from bot.core.options import ImageOptions, TurnRequest
from bot.core.runner import TurnRunner
from bot.core.studio import PostingFailed, StartPlan, Studio
from storage import SqliteStore
from storage.base import Conversation, Job, Turn
from tests.conftest import wait_until

Event = ResponseCreated | Partial | Completed | Failed


def finished(response_id: str) -> Completed:
    return Completed(
        image=b"\x89PNG final " + response_id.encode(),
        format="png",
        response_id=response_id,
        revised_prompt="revised",
        usage=Usage(input_tokens=10, output_tokens=5, image_output_tokens=1000),
        cost=0.0,
        model="gpt-image-2",
        engine="responses",
        size="1024x1024",
        quality="medium",
        seconds=1.5,
    )


class Backend:
    """Plays a response per call: ResponseCreated, one partial, the final."""

    def __init__(self, prefix: str = "resp") -> None:
        self.requests: list[TurnRequest] = []
        self.finished: dict[str, Completed] = {}
        self.gate: asyncio.Event | None = None
        self.prefix = prefix

    async def upload_file(self, image: Any) -> str:
        raise AssertionError("no uploads here")

    async def _play(self, request: TurnRequest) -> AsyncIterator[Event]:
        self.requests.append(request)
        rid = f"{self.prefix}_{len(self.requests)}"
        yield ResponseCreated(rid)
        if self.gate is not None:
            await self.gate.wait()
        yield Partial(0, b"partial", "png")
        yield finished(rid)

    def stream_responses(
        self, request: TurnRequest, *, file_ids: dict[str, str] | None = None
    ) -> AsyncIterator[Event]:
        return self._play(request)

    def stream_images(self, request: TurnRequest) -> AsyncIterator[Event]:
        return self._play(request)

    async def finished_image(self, response_id: str, options: ImageOptions) -> Completed | None:
        return self.finished.get(response_id)


class Sink:
    """Records what a job showed; `refusals` posts fail with PostingFailed first."""

    def __init__(self, log: list[tuple[int, str]], job: Job, refusals: int) -> None:
        self.log = log
        self.job = job
        self.refusals = refusals

    async def queued(self, position: int) -> None:
        self.log.append((self.job.id, f"queued {position}"))

    async def started(self, event: Started) -> None:
        self.log.append((self.job.id, "started"))

    async def partial(self, event: Partial) -> None:
        self.log.append((self.job.id, "partial"))

    async def completed(self, event: Completed, turn: Turn) -> tuple[int | None, str | None]:
        if self.refusals > 0:
            self.refusals -= 1
            self.log.append((self.job.id, "refused"))
            raise PostingFailed("503")
        self.log.append((self.job.id, f"posted turn {turn.id}"))
        if event.branched:
            self.log.append((self.job.id, "branched"))
        return 1000 + turn.id, None

    async def failed(self, event: Failed, job: Job) -> None:
        self.log.append((job.id, f"failed {event.kind.value}"))

    async def cancelled(self, job: Job) -> None:
        self.log.append((job.id, "cancelled"))


class Counting:
    """A store proxy that counts the calls made through it."""

    def __init__(self, store: SqliteStore) -> None:
        self._store = store
        self.calls: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not callable(target):
            return target

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return target(*args, **kwargs)

        return call


@dataclasses.dataclass
class Rig:
    studio: Studio
    store: SqliteStore
    counting: Counting
    backend: Backend
    log: list[tuple[int, str]]
    refusals: dict[str, int]

    def shown(self, what: str) -> list[int]:
        return [job for job, entry in self.log if entry.startswith(what)]


@pytest.fixture
async def rig() -> AsyncIterator[Callable[..., Rig]]:
    stores: list[SqliteStore] = []
    studios: list[Studio] = []

    async def build(
        store: SqliteStore | None = None,
        backend: Backend | None = None,
        studio_options: dict[str, Any] | None = None,
        **limits: Any,
    ) -> Rig:
        if store is None:
            store = await SqliteStore.open(":memory:")
            stores.append(store)
        backend = backend or Backend()
        log: list[tuple[int, str]] = []
        refusals = {"count": 0}
        counting = Counting(store)

        async def sink_factory(job: Job, spec: JobSpec) -> Sink:
            return Sink(log, job, refusals["count"])

        studio = Studio(
            store=counting,  # type: ignore[arg-type]
            runner=TurnRunner(backend, PriceTable()),
            prices=PriceTable(),
            defaults=ImageOptions(model="gpt-image-2"),
            limits=Limits(**limits),
            sink_factory=sink_factory,
            post_backoff=(0.001, 0.01),
            **(studio_options or {}),
        )
        studios.append(studio)
        return Rig(studio, store, counting, backend, log, refusals)

    yield build  # type: ignore[misc]
    for studio in studios:
        await studio.close(grace=0.1)
    for store in stores:
        await store.close()


async def requester(
    studio: Studio, user_id: int = 7, channel_id: int = 100, **kw: Any
) -> Requester:
    return await studio.requester(
        user_id=user_id,
        guild_id=kw.pop("guild_id", 1),
        channel_id=channel_id,
        client_locale="en",
        **kw,
    )


def imagine(prompt: str = "a cat") -> JobSpec:
    return JobSpec(kind=JobKind.IMAGINE, prompt=prompt, parent=ParentMode.NONE)


async def test_a_turn_is_saved_then_posted_and_charged_once(rig: Any) -> None:
    r: Rig = await rig()
    who = await requester(r.studio)
    job = await r.studio.submit(r.studio.check(imagine(), who))
    await asyncio.wait_for(r.studio.wait_idle(), 5)
    assert [e for j, e in r.log if j == job.id] == ["started", "partial", "posted turn 1"]
    saved = await r.store.get_job(job.id)
    assert saved is not None and saved.status == "done" and saved.response_id == "resp_1"
    assert (await r.store.usage_totals(since=0, user_id=7)).images == 1
    image = await r.store.get_turn_image(1)
    assert image is not None and image[0].endswith(b"resp_1")


async def test_posting_is_retried_never_regenerated(rig: Any) -> None:
    r: Rig = await rig()
    r.refusals["count"] = 3
    who = await requester(r.studio)
    job = await r.studio.submit(r.studio.check(imagine(), who))
    await asyncio.wait_for(r.studio.wait_idle(), 5)
    assert [e for j, e in r.log if j == job.id][-4:] == ["refused"] * 3 + ["posted turn 1"]
    assert len(r.backend.requests) == 1
    assert (await r.store.usage_totals(since=0)).images == 1


async def test_admission_refuses_past_the_daily_images_and_the_pending_cap(rig: Any) -> None:
    r: Rig = await rig(user_daily_images=2, max_pending_per_user=5)
    r.backend.gate = asyncio.Event()
    who = await requester(r.studio)
    jobs = []
    for i in range(2):
        jobs.append(await r.studio.submit(r.studio.check(imagine(f"cat {i}"), who)))
    with pytest.raises(BotError) as refused:
        await r.studio.submit(r.studio.check(imagine("one more"), who))
    assert refused.value.key == "fail.budget_user_images"
    r.backend.gate.set()
    await asyncio.wait_for(r.studio.wait_idle(), 5)
    r2: Rig = await rig(max_pending_per_user=2)
    r2.backend.gate = asyncio.Event()
    other = await requester(r2.studio)
    for i in range(2):
        await r2.studio.submit(r2.studio.check(imagine(f"dog {i}"), other))
    with pytest.raises(BotError) as capped:
        await r2.studio.submit(r2.studio.check(imagine("dog 3"), other))
    assert capped.value.key == "fail.too_many_jobs"
    r2.backend.gate.set()
    await asyncio.wait_for(r2.studio.wait_idle(), 5)


async def test_retry_meets_the_server_rules_as_they_are_now(rig: Any) -> None:
    r: Rig = await rig()
    who = await requester(r.studio)
    job = await r.studio.admit(r.studio.check(imagine(), who))
    await r.store.start_job(job.id)
    await r.store.finish_job(job.id, "interrupted")
    await r.store.update_guild_config(1, lambda _: GuildConfig(allowed_channels=(555,)).to_dict())
    who = await requester(r.studio)
    with pytest.raises(BotError) as refused:
        await r.studio.retry(job.id, who)
    assert refused.value.key == "studio.channel_not_allowed"
    await r.store.update_guild_config(1, lambda _: {})
    with pytest.raises(BotError) as not_theirs:
        await r.studio.retry(job.id, await requester(r.studio, user_id=8))
    assert not_theirs.value.key == "studio.not_allowed_retry"
    again = await r.studio.retry(job.id, await requester(r.studio))
    assert again.status == "queued"
    await asyncio.wait_for(r.studio.wait_idle(), 5)
    with pytest.raises(BotError):
        await r.studio.retry(2**70, await requester(r.studio))


async def test_recovery_posts_saved_images_and_fetches_finished_responses(rig: Any) -> None:
    store = await SqliteStore.open(":memory:")
    try:
        first: Rig = await rig(store=store)
        who = await requester(first.studio)
        # One job whose image was saved but never posted, one cut off after OpenAI named the
        # response (which finished anyway), one cut off before anything was sent.
        saved = await first.studio.admit(first.studio.check(imagine("saved"), who))
        await store.start_job(saved.id)
        request = TurnRequest(prompt="saved", options=ImageOptions(model="gpt-image-2"))
        from bot.core.studio import _new_turn

        turn, usage = _new_turn(
            finished("resp_saved"),
            options=request.options,
            prompt="saved",
            parent_response_id=None,
            channel_id=100,
            guild_id=1,
            user_id=7,
        )
        await store.save_result(
            saved.id, turn, image=b"img", image_format="png", usage=usage, advance=True
        )
        lost = await first.studio.admit(first.studio.check(imagine("lost"), who))
        await store.start_job(lost.id)
        await store.set_job_response(lost.id, "resp_lost")
        cut = await first.studio.admit(first.studio.check(imagine("cut"), who))
        await store.start_job(cut.id)

        backend = Backend()
        backend.finished["resp_lost"] = finished("resp_lost")
        second: Rig = await rig(store=store, backend=backend)
        interrupted, reposted, queued = await second.studio.recover()
        await asyncio.wait_for(second.studio.wait_idle(), 5)
        assert [j.id for j in interrupted] == [cut.id]
        assert sorted(j.id for j in reposted) == [saved.id, lost.id]
        assert queued == []
        assert backend.requests == []  # nothing generated again
        assert sorted(second.shown("posted")) == sorted([saved.id, lost.id])
        assert second.shown("failed interrupted") == [cut.id]
        totals = await store.usage_totals(since=0)
        assert totals.images == 2
    finally:
        await store.close()


async def test_a_worker_settles_the_jobs_of_another_only_once_it_stops_beating(
    rig: Any,
) -> None:
    store = await SqliteStore.open(":memory:")
    try:
        fast = {"heartbeat_seconds": 0.05, "stale_after_seconds": 0.4}
        first: Rig = await rig(store=store, studio_options={"worker_id": "first", **fast})
        assert await first.studio.recover() == ([], [], [])
        who = await requester(first.studio)
        # The first worker holds a job it runs, one whose image it saved, one in its queue.
        cut = await first.studio.admit(first.studio.check(imagine("cut"), who))
        await store.start_job(cut.id, "first")
        saved = await first.studio.admit(first.studio.check(imagine("saved"), who))
        await store.start_job(saved.id, "first")
        from bot.core.studio import _new_turn

        turn, usage = _new_turn(
            finished("resp_saved"),
            options=ImageOptions(model="gpt-image-2"),
            prompt="saved",
            parent_response_id=None,
            channel_id=100,
            guild_id=1,
            user_id=7,
        )
        await store.save_result(
            saved.id, turn, image=b"img", image_format="png", usage=usage, advance=True
        )
        waiting = await first.studio.admit(first.studio.check(imagine("waiting"), who))

        second: Rig = await rig(store=store, studio_options={"worker_id": "second", **fast})
        # The first worker is alive: neither the start-up nor many rounds later touch its jobs.
        assert await second.studio.recover() == ([], [], [])
        await wait_until(
            lambda: second.counting.calls["adopt_orphans"] >= 12, what="second's rounds"
        )
        assert second.log == []
        held = [await store.get_job(j.id) for j in (cut, saved, waiting)]
        assert [(j.status, j.worker_id) for j in held if j is not None] == [
            ("running", "first"),
            ("saved", "first"),
            ("queued", "first"),
        ]

        await first.studio.close(grace=0.1)  # it stops beating, as if killed
        await wait_until(
            lambda: len(second.shown("posted")) == 2 and second.shown("failed"),
            what="the second worker to settle the first's jobs",
        )
        await asyncio.wait_for(second.studio.wait_idle(), 5)
        assert second.shown("failed interrupted") == [cut.id]
        assert sorted(second.shown("posted")) == [saved.id, waiting.id]
        assert len(second.backend.requests) == 1  # only the queued job was generated
        ended = [await store.get_job(j.id) for j in (cut, saved, waiting)]
        assert [(j.status, j.worker_id) for j in ended if j is not None] == [
            ("interrupted", "second"),
            ("done", "second"),
            ("done", "second"),
        ]
        assert first.log == []
        assert (await store.usage_totals(since=0)).images == 2
    finally:
        await store.close()


async def test_conversation_rules(rig: Any) -> None:
    r: Rig = await rig()
    owner = await requester(r.studio, user_id=7, channel_id=200)
    await r.store.create_conversation(
        Conversation(200, 1, 7, 100, None, None, "responses", {}, 0.0, 0.0)
    )
    assert await r.studio.start_plan(owner, in_dm=False, in_thread=True) is StartPlan.CONTINUE
    elsewhere = await requester(r.studio, channel_id=300)
    assert await r.studio.start_plan(elsewhere, in_dm=False, in_thread=True) is StartPlan.IN_PLACE
    assert await r.studio.start_plan(elsewhere, in_dm=False, in_thread=False) is (
        StartPlan.NEW_THREAD
    )
    assert await r.studio.start_plan(elsewhere, in_dm=True, in_thread=False) is (StartPlan.FRESH_DM)
    await r.store.update_guild_config(1, lambda _: {"continue_policy": ContinuePolicy.AUTHOR.value})
    guest = await requester(r.studio, user_id=9, channel_id=200)
    with pytest.raises(BotError):
        await r.studio.start_plan(guest, in_dm=False, in_thread=True)
    assert await r.studio.message_target(300, reply_to=None) is None
    assert await r.studio.message_target(200, reply_to=None) == (7, None)


async def test_an_imagine_costs_few_store_calls(rig: Any) -> None:
    r: Rig = await rig()
    who = await requester(r.studio)
    r.counting.calls.clear()
    job = await r.studio.admit(r.studio.check(imagine(), who))
    plan_channel = 200
    await r.studio.place(job, plan_channel, r.studio.new_conversation(who, plan_channel, imagine()))
    await asyncio.wait_for(r.studio.wait_idle(), 5)
    # admit, place, start, response id, save, posted: one each.
    assert sum(r.counting.calls.values()) <= 6, r.counting.calls


def test_the_usage_chart_has_every_day_of_the_last_thirty() -> None:
    from bot.core.usage import calendar
    from storage.base import DayUsage

    now = 1_700_000_000.0  # 2023-11-14
    days = calendar([DayUsage("2023-11-10", 2, 0.5), DayUsage("2023-10-01", 9, 9.0)], now=now)
    assert len(days) == 30
    assert days[-1].day == "2023-11-14" and days[0].day == "2023-10-16"
    assert [d.images for d in days if d.images] == [2]
    assert sum(1 for d in days if d.cost_usd == 0) == 29


async def test_a_job_held_by_another_process_is_not_cancelled_from_here(rig: Any) -> None:
    r: Rig = await rig()
    who = await requester(r.studio)
    job = await r.studio.admit(r.studio.check(imagine(), who))
    assert await r.store.start_job(job.id, "shards-1-of-2")
    with pytest.raises(BotError) as refused:
        await r.studio.cancel(job.id, who)
    assert refused.value.key == "studio.cancel_elsewhere"
    held = await r.store.get_job(job.id)
    assert held is not None and held.status == "running"


async def test_two_admins_changing_the_config_at_once_both_keep_their_change(rig: Any) -> None:
    r: Rig = await rig()
    # Both read the configuration before either saved: each change still lands.
    first = await requester(r.studio, user_id=7, is_admin=True)
    second = await requester(r.studio, user_id=8, is_admin=True)
    await r.studio.update_config(first, {"user_daily_images": 3})
    config = await r.studio.update_config(second, {"partials_enabled": False})
    assert (config.user_daily_images, config.partials_enabled) == (3, False)
    fresh = await requester(r.studio, user_id=9)
    assert (fresh.config.user_daily_images, fresh.config.partials_enabled) == (3, False)
    # A refused change keeps what was saved.
    with pytest.raises(BotError):
        await r.studio.update_config(first, {"continue_policy": ContinuePolicy.ROLE.value})
    assert (await requester(r.studio)).config == fresh.config


async def test_two_quick_settings_changes_both_take_effect(rig: Any) -> None:
    r: Rig = await rig()
    me = await requester(r.studio)
    await r.studio.update_settings(me, {"quality": "high"})
    settings = await r.studio.update_settings(me, {"size": "1536x1024"})
    assert settings.options == {"quality": "high", "size": "1536x1024"}
    with pytest.raises(BadInput):
        await r.studio.update_settings(me, {"background": "transparent", "format": "jpeg"})
    assert (await requester(r.studio)).settings == settings


def message(prompt: str) -> JobSpec:
    return JobSpec(kind=JobKind.MESSAGE, prompt=prompt, parent=ParentMode.LATEST)


async def test_a_late_turn_from_another_process_is_a_branch_not_a_new_head(rig: Any) -> None:
    store = await SqliteStore.open(":memory:")
    try:
        await store.create_conversation(
            Conversation(200, 1, 7, 100, "resp_seed", None, "responses", {}, 0.0, 0.0)
        )
        slow: Rig = await rig(store=store, studio_options={"worker_id": "slow"})
        quick: Rig = await rig(
            store=store, backend=Backend(prefix="quick"), studio_options={"worker_id": "quick"}
        )
        slow.backend.gate = asyncio.Event()
        who = await requester(slow.studio, channel_id=200)
        late = await slow.studio.submit(slow.studio.check(message("make it blue"), who))
        await wait_until(lambda: len(slow.backend.requests) == 1, what="the slow turn to start")
        # Meanwhile another process runs a turn of the same thread from the same head.
        newer = await quick.studio.submit(quick.studio.check(message("make it red"), who))
        await asyncio.wait_for(quick.studio.wait_idle(), 5)
        head = await store.get_conversation(200)
        assert head is not None and head.latest_response_id == "quick_1"
        slow.backend.gate.set()
        await asyncio.wait_for(slow.studio.wait_idle(), 5)
        # Both started from the seed; the late image is shown, saved as a branch of the seed,
        # and the thread goes on from the newer turn.
        assert [r.previous_response_id for r in slow.backend.requests + quick.backend.requests] == [
            "resp_seed",
            "resp_seed",
        ]
        assert slow.shown("branched") == [late.id] and quick.shown("branched") == []
        assert quick.shown("posted") == [newer.id]
        head = await store.get_conversation(200)
        assert head is not None and head.latest_response_id == "quick_1"
        branch = await store.get_turn_by_response("resp_1")
        assert branch is not None and branch.parent_response_id == "resp_seed"
        assert branch.result.get("branched") is True
        assert (await store.usage_totals(since=0)).images == 2
    finally:
        await store.close()
