"""Which job, thread and OpenAI request a log line belongs to, carried in context variables.

A job runs in its own task, so the ids bound when it starts (and the OpenAI request id bound
when OpenAI answers) stay with every line logged while it runs, and with the task that saves
and posts its image; `ContextFilter` writes them at the end of each line as key=value pairs.
"""

from __future__ import annotations

import logging
from contextvars import ContextVar

__all__ = ["ContextFilter", "bind_job", "bind_openai_request", "current"]

_job: ContextVar[int | None] = ContextVar("log_job", default=None)
_thread: ContextVar[int | None] = ContextVar("log_thread", default=None)
_request: ContextVar[str | None] = ContextVar("log_openai_request", default=None)


def bind_job(job_id: int, thread_id: int) -> None:
    """Lines logged from here on in this task belong to `job_id` in `thread_id`."""
    _job.set(job_id)
    _thread.set(thread_id)
    _request.set(None)


def bind_openai_request(request_id: str | None) -> None:
    """Remember the id OpenAI gave the current request (its `x-request-id`)."""
    if request_id:
        _request.set(str(request_id)[:100])


def current() -> dict[str, object]:
    """The ids bound in this context (only those that are set)."""
    values = {"job": _job.get(), "thread": _thread.get(), "openai_request": _request.get()}
    return {k: v for k, v in values.items() if v is not None}


class ContextFilter(logging.Filter):
    """Sets `record.context` to ` job=.. thread=.. openai_request=..` (empty outside a job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ids = current()
        for key, value in ids.items():
            setattr(record, f"ctx_{key}", value)
        record.context = "".join(f" {k}={v}" for k, v in ids.items())
        return True
