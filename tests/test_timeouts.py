"""The stall limit, through the real SDK against the stand-in: it runs from the moment a request
is sent (waiting for the headers, then for each event), for both engines and the Files upload."""

from __future__ import annotations

import hashlib
import io
import re
import time
from collections.abc import AsyncIterator

import pytest
from PIL import Image
from pydantic import ValidationError

from bot.core.costs import PriceTable
from bot.core.errors import FailureKind
from bot.core.events import Completed, Failed, TurnEvent
from bot.core.openai_adapter import ClientConfig, OpenAIImageClient
from bot.core.options import ImageOptions, InputImage, TurnRequest
from bot.core.runner import RunnerConfig, TurnRunner
from bot.settings import Settings
from fakes.openai_api import FakeOpenAI, Fault, Timeline
from tests.conftest import ROOT

STALL = 1.0
# Far longer than the stall limit: a turn that waits for these headers is plainly not stopped.
HELD = 10.0
# The stall limit plus generous room for a loaded machine, still well below HELD.
BOUND = STALL + 4.0
# The documented longest generation; a silent one must not be taken for a stall.
LONGEST_GENERATION = 120.0


@pytest.fixture
async def client(fake_openai: FakeOpenAI) -> AsyncIterator[OpenAIImageClient]:
    # SDK retries on: the stall limit must bound the wait whatever the SDK does underneath.
    config = ClientConfig(
        api_key="sk-test-not-a-real-key-000000",
        base_url=fake_openai.base_url,
        max_retries=2,
        stall_seconds=STALL,
    )
    sdk = OpenAIImageClient(config)
    yield sdk
    await sdk.close()


def png() -> InputImage:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 40, 40)).save(buffer, "PNG")
    data = buffer.getvalue()
    return InputImage(
        data=data, mime="image/png", filename="ref.png", sha256=hashlib.sha256(data).hexdigest()
    )


class MemoryFiles:
    def __init__(self) -> None:
        self.ids: dict[str, str] = {}

    async def get_uploaded_file(self, sha256: str) -> str | None:
        return self.ids.get(sha256)

    async def put_uploaded_file(self, sha256: str, file_id: str, size: int) -> None:
        self.ids[sha256] = file_id


async def timed_run(
    runner: TurnRunner, request: TurnRequest, engine: str
) -> tuple[list[TurnEvent], float]:
    started = time.monotonic()
    events = [event async for event in runner.run(request, engine=engine)]
    return events, time.monotonic() - started


def assert_stall(events: list[TurnEvent], elapsed: float) -> None:
    failed = events[-1]
    assert isinstance(failed, Failed), events
    assert failed.kind is FailureKind.TRANSIENT
    assert failed.message_key == "fail.timeout"
    assert "took too long" in failed.message
    assert elapsed < BOUND, f"the stall was noticed after {elapsed:.1f}s"


@pytest.mark.parametrize(
    ("engine", "path"),
    [("responses", "/v1/responses"), ("images", "/v1/images/generations")],
)
async def test_headers_held_back_fail_as_a_stall(
    fake_openai: FakeOpenAI, client: OpenAIImageClient, engine: str, path: str
) -> None:
    fake_openai.queue_fault(Fault("slow_headers", seconds=HELD), path=path)
    runner = TurnRunner(client, PriceTable())
    request = TurnRequest(prompt="a lighthouse", options=ImageOptions(partials=1))

    events, elapsed = await timed_run(runner, request, engine)

    assert_stall(events, elapsed)
    # Held, not refused: the request reached the stand-in once, and was not retried.
    assert [r.path for r in fake_openai.requests] == [path]


async def test_an_image_edit_with_held_headers_fails_as_a_stall(
    fake_openai: FakeOpenAI, client: OpenAIImageClient
) -> None:
    fake_openai.queue_fault(Fault("slow_headers", seconds=HELD), path="/v1/images/edits")
    runner = TurnRunner(client, PriceTable())
    request = TurnRequest(prompt="make it blue", options=ImageOptions(partials=0), images=(png(),))

    events, elapsed = await timed_run(runner, request, "images")

    assert_stall(events, elapsed)


async def test_a_files_upload_with_held_headers_fails_as_a_stall(
    fake_openai: FakeOpenAI, client: OpenAIImageClient
) -> None:
    fake_openai.queue_fault(Fault("slow_headers", seconds=HELD), path="/v1/files")
    files = MemoryFiles()
    runner = TurnRunner(client, PriceTable(), files=files, config=RunnerConfig(use_files_api=True))
    request = TurnRequest(prompt="make it blue", options=ImageOptions(partials=0), images=(png(),))

    events, elapsed = await timed_run(runner, request, "responses")

    assert len(events) == 1
    assert_stall(events, elapsed)
    assert files.ids == {}
    assert not [r for r in fake_openai.requests if r.path == "/v1/responses"]


async def test_headers_within_the_limit_and_a_long_healthy_stream_complete(
    fake_openai: FakeOpenAI, client: OpenAIImageClient
) -> None:
    """The limit is on silence, not on the whole turn: this one takes longer than the limit."""
    gap = STALL * 0.35
    fake_openai.queue_fault(Fault("slow_headers", seconds=gap), path="/v1/responses")
    fake_openai.set_timeline(Timeline(first_partial=gap, between_partials=gap, final=gap))
    request = TurnRequest(prompt="a lighthouse", options=ImageOptions(partials=2))
    events, elapsed = await timed_run(TurnRunner(client, PriceTable()), request, "responses")

    assert isinstance(events[-1], Completed), events[-1]
    assert elapsed > STALL


def test_the_default_stall_limit_leaves_room_for_the_longest_generation() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.stream_stall_seconds >= 2 * LONGEST_GENERATION
    assert ClientConfig(api_key="x").stall_seconds == settings.stream_stall_seconds
    # The SDK's timeout is a backstop behind the stall limit, never in front of it.
    assert settings.openai_timeout_seconds >= settings.stream_stall_seconds
    assert ClientConfig(api_key="x").timeout == settings.openai_timeout_seconds


def test_an_sdk_timeout_below_the_stall_limit_is_refused_in_plain_words() -> None:
    key = "sk-should-never-be-shown-0000"
    with pytest.raises(ValidationError) as caught:
        Settings(  # type: ignore[call-arg]
            _env_file=None,
            openai_api_key=key,
            openai_timeout_seconds=60,
            stream_stall_seconds=300,
        )
    message = str(caught.value)
    assert "OPENAI_TIMEOUT_SECONDS" in message and "STREAM_STALL_SECONDS" in message
    # The error is printed as it is: it quotes the offending value, never the other settings.
    assert key not in message


def test_env_example_matches_the_defaults() -> None:
    text = (ROOT / ".env.example").read_text(encoding="utf-8")
    values = dict(re.findall(r"^([A-Z_]+)=(.*)$", text, flags=re.MULTILINE))
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert float(values["STREAM_STALL_SECONDS"]) == settings.stream_stall_seconds
    assert float(values["OPENAI_TIMEOUT_SECONDS"]) == settings.openai_timeout_seconds


@pytest.mark.parametrize(
    ("shard_ids", "expected"),
    [("0-3", (0, 1, 2, 3)), ("2", (2,)), ("4,0,2", (0, 2, 4)), ("0-1, 5", (0, 1, 5))],
)
def test_shard_ids_take_a_range_or_a_list(shard_ids: str, expected: tuple[int, ...]) -> None:
    settings = Settings(_env_file=None, shard_ids=shard_ids, shard_count=8)  # type: ignore[call-arg]
    assert settings.shards == expected
    assert settings.worker_name == f"shards-{','.join(map(str, expected))}-of-8"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"shard_ids": "0-1"}, "SHARD_IDS needs SHARD_COUNT"),
        ({"shard_ids": "0-4", "shard_count": 4}, "names shard 4, but SHARD_COUNT is 4"),
        ({"shard_ids": "3-1", "shard_count": 4}, "goes backwards"),
        ({"shard_ids": "a", "shard_count": 4}, "neither a shard number nor a range"),
        ({"shard_ids": "1,1", "shard_count": 4}, "names a shard twice"),
        ({"worker_heartbeat_seconds": 10, "worker_stale_seconds": 15}, "at least twice"),
    ],
)
def test_shard_and_worker_settings_that_make_no_sense_are_refused_without_the_token(
    changes: dict[str, object], message: str
) -> None:
    key = "sk-should-never-be-shown-0000"
    with pytest.raises(ValidationError) as caught:
        Settings(_env_file=None, openai_api_key=key, **changes)  # type: ignore[call-arg]
    assert message in str(caught.value)
    assert key not in str(caught.value)


def test_without_shards_one_worker_is_main() -> None:
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (settings.shards, settings.shard_count, settings.worker_name) == (None, None, "main")
