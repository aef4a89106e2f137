"""The fire ledger's hot path: claim due fires and queued tasks, record finished tasks.

Each function is one short transaction for a whole batch, written so that per-fire work is a
few dictionary operations and the database sees a handful of statements per batch, not one
per fire. Exactly once rests on three things in the same transaction: the row locks on the
due schedules (SKIP LOCKED on PostgreSQL; SQLite's IMMEDIATE transactions serialise writers),
the unique fire key (schedule, scheduled_for, attempt) with ON CONFLICT DO NOTHING, and the
fence (the caller's lease epoch or live membership), checked before anything is written.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.db import connection, transaction
from django.db.models import F
from django.utils.dateparse import parse_datetime

from scheduler import eventlog, timing
from scheduler.db import is_pg as _is_pg
from scheduler.db import prepared as _prepared
from scheduler.models import Job, Member, Task

log = logging.getLogger("opscenter.ledger")

SKIPPED_OVERLAP = "skipped: the previous run was still going (overlap policy skip)"
CHUNK = 500  # rows per multi-row statement; keeps SQLite under its variable limit


# ---------------------------------------------------------------- small helpers


def _param(value: datetime | None):
    """A datetime as the backend stores it (SQLite keeps naive UTC text)."""
    if value is None or _is_pg():
        return value
    return connection.ops.adapt_datetimefield_value(value)


def _as_dt(value) -> datetime | None:
    if value is None or isinstance(value, datetime):
        dt = value
    else:
        dt = parse_datetime(str(value))
    if dt is not None and dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt


def _chunks(rows: list, size: int = CHUNK):
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


@dataclass(slots=True)
class JobSnapshot:
    """What a member needs of a job to start and finish its tasks (read under the job's lock)."""

    id: int
    name: str
    kind: str
    command: str
    working_directory: str
    parameters: dict
    data_map: dict
    stateful: bool
    timeout_seconds: int | None
    max_retries: int
    retry_backoff_seconds: float
    max_parallel: int
    overlap_policy: str
    recover_lost: bool
    isolation: str
    executor: str = "node"
    celery_queue: str = ""


JOB_FIELDS = [f.name for f in JobSnapshot.__dataclass_fields__.values()]


@dataclass(slots=True)
class Started:
    """A task this member has just claimed and must start now."""

    task_id: int
    job: JobSnapshot
    schedule_id: int | None
    scheduled_for: datetime
    attempt: int
    trigger: str
    parameters: dict
    # A step of an order: the order (pk), its step number and the node's state.
    order_id: int | None = None
    order_step: int | None = None
    order_state: str = ""


@dataclass
class ClaimResult:
    started: list[Started] = field(default_factory=list)
    fired: int = 0          # fires taken from schedules (run, queued or skipped)
    misfired: int = 0       # owed fires recorded as misfires
    fenced: bool = False    # the fence refused: this member may not claim now
    more: bool = False      # the batch was full: there may be more work right away
    deferred: bool = False  # fires due within `ahead` were left for their due instant


class Fenced(Exception):
    """The member's lease or membership no longer allows it to write as an active member."""


# ---------------------------------------------------------------- the fence


def check_fence(cluster_id: int, member_id: int, epoch: int | None,
                dead_after: float) -> datetime:
    """Inside the caller's transaction: refuse unless this member may act as an active member.

    Passive clusters pass the lease epoch: the lease must still be ours and unexpired on the
    database clock, and on PostgreSQL the cluster row stays share-locked until commit, so a
    takeover cannot commit between this check and our writes. Others pass None: the member
    must be live and its heartbeat fresh, so a member that froze and was declared dead fires
    nothing when it wakes up. Returns the database's time, read in the same statement.
    """
    with connection.cursor() as cursor:
        if epoch is not None:
            sql = (
                "SELECT %s FROM scheduler_cluster WHERE id = %s AND lease_holder_id = %s "
                "AND lease_epoch = %s AND lease_expires_at > %s"
            )
            if _is_pg():
                sql = sql.replace("> %s", "> clock_timestamp()").replace(
                    "SELECT %s", "SELECT clock_timestamp()") + " FOR SHARE"
                cursor.execute(sql, [cluster_id, member_id, epoch])
            else:
                cursor.execute(sql, [1, cluster_id, member_id, epoch, _param(_utcnow())])
        else:
            sql = (
                "SELECT %s FROM scheduler_member WHERE id = %s "
                "AND state IN ('active', 'stopping') AND heartbeat_at > %s"
            )
            if _is_pg():
                sql = sql.replace("> %s", "> clock_timestamp() - %s * interval '1 second'")
                sql = sql.replace("SELECT %s", "SELECT clock_timestamp()")
                cursor.execute(sql + " FOR SHARE", [member_id, dead_after])
            else:
                cursor.execute(sql, [1, member_id,
                                     _param(_utcnow() - timedelta(seconds=dead_after))])
        row = cursor.fetchone()
        if row is None:
            raise Fenced()
        return row[0] if _is_pg() else _utcnow()


def _utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- claiming


class TimingCache:
    """Timing objects by (schedule id, version): built once per definition, not per fire."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[tuple, timing.Timing]] = {}

    def get(self, row: dict) -> timing.Timing:
        # Keyed on the definition itself, not its version number: two edits racing to the
        # same version must not leave a node computing from the older one.
        key = tuple(row[f] for f in DEFINITION_COLUMNS)
        hit = self._cache.get(row["id"])
        if hit is not None and hit[0] == key:
            return hit[1]
        t = timing.Timing(
            kind=row["kind"],
            cron=row["cron"] or "",
            timezone=row["timezone"] or "UTC",
            interval_seconds=row["interval_seconds"] or 0,
            anchor=_as_dt(row["anchor_at"]) or _as_dt(row["start_at"]),
            run_at=_as_dt(row["run_at"]),
            start_at=_as_dt(row["start_at"]),
            end_at=_as_dt(row["end_at"]),
        )
        if len(self._cache) > 100_000:
            self._cache.clear()  # deleted schedules must not accumulate for ever
        self._cache[row["id"]] = (key, t)
        return t


DEFINITION_COLUMNS = ("kind", "cron", "timezone", "interval_seconds", "anchor_at", "run_at",
                      "start_at", "end_at")
QUEUED_FIELDS = ["id", "job_id", "schedule_id", "scheduled_for", "attempt", "trigger",
                 "parameters", "order_id", "order_step", "order_state"]
SCHEDULE_FIELDS = [
    "id", "job_id", "version", "next_fire_at", "kind", "cron", "timezone", "interval_seconds",
    "anchor_at", "run_at", "start_at", "end_at", "misfire_policy", "misfire_grace_seconds",
    "run_all_limit",
]


# The claim's statements are fixed text: on PostgreSQL they run as prepared statements on the
# member's connection, so a claim costs no ORM compilation and no re-planning per batch.
# {items} and {ids} stand for the member's names and a list of job ids; {lock} and {lock_t}
# are the row locks (PostgreSQL only; SQLite's IMMEDIATE transaction serialises claims).
_RUNNING = ("(SELECT count(*) FROM scheduler_task r "
            "WHERE r.job_id = {job} AND r.state = 'running')")

QUEUED_SQL = (
    "SELECT t.id, t.job_id, t.schedule_id, t.scheduled_for, t.attempt, t.trigger, t.parameters, "
    "t.order_id, t.order_step, t.order_state "
    "FROM scheduler_task t JOIN scheduler_job j ON j.id = t.job_id "
    "WHERE t.cluster_id = %s AND t.state = 'queued' AND t.not_before <= %s AND NOT j.paused "
    "AND (j.affinity = '' OR j.affinity {items}) {sticky_t}"
    # Only tasks whose job has a free slot: blocked ones must not fill the batch.
    f"AND {_RUNNING.format(job='t.job_id')} < j.max_parallel "
    "ORDER BY t.not_before LIMIT %s {lock_t}"
)
# In an active cluster (ledger.orders.STICKY for the steps' claim): a retry or recovery of a
# step of an order whose chain is not distributed is taken only by the member that holds the
# order while that member is live, else by any (the order is then moved to it for good). A
# task without an order stops at its first test: fires and runs pay nothing for it.
STICKY_T = ("AND (t.order_id IS NULL OR NOT EXISTS (SELECT 1 FROM scheduler_order so "
            "JOIN scheduler_jobchain sc ON sc.id = so.chain_id "
            "JOIN scheduler_member sm ON sm.id = so.member_id "
            "WHERE so.id = t.order_id AND NOT sc.distributed AND sm.id <> %s "
            "AND sm.state IN ('active', 'standby', 'stopping'))) ")


def _sticky(sql: str, after: list, member_id: int | None) -> tuple[str, list]:
    """The statement with the sticky predicate (and its member before `after`) or without."""
    if member_id is None or "{sticky_t}" not in sql:
        return sql.replace("{sticky_t}", ""), after
    return sql.replace("{sticky_t}", STICKY_T), [member_id, *after]


DUE_SQL = (
    "SELECT " + ", ".join(f"s.{f}" for f in SCHEDULE_FIELDS) + " "
    "FROM scheduler_schedule s JOIN scheduler_job j ON j.id = s.job_id "
    "WHERE s.cluster_id = %s AND NOT s.paused AND s.next_fire_at <= %s AND NOT j.paused "
    "AND (j.affinity = '' OR j.affinity {items}) "
    "ORDER BY s.next_fire_at LIMIT %s {lock_s}"
)
JOBS_SQL = (
    "SELECT " + ", ".join(f"j.{f}" for f in JOB_FIELDS) + " FROM scheduler_job j "
    "WHERE j.id {items} AND NOT j.paused ORDER BY j.id {lock}"
)
# A statement of its own, after the lock: a statement that waited for a row lock still reads
# other rows as of its own start, so counting in the locking statement could miss a run that
# the member holding the lock has just started.
RUNNING_SQL = ("SELECT job_id, count(*) FROM scheduler_task "
               "WHERE job_id {items} AND state = 'running' GROUP BY job_id")


def _fetch(sql: str, before: list, items: list, after: list) -> list[tuple]:
    """Run one of the fixed statements: `before`, then the list `items` for {items}, then
    `after`. On PostgreSQL the list is one array parameter, so the text never changes and the
    statement is prepared once per connection; on SQLite it is an IN list."""
    if _is_pg():
        # {lock}: FOR NO KEY UPDATE, not FOR UPDATE. Claims still take turns on the rows (the
        # two conflict), but a transaction that only references a locked job or chain (a
        # recorded step's event names its job: the deferred foreign key check at its commit
        # takes FOR KEY SHARE) neither waits for a claim nor deadlocks with it.
        sql = sql.format(items="= ANY(%s)", lock="FOR NO KEY UPDATE",
                         lock_t="FOR UPDATE OF t SKIP LOCKED", lock_s="FOR UPDATE OF s SKIP LOCKED")
        return _prepared(sql, [*before, items, *after])
    items = items or [None]  # IN () is not SQL; NULL matches nothing
    sql = sql.format(items="IN (" + ", ".join(["%s"] * len(items)) + ")", lock="", lock_t="",
                     lock_s="")
    params = [_param(p) if isinstance(p, datetime) else p for p in [*before, *items, *after]]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _json(value):
    return json.loads(value) if isinstance(value, str) else (value or {})


def _lock_jobs(job_ids: set[int]) -> tuple[dict[int, JobSnapshot], dict[int, int]]:
    """Read the jobs of a batch, locked in id order (no deadlock between members), then their
    running counts, so the overlap and max-parallel decisions of two members cannot
    interleave. A job paused meanwhile is left out: its fires stay due and are not taken."""
    jobs = {}
    for row in _fetch(JOBS_SQL, [], sorted(job_ids), []):
        values = dict(zip(JOB_FIELDS, row, strict=True))
        values["parameters"] = _json(values["parameters"])
        values["data_map"] = _json(values["data_map"])
        values["stateful"] = bool(values["stateful"])
        values["recover_lost"] = bool(values["recover_lost"])
        jobs[values["id"]] = JobSnapshot(**values)
    running = dict(_fetch(RUNNING_SQL, [], sorted(jobs), [])) if jobs else {}
    return jobs, running


def claim(
    *,
    cluster_id: int,
    member_id: int,
    member_names: list[str],
    capacity: int,
    epoch: int | None,
    dead_after: float,
    cache: TimingCache,
    batch_limit: int = 1000,
    ahead: float = 0.0,
    sticky: bool = False,
) -> ClaimResult:
    """Take what this member can start now: ready queued tasks first, then due fires.

    `member_names` are the member's name and labels (for job affinity). One transaction.
    `ahead` (seconds): also take fires due that soon, so that the claim's own time is spent
    before the due instant and the member enters their jobs on time (it waits for the
    instant). Only fires that can start at once are taken early: a fire that would be
    queued, skipped or would replace a run is left for its due instant, where the overlap
    policy judges it as it always did. Misfires are judged on the real time. `sticky` (an
    active cluster): retries and recoveries of steps of orders of chains that are not
    distributed stay with the member holding the order (STICKY_T).
    """
    result = ClaimResult()
    if capacity <= 0:
        return result
    limit = min(capacity, batch_limit)
    try:
        with transaction.atomic():
            now = check_fence(cluster_id, member_id, epoch, dead_after)
            horizon = now + timedelta(seconds=ahead)
            names = list(member_names)
            queued_sql, after = _sticky(QUEUED_SQL, [limit], member_id if sticky else None)
            queued = [dict(zip(QUEUED_FIELDS, row, strict=True))
                      for row in _fetch(queued_sql, [cluster_id, now], names, after)]
            due = []
            if len(queued) < limit:
                due = [dict(zip(SCHEDULE_FIELDS, row, strict=True)) for row in
                       _fetch(DUE_SQL, [cluster_id, horizon], names, [limit - len(queued)])]
            if not queued and not due:
                return result
            result.more = len(queued) + len(due) >= limit

            jobs, running = _lock_jobs({r["job_id"] for r in queued} | {r["job_id"] for r in due})
            free = limit
            to_start: list[dict] = []      # queued tasks to switch to running
            new_rows: list[tuple] = []     # task rows to insert
            misfires: list[tuple] = []
            advances: list[tuple] = []     # (schedule id, next_fire_at, last_fire_at)
            replace_jobs: set[int] = set()
            parked: list[tuple] = []       # schedules that cannot be computed

            for row in queued:
                job = jobs.get(row["job_id"])
                if job is None or free <= 0:
                    continue
                if running.get(job.id, 0) >= job.max_parallel:
                    continue  # stays queued until a run of its job ends
                running[job.id] = running.get(job.id, 0) + 1
                free -= 1
                to_start.append(row)

            for row in due:
                job = jobs.get(row["job_id"])
                if job is None:
                    continue
                t = cache.get(row)
                next_fire = _as_dt(row["next_fire_at"])
                # Due within `ahead`: its fires up to the horizon, none of them late (the grace
                # stretched by `ahead` puts the misfire line where it is for `now`).
                early = next_fire > now
                try:
                    plan = timing.plan_fires(
                        t, next_fire, horizon if early else now,
                        grace=timedelta(seconds=row["misfire_grace_seconds"]
                                        + (ahead if early else 0)),
                        policy=row["misfire_policy"], run_all_limit=row["run_all_limit"],
                    )
                except timing.TimingError as exc:
                    # A definition that cannot be computed must not stall the batch: park it.
                    log.error("schedule %s cannot be computed (%s); it is not fired",
                              row["id"], exc)
                    advances.append((row["id"], None, None))
                    parked.append((row["id"], row["job_id"], str(exc)))
                    continue
                if early and len(plan.run) > min(
                        free, job.max_parallel - running.get(job.id, 0)):
                    result.deferred = True
                    continue  # not due yet and cannot start at once: left for its instant
                if plan.misfire is not None:
                    m = plan.misfire
                    misfires.append((row["id"], m.first, m.last, m.count, row["misfire_policy"],
                                     m.reason))
                    result.misfired += m.count
                for fire_at in plan.run:
                    result.fired += 1
                    busy = running.get(job.id, 0) >= job.max_parallel
                    if not busy and free > 0:
                        state = Task.State.RUNNING
                        running[job.id] = running.get(job.id, 0) + 1
                        free -= 1
                    elif busy and job.overlap_policy == Job.Overlap.SKIP:
                        state = Task.State.SKIPPED
                    else:
                        # Busy with `queue` or `replace`, or this member is full: it waits
                        # for a slot (any member may then take it).
                        state = Task.State.QUEUED
                        if busy and job.overlap_policy == Job.Overlap.REPLACE:
                            replace_jobs.add(job.id)
                    new_rows.append((job.id, row["id"], fire_at, state))
                last = plan.run[-1] if plan.run else None
                advances.append((row["id"], plan.next_fire, last))

            if result.deferred:
                # The batch holds fires left for their instant: claiming again at once would
                # fetch them again; the node plans its next claim for that instant instead.
                result.more = False
            inserted = _insert_fires(cluster_id, member_id, now, new_rows)
            _start_queued(member_id, now, [r["id"] for r in to_start])
            _advance_schedules(advances)
            if misfires:
                _record_misfires(cluster_id, member_id, misfires)
            if parked:
                eventlog.write_all([
                    eventlog.schedule_parked(cluster_id, member_id, job_id, sid, why)
                    for sid, job_id, why in parked
                ])
            if replace_jobs:
                # Runs of the schedule's job, not steps of orders that use the same job: a
                # step is no earlier fire of this schedule, and cancelling it would leave its
                # order suspended.
                Task.objects.filter(job_id__in=replace_jobs, state=Task.State.RUNNING,
                                    cancel_reason="", order__isnull=True).update(
                    cancel_reason="replaced by a newer run (overlap policy replace)")
    except Fenced:
        result.fenced = True
        return result

    for row in to_start:
        job = jobs[row["job_id"]]
        result.started.append(Started(
            task_id=row["id"], job=job, schedule_id=row["schedule_id"],
            scheduled_for=_as_dt(row["scheduled_for"]), attempt=row["attempt"],
            trigger=row["trigger"], parameters=_json(row["parameters"]),
            order_id=row["order_id"], order_step=row["order_step"],
            order_state=row["order_state"] or "",
        ))
    for task_id, job_id, schedule_id, fire_at, state in inserted:
        if state == Task.State.RUNNING:
            result.started.append(Started(
                task_id=task_id, job=jobs[job_id], schedule_id=schedule_id,
                scheduled_for=fire_at, attempt=1, trigger=Task.Trigger.SCHEDULE, parameters={},
            ))
    return result


def _db_now_in_tx() -> datetime:
    if _is_pg():
        with connection.cursor() as cursor:
            cursor.execute("SELECT clock_timestamp()")
            return cursor.fetchone()[0]
    return _utcnow()


# A started fire's started_at is its planned start (the claim, or its due instant when it was
# taken a little ahead) until the member writes when the job was really entered.
# On PostgreSQL the batch goes as arrays into one fixed-text statement, prepared once per
# connection: a multi-row VALUES list would be new text for every batch size, which psycopg's
# client-side binding parses and quotes again on every claim (a quarter of a member's CPU).
INSERT_FIRES_SQL = (
    "INSERT INTO scheduler_task (cluster_id, job_id, schedule_id, scheduled_for, attempt, "
    "trigger, state, member_id, not_before, created_at, claimed_at, started_at, finished_at, "
    "error, parameters, requested_by, cancel_reason) "
    "SELECT %(cluster)s, f.job_id, f.schedule_id, f.fire_at, 1, 'schedule', f.state, "
    "CASE WHEN f.state = 'running' THEN %(member)s::bigint END, "
    "CASE WHEN f.state = 'queued' THEN %(now)s::timestamptz END, %(now)s::timestamptz, "
    "CASE WHEN f.state = 'running' THEN %(now)s::timestamptz END, "
    "CASE WHEN f.state = 'running' THEN GREATEST(%(now)s::timestamptz, f.fire_at) END, "
    "CASE WHEN f.state = 'skipped' THEN %(now)s::timestamptz END, "
    "CASE WHEN f.state = 'skipped' THEN %(skipped)s ELSE '' END, '{}', '', '' "
    "FROM unnest(%(jobs)s::bigint[], %(schedules)s::bigint[], %(fires)s::timestamptz[], "
    "%(states)s::text[]) AS f(job_id, schedule_id, fire_at, state) "
    "ON CONFLICT DO NOTHING RETURNING id, job_id, schedule_id, scheduled_for, state"
)


def _insert_fires(cluster_id: int, member_id: int, now: datetime,
                  rows: list[tuple]) -> list[tuple]:
    """Insert fire tasks; the unique fire key drops any that exist. Returns what was inserted
    as (task id, job id, schedule id, scheduled_for, state)."""
    if not rows:
        return []
    out: list[tuple] = []
    if _is_pg():
        for chunk in _chunks(rows, 5000):
            out += _prepared(INSERT_FIRES_SQL, {
                "cluster": cluster_id, "member": member_id, "now": now,
                "skipped": SKIPPED_OVERLAP, "jobs": [r[0] for r in chunk],
                "schedules": [r[1] for r in chunk], "fires": [r[2] for r in chunk],
                # str(): psycopg would send an enum member by its name, not its value.
                "states": [str(r[3]) for r in chunk],
            })
    else:
        out = _insert_fires_values(cluster_id, member_id, now, rows)
    if len(out) != len(rows):
        log.warning("%d fire(s) were already in the ledger and were not started again",
                    len(rows) - len(out))
    return out


def _insert_fires_values(cluster_id: int, member_id: int, now: datetime,
                         rows: list[tuple]) -> list[tuple]:
    """SQLite: multi-row VALUES lists, CHUNK rows at a time (its variable limit)."""
    out: list[tuple] = []
    cols = ("cluster_id, job_id, schedule_id, scheduled_for, attempt, trigger, state, member_id, "
            "not_before, created_at, claimed_at, started_at, finished_at, error, parameters, "
            "requested_by, cancel_reason")
    nowp = _param(now)
    for chunk in _chunks(rows):
        values = []
        params: list = []
        for job_id, schedule_id, fire_at, state in chunk:
            running = state == Task.State.RUNNING
            skipped = state == Task.State.SKIPPED
            values.append(
                "(%s, %s, %s, %s, 1, 'schedule', %s, %s, %s, %s, %s, %s, %s, %s, '{}', '', '')")
            params += [
                cluster_id, job_id, schedule_id, _param(fire_at), state,
                member_id if running else None,
                nowp if state == Task.State.QUEUED else None,
                nowp, nowp if running else None,
                _param(max(now, fire_at)) if running else None, nowp if skipped else None,
                SKIPPED_OVERLAP if skipped else "",
            ]
        sql = (f"INSERT INTO scheduler_task ({cols}) VALUES {', '.join(values)} "
               "ON CONFLICT DO NOTHING RETURNING id, job_id, schedule_id, scheduled_for, state")
        with connection.cursor() as cursor:
            cursor.execute(sql, params)
            for task_id, job_id, schedule_id, fire_at, state in cursor.fetchall():
                out.append((task_id, job_id, schedule_id, _as_dt(fire_at), state))
    return out


def _start_queued(member_id: int, now: datetime, task_ids: list[int]) -> None:
    if task_ids:
        Task.objects.filter(id__in=task_ids, state=Task.State.QUEUED).update(
            state=Task.State.RUNNING, member_id=member_id, claimed_at=now, started_at=now
        )


def _advance_schedules(advances: list[tuple]) -> None:
    if not advances:
        return
    with connection.cursor() as cursor:
        if _is_pg():
            for chunk in _chunks(advances, 5000):
                cursor.execute(
                    "UPDATE scheduler_schedule AS s SET next_fire_at = v.nf, "
                    "last_fire_at = COALESCE(v.lf, s.last_fire_at) "
                    "FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::timestamptz[]) AS nf, "
                    "unnest(%s::timestamptz[]) AS lf) AS v WHERE s.id = v.id",
                    [[a[0] for a in chunk], [a[1] for a in chunk], [a[2] for a in chunk]],
                )
        else:
            cursor.executemany(
                "UPDATE scheduler_schedule SET next_fire_at = %s, "
                "last_fire_at = COALESCE(%s, last_fire_at) WHERE id = %s",
                [(_param(nf), _param(lf), sid) for sid, nf, lf in advances],
            )


def _record_misfires(cluster_id: int, member_id: int, misfires: list[tuple]) -> None:
    from scheduler.models import MisfireRecord

    MisfireRecord.objects.bulk_create([
        MisfireRecord(cluster_id=cluster_id, schedule_id=sid, first_fire_at=first,
                      last_fire_at=last, fire_count=count, policy=policy, reason=reason,
                      member_id=member_id)
        for sid, first, last, count, policy, reason in misfires
    ])
    eventlog.write_all([
        eventlog.misfire(cluster_id, member_id, sid, first, last, count, policy, reason)
        for sid, first, last, count, policy, reason in misfires
    ])


# ---------------------------------------------------------------- finishing


@dataclass(slots=True)
class Finished:
    task_id: int
    job: JobSnapshot
    schedule_id: int | None
    scheduled_for: datetime
    attempt: int
    parameters: dict
    state: str
    exit_code: int | None
    error: str
    data: dict | None
    log_text: str = ""
    # When the job was really entered (database clock); None: it never was.
    started_at: datetime | None = None
    # A step of an order (see Started).
    order_id: int | None = None
    order_step: int | None = None
    order_state: str = ""


def record_finished(cluster_id: int, member_id: int, finished: list[Finished],
                    logs: list[tuple[int, str]]) -> list[int]:
    """Write the outcomes of finished tasks and their last log chunks, store stateful jobs'
    data maps, and queue retries with backoff. Returns the ids whose result was discarded
    because the task is no longer ours (declared lost while this member was away)."""
    discarded: list[int] = []
    with transaction.atomic():
        write_logs(logs)
        if not finished:
            return discarded
        now = _db_now_in_tx()
        kept = _finish_rows(member_id, now, finished)
        discarded = [f.task_id for f in finished if f.task_id not in kept]
        retries = []
        cancelled = _cancel_lost_if_asked(finished, kept)
        step_ends: list[_orders.StepEnd] = []  # steps of orders that ended for good
        for f in finished:
            if f.task_id not in kept:
                continue
            if f.task_id in cancelled:
                if f.order_id is not None:
                    step_ends.append(_step_end(f, Task.State.CANCELLED))
                continue
            if f.state == Task.State.SUCCEEDED and f.job.stateful and f.data is not None:
                Job.objects.filter(pk=f.job.id).update(data_map=f.data)
            # A step of an order always runs again: its order waits for it.
            if f.state == Task.State.LOST and (f.job.recover_lost or kept[f.task_id] is None
                                               or f.order_id is not None):
                # Interrupted by its member's stop, or never entered (the start fence): another
                # member (or this one, back) runs it. One never entered always runs again.
                retries.append(Task(
                    cluster_id=cluster_id, job_id=f.job.id, schedule_id=f.schedule_id,
                    scheduled_for=f.scheduled_for, attempt=f.attempt + 1,
                    trigger=Task.Trigger.RECOVERY, state=Task.State.QUEUED, not_before=now,
                    parameters=f.parameters, retry_of_id=f.task_id, order_id=f.order_id,
                    order_step=f.order_step, order_state=f.order_state,
                ))
            retried = (f.state in (Task.State.FAILED, Task.State.TIMED_OUT)
                       and f.attempt <= f.job.max_retries)
            if f.order_id is not None and not retried and f.state != Task.State.LOST:
                step_ends.append(_step_end(f, f.state))
            if f.state in (Task.State.FAILED, Task.State.TIMED_OUT):
                if retried:
                    delay = timing.retry_delay(f.job.retry_backoff_seconds, f.attempt)
                    retries.append(Task(
                        cluster_id=cluster_id, job_id=f.job.id, schedule_id=f.schedule_id,
                        scheduled_for=f.scheduled_for, attempt=f.attempt + 1,
                        trigger=Task.Trigger.RETRY, state=Task.State.QUEUED,
                        not_before=now + timedelta(seconds=delay), parameters=f.parameters,
                        retry_of_id=f.task_id, order_id=f.order_id, order_step=f.order_step,
                        order_state=f.order_state,
                    ))
                eventlog.task_failed(cluster_id, member_id, f.job, f.task_id, f.state, f.error,
                                     retried=f.attempt <= f.job.max_retries)
        if retries:
            Task.objects.bulk_create(retries, ignore_conflicts=True)
        if step_ends:
            # Not fenced by check_fence, although DESIGN asks that an active member's writes
            # be: safe because every step end here is of a task _finish_rows kept, in this
            # transaction, by an UPDATE conditioned on the task still running, still this
            # member's, and the member live (LIVE_MEMBER). A member declared dead (or whose
            # tasks were declared lost) keeps nothing, so moves nothing; a recovery that races
            # with us waits for the task rows we hold and then finds them ended. A live member
            # that lost the passive cluster's lease still owns its running tasks (they are lost
            # only with a death), so their results are its to write, and nobody else can have
            # run those steps: an order running a step is claimed by no one. after_steps is
            # further guarded by the order's status `running` and step number (one move per
            # step), and only sets orders waiting: their next step needs a fenced claim.
            _orders.after_steps(member_id, now, step_ends)
    return discarded


def _step_end(f: Finished, outcome: str) -> _orders.StepEnd:
    return _orders.StepEnd(order_id=f.order_id, order_step=f.order_step, outcome=outcome,
                           task_id=f.task_id, job_id=f.job.id)


UNRECORDABLE = "its result could not be recorded: "


def _cancel_lost_if_asked(finished: list[Finished], kept) -> set[int]:
    """Tasks that ended `lost` here (interrupted by a stop, or refused by the start fence)
    although an operator had asked to cancel them: they end `cancelled`, and are not run
    again, as lose_member_tasks does for a dead member's. A query only when one ended lost."""
    lost = [f.task_id for f in finished if f.task_id in kept and f.state == Task.State.LOST]
    if not lost:
        return set()
    asked = dict(Task.objects.filter(pk__in=lost).exclude(cancel_reason="")
                 .values_list("pk", "cancel_reason"))
    for task_id, reason in asked.items():
        Task.objects.filter(pk=task_id).update(state=Task.State.CANCELLED,
                                               error=f"cancelled: {reason}")
    return set(asked)


def record_unrecordable(member_id: int, f: Finished, reason: str) -> bool:
    """The last resort for a result the database refused: the task ends `failed` with the
    reason, in one statement of plain values (no log chunk, data map, retry or event), in a
    transaction of its own. False when the task row is no longer ours (or gone)."""
    minimal = dataclasses.replace(f, state=Task.State.FAILED, error=UNRECORDABLE + reason,
                                  data=None)
    with transaction.atomic():
        now = _db_now_in_tx()
        ours = bool(_finish_rows(member_id, now, [minimal]))
        if ours and f.order_id is not None:
            _orders.after_steps(member_id, now, [_step_end(minimal, Task.State.FAILED)])
        return ours


# A member declared dead no longer owns its tasks' results: the recovery does.
LIVE_MEMBER = ("EXISTS (SELECT 1 FROM scheduler_member m WHERE m.id = t.member_id "
               "AND m.state IN ('active', 'standby', 'stopping'))")


# A task a Celery worker started keeps the worker's own start (celery_seen_at is its lease),
# also when the node ends it (cancel, stop, lease run out) before it saw that start.
WORKER_START = "CASE WHEN {t}.celery_seen_at IS NULL THEN {v} ELSE {t}.started_at END"


def _finish_rows(member_id: int, now: datetime,
                 finished: list[Finished]) -> dict[int, object]:
    """Conditional on the task still being ours and running: a result of a task that was
    declared lost (and perhaps re-run elsewhere) must not overwrite the ledger. Returns the
    rows written, each with the start it keeps, or None when it never started (the start may
    be a Celery worker's own, see WORKER_START: not the one in `finished`)."""
    kept: dict[int, object] = {}
    with connection.cursor() as cursor:
        if _is_pg():
            for chunk in _chunks(finished, 5000):
                cursor.execute(
                    "UPDATE scheduler_task AS t SET state = v.state, finished_at = %s, "
                    "exit_code = v.code, error = v.error, started_at = "
                    f"{WORKER_START.format(t='t', v='v.started')} "
                    "FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::text[]) AS state, "
                    "unnest(%s::int[]) AS code, unnest(%s::text[]) AS error, "
                    "unnest(%s::timestamptz[]) AS started) AS v "
                    "WHERE t.id = v.id AND t.state = 'running' AND t.member_id = %s "
                    f"AND {LIVE_MEMBER} RETURNING t.id, t.started_at",
                    [now, [f.task_id for f in chunk], [f.state for f in chunk],
                     [f.exit_code for f in chunk], [f.error[:10000] for f in chunk],
                     [f.started_at for f in chunk], member_id],
                )
                kept.update((r[0], r[1]) for r in cursor.fetchall())
        else:
            nowp = _param(now)
            for f in finished:
                cursor.execute(
                    "UPDATE scheduler_task SET state = %s, finished_at = %s, exit_code = %s, "
                    "error = %s, started_at = "
                    f"{WORKER_START.format(t='scheduler_task', v='%s')} "
                    "WHERE id = %s AND state = 'running' "
                    "AND member_id = %s "
                    f"AND {LIVE_MEMBER.replace('t.member_id', 'scheduler_task.member_id')}",
                    [f.state, nowp, f.exit_code, f.error[:10000], _param(f.started_at),
                     f.task_id, member_id],
                )
                if cursor.rowcount == 1:
                    kept[f.task_id] = f.started_at
                    if f.started_at is None:  # a worker's own start may have been kept
                        cursor.execute("SELECT started_at FROM scheduler_task WHERE id = %s",
                                       [f.task_id])
                        kept[f.task_id] = cursor.fetchone()[0]
    return kept


def write_starts(member_id: int, starts: list[tuple[int, datetime]]) -> None:
    """When running tasks' jobs were really entered (task id, database time): one statement
    for the batch. A task that ends before this is written gets its start with its end."""
    if not starts:
        return
    with connection.cursor() as cursor:
        if _is_pg():
            for chunk in _chunks(starts, 5000):
                cursor.execute(
                    "UPDATE scheduler_task AS t SET started_at = v.started "
                    "FROM (SELECT unnest(%s::bigint[]) AS id, "
                    "unnest(%s::timestamptz[]) AS started) AS v "
                    "WHERE t.id = v.id AND t.member_id = %s",
                    [[s[0] for s in chunk], [s[1] for s in chunk], member_id],
                )
        else:
            cursor.executemany(
                "UPDATE scheduler_task SET started_at = %s WHERE id = %s AND member_id = %s",
                [(_param(at), task_id, member_id) for task_id, at in starts],
            )


def record_ran_unowned(cluster_id: int, member_id: int, member_name: str,
                       entries: list[tuple[int, int, datetime]]) -> list[int]:
    """Write down jobs this member entered although their task was declared lost with it
    (task id, job id, entry time): the fire may have run again elsewhere, and the audit must
    say so. Only rows still there get it (a task, job or member deleted meanwhile has nothing
    left to audit); returns their ids. The rare path of a member that was unreachable: a
    statement per task is fine."""
    if not entries:
        return []
    written: list[tuple[int, int, datetime]] = []
    with transaction.atomic():
        for task_id, _job_id, at in entries:
            row = (Task.objects.filter(pk=task_id, member_id=member_id)
                   .exclude(state=Task.State.RUNNING).values("job_id", "member_id").first())
            if row is None:
                continue
            Task.objects.filter(pk=task_id, ran_unowned_at__isnull=True).update(ran_unowned_at=at)
            written.append((task_id, row["job_id"], at))
        eventlog.write_all([
            eventlog.task_ran_unowned(cluster_id, member_id, member_name, job_id, task_id, at)
            for task_id, job_id, at in written
        ])
    return [w[0] for w in written]


def write_logs(logs: list[tuple[int, str]]) -> None:
    """Append log chunks (one query for the tasks' log sizes, one bulk insert)."""
    from scheduler.models import TaskLog
    from scheduler.tasklogs import with_offsets

    logs = [(t, text) for t, text in logs if text]
    if logs:
        TaskLog.objects.bulk_create(with_offsets(logs))


# ---------------------------------------------------------------- recovery


def recover_lost_tasks(cluster_id: int, member_id: int, member_name: str, epoch: int | None,
                       dead_after: float) -> int:
    """Take over what dead members left: their running tasks are marked lost (and run again
    when their job asks for it) and their orders go back to their nodes. Fenced like a claim;
    the conditional updates make it happen once."""
    try:
        with transaction.atomic():
            check_fence(cluster_id, member_id, epoch, dead_after)
            returned = _return_orders_of_dead_members(cluster_id, member_name)
            dead = list(Member.objects.filter(cluster_id=cluster_id, state=Member.State.DEAD)
                        .filter(tasks__state=Task.State.RUNNING).distinct()
                        .values_list("id", "name"))
            lost = 0
            for dead_id, dead_name in dead:
                lost += lose_member_tasks(cluster_id, dead_id, by=member_name,
                                          why=f"member {dead_name} died while the task ran",
                                          died=True)
            return lost + returned
    except Fenced:
        return 0


# A task whose member died while running it this many times in a row (along its fire's
# recoveries) is not run again: its job very likely ends its node (os._exit, a crash of the
# interpreter, memory exhausted), and each recovery would take down one more member.
QUARANTINE_AFTER_DEATHS = 2


def lose_member_tasks(cluster_id: int, member_id: int, *, by: str, why: str,
                      died: bool = False) -> int:
    """Inside the caller's transaction: a member's running tasks end `lost` (with a recovery
    run queued when their job asks for it), except those an operator asked to cancel, which
    end `cancelled` and are not run again.

    `died`: the member died (rather than stopped): each of its tasks counts one more member
    death, carried into its recovery; at QUARANTINE_AFTER_DEATHS the task is quarantined,
    lost without a recovery, and an event says why."""
    rows = list(
        Task.objects.select_for_update().filter(member_id=member_id, state=Task.State.RUNNING)
        .values("id", "job_id", "schedule_id", "scheduled_for", "attempt", "parameters",
                "cancel_reason", "member_deaths", "job__recover_lost", "job__name",
                "order_id", "order_step", "order_state")
    )
    if not rows:
        return 0
    now = _db_now_in_tx()
    cancelled = [r["id"] for r in rows if r["cancel_reason"]]
    lost = [r for r in rows if not r["cancel_reason"]]
    for r in lost:
        r["deaths"] = r["member_deaths"] + (1 if died else 0)
        # A step of an order always runs again: its order waits for it.
        r["job__recover_lost"] = r["job__recover_lost"] or r["order_id"] is not None
    quarantined = [r for r in lost if died and r["deaths"] >= QUARANTINE_AFTER_DEATHS]
    lost = [r for r in lost if r not in quarantined]
    Task.objects.filter(id__in=cancelled, state=Task.State.RUNNING).update(
        state=Task.State.CANCELLED, finished_at=now, error=f"cancelled; then {why}")
    Task.objects.filter(id__in=[r["id"] for r in lost], state=Task.State.RUNNING).update(
        state=Task.State.LOST, lost_at=now, finished_at=now, error=f"lost: {why}")
    for r in quarantined:
        r["error"] = (f"lost and quarantined: {why}; its member died while running it "
                      f"{r['deaths']} times in a row: the job may end its node (e.g. os._exit, "
                      "a crash, memory exhausted), so it is not run again; run it by hand once "
                      "fixed (or give the python job isolation 'process')")
        Task.objects.filter(id=r["id"], state=Task.State.RUNNING).update(
            state=Task.State.LOST, lost_at=now, finished_at=now, error=r["error"])
    Task.objects.bulk_create([
        Task(cluster_id=cluster_id, job_id=r["job_id"], schedule_id=r["schedule_id"],
             scheduled_for=r["scheduled_for"], attempt=r["attempt"] + 1,
             trigger=Task.Trigger.RECOVERY, state=Task.State.QUEUED, not_before=now,
             parameters=r["parameters"], retry_of_id=r["id"], requested_by=by,
             member_deaths=r["deaths"], order_id=r["order_id"], order_step=r["order_step"],
             order_state=r["order_state"])
        for r in lost if r["job__recover_lost"]
    ], ignore_conflicts=True)
    # Steps that will not run again: a cancelled one leaves its order suspended at its node,
    # a quarantined one sends it along its error state.
    _orders.after_steps(None, now, [
        _orders.StepEnd(order_id=r["order_id"], order_step=r["order_step"], outcome=outcome,
                        task_id=r["id"], job_id=r["job_id"])
        for outcome, group in ((Task.State.CANCELLED, [r for r in rows if r["cancel_reason"]]),
                               ("quarantined", quarantined))
        for r in group if r["order_id"] is not None])
    eventlog.write_all(
        [eventlog.task_lost(cluster_id, member_id, by, r, why) for r in lost]
        + [eventlog.task_quarantined(cluster_id, member_id, by, r) for r in quarantined]
    )
    if quarantined:
        log.error("quarantined task(s) %s: their member died while running them %d times in a "
                  "row", [r["id"] for r in quarantined], QUARANTINE_AFTER_DEATHS)
    return len(rows)


def _return_orders_of_dead_members(cluster_id: int, by: str) -> int:
    """Orders held by a dead member are let go: an order of a chain that is not distributed
    may be adopted by another member. A step in flight stays the order's step: its task is
    declared lost and recovered (lose_member_tasks), the same step run again once, and the
    order moves when that run ends. Finished and failed orders stay as they are."""
    from scheduler.models import Order

    held = list(Order.objects.select_related("member")
                .filter(chain__cluster_id=cluster_id, member__state=Member.State.DEAD)
                .exclude(status__in=(Order.Status.FINISHED, Order.Status.FAILED)))
    returned = 0
    for order in held:
        was_running = order.status == Order.Status.RUNNING
        if was_running and not Task.objects.filter(
                order_id=order.pk, order_step=order.step,
                state__in=Task.UNFINISHED_STATES).exists():
            # A running order without a step in flight (rows from before steps were tasks):
            # back to its node, to be processed again.
            was_running = False
            status = Order.Status.WAITING
        else:
            status = order.status
        changed = Order.objects.filter(pk=order.pk, version=order.version).update(
            member=None, version=F("version") + 1, status=status)
        if changed:
            returned += 1
            eventlog.order_returned(order, cluster_id, by, was_running)
    return returned


def cancel_requests(member_id: int) -> list[tuple[int, str]]:
    """Running tasks of this member that an operator or the overlap policy asked to stop."""
    return list(
        Task.objects.filter(member_id=member_id, state=Task.State.RUNNING)
        .exclude(cancel_reason="").values_list("id", "cancel_reason")
    )


NEXT_FIRE_SQL = (
    "SELECT s.next_fire_at FROM scheduler_schedule s JOIN scheduler_job j ON j.id = s.job_id "
    "WHERE s.cluster_id = %s AND NOT s.paused AND s.next_fire_at IS NOT NULL AND NOT j.paused "
    "AND (j.affinity = '' OR j.affinity {items}) ORDER BY s.next_fire_at LIMIT 1"
)
NEXT_QUEUED_SQL = (
    "SELECT t.not_before FROM scheduler_task t JOIN scheduler_job j ON j.id = t.job_id "
    "WHERE t.cluster_id = %s AND t.state = 'queued' AND NOT j.paused "
    "AND (j.affinity = '' OR j.affinity {items}) {sticky_t}"
    f"AND {_RUNNING.format(job='t.job_id')} < j.max_parallel "
    "ORDER BY t.not_before LIMIT 1"
)


def next_wake(cluster_id: int, member_names: list[str],
              sticky_member: int | None = None) -> datetime | None:
    """The earliest time something claimable by this member becomes due: an ordered index
    scan that stops at the first row, and queued tasks only when their job has a free slot
    and (`sticky_member`, an active cluster) they are not another live member's steps (a
    blocked one would wake the node in a loop)."""
    candidates = []
    for sql in (NEXT_FIRE_SQL, NEXT_QUEUED_SQL):
        sql, after = _sticky(sql, [], sticky_member)
        rows = _fetch(sql.replace("{lock}", ""), [cluster_id], list(member_names), after)
        if rows and rows[0][0] is not None:
            candidates.append(_as_dt(rows[0][0]))
    return min(candidates) if candidates else None


from scheduler.ledger import orders as _orders  # noqa: E402  (it uses the helpers above)
