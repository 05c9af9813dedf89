"""The storage interface: the `Store` protocol and the frozen records it returns.

Times are unix seconds (UTC) as floats everywhere. The store stamps them from its clock,
except a Conversation's, which the caller supplies to `create_conversation`.
Discord snowflakes are plain ints (they need 64 bits). Dict fields hold JSON-compatible values.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Protocol, Self


class StorageError(Exception):
    """A storage problem the caller cannot fix by retrying with other arguments."""


class SchemaVersionError(StorageError):
    """The database was migrated by a newer version of the bot than this one."""


class JobStatus(StrEnum):
    """Where a job is in its life; `Job.status` holds one of these values.

    queued -> running -> saved -> done, or queued/running -> failed | cancelled | interrupted.
    Queued and running jobs hold a reservation of their estimated cost; a saved job's image,
    turn and usage are in the database and only the posting is left (a restart posts it).
    """

    QUEUED = "queued"
    RUNNING = "running"
    SAVED = "saved"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"
    CANCELLED = "cancelled"


# The statuses `finish_job` accepts, and the ones `requeue_job` can retry.
FINISHED_JOB_STATUSES = frozenset(
    {JobStatus.DONE, JobStatus.FAILED, JobStatus.INTERRUPTED, JobStatus.CANCELLED}
)
RETRYABLE_JOB_STATUSES = frozenset({JobStatus.FAILED, JobStatus.INTERRUPTED})
# Jobs that hold a reservation and count against the pending cap.
ACTIVE_JOB_STATUSES = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


class TurnStatus(StrEnum):
    """How a turn ended; `latest_turn` only considers completed turns."""

    COMPLETED = "completed"
    FAILED = "failed"


# The largest row id a backend can hold (a signed 64-bit integer): a crafted button id past it
# names nothing, and SQLite would refuse even to look it up.
MAX_ROW_ID = 2**63 - 1

# `delete_user_data` keeps usage rows for the server's budget, re-attributed to this id.
ANONYMOUS_USER_ID = 0


@dataclass(frozen=True, slots=True)
class Conversation:
    """One Discord thread (or DM channel) and the OpenAI response it continues from."""

    channel_id: int
    guild_id: int | None
    owner_id: int
    parent_channel_id: int | None
    latest_response_id: str | None
    latest_message_id: int | None
    engine: str
    options: dict[str, object]
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class NewTurn:
    """A turn to record; the store assigns `id` and `created_at`."""

    channel_id: int
    guild_id: int | None
    user_id: int
    prompt: str
    engine: str
    model: str
    message_id: int | None = None
    response_id: str | None = None
    parent_response_id: str | None = None
    revised_prompt: str | None = None
    options: dict[str, object] = field(default_factory=dict)
    usage: dict[str, object] = field(default_factory=dict)
    cost_usd: float = 0.0
    status: str = TurnStatus.COMPLETED
    image_url: str | None = None
    result: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Turn:
    """One generated image as posted, with the response id that produced it."""

    id: int
    channel_id: int
    guild_id: int | None
    user_id: int
    message_id: int | None
    response_id: str | None
    parent_response_id: str | None
    prompt: str
    revised_prompt: str | None
    options: dict[str, object]
    engine: str
    model: str
    usage: dict[str, object]
    cost_usd: float
    status: str
    image_url: str | None
    created_at: float
    result: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class NewJob:
    """A request to put in the durable queue; the store assigns id, status and times."""

    kind: str
    guild_id: int | None
    channel_id: int
    user_id: int
    payload: dict[str, object]
    locale: str
    progress_message_id: int | None = None
    # The estimated cost, held against the budgets until the job ends.
    reserved_usd: float = 0.0
    reserved_images: int = 0
    # The worker (bot process) whose queue holds the job; None: any live worker may adopt it.
    worker_id: str | None = None
    # Hand the job to the shared queue (a backend that has one) in the admission transaction;
    # False when `place_job` will, once the channel it runs in is known.
    dispatch: bool = True


@dataclass(frozen=True, slots=True)
class Job:
    """One accepted request in the durable queue."""

    id: int
    kind: str
    status: str
    guild_id: int | None
    channel_id: int
    user_id: int
    payload: dict[str, object]
    locale: str
    progress_message_id: int | None
    attempts: int
    error: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    reserved_usd: float = 0.0
    reserved_images: int = 0
    # The OpenAI response a running job streams (recorded as soon as OpenAI names it, so a
    # restart can fetch a finished image instead of paying for it again), and the turn its
    # image was saved as.
    response_id: str | None = None
    turn_id: int | None = None
    # The worker (bot process) whose queue holds the job, or that runs or posts it.
    worker_id: str | None = None
    # The conversation head (response id) when the job started: its image moves the head only
    # if the head is still this one, else its turn is a branch (see `save_result`).
    base_response_id: str | None = None

    @property
    def response_ids(self) -> tuple[str, ...]:
        """Every response the job streams: several for a job that draws several images at once
        (`add_job_response`), one otherwise."""
        return tuple(self.response_id.split()) if self.response_id else ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NewImage:
    """A finished image to save with its turn and its usage (see `Store.save_results`)."""

    turn: NewTurn
    image: bytes
    image_format: str
    usage: NewUsageEntry


@dataclass(frozen=True, slots=True)
class Orphans:
    """The unfinished jobs a worker took over from workers that stopped saying they are alive.

    They now belong to the adopting worker and are otherwise as they were left: `running` ones
    still running (the adopter finishes a response OpenAI completed anyway, or interrupts
    them), `saved` ones waiting to be posted, `queued` ones waiting to run, each oldest first.
    """

    workers: tuple[str, ...] = ()
    running: tuple[Job, ...] = ()
    saved: tuple[Job, ...] = ()
    queued: tuple[Job, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class NewUsageEntry:
    """What one request cost; the store assigns `id` and `at`."""

    guild_id: int | None
    user_id: int
    model: str
    engine: str
    channel_id: int | None = None
    response_id: str | None = None
    images: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    image_input_tokens: int = 0
    image_output_tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class UsageEntry:
    """One row of the usage ledger."""

    id: int
    at: float
    guild_id: int | None
    user_id: int
    channel_id: int | None
    response_id: str | None
    model: str
    engine: str
    images: int
    input_tokens: int
    output_tokens: int
    image_input_tokens: int
    image_output_tokens: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class UsageTotals:
    """Usage summed over a period."""

    images: int
    input_tokens: int
    output_tokens: int
    cost_usd: float
    # The image model's tokens (input images and text, the drawn image), billed apart from the
    # mainline model's input and output tokens.
    image_tokens: int = 0


@dataclass(frozen=True, slots=True)
class Window:
    """A period of the usage ledger: `since` <= at < `until`."""

    since: float
    until: float


@dataclass(frozen=True, slots=True)
class Occupancy:
    """What already counts against the limits when a job asks to be admitted.

    Spent usage inside the windows plus the reservations of every queued or running job.
    """

    user_pending: int
    user_images: int
    user_usd: float
    guild_images: int
    guild_usd: float


# Decides, inside the admission transaction, whether one more job fits; raises to refuse.
AdmissionGate = Callable[[Occupancy], None]


@dataclass(frozen=True, slots=True)
class DayUsage:
    """Usage of one UTC day (`day` is 'YYYY-MM-DD')."""

    day: str
    images: int
    cost_usd: float


@dataclass(frozen=True, slots=True)
class UserUsage:
    """Usage of one user over a period."""

    user_id: int
    images: int
    cost_usd: float


class Store(Protocol):
    """Everything the bot keeps between restarts. Every backend passes the contract tests."""

    # Lifecycle

    async def setup(self) -> None:
        """Prepare the database (connection settings, migrations); safe to call again."""
        ...

    async def close(self) -> None:
        """Release the store's resources; the store is unusable afterwards."""
        ...

    async def __aenter__(self) -> Self: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    # Conversations

    async def get_conversation(self, channel_id: int) -> Conversation | None:
        """Return the conversation of a thread or DM channel, or None."""
        ...

    async def create_conversation(self, conversation: Conversation) -> None:
        """Insert a conversation, or replace it (keeping its original `created_at`)."""
        ...

    async def advance_conversation(
        self, channel_id: int, *, response_id: str, message_id: int | None
    ) -> bool:
        """Point a conversation at its newest response; return False if there is none."""
        ...

    # Turns

    async def add_turn(self, turn: NewTurn) -> Turn:
        """Record a turn and return it with its id and creation time."""
        ...

    async def get_turn(self, turn_id: int) -> Turn | None:
        """Return a turn by id, or None."""
        ...

    async def get_turn_by_message(self, message_id: int) -> Turn | None:
        """Return the newest turn posted as this Discord message, or None."""
        ...

    async def get_turn_by_response(self, response_id: str) -> Turn | None:
        """Return the newest turn produced by this OpenAI response, or None."""
        ...

    async def latest_turn(self, channel_id: int, *, with_image: bool = True) -> Turn | None:
        """Return the channel's newest completed turn (with an image unless told otherwise)."""
        ...

    async def set_turn_message(self, turn_id: int, message_id: int, image_url: str | None) -> bool:
        """Record the message (and attachment URL) a turn was posted as; False if no such turn."""
        ...

    async def list_turns(self, channel_id: int, limit: int = 50) -> list[Turn]:
        """Return a channel's most recent turns, newest first."""
        ...

    # Jobs

    async def get_job(self, job_id: int) -> Job | None:
        """Return a job by id, or None."""
        ...

    async def start_job(self, job_id: int, worker_id: str | None = None) -> Job | None:
        """Move a queued job to running, count the attempt, record the worker that runs it and
        the conversation head it starts from (`base_response_id`), in one statement; return the
        running job, or None if it was not queued (another worker claimed it first)."""
        ...

    async def finish_job(
        self,
        job_id: int,
        status: str,
        error: str | None = None,
        *,
        usage: NewUsageEntry | None = None,
        queued_only: bool = False,
    ) -> bool:
        """End a queued or running job with a final status, releasing its reservation; False if
        it had already ended. `usage` (what OpenAI billed for a turn that made no image) is
        charged in the same transaction. With `queued_only`, a job that started meanwhile (in
        any process) is left alone and False returned: only its runner may end it.
        """
        ...

    async def set_job_progress_message(self, job_id: int, message_id: int) -> bool:
        """Remember the message that shows a job's progress; False if no such job."""
        ...

    # Workers (bot processes sharing the database)

    async def register_worker(self, worker_id: str) -> None:
        """Record that a worker starts now (a restart under the same id starts it again)."""
        ...

    async def heartbeat_worker(self, worker_id: str) -> bool:
        """Record that a worker is alive now; False if it is not registered (any more)."""
        ...

    async def adopt_orphans(
        self, worker_id: str, *, stale_after: float, own: bool = False
    ) -> Orphans:
        """Take over, in one transaction, the queued, running and saved jobs of every other
        worker not seen for `stale_after` seconds, and of none (a missing or unknown worker),
        and forget those workers. With `own`, the caller's own unfinished jobs are included
        (at start-up they are what its previous run left behind). Two workers adopting at once
        never both get the same job.
        """
        ...

    async def admit_job(
        self,
        job: NewJob,
        *,
        user_window: Window,
        guild_window: Window,
        gate: AdmissionGate,
    ) -> Job:
        """Add a queued job with its reservation, atomically with the limit check.

        Reads the `Occupancy` of the job's user (in `user_window`) and server (in
        `guild_window`), calls `gate` with it (which raises to refuse) and inserts the job, all
        in one transaction, so concurrent admissions cannot both take the last place. On a
        backend with a shared queue, a job with `dispatch` is handed to it in that transaction.
        """
        ...

    async def readmit_job(
        self,
        job_id: int,
        *,
        reserved_usd: float,
        reserved_images: int,
        user_window: Window,
        guild_window: Window,
        gate: AdmissionGate,
        worker_id: str | None = None,
    ) -> Job | None:
        """Put a failed or interrupted job back at the end of the queue (and, on a backend with
        a shared queue, hand it to it), through the same gate, in the queue of `worker_id`.

        None if the job is not retryable (a second click on Retry finds it queued).
        """
        ...

    async def place_job(
        self, job_id: int, channel_id: int, conversation: Conversation | None
    ) -> bool:
        """Move a queued job to the channel it will be shown in, open that channel's
        conversation (replacing one there) and, on a backend with a shared queue, hand the job
        to it, in one transaction; False if the job is not queued.
        """
        ...

    async def dispatch_job(self, job_id: int) -> bool:
        """Hand a queued job to the shared queue; False if the job is not queued or the backend
        has none (SQLite: one process queues its jobs in memory)."""
        ...

    async def set_job_response(self, job_id: int, response_id: str) -> bool:
        """Remember the OpenAI response a running job streams; False if it is not running."""
        ...

    async def add_job_response(self, job_id: int, response_id: str) -> bool:
        """Remember one more OpenAI response a running job streams (a job that draws several
        images at once, one response each); `Job.response_ids` lists them. False if the job is
        not running.
        """
        ...

    async def save_result(
        self,
        job_id: int | None,
        turn: NewTurn,
        *,
        image: bytes,
        image_format: str,
        usage: NewUsageEntry,
        advance: bool,
    ) -> Turn:
        """Save a finished image in one transaction: its bytes, its turn, its usage, the
        conversation head (when `advance`) and the job (running -> saved, its reservation
        released). Raises StorageError when the job is no longer running.

        The head moves by compare-and-set: for a job, only if it is still the job's
        `base_response_id` (without a job, unconditionally). When the conversation has moved on
        meanwhile (a late job: adopted after its process died, or racing another process), the
        turn is saved as a branch, the head is left alone, and the returned turn's
        `result["branched"]` is True.
        """
        ...

    async def save_results(
        self,
        job_id: int,
        images: Sequence[NewImage],
        *,
        billed: Sequence[NewUsageEntry] = (),
        advance: bool,
    ) -> list[Turn]:
        """Save every image of a job that draws several at once in one transaction: their
        bytes, turns and usage, the usage of `billed` (tokens charged for drawings that made no
        image), the conversation head (when `advance`: the first image) and the job (running ->
        saved, `turn_id` the first image's turn, its reservation released). Returns the turns in
        the order given. Raises StorageError when the job is no longer running, ValueError when
        `images` is empty.
        """
        ...

    async def job_turns(self, job_id: int) -> list[Turn]:
        """Return the turns a job saved, in the order it saved them."""
        ...

    async def mark_posted(
        self, job_id: int, turn_id: int, message_id: int | None, image_url: str | None
    ) -> bool:
        """Record where a saved job's image was posted and end the job (saved -> done)."""
        ...

    async def saved_jobs(self) -> list[Job]:
        """Return the jobs whose image is saved but not yet posted, oldest first."""
        ...

    async def get_turn_image(self, turn_id: int) -> tuple[bytes, str] | None:
        """Return the saved image (bytes, format) of a turn, or None."""
        ...

    async def delete_turn_rolling_back(self, turn_id: int) -> bool:
        """Delete a turn and its image; a conversation whose head it was goes back to its parent."""
        ...

    async def count_active_jobs(self, user_id: int | None = None) -> int:
        """Count queued and running jobs, of one user or of everyone."""
        ...

    # Uploaded-file cache

    async def get_uploaded_file(self, sha256: str) -> str | None:
        """Return the Files API id cached for this content hash, or None."""
        ...

    async def put_uploaded_file(self, sha256: str, file_id: str, bytes: int) -> None:
        """Cache the Files API id of an upload under its content hash."""
        ...

    # Usage ledger

    async def record_usage(self, entry: NewUsageEntry) -> None:
        """Append what one request cost to the ledger."""
        ...

    async def usage_totals(
        self,
        *,
        since: float,
        until: float | None = None,
        user_id: int | None = None,
        guild_id: int | None = None,
    ) -> UsageTotals:
        """Sum usage in [since, until), optionally for one user and/or one server."""
        ...

    async def usage_by_day(
        self, *, since: float, guild_id: int | None = None, user_id: int | None = None
    ) -> list[DayUsage]:
        """Sum usage per UTC day since a time, oldest day first."""
        ...

    async def usage_by_user(self, *, since: float, guild_id: int | None) -> list[UserUsage]:
        """Sum usage per user since a time (one server, or all if None), costliest first."""
        ...

    async def list_usage(
        self,
        *,
        since: float,
        user_id: int | None = None,
        guild_id: int | None = None,
        limit: int = 100,
    ) -> list[UsageEntry]:
        """Return ledger rows since a time, newest first."""
        ...

    # Settings

    async def get_user_settings(self, user_id: int) -> dict[str, object]:
        """Return a user's saved defaults ({} when none)."""
        ...

    async def update_user_settings(
        self, user_id: int, change: Callable[[dict[str, object]], dict[str, object]]
    ) -> dict[str, object]:
        """Replace a user's saved defaults by `change(current)`, atomically: an update made
        meanwhile by another task or process is never lost. Returns what was saved; an exception
        from `change` leaves the defaults as they were."""
        ...

    async def get_guild_config(self, guild_id: int) -> dict[str, object]:
        """Return a server's configuration ({} when none)."""
        ...

    async def update_guild_config(
        self, guild_id: int, change: Callable[[dict[str, object]], dict[str, object]]
    ) -> dict[str, object]:
        """Replace a server's configuration by `change(current)`, atomically (as
        `update_user_settings`)."""
        ...

    # Privacy

    async def delete_user_data(self, user_id: int) -> int:
        """Erase what the bot keeps about a user; return the number of rows affected."""
        ...
