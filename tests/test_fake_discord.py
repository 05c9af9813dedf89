"""The Discord stand-in, driven by the real discord.py client over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import discord
import pytest
from discord import app_commands
from discord.app_commands import Choice
from discord.ext import commands
from PIL import Image

from fakes.discord_api import FakeDiscord, Interaction, InteractionRefused

# ---------------------------------------------------------------------------
# Shared fixtures: images, the discord logger watch, the stand-in and a tiny bot.
# ---------------------------------------------------------------------------


def png(size: int, color: tuple[int, int, int]) -> bytes:
    """Return a square PNG of one colour."""
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format="PNG")
    return buffer.getvalue()


RED_4 = png(4, (255, 0, 0))
GREEN_8 = png(8, (0, 255, 0))
BLUE_16 = png(16, (0, 0, 255))


class DiscordErrors(logging.Handler):
    """Collects ERROR records of the ``discord`` logger; tests may allow expected ones."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []
        self.allowed: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the record."""
        self.records.append(record)

    def allow(self, fragment: str) -> None:
        """Accept ERROR records whose message contains ``fragment``."""
        self.allowed.append(fragment)

    def unexpected(self) -> list[str]:
        """Return the messages of records nobody allowed."""
        messages = [record.getMessage() for record in self.records]
        return [m for m in messages if not any(fragment in m for fragment in self.allowed)]


@pytest.fixture
def discord_errors() -> Iterator[DiscordErrors]:
    """Fail the test if discord.py logs an ERROR (swallowed handler exceptions end up there)."""
    handler = DiscordErrors()
    logger = logging.getLogger("discord")
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
    assert handler.unexpected() == []


@contextlib.asynccontextmanager
async def serving(fake: FakeDiscord) -> AsyncIterator[FakeDiscord]:
    """Start the stand-in, point discord.py at it, and check it saw nothing unexpected."""
    async with fake:
        fake.patch_discord_py()
        yield fake
        assert fake.unhandled == []
        assert fake.internal_errors == []


@pytest.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    """Serve a stand-in with plain TEXT gateway frames."""
    async with serving(FakeDiscord()) as server:
        yield server


@pytest.fixture(params=[False, True], ids=["text-frames", "zlib-stream"])
async def fake_any_framing(request: pytest.FixtureRequest) -> AsyncIterator[FakeDiscord]:
    """Serve a stand-in once with TEXT frames and once with zlib-stream BINARY frames."""
    async with serving(FakeDiscord(zlib=request.param)) as server:
        yield server


class JobButton(
    discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]],
    template=r"job:(?P<action>\w+):(?P<job>\d+)",
):
    """A persistent button whose state lives in its custom_id."""

    def __init__(self, action: str, job: int) -> None:
        super().__init__(discord.ui.Button(label=action.title(), custom_id=f"job:{action}:{job}"))
        self.action = action
        self.job = job

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction,
        item: discord.ui.Button[discord.ui.View],
        match: re.Match[str],
    ) -> JobButton:
        """Rebuild the button from its custom_id."""
        return cls(match["action"], int(match["job"]))

    async def callback(self, interaction: discord.Interaction) -> None:
        """Upscale replies with a file; edit opens a modal."""
        if self.action == "edit":
            await interaction.response.send_modal(EditModal(self.job))
        elif self.action == "swap":
            await interaction.response.defer()
            await interaction.edit_original_response(content="swapped")
        else:
            await interaction.response.send_message(
                f"upscaled {self.job}", file=discord.File(io.BytesIO(BLUE_16), "up.png")
            )


class EditModal(discord.ui.Modal, title="Edit image"):
    """Asks for an edit instruction."""

    instruction: discord.ui.TextInput[EditModal] = discord.ui.TextInput(
        label="Instruction", custom_id="edit:instruction", max_length=200
    )

    def __init__(self, job: int) -> None:
        super().__init__(custom_id=f"edit:{job}")

    async def on_submit(self, interaction: discord.Interaction) -> None:
        """Acknowledge privately."""
        await interaction.response.send_message(
            f"editing: {self.instruction.value}", ephemeral=True
        )


class StyleView(discord.ui.View):
    """A persistent select menu that rewrites its message."""

    def __init__(self) -> None:
        super().__init__(timeout=None)

    @discord.ui.select(
        custom_id="style:pick",
        options=[
            discord.SelectOption(label=name.title(), value=name)
            for name in ("photo", "anime", "sketch")
        ],
    )
    async def pick(
        self, interaction: discord.Interaction, select: discord.ui.Select[StyleView]
    ) -> None:
        """Show the chosen style in place."""
        await interaction.response.edit_message(content=f"style: {select.values[0]}")


class StandInBot(commands.Bot):
    """A tiny bot exercising slash commands, components, modals, threads and files."""

    def __init__(self, *, message_content: bool = True) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        intents.members = True
        super().__init__(
            command_prefix=commands.when_mentioned, intents=intents, guild_ready_timeout=0.05
        )
        self.seen: dict[str, Any] = {}
        self.gate = asyncio.Event()
        self.resumed = 0
        self.synced: list[app_commands.AppCommand] = []
        self.received: list[discord.Message] = []

    async def setup_hook(self) -> None:
        """Register commands and persistent components, then sync."""
        for command in (imagine, style, echo, slow, late, steps):
            self.tree.add_command(command)
        self.add_dynamic_items(JobButton)
        self.add_view(StyleView())
        self.synced = await self.tree.sync()

    async def on_resumed(self) -> None:
        """Count resumed gateway sessions."""
        self.resumed += 1

    async def on_message(self, message: discord.Message) -> None:
        """Echo attachments back after downloading them; answer "ping"."""
        if message.author.bot:
            return
        self.received.append(message)
        if message.attachments:
            data = await message.attachments[0].read()
            self.seen["downloaded"] = data
            await message.reply(
                f"read {len(data)} bytes", file=discord.File(io.BytesIO(data), "echo.png")
            )
        elif message.content == "ping":
            await message.channel.send("pong")


@app_commands.command(description="Generate an image")
@app_commands.describe(
    prompt="What to draw", steps="Sampling steps", style="Style", init_image="Start image"
)
@app_commands.choices(
    style=[Choice(name="Photo", value="photo"), Choice(name="Anime", value="anime")]
)
async def imagine(
    interaction: discord.Interaction[StandInBot],
    prompt: str,
    steps: app_commands.Range[int, 1, 50] = 20,
    style: Choice[str] | None = None,
    init_image: discord.Attachment | None = None,
) -> None:
    """Defer, post the result with a button, open a thread on it and refine an image there."""
    bot = interaction.client
    await interaction.response.defer(thinking=True)
    if init_image is not None:
        bot.seen["init_image"] = await init_image.read()
    bot.seen["options"] = (prompt, steps, style.value if style else None)
    view = discord.ui.View(timeout=None)
    view.add_item(JobButton("upscale", 7))
    view.add_item(JobButton("edit", 7))
    view.add_item(JobButton("swap", 7))
    result = await interaction.followup.send(
        f"**{prompt}**", file=discord.File(io.BytesIO(RED_4), "result.png"), view=view, wait=True
    )
    assert isinstance(interaction.channel, discord.TextChannel)
    thread = await interaction.channel.create_thread(name=prompt[:50], message=result)
    step = await thread.send("step 1/2", file=discord.File(io.BytesIO(GREEN_8), "step1.png"))
    await step.edit(content="done", attachments=[discord.File(io.BytesIO(BLUE_16), "final.png")])
    bot.seen["imagine"] = (result.id, thread.id, step.id)


@app_commands.command(description="Pick a style")
async def style(interaction: discord.Interaction[StandInBot]) -> None:
    """Answer with a select menu."""
    await interaction.response.send_message("style: none", view=StyleView())


@app_commands.command(description="Repeat text")
async def echo(interaction: discord.Interaction[StandInBot], text: str) -> None:
    """Send the text back."""
    await interaction.response.send_message(text)


@echo.autocomplete("text")
async def echo_suggestions(
    interaction: discord.Interaction[StandInBot], current: str
) -> list[Choice[str]]:
    """Offer three suggestions, or thirty (more than Discord allows) for "many"."""
    count = 30 if current == "many" else 3
    return [Choice(name=f"{current}-{i}", value=f"{current}-{i}") for i in range(count)]


@app_commands.command(description="Answers only when allowed to")
async def slow(interaction: discord.Interaction[StandInBot]) -> None:
    """Wait for the test, then try to defer."""
    bot = interaction.client
    bot.seen["slow_started"] = True
    await bot.gate.wait()
    try:
        await interaction.response.defer()
    except discord.NotFound as error:
        bot.seen["slow_error"] = error.code


@app_commands.command(description="Follows up only when allowed to")
async def late(interaction: discord.Interaction[StandInBot]) -> None:
    """Defer, wait for the test, then try to follow up."""
    bot = interaction.client
    await interaction.response.defer()
    bot.seen["late_deferred"] = True
    await bot.gate.wait()
    try:
        await interaction.followup.send("finally")
    except discord.HTTPException as error:
        bot.seen["late_error"] = (error.status, error.code)


@app_commands.command(description="Exercise follow-ups")
async def steps(interaction: discord.Interaction[StandInBot]) -> None:
    """Defer, follow up twice, edit both, then send and delete an ephemeral follow-up."""
    await interaction.response.defer()
    first = await interaction.followup.send("one", wait=True)
    second = await interaction.followup.send("two", wait=True)
    original = await interaction.original_response()
    await interaction.edit_original_response(content="one, edited")
    await second.edit(content="two, edited")
    third = await interaction.followup.send("three", wait=True, ephemeral=True)
    await third.delete()
    interaction.client.seen["steps"] = (first.id, second.id, original.id, third.id)


class QuickReidentifyBot(StandInBot):
    """Skips discord.py's 5-second pause before a second IDENTIFY (a client-side courtesy)."""

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        """Identify at once."""


@contextlib.asynccontextmanager
async def running(fake: FakeDiscord, bot: StandInBot) -> AsyncIterator[StandInBot]:
    """Run a bot against the stand-in until it is ready, and close it afterwards."""
    task = asyncio.create_task(bot.start(fake.token))
    try:
        await fake.wait_for(lambda: bot.is_ready() or task.done())
        if task.done():
            task.result()  # start-up failed: raise its error here
        yield bot
    except BaseException:
        await bot.close()
        await asyncio.gather(task, return_exceptions=True)
        raise
    await bot.close()
    await task


@pytest.fixture
async def bot(fake: FakeDiscord, discord_errors: DiscordErrors) -> AsyncIterator[StandInBot]:
    """Run the bot against the stand-in until it is ready."""
    async with running(fake, StandInBot()) as ready:
        yield ready


def channel_id(fake: FakeDiscord) -> int:
    """Return the default channel's id."""
    return int(fake.channel["id"])


def bot_messages(fake: FakeDiscord, channel: int) -> list[dict[str, Any]]:
    """Return the bot's messages in a channel, oldest first."""
    return [m for m in fake.messages(channel) if m["author"]["id"] == fake.bot_user["id"]]


# ---------------------------------------------------------------------------
# Start-up
# ---------------------------------------------------------------------------


async def test_ready_fills_the_guild_cache_and_sync_stores_commands(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    guild = bot.get_guild(int(fake.guild["id"]))
    assert guild is not None and guild.name == "Test Server"
    assert guild.me is not None and guild.me.id == int(fake.bot_user["id"])
    assert guild.chunked
    assert bot.application_id == fake.application_id
    assert isinstance(bot.get_channel(channel_id(fake)), discord.TextChannel)
    assert {c.name for c in bot.synced} == {"imagine", "style", "echo", "slow", "late", "steps"}
    assert all(c.id for c in bot.synced)
    imagine_options = {
        o["name"]: o for o in next(c for c in fake.commands() if c["name"] == "imagine")["options"]
    }
    assert [o["type"] for o in imagine_options.values()] == [3, 4, 3, 11]
    assert (imagine_options["steps"]["min_value"], imagine_options["steps"]["max_value"]) == (1, 50)
    assert [c["value"] for c in imagine_options["style"]["choices"]] == ["photo", "anime"]
    assert fake.gateway_sessions == 1


# ---------------------------------------------------------------------------
# The main journey: slash, defer, follow-up with a file, thread, edits, downloads
# ---------------------------------------------------------------------------


async def test_slash_defer_followup_thread_and_attachment_edit(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    interaction = await fake.slash(
        "imagine",
        {"prompt": "a red fox", "steps": 30, "style": "anime"},
        attachments={"init_image": ("in.png", RED_4)},
    )
    result_id, thread_id, step_id = await fake.wait_for(lambda: bot.seen.get("imagine"))

    assert bot.seen["options"] == ("a red fox", 30, "anime")
    assert bot.seen["init_image"] == RED_4
    assert interaction.response_type == 5
    # The first follow-up after a defer fills in the loading message.
    assert interaction.followup_ids == [interaction.original_message_id] == [result_id]
    result = fake.message(result_id)
    assert result["flags"] == 0 and result["webhook_id"] == str(fake.application_id)
    assert [a["filename"] for a in result["attachments"]] == ["result.png"]
    assert (result["attachments"][0]["width"], result["attachments"][0]["content_type"]) == (
        4,
        "image/png",
    )
    assert [c["custom_id"] for row in result["components"] for c in row["components"]] == [
        "job:upscale:7",
        "job:edit:7",
        "job:swap:7",
    ]
    loading, filled = fake.versions(result_id)
    assert loading.flags & 128 and not filled.flags & 128

    # Thread id is the message id, and THREAD_CREATE put the thread in the bot's cache.
    assert thread_id == result_id
    assert [t["id"] for t in fake.threads(channel_id(fake))] == [str(thread_id)]
    assert isinstance(await fake.wait_for(lambda: bot.get_channel(thread_id)), discord.Thread)

    first, second = fake.versions(step_id)
    assert (first.content, [a.filename for a in first.attachments]) == ("step 1/2", ["step1.png"])
    assert (second.content, [a.filename for a in second.attachments]) == ("done", ["final.png"])
    assert first.at < second.at
    assert (first.attachments[0].data, second.attachments[0].data) == (GREEN_8, BLUE_16)
    current = fake.message(step_id)["attachments"]
    assert [(a["filename"], a["width"]) for a in current] == [("final.png", 16)]
    async with aiohttp.ClientSession() as http, http.get(current[0]["url"]) as response:
        assert response.status == 200 and await response.read() == BLUE_16

    # A user posts a file in the thread; the bot downloads it and replies with it.
    posted = await fake.user_message(thread_id, "make it blue", files=[("ref.png", GREEN_8)])
    reply = await fake.wait_for(
        lambda: next((m for m in bot_messages(fake, thread_id) if m.get("message_reference")), None)
    )
    assert bot.seen["downloaded"] == GREEN_8
    assert reply["message_reference"]["message_id"] == posted["id"]
    assert reply["content"] == f"read {len(GREEN_8)} bytes"
    assert fake.attachment_bytes(reply["attachments"][0]) == GREEN_8


async def test_edit_keeps_listed_attachments_and_adds_new_files(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    channel = bot.get_channel(channel_id(fake))
    assert isinstance(channel, discord.TextChannel)
    message = await channel.send(
        "two files",
        files=[
            discord.File(io.BytesIO(RED_4), "a.png"),
            discord.File(io.BytesIO(GREEN_8), "b.png"),
        ],
    )
    edited = await message.edit(
        attachments=[message.attachments[1], discord.File(io.BytesIO(BLUE_16), "c.png")]
    )
    assert [a.filename for a in edited.attachments] == ["b.png", "c.png"]
    assert edited.attachments[0].id == message.attachments[1].id
    assert [[a.filename for a in v.attachments] for v in fake.versions(message.id)] == [
        ["a.png", "b.png"],
        ["b.png", "c.png"],
    ]


async def test_followups_edits_and_deletes_through_the_interaction_webhook(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    interaction = await fake.slash("steps")
    first, second, original, third = await fake.wait_for(lambda: bot.seen.get("steps"))
    assert first == original == interaction.original_message_id
    assert interaction.followup_ids == [first, second, third]
    assert [v.content for v in fake.versions(first)] == ["", "one", "one, edited"]
    assert [v.content for v in fake.versions(second)] == ["two", "two, edited"]
    assert fake.versions(third)[0].flags & 64
    assert [m["content"] for m in fake.messages(channel_id(fake))] == ["one, edited", "two, edited"]


async def test_thread_lifecycle_events_reach_the_cache(fake: FakeDiscord, bot: StandInBot) -> None:
    channel = bot.get_channel(channel_id(fake))
    assert isinstance(channel, discord.TextChannel)
    thread = await channel.create_thread(name="private chat")
    assert thread.type is discord.ChannelType.private_thread
    cached = await fake.wait_for(lambda: bot.get_channel(thread.id))
    assert isinstance(cached, discord.Thread)
    note = await thread.send("bye")
    await note.delete()
    assert fake.messages(thread.id) == []
    await thread.edit(archived=True)
    assert fake.threads()[0]["thread_metadata"]["archived"]
    await fake.wait_for(lambda: bot.get_channel(thread.id) is None)
    await thread.delete()
    assert fake.threads() == []


async def test_rest_lookups_history_reactions_typing_and_dms(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    guild = bot.get_guild(int(fake.guild["id"]))
    channel = bot.get_channel(channel_id(fake))
    assert guild is not None and isinstance(channel, discord.TextChannel)
    assert (await bot.fetch_user(int(fake.user["id"]))).name == "alice"
    assert (await guild.fetch_member(int(fake.admin["id"]))).guild_permissions.manage_guild
    assert {r.name for r in await guild.fetch_roles()} >= {"@everyone", "Admin"}
    assert [c.name for c in await guild.fetch_channels()] == ["general"]
    assert (await bot.fetch_guild(guild.id)).name == "Test Server"
    assert (await bot.application_info()).id == fake.application_id
    assert [m.name for m in await guild.query_members("ali")] == ["alice"]
    first = await channel.send("first")
    async with channel.typing():
        second = await channel.send("second")
    await second.add_reaction("\N{THUMBS UP SIGN}")
    assert [m.content async for m in channel.history(limit=10)] == ["second", "first"]
    fetched = await channel.fetch_message(second.id)
    assert [str(r.emoji) for r in fetched.reactions] == ["\N{THUMBS UP SIGN}"]
    assert (await channel.fetch_message(first.id)).content == "first"
    dm = await (await bot.fetch_user(int(fake.user["id"]))).create_dm()
    await dm.send("hello in private")
    assert [m["content"] for m in fake.messages(dm.id)] == ["hello in private"]


# ---------------------------------------------------------------------------
# Components, modals, autocomplete
# ---------------------------------------------------------------------------


async def test_persistent_button_click(fake: FakeDiscord, bot: StandInBot) -> None:
    await fake.slash("imagine", {"prompt": "a fox"})
    result_id = (await fake.wait_for(lambda: bot.seen.get("imagine")))[0]
    click = await fake.click(result_id, "job:upscale:7")
    await fake.wait_for(lambda: click.original_message_id)
    assert click.response_type == 4
    reply = fake.message(click.original_message_id)
    assert reply["content"] == "upscaled 7"
    assert fake.attachment_bytes(reply["attachments"][0]) == BLUE_16
    assert reply["interaction_metadata"]["interacted_message_id"] == str(result_id)


async def test_deferred_update_then_edit_of_the_component_message(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    await fake.slash("imagine", {"prompt": "a fox"})
    result_id = (await fake.wait_for(lambda: bot.seen.get("imagine")))[0]
    click = await fake.click(result_id, "job:swap:7")
    await fake.wait_for(lambda: fake.message(result_id)["content"] == "swapped")
    assert (click.response_type, click.original_message_id) == (6, result_id)


async def test_button_opens_modal_and_ephemeral_reply_is_not_dispatched(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    await fake.slash("imagine", {"prompt": "a fox"})
    result_id = (await fake.wait_for(lambda: bot.seen.get("imagine")))[0]
    click = await fake.click(result_id, "job:edit:7")
    submit = await fake.submit_modal(click, {"edit:instruction": "make it blue"})
    assert (
        click.response_type == 9
        and click.modal is not None
        and click.modal["custom_id"] == "edit:7"
    )
    await fake.wait_for(lambda: submit.original_message_id)
    reply = fake.message(submit.original_message_id)
    assert reply["content"] == "editing: make it blue"
    assert reply["flags"] & 64
    session = next(iter(fake.gateway.sessions.values()))
    assert all(frame["d"].get("id") != reply["id"] for _, frame in session.log)


async def test_select_menu_updates_its_message(fake: FakeDiscord, bot: StandInBot) -> None:
    command = await fake.slash("style")
    await fake.wait_for(lambda: command.original_message_id)
    choice = await fake.select(command.original_message_id, "style:pick", ["anime"])
    await fake.wait_for(lambda: choice.response_type)
    assert choice.response_type == 7
    assert fake.message(command.original_message_id)["content"] == "style: anime"
    with pytest.raises(ValueError, match="no options"):
        await fake.select(command.original_message_id, "style:pick", ["cubist"])


async def test_autocomplete_choices_and_the_25_limit(
    fake: FakeDiscord, bot: StandInBot, discord_errors: DiscordErrors
) -> None:
    choices = await fake.autocomplete("echo", {"text": "cat"}, "text")
    assert [c["value"] for c in choices] == ["cat-0", "cat-1", "cat-2"]
    discord_errors.allow("Ignoring exception in autocomplete")
    with pytest.raises(InteractionRefused) as refused:
        await fake.autocomplete("echo", {"text": "many"}, "text")
    assert refused.value.interaction.error is not None
    assert refused.value.interaction.error["code"] == 50035


# ---------------------------------------------------------------------------
# Rate limits and server errors
# ---------------------------------------------------------------------------


async def test_429_is_retried(fake: FakeDiscord, bot: StandInBot) -> None:
    channel = bot.get_channel(channel_id(fake))
    assert isinstance(channel, discord.TextChannel)
    fake.inject_error("POST", r"/channels/\d+/messages$", 429, retry_after=0.05)
    message = await channel.send("hello")
    posts = [r.status for r in fake.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert posts == [429, 200]
    assert fake.message(message.id)["content"] == "hello"


async def test_5xx_is_retried(fake: FakeDiscord, bot: StandInBot) -> None:
    channel = bot.get_channel(channel_id(fake))
    assert isinstance(channel, discord.TextChannel)
    fake.inject_error("POST", r"/channels/\d+/messages$", 502)
    await channel.send("hello")
    posts = [r.status for r in fake.requests if r.method == "POST" and r.path.endswith("/messages")]
    assert posts == [502, 200]


# ---------------------------------------------------------------------------
# Rules Discord enforces
# ---------------------------------------------------------------------------


async def test_initial_response_after_3_seconds_is_unknown_interaction(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    interaction = await fake.slash("slow")
    await fake.wait_for(lambda: bot.seen.get("slow_started"))
    fake.age_interaction(interaction.id, 3.5)
    bot.gate.set()
    assert await fake.wait_for(lambda: bot.seen.get("slow_error")) == 10062
    assert interaction.response_type is None
    assert interaction.error is not None and (
        interaction.error["status"],
        interaction.error["code"],
    ) == (404, 10062)


async def test_interaction_token_expires_after_15_minutes(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    interaction = await fake.slash("late")
    await fake.wait_for(lambda: bot.seen.get("late_deferred"))
    fake.age_interaction(interaction.token, 15 * 60 + 1)
    bot.gate.set()
    assert await fake.wait_for(lambda: bot.seen.get("late_error")) == (401, 50027)
    assert interaction.followup_ids == []


async def test_content_over_2000_characters_is_refused(fake: FakeDiscord, bot: StandInBot) -> None:
    channel = bot.get_channel(channel_id(fake))
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as refused:
        await channel.send("x" * 2001)
    assert (refused.value.status, refused.value.code) == (400, 50035)
    await channel.send("x" * 2000)


async def test_upload_over_the_guild_limit_is_413(fake: FakeDiscord, bot: StandInBot) -> None:
    small = fake.add_guild("Small", upload_limit=1024)
    channel_payload = fake.guild_channels(small["id"])[0]
    channel = await fake.wait_for(lambda: bot.get_channel(int(channel_payload["id"])))
    assert isinstance(channel, discord.TextChannel)
    with pytest.raises(discord.HTTPException) as refused:
        await channel.send(file=discord.File(io.BytesIO(b"\0" * 2048), "big.bin"))
    assert (refused.value.status, refused.value.code) == (413, 40005)
    await channel.send(file=discord.File(io.BytesIO(b"\0" * 512), "small.bin"))


async def test_editing_a_message_older_than_an_hour_is_refused(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    channel = bot.get_channel(channel_id(fake))
    assert isinstance(channel, discord.TextChannel)
    message = await channel.send("old news")
    fake.age_message(message.id, 3601)
    with pytest.raises(discord.HTTPException) as refused:
        await message.edit(content="new news")
    assert (refused.value.status, refused.value.code) == (400, 30046)
    assert [v.content for v in fake.versions(message.id)] == ["old news"]


async def test_six_buttons_in_a_row_are_refused(fake: FakeDiscord, bot: StandInBot) -> None:
    buttons = [{"type": 2, "style": 1, "label": str(i), "custom_id": f"b{i}"} for i in range(6)]
    route = discord.http.Route(
        "POST", "/channels/{channel_id}/messages", channel_id=channel_id(fake)
    )
    with pytest.raises(discord.HTTPException) as refused:
        await bot.http.request(
            route, json={"content": "row", "components": [{"type": 1, "components": buttons}]}
        )
    assert (refused.value.status, refused.value.code) == (400, 50035)
    await bot.http.request(
        route, json={"content": "row", "components": [{"type": 1, "components": buttons[:5]}]}
    )


async def test_thread_creation_without_permission_is_403(
    fake: FakeDiscord, bot: StandInBot
) -> None:
    channel = bot.get_channel(channel_id(fake))
    assert isinstance(channel, discord.TextChannel)
    message = await channel.send("start here")
    fake.deny(channel.id, "create_threads")
    await fake.wait_for(lambda: not channel.permissions_for(channel.guild.me).create_public_threads)
    with pytest.raises(discord.Forbidden) as refused:
        await channel.create_thread(name="nope", message=message)
    assert refused.value.code == 50013
    assert fake.threads() == []


# ---------------------------------------------------------------------------
# Gateway: resume, invalid session, identify and intents
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["drop", "op7"])
async def test_resume_replays_missed_events(
    fake_any_framing: FakeDiscord, discord_errors: DiscordErrors, how: str
) -> None:
    fake = fake_any_framing
    async with running(fake, StandInBot()) as bot:
        assert any(c.compressor is not None for c in fake.gateway.connections) == fake.zlib
        if how == "drop":
            await fake.drop_gateway()
            # Sent while the socket is down: it must arrive through the RESUME replay.
            await fake.user_message(channel_id(fake), "ping")
        else:
            await fake.force_reconnect()
        await fake.wait_for(lambda: bot.resumed == 1)
        assert (fake.resumes, fake.gateway_sessions) == (1, 1)
        if how == "op7":
            await fake.user_message(channel_id(fake), "ping")
        await fake.wait_for(
            lambda: any(m["content"] == "pong" for m in bot_messages(fake, channel_id(fake)))
        )
        interaction = await fake.slash("echo", {"text": "still here"})
        await fake.wait_for(lambda: interaction.original_message_id)


async def test_invalid_session_makes_the_client_identify_again(
    fake: FakeDiscord, discord_errors: DiscordErrors
) -> None:
    async with running(fake, QuickReidentifyBot()) as bot:
        await fake.drop_gateway(resumable=False)
        await fake.wait_for(lambda: fake.gateway_sessions == 2 and fake.gateway.connections)
        assert (fake.gateway.invalid_sessions, fake.resumes) == (1, 0)
        await fake.user_message(channel_id(fake), "ping")
        await fake.wait_for(
            lambda: any(m["content"] == "pong" for m in bot_messages(fake, channel_id(fake)))
        )
        assert bot.is_ready()


async def test_identify_with_a_wrong_token_is_closed_with_4004(fake: FakeDiscord) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.ws_connect(fake.gateway_url + "?v=10&encoding=json") as ws,
    ):
        hello = await ws.receive_json()
        assert hello["op"] == 10
        await ws.send_json({"op": 2, "d": {"token": "wrong", "intents": 0, "properties": {}}})
        closing = await ws.receive()
        assert closing.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.close_code == 4004


async def test_unapproved_privileged_intent_is_4014(discord_errors: DiscordErrors) -> None:
    async with serving(FakeDiscord(privileged_intents=["members"])) as fake:
        bot = StandInBot()
        try:
            with pytest.raises(discord.PrivilegedIntentsRequired):
                await asyncio.wait_for(bot.start(fake.token), 10)
        finally:
            await bot.close()


async def test_without_message_content_intent_content_is_blanked(
    fake: FakeDiscord, discord_errors: DiscordErrors
) -> None:
    async with running(fake, StandInBot(message_content=False)) as bot:
        await fake.user_message(channel_id(fake), "secret", files=[("a.png", RED_4)])
        message = await fake.wait_for(lambda: bot.received and bot.received[0])
        assert (message.content, message.attachments) == ("", [])


# ---------------------------------------------------------------------------
# DMs
# ---------------------------------------------------------------------------


async def test_dm_slash_and_dm_message(fake: FakeDiscord, bot: StandInBot) -> None:
    interaction = await fake.slash("echo", {"text": "hello there"}, dm=True)
    await fake.wait_for(lambda: interaction.original_message_id)
    assert (
        "guild_id" not in interaction.payload
        and interaction.payload["user"]["id"] == fake.user["id"]
    )
    dm = fake.dm_channel(fake.user)
    assert [m["content"] for m in fake.messages(dm["id"])] == ["hello there"]

    posted = await fake.user_message(dm["id"], "ping")
    assert "guild_id" not in posted
    await fake.wait_for(
        lambda: any(m["content"] == "pong" for m in bot_messages(fake, int(dm["id"])))
    )
    assert isinstance(bot.received[-1].channel, discord.DMChannel)


# ---------------------------------------------------------------------------
# The stand-in's own HTTP surface, without discord.py
# ---------------------------------------------------------------------------


async def test_rest_plumbing_auth_headers_and_unknown_routes(fake: FakeDiscord) -> None:
    auth = {"Authorization": f"Bot {fake.token}"}
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{fake.api_base}/users/@me") as response:
            assert response.status == 401
        async with http.get(f"{fake.api_base}/users/@me", headers=auth) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "application/json"
            assert int(response.headers["X-RateLimit-Remaining"]) > 0
            assert {
                "X-RateLimit-Limit",
                "X-RateLimit-Reset",
                "X-RateLimit-Reset-After",
                "X-RateLimit-Bucket",
            } <= set(response.headers)
        async with http.get(
            f"{fake.api_base.replace('v10', 'v9')}/no/such/route", headers=auth
        ) as response:
            assert response.status == 404
    assert fake.unhandled == ["GET /no/such/route"]
    fake.unhandled.clear()
    with pytest.raises(TimeoutError, match=r"wait_for timed out after 0\.05s"):
        await fake.wait_for(lambda: fake.unhandled, timeout=0.05)


async def test_callback_double_ack_and_with_response(fake: FakeDiscord) -> None:
    fake.store_commands([{"name": "ping", "description": "Ping", "type": 1}], None)
    interaction: Interaction = await fake.slash("ping")
    url = f"{fake.api_base}/interactions/{interaction.id}/{interaction.token}/callback"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            url, params={"with_response": "1"}, json={"type": 4, "data": {"content": "pong"}}
        ) as response:
            assert response.status == 200
            body = json.loads(await response.read())
        assert body["resource"]["message"]["content"] == "pong"
        assert body["interaction"]["response_message_id"] == str(interaction.original_message_id)
        async with http.post(url, json={"type": 4, "data": {"content": "again"}}) as response:
            assert (response.status, (await response.json())["code"]) == (400, 40060)
    assert interaction.error is not None and interaction.error["code"] == 40060
