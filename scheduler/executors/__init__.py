"""Run one task of a job: the executors, one module each, and the registry that picks one.

- base.py: what they share with the node daemon (TaskRun, LogBuffer, Cancel, Entry, Outcome,
  JobContext) and the declaration each makes (Support); Django-free.
- shell.py, python.py: shell command lines and python callables, on the node (Django-free).
- djtasks.py: kind `task`, a django.tasks task enqueued on its backend and followed.
- celery_executor.py: executor `celery`, shell and python jobs run on a Celery worker.
  These two hand the work away (outcome SENT, no pool thread held) and declare an `Away`:
  how the node's loop follows all of a member's tasks of theirs at once.
- registry.py: (executor, kind) -> the executor that runs it and what it supports.

Adding an executor is a module that declares its `Executor`s and one line below.

The node daemon calls `execute()` from its worker thread pool and does every database write
itself (a worker elsewhere writes its own rows: celery). `execute()` never raises.
"""

from __future__ import annotations

import traceback

from scheduler.executors import celery_executor, djtasks, python, registry, shell
from scheduler.executors.base import (
    KILL_GRACE,
    RECORDED,
    RESERVED_PARAMETER_NAMES,
    RESERVED_PARAMETER_PREFIXES,
    SENT,
    Away,
    Cancel,
    Entry,
    Executor,
    Followed,
    JobContext,
    LogBuffer,
    Outcome,
    Sent,
    Support,
    TaskRun,
    cancel_error,
    describe,
    is_reserved_parameter,
)
from scheduler.executors.python import abandoned_threads, job_context

registry.register(shell.EXECUTOR, python.EXECUTOR, djtasks.EXECUTOR, *celery_executor.EXECUTORS)

__all__ = [
    "KILL_GRACE", "RECORDED", "RESERVED_PARAMETER_NAMES", "RESERVED_PARAMETER_PREFIXES", "SENT",
    "Away", "Cancel", "Entry", "Executor", "Followed", "JobContext", "LogBuffer", "Outcome",
    "Sent", "Support", "TaskRun", "abandoned_threads", "cancel_error", "execute",
    "is_reserved_parameter", "job_context",
]


def execute(
    run: TaskRun, log: LogBuffer, cancel: Cancel, *, kill_grace: float = KILL_GRACE,
    entry: Entry | None = None,
) -> Outcome:
    """Run `run` with the executor registered for its executor and kind, to its end, a timeout
    or a cancel. Never raises: any failure becomes an Outcome.

    `entry`: the daemon's gate just before the job is entered, and where the moment of entry
    is written."""
    entry = entry or Entry()
    try:
        if cancel.requested:
            # Cancelled while queued in the daemon's pool: start nothing.
            return Outcome("cancelled", None, cancel_error(cancel))
        found = registry.find(run.executor, run.kind)
        if found is None:
            if not any(s.kind == run.kind for s in registry.declared()):
                return Outcome("failed", None, f"unknown job kind {run.kind!r}")
            return Outcome("failed", None,
                           f"the executor {run.executor!r} does not run {run.kind!r} jobs")
        return found.run(run, log, cancel, entry, kill_grace)
    except Exception as exc:  # the daemon's contract: never raise
        # A bug here must not kill the daemon's worker thread or lose the task's end.
        log.write(f"[opscenter] executor error\n{traceback.format_exc()}")
        return Outcome("failed", None, f"executor error: {describe(exc)}")
