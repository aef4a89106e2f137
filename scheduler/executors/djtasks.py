"""Jobs of kind `task`: a function decorated with Django's `@task` (django.tasks).

The cluster fires the job like any other (the same claim, one task row per due time); the
node's pool thread then enqueues the django.tasks Task on the backend it names (the database
backend django-tasks-db in the demo: `manage.py db_worker` runs it), with the job's parameters
as keyword arguments, writes the result id on the task row (`Task.external_id`) and follows
the result until it ends: SUCCESSFUL -> succeeded (the return value in the log), FAILED ->
failed (the error and its traceback in the log). The job's timeout and a cancel stop the
following, not the enqueued work: django.tasks has no way to stop a result.

Recovery: a task lost with its member (trigger `recovery`) looks up the result id stored by the
attempt it recovers (along its chain of recoveries); when that result still exists it is
followed, not enqueued a second time. Only when the member died between the enqueue and the
write of the id (one UPDATE right after it) can a recovery enqueue again.

Unlike shell.py and python.py this module uses Django (the backend, the ORM), imported only
when a task job is checked or run.
"""

from __future__ import annotations

import importlib
import json
import keyword
import time
from typing import Any

from scheduler.executors.base import (
    ERROR_MAX,
    REPR_MAX,
    Cancel,
    Entry,
    Executor,
    LogBuffer,
    Outcome,
    Support,
    TaskRun,
    cancel_error,
    deadline_of,
    describe,
    shorten,
)
from scheduler.executors.python import get_attributes, import_dotted

# Following a result: the first look soon (a fast task ends within a few ms of a busy worker),
# then less often, never more than POLL_MAX seconds apart.
POLL_MIN = 0.05
POLL_MAX = 1.0


def resolve_task(path: str):
    """The django.tasks Task named by "pkg.mod.func" or "pkg.mod:func"; raises with a reason."""
    from django.tasks import Task

    path = (path or "").strip()
    if not path or " " in path:
        raise ValueError("expected 'package.module.function' or 'package.module:function'")
    if ":" in path:
        module_name, _, attrs = path.partition(":")
        obj = get_attributes(importlib.import_module(module_name), attrs.split("."))
    else:
        obj = import_dotted(path)
    if not isinstance(obj, Task):
        raise TypeError(f"{path!r} is a {type(obj).__name__}, not a django.tasks task: "
                        "decorate the function with @task (from django.tasks import task)")
    return obj


def task_problem(path: str) -> str:
    """Why `path` cannot be a task job's command ("" when it can): checked at every door."""
    try:
        resolve_task(path)
    except Exception as exc:  # whatever the import raises is the operator's to read
        return (f"A task job needs the dotted path of a function decorated with Django's "
                f"@task, e.g. 'myapp.tasks.send_report': {shorten(describe(exc), 300)}")
    return ""


def parameters_problem(parameters: Any) -> str:
    """A task's parameters are its keyword arguments: names must be Python identifiers (JSON
    safety is validate_parameters')."""
    if not isinstance(parameters, dict):
        return ""
    bad = sorted(k for k in parameters
                 if not isinstance(k, str) or not k.isidentifier() or keyword.iskeyword(k))
    if bad:
        return (f"A task job's parameters are the keyword arguments of its function: "
                f"{', '.join(repr(k) for k in bad)} cannot be an argument name.")
    return ""


def execute(run: TaskRun, log: LogBuffer, cancel: Cancel, entry: Entry,
            kill_grace: float = 0.0) -> Outcome:
    from django.tasks.exceptions import TaskResultDoesNotExist

    try:
        task = resolve_task(run.command)
    except Exception as exc:
        return Outcome("failed", None, shorten(f"cannot load the task: {describe(exc)}",
                                                ERROR_MAX))
    refused = entry.refusal(cancel)
    if refused is not None:
        return refused
    result = None
    earlier = _earlier_result_id(run)
    if earlier:
        try:
            result = task.get_result(earlier)
            log.write(f"[opscenter] following django.tasks result {earlier}, enqueued by the "
                      f"lost attempt this task recovers (not enqueued again)\n")
        except TaskResultDoesNotExist:
            log.write(f"[opscenter] the result {earlier} of the lost attempt is gone: "
                      f"enqueuing again\n")
    if result is None:
        result = task.enqueue(**run.parameters)
        log.write(f"[opscenter] enqueued {task.module_path} on backend {task.backend!r} "
                  f"(queue {task.queue_name!r}): result {result.id}\n")
    entry.at = time.monotonic()
    _store_result_id(run.task_id, str(result.id))
    return _follow(result, run, log, cancel)


def _follow(result, run: TaskRun, log: LogBuffer, cancel: Cancel) -> Outcome:
    from django.tasks import TaskResultStatus

    deadline = deadline_of(run.timeout)
    interval = POLL_MIN
    last_status = None
    while True:
        if result.status != last_status:
            last_status = result.status
            log.write(f"[opscenter] result {result.id}: {result.status}\n")
        if result.status == TaskResultStatus.SUCCESSFUL:
            value = result.return_value
            try:
                text = json.dumps(value, default=repr)
            except (TypeError, ValueError):
                text = repr(value)
            log.write(f"return value: {shorten(text, REPR_MAX)}\n")
            return Outcome("succeeded", 0)
        if result.status == TaskResultStatus.FAILED:
            error = result.errors[-1] if result.errors else None
            if error is not None:
                log.write(error.traceback if error.traceback.endswith("\n")
                          else error.traceback + "\n")
                last = error.traceback.strip().splitlines()[-1:] or [error.exception_class_path]
                reason = shorten(last[0], ERROR_MAX)
            else:
                reason = "the task failed"
            return Outcome("failed", 1, reason)
        wait = interval if deadline is None else min(interval, deadline - time.monotonic())
        if wait > 0 and cancel.event.wait(wait):
            pass
        if cancel.requested:
            log.write(f"[opscenter] stopped following result {result.id}; django.tasks cannot "
                      f"stop it, so it may still run\n")
            return Outcome("cancelled", None, cancel_error(cancel))
        if deadline is not None and time.monotonic() >= deadline:
            log.write(f"[opscenter] stopped following result {result.id} (status "
                      f"{result.status}); django.tasks cannot stop it, so it may still run\n")
            return Outcome("timed_out", None, f"timed out after {run.timeout:g} s")
        interval = min(interval * 2, POLL_MAX)
        result.refresh()


def _earlier_result_id(run: TaskRun) -> str:
    """The result id stored by the attempt this recovery run recovers (followed back along
    recoveries of recoveries), or ""."""
    from scheduler.models import Task

    row = Task.objects.filter(pk=run.task_id).values("trigger", "retry_of_id").first()
    hops = 0
    while row and row["trigger"] == Task.Trigger.RECOVERY and row["retry_of_id"] and hops < 20:
        row = (Task.objects.filter(pk=row["retry_of_id"])
               .values("trigger", "retry_of_id", "external_id").first())
        if row and row["external_id"]:
            return row["external_id"]
        hops += 1
    return ""


def _store_result_id(task_id: int, result_id: str) -> None:
    """On the task row at once (not with the log's next flush): a recovery reads it."""
    from scheduler.models import Task

    Task.objects.filter(pk=task_id, state=Task.State.RUNNING).update(external_id=result_id)


EXECUTOR = Executor(
    Support(executor="node", kind="task",
            runs_on="the worker of its django.tasks backend (the node enqueues it and follows "
                    "the result)",
            isolations=(), time_limit=False, cancel=False, live_log=False, data_map=False,
            needs="settings.TASKS: a backend and its worker (django-tasks-db: "
                  "manage.py db_worker)",
            note="a timeout or cancel ends the task but only stops following: django.tasks "
                 "cannot stop an enqueued result; the log gets its status and return value"),
    execute,
)
