"""The `celery` executor: a job's tasks run on a Celery worker instead of the node's pool.

Supports: shell and python jobs (python in a thread of the worker or, with isolation
"process", a process of its own), timeouts, cancel, logs while running, stateful data maps,
retries and order steps (the worker records through ledger.record_finished).

How it goes. The cluster fires the job exactly as any other (same claim, same task row, owned
by the node that claimed it). The node's pool thread passes the start fence, then sends
`opscenter.run_task` (opscenter/celery.py) to the job's queue with the task id, the member it
belongs to and what to run, and returns (outcome SENT): the task stays in the node's running
set but holds no pool thread, so a node with n pool threads can have any number of Celery
tasks in flight (each still counts towards its job's max_parallel). A worker takes it:

- Start, guarded: it sets the task's `started_at` and its lease `celery_seen_at` only if the
  task is still `running`, still the sending member's, and not started by a worker yet; else it
  runs nothing. A message delivered twice (acks_late) or a task declared lost meanwhile is
  never started.
- While the job runs (the same executors code as on a node: `executors.execute`), once a
  second: renews its lease and appends the log, under the same guard. When the guard fails
  (the task was declared lost, cancelled, or its member stopped) it cancels its job.
- At the end: `ledger.record_finished` for the sending member, which writes state, end, exit
  code, error, the last log chunk, data map, retries and order moves only if the task is still
  running, still that member's, and the member live: a task declared lost is not overwritten.

The node's loop follows all its tasks in flight with one query every POLL seconds (`follow`,
declared as this executor's `Away`; node.step_follow_away): once a task is no longer running
and the member's, the worker (or a recovery) has recorded it, and the node forgets the run
without a write (outcome RECORDED).
Loss: if the worker's lease is older than LEASE_TIMEOUT (the worker died, froze or lost the
database), the node ends the task `lost` through its normal recording, and the task is run
again like any lost task (its job's `recover_lost`). If the node dies, the others declare its
tasks lost as always; the worker's next renewal fails and it stops the job. A cancel on the
node (operator, overlap `replace`, the node's stop) ends the task on the node at once; the
worker notices at its next renewal. A clean stop of the node waits its stop grace for them
like for any running task (a task its worker ends meanwhile is recorded by the worker), then
ends the rest `lost` ("interrupted by the stop of its member", recovered as usual) and the
workers stop those jobs.

A message that no worker takes within START_TIMEOUT (no worker on the queue, the broker down
after the send) ends the task `failed` with that reason: nothing ran, so it is not lost, and
the job's retries apply. A message a worker takes later finds the task ended and runs nothing.

Not covered: a worker killed after
taking the message but before starting the job gives the message back to the broker only after
the broker's visibility timeout (Redis; RabbitMQ at once when the connection drops).
"""

from __future__ import annotations

import logging
import threading
from datetime import datetime
from typing import Any

from scheduler.executors import base
from scheduler.executors.base import (
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
)

log = logging.getLogger("opscenter.celery")

NAME = "opscenter.run_task"
DEFAULT_QUEUE = "celery"
# The outcome of the pool thread's part: the task is on its way to a worker, and the node's
# loop follows it from now on (no pool slot held).
SENT = base.SENT
# The outcome of a run the worker recorded itself (or that someone else ended): the node
# forgets it without a write.
RECORDED = base.RECORDED
POLL = 0.5  # seconds between the node's looks at its tasks in flight (one query for all)
RENEW = 1.0  # seconds between the worker's lease renewals (and log flushes)


def lease_timeout() -> float:
    """How old a worker's lease may be before the node declares its task lost
    (OPSCENTER_CELERY_LEASE_TIMEOUT, checked with the settings)."""
    from django.conf import settings

    return float(settings.OPSCENTER["CELERY_LEASE_TIMEOUT"])


def start_timeout() -> float:
    """How long a sent task may wait for a worker to take it before it ends failed
    (OPSCENTER_CELERY_START_TIMEOUT, checked with the settings)."""
    from django.conf import settings

    return float(settings.OPSCENTER["CELERY_START_TIMEOUT"])


# --------------------------------------------------------------------------------------------
# The node's side: a pool thread sends, the node's loop follows (node.step_follow_away)


def send(run: TaskRun, log_buffer: LogBuffer, cancel: Cancel, entry: Entry,
         kill_grace: float = 0.0) -> Outcome:
    """Send `run` to a Celery worker on `run.queue`, for its member (`run.member_id`), once the
    entry gate lets it in, and return at once: Outcome SENT, whose end `follow` finds out.
    Never raises."""
    queue = run.queue or DEFAULT_QUEUE
    try:
        refusal = entry.refusal(cancel)
        if refusal is not None:
            return refusal
        payload = {"task_id": run.task_id, "cluster_id": run.cluster_id,
                   "member_id": run.member_id, "run": _run_to_json(run)}
        try:
            from opscenter.celery import app

            app.send_task(NAME, args=[payload], queue=queue)
        except Exception as exc:  # the broker is down, a bad URL
            return Outcome("failed", None, f"could not send the task to Celery: {_describe(exc)}")
        log_buffer.write(f"[opscenter] sent to Celery queue {queue!r}\n")
        return Outcome(SENT, None)
    except Exception as exc:  # the daemon's contract: never raise
        return Outcome("failed", None, f"celery executor error: {_describe(exc)}")


def follow(member_id: int, sent: dict[int, Sent]) -> list[Followed]:
    """One look, in one query, at every task this member has in flight on Celery (`sent`: task
    id -> the task as sent; a worker must take it within start_timeout() of `Sent.since`).

    Ended by its worker (or by anyone else: a recovery, an operator) -> RECORDED, the node
    forgets it without a write. The worker's lease older than lease_timeout() -> lost. Not taken
    in time -> failed; the worker's guarded start refuses a task that is no longer running, so
    a message taken after that runs nothing."""
    import time

    from django.db.models.functions import Now

    from scheduler.models import Task

    rows = {pk: rest for chunk in base.chunked(list(sent))
            for pk, *rest in Task.objects.filter(pk__in=chunk).annotate(db_now=Now())
            .values_list("pk", "state", "member_id", "started_at", "celery_seen_at", "db_now")}
    bound, mono, wait = lease_timeout(), time.monotonic(), start_timeout()
    followed = []
    for task_id, away in sent.items():
        row = rows.get(task_id)
        if row is None or row[0] != Task.State.RUNNING or row[1] != member_id:
            followed.append(Followed(task_id, Outcome(RECORDED, None), None))
            continue
        _state, _member, started_at, seen_at, now = row
        outcome = None
        if seen_at is not None:
            age = (now - seen_at).total_seconds()
            if age > bound:
                outcome = Outcome("lost", None, f"lost: the Celery worker did not renew its "
                                  f"lease for {age:.1f} s (it died, froze or lost the database)")
        elif mono > away.since + wait:
            outcome = Outcome("failed", None, f"no Celery worker took the task within "
                              f"{start_timeout():g} s (is a worker consuming its queue?)")
        followed.append(Followed(task_id, outcome, started_at))
    return followed


def _run_to_json(run: TaskRun) -> dict:
    return {
        "job_name": run.job_name, "kind": run.kind, "command": run.command,
        "working_directory": run.working_directory, "parameters": run.parameters,
        "data": run.data, "timeout": run.timeout,
        "scheduled_for": run.scheduled_for.isoformat() if run.scheduled_for else None,
        "attempt": run.attempt, "cluster": run.cluster, "member": run.member,
        "isolation": run.isolation, "stateful": run.stateful,
    }


def _run_from_json(task_id: int, value: dict) -> TaskRun:
    value = dict(value)
    when = value.pop("scheduled_for", None)
    return TaskRun(task_id=task_id, scheduled_for=datetime.fromisoformat(when)
                             if when else None, **value)


# --------------------------------------------------------------------------------------------
# The worker's side (opscenter.run_task)


def run_on_worker(payload: dict) -> str:
    """Run the task in `payload` if it is still the sending member's and not started yet;
    write its start, lease, log and end to its task row. Returns the state it ended in, or
    "refused".

    A worker that cannot renew its lease (the database is down, or a write hangs) stops its
    job itself once half the lease timeout has passed since its last renewal, with a short kill
    grace, so the job has ended before the node declares the task lost and the cluster runs it
    again: a job never runs unsupervised beside its own recovery."""
    import time
    from datetime import timedelta

    from django.db import DatabaseError, close_old_connections, transaction
    from django.db.models import DateTimeField, ExpressionWrapper
    from django.db.models.functions import Now

    from scheduler import executors, ledger, text
    from scheduler.models import Task

    # The worker keeps its connection across tasks (CELERY_DB_REUSE_MAX): one that broke
    # meanwhile (the database restarted) is closed here, not met by the guarded start.
    close_old_connections()
    task_id, member_id = int(payload["task_id"]), int(payload["member_id"])
    mine = Task.objects.filter(pk=task_id, state=Task.State.RUNNING, member_id=member_id)
    # Not started once the node may be about to end it "not taken" (start_timeout() after its
    # claim, on the database's clock, less a margin for the node's look): a start is never
    # overwritten by that failure.
    latest_claim = ExpressionWrapper(Now() - timedelta(seconds=start_timeout() - _take_margin()),
                                     output_field=DateTimeField())
    if not mine.filter(celery_seen_at__isnull=True, claimed_at__gt=latest_claim).update(
            started_at=Now(), celery_seen_at=Now()):
        log.warning("task %s: not started, it is no longer running on its member, was "
                    "started already or waited too long for a worker", task_id)
        return "refused"
    run = _run_from_json(task_id, payload["run"])
    buffer = LogBuffer()
    cancel = Cancel()
    result: dict[str, Any] = {}
    bound = lease_timeout()
    # A short lease is renewed more often: the watchdog acts after half of it.
    every = min(RENEW, bound / 5)
    renewed = [time.monotonic()]  # the last successful renewal, read by the watchdog
    stopped_by_watchdog = threading.Event()

    def target() -> None:
        try:
            result["outcome"] = executors.execute(run, buffer, cancel,
                                                  kill_grace=min(base.KILL_GRACE, bound / 4))
        finally:
            from django.db import connections

            connections.close_all()  # a python job may have used the ORM in this thread

    def watchdog() -> None:
        # Apart from the renewals, so that a renewal hanging on a lost database still stops
        # the job in time.
        while thread.is_alive():
            silent = time.monotonic() - renewed[0]
            if silent > bound / 2 and not cancel.requested:
                log.error("task %s: no lease renewal for %.1f s; stopping its job (the cluster "
                          "will declare it lost and run it again)", task_id, silent)
                stopped_by_watchdog.set()
                cancel.request(f"the worker could not renew its lease for {silent:.1f} s")
            thread.join(min(every, bound / 8))

    thread = threading.Thread(target=target, name=f"opscenter-celery-{task_id}", daemon=True)
    thread.start()
    threading.Thread(target=watchdog, name=f"opscenter-lease-{task_id}", daemon=True).start()
    pending = ""
    while thread.is_alive():
        thread.join(every)
        if not thread.is_alive():
            break
        pending += text.storable_text(buffer.drain())
        try:
            with transaction.atomic():
                ours = mine.update(celery_seen_at=Now())
                if ours and pending:
                    ledger.write_logs([(task_id, pending)])
        except DatabaseError as exc:
            log.warning("task %s: lease not renewed: %s", task_id, _describe(exc))
            _drop_connection()
            continue
        renewed[0] = time.monotonic()
        if ours:
            pending = ""
        elif not cancel.requested:
            log.warning("task %s: no longer this worker's; stopping its job", task_id)
            cancel.request("the task was declared lost, cancelled or its member stopped")
    outcome: Outcome = result.get("outcome") or Outcome(
        "failed", None, "executor error: no outcome")
    if stopped_by_watchdog.is_set() and outcome.state == "cancelled":
        # Nobody asked for this stop: the task is lost, and recovered as its job says.
        outcome = Outcome("lost", outcome.exit_code, f"lost: {cancel.reason} (the Celery "
                                                     "worker stopped its job)")
    pending += text.storable_text(buffer.drain())
    # The end is worth writing while the task may still be ours: until the lease has run out.
    give_up = renewed[0] + bound
    while True:
        try:
            finished = _finished(task_id, outcome)
            if finished is None:
                return "refused"
            discarded = ledger.record_finished(int(payload["cluster_id"]), member_id,
                                               [finished], [(task_id, pending)])
            break
        except DatabaseError as exc:
            _drop_connection()
            if time.monotonic() > give_up:
                log.error("task %s: its end (%s) could not be written: %s; the cluster will "
                          "declare it lost", task_id, outcome.state, _describe(exc))
                return "unrecorded"
            time.sleep(min(every, bound / 8))
    if discarded:
        log.warning("task %s: its result was discarded (no longer its member's)", task_id)
        return "discarded"
    return finished.state


def _take_margin() -> float:
    return min(5.0, start_timeout() / 2)


def _drop_connection() -> None:
    from django.db import DatabaseError, connection

    try:
        connection.close()  # the next query opens a new one
    except DatabaseError:
        pass


def _finished(task_id: int, outcome: Outcome):
    """The ledger's Finished for the task row as it is now (None: the row is gone)."""
    from scheduler import ledger, text, validators
    from scheduler.models import Job, Task

    row = Task.objects.filter(pk=task_id).values(
        "job_id", "schedule_id", "scheduled_for", "attempt", "parameters", "started_at",
        "order_id", "order_step", "order_state").first()
    if row is None:
        return None
    job = Job.objects.filter(pk=row["job_id"]).values(*ledger.JOB_FIELDS).first()
    if job is None:
        return None
    snapshot = ledger.JobSnapshot(**job)
    state, error, data, code = outcome.state, outcome.error, outcome.data, outcome.exit_code
    if code is not None and not -(2**31 - 1) <= code <= 2**31 - 1:
        error = f"{error} (exit code {code} out of range)".strip()
        code = 2**31 - 1 if code > 0 else -(2**31 - 1)
    if data is not None and snapshot.stateful:
        try:
            data = text.storable_data(data)
            validators.validate_data_map(data)
            validators.json_text(data)
        except Exception as exc:
            state, error, data = "failed", f"the data map the run left is not JSON data: {exc}", \
                None
    return ledger.Finished(
        task_id=task_id, job=snapshot, schedule_id=row["schedule_id"],
        scheduled_for=row["scheduled_for"], attempt=row["attempt"],
        parameters=row["parameters"], state=state, exit_code=code,
        error=text.storable_text(error), data=data,
        started_at=row["started_at"],
        order_id=row["order_id"], order_step=row["order_step"], order_state=row["order_state"],
    )


_describe = base.describe


def _support(kind: str, isolations: tuple[str, ...], data_map: bool) -> Support:
    return Support(
        executor="celery", kind=kind, runs_on="a Celery worker consuming the job's queue",
        isolations=isolations, time_limit=True, cancel=True, live_log=True, data_map=data_map,
        needs="a broker (OPSCENTER_CELERY_BROKER) and a worker: celery -A opscenter worker "
              "-Q <queue>",
        note="the worker runs the node's own shell/python code; log and lease once a second; "
             "holds no pool thread of the node while in flight")


# One for both kinds: the node follows all of a member's Celery tasks with one query.
AWAY = Away(follow, POLL)

EXECUTORS = (
    Executor(_support("shell", (), data_map=False), send, AWAY),
    Executor(_support("python", ("thread", "process"), data_map=True), send, AWAY),
)
