"""What every SQL backend shares: column lists, JSON columns and rows mapped to records."""

from __future__ import annotations

import json
import operator
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from storage.base import (
    ACTIVE_JOB_STATUSES,
    Conversation,
    Job,
    JobStatus,
    Orphans,
    StorageError,
    Turn,
    UsageEntry,
)


class Row(Protocol):
    """A database row read by position (sqlite3.Row, a psycopg tuple)."""

    def __getitem__(self, index: int, /) -> Any: ...


CONVERSATION_COLUMNS = (
    "channel_id, guild_id, owner_id, parent_channel_id, latest_response_id, latest_message_id, "
    "engine, options, created_at, updated_at"
)
TURN_COLUMNS = (
    "id, channel_id, guild_id, user_id, message_id, response_id, parent_response_id, prompt, "
    "revised_prompt, options, engine, model, usage, cost_usd, status, image_url, created_at, result"
)
JOB_COLUMNS = (
    "id, kind, status, guild_id, channel_id, user_id, payload, locale, progress_message_id, "
    "attempts, error, created_at, started_at, finished_at, reserved_usd, reserved_images, "
    "response_id, turn_id, worker_id, base_response_id"
)
USAGE_COLUMNS = (
    "id, at, guild_id, user_id, channel_id, response_id, model, engine, images, input_tokens, "
    "output_tokens, image_input_tokens, image_output_tokens, cost_usd"
)


def dump_json(value: dict[str, object]) -> str:
    """Serialize a dict column; raises TypeError for values JSON cannot hold."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def load_json(text: str | None) -> dict[str, object]:
    """Parse a dict column."""
    if not text:
        return {}
    value = json.loads(text)
    if not isinstance(value, dict):
        raise StorageError(f"expected a JSON object in the database, found {type(value).__name__}")
    return value


def utc_day(at: float) -> str:
    """Return the UTC date of a unix time as 'YYYY-MM-DD'."""
    return datetime.fromtimestamp(at, tz=UTC).strftime("%Y-%m-%d")


# Rows are read by position, so any tuple-like row_factory works.


def conversation_from_row(row: Row) -> Conversation:
    return Conversation(
        channel_id=row[0],
        guild_id=row[1],
        owner_id=row[2],
        parent_channel_id=row[3],
        latest_response_id=row[4],
        latest_message_id=row[5],
        engine=row[6],
        options=load_json(row[7]),
        created_at=row[8],
        updated_at=row[9],
    )


def turn_from_row(row: Row) -> Turn:
    return Turn(
        id=row[0],
        channel_id=row[1],
        guild_id=row[2],
        user_id=row[3],
        message_id=row[4],
        response_id=row[5],
        parent_response_id=row[6],
        prompt=row[7],
        revised_prompt=row[8],
        options=load_json(row[9]),
        engine=row[10],
        model=row[11],
        usage=load_json(row[12]),
        cost_usd=row[13],
        status=row[14],
        image_url=row[15],
        created_at=row[16],
        result=load_json(row[17]),
    )


def job_from_row(row: Row) -> Job:
    return Job(
        id=row[0],
        kind=row[1],
        status=row[2],
        guild_id=row[3],
        channel_id=row[4],
        user_id=row[5],
        payload=load_json(row[6]),
        locale=row[7],
        progress_message_id=row[8],
        attempts=row[9],
        error=row[10],
        created_at=row[11],
        started_at=row[12],
        finished_at=row[13],
        reserved_usd=row[14],
        reserved_images=row[15],
        response_id=row[16],
        turn_id=row[17],
        worker_id=row[18],
        base_response_id=row[19],
    )


def orphans_from(workers: Sequence[str], jobs: Sequence[Job]) -> Orphans:
    """Sort adopted jobs (given in queue order) by status: running and saved ones by id."""

    def of(status: JobStatus) -> tuple[Job, ...]:
        return tuple(job for job in jobs if job.status == status.value)

    by_id = operator.attrgetter("id")
    return Orphans(
        workers=tuple(workers),
        running=tuple(sorted(of(JobStatus.RUNNING), key=by_id)),
        saved=tuple(sorted(of(JobStatus.SAVED), key=by_id)),
        queued=of(JobStatus.QUEUED),
    )


def usage_entry_from_row(row: Row) -> UsageEntry:
    return UsageEntry(
        id=row[0],
        at=row[1],
        guild_id=row[2],
        user_id=row[3],
        channel_id=row[4],
        response_id=row[5],
        model=row[6],
        engine=row[7],
        images=row[8],
        input_tokens=row[9],
        output_tokens=row[10],
        image_input_tokens=row[11],
        image_output_tokens=row[12],
        cost_usd=row[13],
    )


ACTIVE = tuple(sorted(status.value for status in ACTIVE_JOB_STATUSES))
