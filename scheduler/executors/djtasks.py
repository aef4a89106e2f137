"""Jobs of kind `task`: a function decorated with Django's `@task` (django.tasks).

The cluster fires the job like any other (the same claim, one task row per due time); the
node's pool thread then enqueues the django.tasks Task on the backend it names (the database
backend django-tasks-db in the demo: `manage.py db_worker` runs it), with the job's parameters
as keyword arguments, writes the result id on the task row (`Task.external_id`) and returns
(outcome SENT): the task stays in the node's running set but holds no pool thread, so a node
with n pool threads can have any number of task jobs in flight (each still counts towards its
job's max_parallel). The node's loop follows all of them with one look every POLL seconds
(`follow`, this executor's `Away`; node.step_follow_away): a new status goes to the log,
SUCCESSFUL -> succeeded (the return value in the log), FAILED -> failed (the error and its
traceback in the log). The job's timeout (counted from the enqueue) and a cancel stop the
following, not the enqueued work: django.tasks has no way to stop a result. There is no start
timeout: a result no worker takes is followed until the job's timeout, if it has one (the
result stays in the backend, and a worker started later runs it).

A clean stop of the node waits its stop grace for them like for any running task (a result
that ends meanwhile ends its task as usual), then ends the rest `lost` ("interrupted by the
stop of its member"); their recovery follows the same result (below), not enqueued again.

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

from scheduler.executors import base
from scheduler.executors.base import (
    ERROR_MAX,
    REPR_MAX,
    SENT,
    Away,
    Cancel,
    Entry,
    Executor,
    Followed,
    LogBuffer,
    Outcome,
    Sent,
    Support,
    TaskRun,
    cancel_error,
    describe,
    no_limit,
    shorten,
)
from scheduler.executors.python import get_attributes, import_dotted

# Seconds between the node's looks at its results in flight (one query for all of them).
POLL = 0.25


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


def send(run: TaskRun, log: LogBuffer, cancel: Cancel, entry: Entry,
         kill_grace: float = 0.0) -> Outcome:
    """Enqueue the task (or, for a recovery, find the result its lost attempt enqueued), once
    the entry gate lets it in; store the result id and return at once: Outcome SENT with the
    result as its handle, whose end `follow` finds out."""
    from django.db import DatabaseError
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
    try:
        earlier = _earlier_result_id(run)
    except DatabaseError as exc:
        # Nothing enqueued yet: lost before entry, so the ledger runs it again (and a
        # recovery finds the earlier result then).
        return Outcome("lost", None, f"could not read the task's earlier result: "
                                     f"{describe(exc)}")
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
    # Enqueued: from here on the task must never end failed by our own hand (its retry would
    # enqueue a second time while this result runs). The id is worth a few tries: a recovery
    # follows it instead of enqueuing again.
    for attempt in range(3):
        try:
            _store_result_id(run.task_id, str(result.id))
            break
        except DatabaseError as exc:
            _close_connection()
            if attempt == 2:
                log.write(f"[opscenter] could not store the result id {result.id} on the task "
                          f"({describe(exc)}); following it all the same\n")
            else:
                time.sleep(0.2)
    log.write(f"[opscenter] result {result.id}: {result.status}\n")
    return Outcome(SENT, None, handle=result)


def follow(member_id: int, sent: dict[int, Sent]) -> list[Followed]:
    """One look at the results of every task this member has handed to django.tasks (`sent`:
    task id -> the task, its handle the result as last seen): a new status goes to the log;
    SUCCESSFUL -> succeeded (the return value in the log), FAILED -> failed (the error and its
    traceback in the log); the job's timeout, counted from the hand-over, ends the task
    timed_out but only stops following. Results of django-tasks-db backends are read in one
    query per backend, others one by one (`get_result`: django.tasks has no bulk read)."""
    fresh = _fetch([away.handle for away in sent.values()])
    mono = time.monotonic()
    followed = []
    for task_id, away in sent.items():
        result = fresh.get(str(away.handle.id))
        if isinstance(result, Exception):
            followed.append(Followed(task_id, Outcome(
                "failed", None, shorten(f"executor error: {describe(result)}", ERROR_MAX))))
            continue
        if result.status != away.handle.status:
            away.log.write(f"[opscenter] result {result.id}: {result.status}\n")
        away.handle = result
        outcome = _ended(result, away.log)
        if outcome is None and not no_limit(away.run.timeout) \
                and mono >= away.since + away.run.timeout:
            away.log.write(f"[opscenter] stopped following result {result.id} (status "
                           f"{result.status}); django.tasks cannot stop it, so it may still "
                           f"run\n")
            outcome = Outcome("timed_out", None, f"timed out after {away.run.timeout:g} s")
        followed.append(Followed(task_id, outcome))
    return followed


def stop_following(away: Sent) -> Outcome:
    """A cancel ends the task at once; the result is left to its worker."""
    away.log.write(f"[opscenter] stopped following result {away.handle.id}; django.tasks "
                   f"cannot stop it, so it may still run\n")
    return Outcome("cancelled", None, cancel_error(away.cancel))


def _ended(result, log: LogBuffer) -> Outcome | None:
    """The outcome of a result that ended (its return value or error in the log), or None."""
    from django.tasks import TaskResultStatus

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
    return None


def _fetch(results: list) -> dict[str, Any]:
    """The results as they are now, by id: a fresh result, or the exception reading it raised
    (TaskResultDoesNotExist: deleted meanwhile). Database weather is raised: the node's loop
    waits it out and looks again."""
    from django.db import InterfaceError, OperationalError
    from django.tasks.exceptions import TaskResultDoesNotExist

    try:
        from django_tasks_db.backend import DatabaseBackend
    except ImportError:  # not installed: other backends only
        DatabaseBackend = None  # noqa: N806

    by_backend: dict[str, list] = {}
    for result in results:
        by_backend.setdefault(result.backend, []).append(result)
    fresh: dict[str, Any] = {}
    for some in by_backend.values():
        ids = [str(result.id) for result in some]
        try:
            backend = some[0].task.get_backend()
            if DatabaseBackend is not None and isinstance(backend, DatabaseBackend):
                from django_tasks_db.models import DBTaskResult

                for chunk in base.chunked(ids):
                    for row in DBTaskResult.objects.filter(id__in=chunk):
                        try:
                            fresh[str(row.id)] = row.task_result
                        except (OperationalError, InterfaceError):
                            raise
                        except Exception as exc:  # this row only (its task path, say)
                            fresh[str(row.id)] = exc
            else:
                for result_id in ids:
                    try:
                        fresh[result_id] = backend.get_result(result_id)
                    except TaskResultDoesNotExist as exc:
                        fresh[result_id] = exc
        except (OperationalError, InterfaceError):
            raise
        except Exception as exc:  # a backend that cannot be read: its tasks fail, as before
            fresh.update((result_id, exc) for result_id in ids if result_id not in fresh)
        for result_id in ids:
            fresh.setdefault(result_id, TaskResultDoesNotExist(result_id))
    return fresh


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

    # Whatever the task's state: a task declared lost meanwhile still tells its recovery.
    Task.objects.filter(pk=task_id).update(external_id=result_id)


def _close_connection() -> None:
    from django.db import DatabaseError, connection

    try:
        connection.close()
    except DatabaseError:
        pass


EXECUTOR = Executor(
    Support(executor="node", kind="task",
            runs_on="the worker of its django.tasks backend (the node enqueues it and follows "
                    "the result)",
            isolations=(), time_limit=False, cancel=False, live_log=False, data_map=False,
            needs="settings.TASKS: a backend and its worker (django-tasks-db: "
                  "manage.py db_worker)",
            note="a timeout or cancel ends the task but only stops following: django.tasks "
                 "cannot stop an enqueued result; the log gets its status and return value; "
                 "holds no pool thread of the node while in flight"),
    send,
    Away(follow, POLL, stop_following),
)
