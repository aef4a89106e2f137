"""Structured logs: who a log line is about (cluster, member, job, task), and a JSON format.

The member's identity is process-wide (a node is one member; its listener and pool threads
log for it too), set once by the node; job and task are context variables, set by the node
around a task's execution in the pool thread (see `task_context`). ContextFilter puts them on
every record, so the plain format is unchanged and the JSON format names them when known.

No Django imports: the settings module names these classes in LOGGING.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from datetime import UTC, datetime

FIELDS = ("cluster", "member", "job", "task")
FORMATS = ("plain", "json")

_process: dict[str, str | None] = {"cluster": None, "member": None}
_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("opscenter_job", default=None)
_task: contextvars.ContextVar[int | None] = contextvars.ContextVar("opscenter_task",
                                                                   default=None)

# The attributes every LogRecord has, so that JSON output carries only a call's own `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


def set_member(cluster: str | None, member: str | None) -> None:
    _process["cluster"], _process["member"] = cluster, member


@contextlib.contextmanager
def task_context(job: str | None, task: int | None):
    """Log lines inside name this job and task (in this thread or task only)."""
    job_token, task_token = _job.set(job), _task.set(task)
    try:
        yield
    finally:
        _job.reset(job_token)
        _task.reset(task_token)


class ContextFilter(logging.Filter):
    """Adds cluster, member, job and task to a record (None when unknown); a value given
    with `extra=` is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in (("cluster", _process["cluster"]), ("member", _process["member"]),
                            ("job", _job.get()), ("task", _task.get())):
            if getattr(record, name, None) is None:
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, the context
    fields that are known, any other `extra`, and the exception's traceback as `exc`."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        for key, value in vars(record).items():
            if key not in _STANDARD and key not in FIELDS and key not in out:
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, ensure_ascii=False)
