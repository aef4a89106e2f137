"""Orders' steps, beside the fire claim: claim the next steps of waiting orders, and move an
order on when its step's task ends.

Exactly once rests on the same things as fires. A claim is one short transaction, fenced like
a fire claim (the passive cluster's lease epoch, or live membership): it locks a batch of
waiting orders (FOR UPDATE SKIP LOCKED on PostgreSQL; SQLite's IMMEDIATE transactions
serialise claims), moves each with an UPDATE guarded by the version it read and the status
`waiting`, and inserts the step's task for each order the update really moved, under the
unique key (order, order_step, attempt). The move after a step happens in the transaction
that records the task's end (ledger.record_finished, lose_member_tasks), guarded by the
order's status `running` and its step number: a result that is no longer its member's (the
task was declared lost) moves nothing, and a step's retry or recovery is the same step.

What happens at a node is chaingraph.step_at's: run the job (a task), pass a skipped node to
its next state, end at an end node (or the order's end state), wait at a stopped node.
After a step: success -> the node's next state; failure (after the job's retries), timeout or
quarantine -> its error state, and the order will end failed; cancelled by an operator -> the
order stays at the node, suspended (resume runs the step again; move or reset send it
elsewhere). A step whose member died is recovered (run again as the next attempt of the same
step, whatever the job's recover_lost) and the order stays running meanwhile. An order asked
to suspend while its step ran moves on and then waits, suspended.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.db import connection, transaction

from scheduler import eventlog, ledger, timing
from scheduler.chaingraph import Step, step_at

log = logging.getLogger("opscenter.ledger.orders")

ORDER_FIELDS = ["id", "version", "step", "state", "order_id", "parameters", "end_state",
                "error_path", "chain_id", "job_id", "action", "next_state", "repeat_kind"]

# {sticky}: in an active cluster, an order of a chain that is not distributed is taken only by
# the member that holds it, or by any member once that one is no longer live (or never was).
# Rows that cannot go on for a reason known here are not fetched (a stopped chain or node, a
# paused job, a job for other members, a job without a free slot, a chain at its limit), so they
# cannot fill the batch, nor make the node claim again at once for nothing. The jobs without a
# free slot and the chains at their limit are counted once per claim, not once per candidate
# row: busy_jobs counts the cluster's running tasks (bounded by its members' pools);
# full_chains the running orders of its chains with a limit only (bounded by their limits;
# index order_running). The candidates come in the claim's order from index order_claim
# (priority DESC, id; waiting orders only), so the scan stops after the batch instead of
# reading and sorting every waiting order of the database.
CLAIM_SQL = (
    "WITH busy_jobs AS (SELECT r.job_id FROM scheduler_task r "
    "JOIN scheduler_job rj ON rj.id = r.job_id WHERE r.cluster_id = %s AND r.state = 'running' "
    "GROUP BY r.job_id, rj.max_parallel HAVING count(*) >= rj.max_parallel), "
    "full_chains AS (SELECT rc.id AS chain_id FROM scheduler_jobchain rc "
    "WHERE rc.cluster_id = %s AND rc.max_orders IS NOT NULL AND (SELECT count(*) "
    "FROM scheduler_order r WHERE r.chain_id = rc.id AND r.status = 'running') "
    ">= rc.max_orders) "
    "SELECT o.id, o.version, o.step, o.state, o.order_id, o.parameters, o.end_state, "
    "o.error_path, o.chain_id, n.job_id, n.action, n.next_state, o.repeat_kind "
    "FROM scheduler_order o "
    "JOIN scheduler_jobchain c ON c.id = o.chain_id "
    "JOIN scheduler_chainnode n ON n.chain_id = o.chain_id AND n.state = o.state "
    "LEFT JOIN scheduler_job j ON j.id = n.job_id "
    "WHERE c.cluster_id = %s AND o.status = 'waiting' AND NOT c.stopped "
    "AND (o.next_start_at IS NULL OR o.next_start_at <= %s) "  # a repeating order: due?
    "AND (n.job_id IS NULL OR n.state = o.end_state OR n.action = 'skipped' OR ("
    "n.action = 'active' AND NOT j.paused AND (j.affinity = '' OR j.affinity {items}) "
    "AND n.job_id NOT IN (SELECT job_id FROM busy_jobs) "
    "AND o.chain_id NOT IN (SELECT chain_id FROM full_chains))) "
    "AND {sticky} "
    "ORDER BY o.priority DESC, o.id LIMIT %s {lock_o}"
)
STICKY = ("(c.distributed OR NOT EXISTS (SELECT 1 FROM scheduler_member m "
          "WHERE m.id = o.member_id AND m.id <> %s "
          "AND m.state IN ('active', 'standby', 'stopping')))")
CHAINS_SQL = "SELECT id, max_orders FROM scheduler_jobchain WHERE id {items} ORDER BY id {lock}"
CHAIN_RUNNING_SQL = ("SELECT chain_id, count(*) FROM scheduler_order "
                     "WHERE chain_id {items} AND status = 'running' GROUP BY chain_id")


@dataclass
class OrderClaim:
    started: list[ledger.Started] = field(default_factory=list)
    moved: int = 0          # orders passed through skipped nodes or ended at end nodes
    fenced: bool = False
    more: bool = False      # orders moved, or a full batch started steps: claim again at once


def _fetch(sql: str, before: list, items: list, after: list, sticky: int | None = None):
    if sticky is None:
        sql = sql.replace("{sticky}", "TRUE")
    else:
        sql = sql.replace("{sticky}", STICKY)
        after = [sticky, *after]
    sql = sql.replace("{lock_o}", "FOR UPDATE OF o SKIP LOCKED" if ledger._is_pg() else "")
    return ledger._fetch(sql, before, items, after)


def claim_steps(*, cluster_id: int, member_id: int, member_names: list[str], capacity: int,
                epoch: int | None, dead_after: float, sticky: bool,
                batch_limit: int = 1000) -> OrderClaim:
    """Take the next steps of waiting orders, up to `capacity` steps that start now, highest
    priority first; pass orders through skipped nodes and end those at end nodes on the way.
    `sticky` (an active cluster): orders of chains that are not distributed stay with the
    member that holds them. One transaction, fenced."""
    result = OrderClaim()
    if capacity <= 0:
        return result
    limit = min(capacity, batch_limit)
    try:
        with transaction.atomic():
            now = ledger.check_fence(cluster_id, member_id, epoch, dead_after)
            rows = [dict(zip(ORDER_FIELDS, row, strict=True)) for row in _fetch(
                CLAIM_SQL, [cluster_id, cluster_id, cluster_id, now], list(member_names), [limit],
                sticky=member_id if sticky else None)]
            if not rows:
                return result
            for row in rows:
                row["step_at"] = step_at({"state": row["state"], "job": row["job_id"],
                                          "action": row["action"]}, row["end_state"])
            runs = [r for r in rows if r["step_at"] == Step.RUN]
            jobs, running = ledger._lock_jobs({r["job_id"] for r in runs}) if runs else ({}, {})
            limits = _lock_chains({r["chain_id"] for r in runs})
            free = limit
            updates: list[tuple] = []   # (id, version, state, status, step)
            moves: list[dict] = []
            starts: list[dict] = []
            repeats: list[tuple[dict, str]] = []  # repeating orders at the end of a run
            for row in rows:
                step = row["step_at"]
                if step == Step.END:
                    status = "failed" if row["error_path"] else "finished"
                    if row["repeat_kind"]:
                        repeats.append((row, status))
                        continue
                    updates.append((row["id"], row["version"], row["state"], status,
                                    row["step"]))
                    moves.append(_move(row, row["state"], status, "end node" if not
                                       row["job_id"] else "its end state"))
                elif step == Step.SKIP:
                    updates.append((row["id"], row["version"], row["next_state"], "waiting",
                                    row["step"]))
                    moves.append(_move(row, row["next_state"], "waiting", "skipped"))
                elif step == Step.RUN:
                    job = jobs.get(row["job_id"])
                    if job is None or free <= 0 or running.get(job.id, 0) >= job.max_parallel:
                        continue  # paused meanwhile, or no slot: it waits for the next claim
                    chain = limits.get(row["chain_id"])
                    if chain is not None:
                        if chain[0] >= chain[1]:
                            continue
                        chain[0] += 1
                    running[job.id] = running.get(job.id, 0) + 1
                    free -= 1
                    updates.append((row["id"], row["version"], row["state"], "running",
                                    row["step"] + 1))
                    starts.append(row)
            moved = _update_waiting(member_id, now, updates)
            started = _insert_steps(cluster_id, member_id, now,
                                    [r for r in starts if r["id"] in moved])
            moves = [m for m in moves if m["order"] in moved]
            eventlog.write_all([eventlog.order_moved(cluster_id, member_id, "", m)
                                for m in moves])
            result.moved = len(moves) + restart_repeating(cluster_id, member_id, now, [
                {"row": row, "run": status, "end": row["state"], "error_path":
                 bool(row["error_path"]), "why": "end node" if not row["job_id"]
                 else "its end state", "guard": ("version", row["version"])}
                for row, status in repeats])
            # Claim again at once only after progress: orders moved (they wait at their next
            # node now), or a full batch of which something started. A batch that started
            # nothing (its rows lost a race for a slot) would be fetched again as it is.
            result.more = bool(moves) or (len(rows) >= limit and bool(started))
    except ledger.Fenced:
        result.fenced = True
        return result
    for row, task_id in started:
        result.started.append(ledger.Started(
            task_id=task_id, job=jobs[row["job_id"]], schedule_id=None, scheduled_for=now,
            attempt=1, trigger="order", parameters=ledger._json(row["parameters"]),
            order_id=row["id"], order_step=row["step"] + 1, order_state=row["state"]))
    return result


def _move(row: dict, to: str, status: str, why: str, **more) -> dict:
    return {"order": row["id"], "order_id": row["order_id"], "chain": row["chain_id"],
            "from": row["state"], "to": to, "status": status, "why": why, **more}


def _lock_chains(chain_ids: set[int]) -> dict[int, list[int]]:
    """Chains with a limit of orders at once, locked in id order (two members cannot both
    take the last slot), with [running, limit] read after the lock."""
    if not chain_ids:
        return {}
    limited = {cid: mo for cid, mo in _fetch(CHAINS_SQL, [], sorted(chain_ids), [])
               if mo is not None}
    if not limited:
        return {}
    counts = dict(_fetch(CHAIN_RUNNING_SQL, [], sorted(limited), []))
    return {cid: [counts.get(cid, 0), mo] for cid, mo in limited.items()}


def _update_waiting(member_id: int, now: datetime, updates: list[tuple]) -> set[int]:
    """Move waiting orders, each guarded by the version read: the ids really moved."""
    if not updates:
        return set()
    moved: set[int] = set()
    with connection.cursor() as cursor:
        if ledger._is_pg():
            cursor.execute(
                "UPDATE scheduler_order AS o SET state = v.state, status = v.status, "
                "step = v.step, member_id = %s, version = o.version + 1, updated_at = %s "
                "FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::bigint[]) AS version, "
                "unnest(%s::text[]) AS state, unnest(%s::text[]) AS status, "
                "unnest(%s::bigint[]) AS step) AS v "
                "WHERE o.id = v.id AND o.version = v.version AND o.status = 'waiting' "
                "RETURNING o.id",
                [member_id, now, *[[u[i] for u in updates] for i in range(5)]])
            moved.update(r[0] for r in cursor.fetchall())
        else:
            nowp = ledger._param(now)
            for oid, version, state, status, step in updates:
                cursor.execute(
                    "UPDATE scheduler_order SET state = %s, status = %s, step = %s, "
                    "member_id = %s, version = version + 1, updated_at = %s "
                    "WHERE id = %s AND version = %s AND status = 'waiting'",
                    [state, status, step, member_id, nowp, oid, version])
                if cursor.rowcount == 1:
                    moved.add(oid)
    return moved


def _insert_steps(cluster_id: int, member_id: int, now: datetime,
                  rows: list[dict]) -> list[tuple[dict, int]]:
    """The steps' tasks, running on this member, in one statement."""
    from scheduler.models import Task

    if not rows:
        return []
    tasks = Task.objects.bulk_create([
        Task(cluster_id=cluster_id, job_id=r["job_id"], scheduled_for=now, attempt=1,
             trigger=Task.Trigger.ORDER, state=Task.State.RUNNING, member_id=member_id,
             claimed_at=now, started_at=now, parameters=ledger._json(r["parameters"]),
             order_id=r["id"], order_step=r["step"] + 1, order_state=r["state"])
        for r in rows
    ])
    return [(r, t.pk) for r, t in zip(rows, tasks, strict=True)]


# ---------------------------------------------------------------- after a step

# A step's outcome -> which way the order goes.
NEXT = "next"
ERROR = "error"
STAY = "stay"
# (A lost step never ends here: it is recovered; quarantined is how one ends for good.)
OUTCOMES = {"succeeded": NEXT, "failed": ERROR, "timed_out": ERROR, "quarantined": ERROR,
            "cancelled": STAY}

AFTER_FIELDS = ["id", "step", "status", "state", "order_id", "chain_id", "suspend_requested",
                "error_path", "end_state", "next_state", "error_state", "cluster_id",
                "repeat_kind"]
AFTER_SQL = (
    "SELECT o.id, o.step, o.status, o.state, o.order_id, o.chain_id, o.suspend_requested, "
    "o.error_path, o.end_state, n.next_state, n.error_state, c.cluster_id, o.repeat_kind "
    "FROM scheduler_order o JOIN scheduler_jobchain c ON c.id = o.chain_id "
    "LEFT JOIN scheduler_chainnode n ON n.chain_id = o.chain_id AND n.state = o.state "
    "WHERE o.id {items} ORDER BY o.id {lock_o}"
)
NODES_SQL = ("SELECT chain_id, state, job_id, action FROM scheduler_chainnode "
             "WHERE chain_id {items}")


@dataclass(slots=True)
class StepEnd:
    """A step's task that ended for good (no retry or recovery of it follows)."""

    order_id: int
    order_step: int
    outcome: str      # a task state, or "quarantined"
    task_id: int
    job_id: int


def after_steps(member_id: int | None, now: datetime, ends: list[StepEnd]) -> int:
    """Inside the caller's transaction (the one recording the tasks' ends): move each order on
    from the step that ended. Guarded by the order's status `running` and its step number, so
    a step moves its order once. Returns how many orders now wait at a node (to be claimed)."""
    if not ends:
        return 0
    # Locked (PostgreSQL): an operator's request (suspend) waits, or is waited for.
    lock = "FOR UPDATE OF o" if ledger._is_pg() else ""
    orders = {r[0]: dict(zip(AFTER_FIELDS, r, strict=True)) for r in ledger._fetch(
        AFTER_SQL.replace("{lock_o}", lock), [], sorted({e.order_id for e in ends}), [])}
    nodes = {(c, s): {"state": s, "job": j, "action": a} for c, s, j, a in ledger._fetch(
        NODES_SQL, [], sorted({o["chain_id"] for o in orders.values()}), [])}
    updates: list[tuple] = []   # (id, step, state, status, error_path)
    moves: list[tuple[int, dict]] = []
    repeats: dict[int, list] = {}  # cluster -> repeating orders at the end of a run
    waiting = 0
    for e in ends:
        o = orders.get(e.order_id)
        if o is None or o["status"] != "running" or o["step"] != e.order_step:
            log.warning("order %s is no longer at step %s: task %s moves nothing",
                        e.order_id, e.order_step, e.task_id)
            continue
        way = OUTCOMES.get(e.outcome, ERROR)
        error_path = bool(o["error_path"]) or way == ERROR
        to = {NEXT: o["next_state"], ERROR: o["error_state"], STAY: o["state"]}[way] or ""
        target = nodes.get((o["chain_id"], to))
        if target is None:
            # The chain was edited under the running step: it stays where it is, suspended,
            # for an operator to move.
            to, status = o["state"], "suspended"
        elif way != STAY and step_at(target, o["end_state"]) == Step.END:
            status = "failed" if error_path else "finished"
            if o["repeat_kind"]:
                repeats.setdefault(o["cluster_id"], []).append({
                    "row": o, "run": status, "end": to, "error_path": error_path,
                    "why": e.outcome.replace("_", " "), "guard": ("step", e.order_step),
                    "suspend": bool(o["suspend_requested"]), "task": e.task_id,
                    "job": e.job_id})
                continue
        elif way == STAY or o["suspend_requested"]:
            status = "suspended"
        else:
            status = "waiting"
            waiting += 1
        updates.append((o["id"], e.order_step, to, status, error_path))
        why = {"succeeded": "succeeded", "cancelled": "was cancelled"}.get(
            e.outcome, e.outcome.replace("_", " "))
        moves.append((o["cluster_id"], _move(o, to, status, why, task=e.task_id,
                                             job=e.job_id)))
    moved = _update_running(member_id, now, updates)
    eventlog.write_all([eventlog.order_moved(cluster_id, member_id, "", m)
                        for cluster_id, m in moves if m["order"] in moved])
    for cluster_id, ended in repeats.items():
        restart_repeating(cluster_id, member_id, now, ended)
    return waiting


def _update_running(member_id: int | None, now: datetime, updates: list[tuple]) -> set[int]:
    if not updates:
        return set()
    moved: set[int] = set()
    with connection.cursor() as cursor:
        if ledger._is_pg():
            cursor.execute(
                "UPDATE scheduler_order AS o SET state = v.state, status = v.status, "
                "error_path = v.error_path, suspend_requested = FALSE, "
                "member_id = COALESCE(%s, o.member_id), version = o.version + 1, "
                "updated_at = %s "
                "FROM (SELECT unnest(%s::bigint[]) AS id, unnest(%s::bigint[]) AS step, "
                "unnest(%s::text[]) AS state, unnest(%s::text[]) AS status, "
                "unnest(%s::boolean[]) AS error_path) AS v "
                "WHERE o.id = v.id AND o.step = v.step AND o.status = 'running' "
                "RETURNING o.id",
                [member_id, now, *[[u[i] for u in updates] for i in range(5)]])
            moved.update(r[0] for r in cursor.fetchall())
        else:
            nowp = ledger._param(now)
            for oid, step, state, status, error_path in updates:
                cursor.execute(
                    "UPDATE scheduler_order SET state = %s, status = %s, error_path = %s, "
                    "suspend_requested = 0, member_id = COALESCE(%s, member_id), "
                    "version = version + 1, updated_at = %s "
                    "WHERE id = %s AND step = %s AND status = 'running'",
                    [state, status, error_path, member_id, nowp, oid, step])
                if cursor.rowcount == 1:
                    moved.add(oid)
    return moved


# ---------------------------------------------------------------- repeating orders
# (Order.repeat_kind: an order with its own schedule; see the Order model's text.)

REPEAT_SQL = ("SELECT id, repeat_kind, cron, timezone, interval_seconds, repeat_anchor_at, "
              "initial_state FROM scheduler_order WHERE id {items}")
# Per chain of the cluster (index order_due: a chain's waiting orders by next_start_at): the
# earliest due time still to come.
UPCOMING = ("(SELECT o.next_start_at FROM scheduler_order o WHERE o.chain_id = c.id "
            "AND o.status = 'waiting' AND o.next_start_at > {now} "
            "ORDER BY o.next_start_at LIMIT 1)")
NEXT_START_SQL = (f"SELECT min({UPCOMING}) FROM scheduler_jobchain c "
                  "WHERE c.cluster_id = %s AND NOT c.stopped")
# The node's probe before an order claim, unlocked and outside any transaction: does an order
# of the cluster wait that is due (not a repeating order waiting for its next due time), and
# when is the next repeating order due. A few index probes per chain of the cluster (index
# order_due), where a claim is a fenced write transaction (on SQLite the database's write
# lock). Whether a due order can really go on (its node, job, chain limit, member) is the
# claim's to judge: the probe only spares the claim when no order could.
PROBE_SQL = (
    "SELECT max(CASE WHEN EXISTS (SELECT 1 FROM scheduler_order o WHERE o.chain_id = c.id "
    "AND o.status = 'waiting' AND o.next_start_at IS NULL) OR EXISTS (SELECT 1 FROM "
    "scheduler_order o WHERE o.chain_id = c.id AND o.status = 'waiting' "
    "AND o.next_start_at <= {now}) THEN 1 ELSE 0 END), "
    f"min({UPCOMING}) FROM scheduler_jobchain c WHERE c.cluster_id = %s AND NOT c.stopped"
)
RESTART_SQL = (
    "UPDATE scheduler_order SET state = %s, status = %s, error_path = %s, next_start_at = %s, "
    "runs = runs + 1, suspend_requested = %s, member_id = COALESCE(%s, member_id), "
    "version = version + 1, updated_at = %s WHERE id = %s AND {guard}"
)
GUARDS = {"version": "version = %s AND status = 'waiting'",
          "step": "step = %s AND status = 'running'"}


def next_start(cluster_id: int, after: datetime) -> datetime | None:
    """The earliest due time after `after` of a repeating order of the cluster that waits for
    it (index order_due): the node's order claim sleeps until then at most."""
    with connection.cursor() as cursor:
        cursor.execute(NEXT_START_SQL.format(now="%s"), [ledger._param(after), cluster_id])
        row = cursor.fetchone()
    return ledger._as_dt(row[0]) if row else None


def probe(cluster_id: int) -> tuple[bool, datetime | None]:
    """Whether an order of the cluster waits that is due now (on the database's clock), and
    the earliest due time still to come of a repeating order (PROBE_SQL). One statement."""
    with connection.cursor() as cursor:
        if ledger._is_pg():
            # statement_timestamp(): the database's time, and stable (an index condition).
            cursor.execute(PROBE_SQL.format(now="statement_timestamp()"), [cluster_id])
        else:
            now = ledger._param(ledger._utcnow())
            cursor.execute(PROBE_SQL.format(now="%s"), [now, now, cluster_id])
        row = cursor.fetchone()
    if row is None:
        return False, None
    return bool(row[0]), ledger._as_dt(row[1])


def next_due(row, now: datetime) -> datetime | None:
    """A repeating order's next due time: the first strictly after `now` (timing.next_fire).
    Runs missed before `now` are not owed one by one (the run_once policy)."""
    _, kind, cron, zone, seconds, anchor, _initial = row
    try:
        return timing.next_fire(timing.Timing(
            kind=kind, cron=cron or "", timezone=zone or "UTC",
            interval_seconds=seconds or 0, anchor=ledger._as_dt(anchor) or now), now)
    except (timing.TimingError, OverflowError):
        return None


def restart_repeating(cluster_id: int, member_id: int | None, now: datetime,
                      ended: list[dict]) -> int:
    """Inside the caller's transaction: repeating orders at the end of a run (an end node or
    their end state; `run` finished or failed) go back to their initial state, waiting (or
    suspended, when asked to while their last step ran) until their next due time, their
    error path forgotten; one event per run (order.finished / order.failed, naming the next
    due time). Each update is guarded like the move it replaces: the version read by the
    claim (`waiting`) or the step that ended (`running`). An order whose schedule has no
    next due time ends as any order would. Returns how many orders moved."""
    if not ended:
        return 0
    defs = {r[0]: r for r in ledger._fetch(REPEAT_SQL, [], sorted({e["row"]["id"]
                                                                   for e in ended}), [])}
    events = []
    nowp = ledger._param(now)
    with connection.cursor() as cursor:
        for e in ended:
            row, found = e["row"], defs.get(e["row"]["id"])
            if found is None:
                continue
            due = next_due(found, now)
            if due is None or not found[1]:  # nothing more to come: it ends here
                state, status, error_path = e["end"], e["run"], e["error_path"]
            else:
                state, error_path = found[6], False
                status = "suspended" if e.get("suspend") else "waiting"
            guard, value = e["guard"]
            cursor.execute(RESTART_SQL.format(guard=GUARDS[guard]), [
                state, status, error_path, ledger._param(due) if status != e["run"] else None,
                False, member_id, nowp, row["id"], value])
            if cursor.rowcount != 1:
                continue
            move = _move(row, state, status, e["why"], end=e["end"], **(
                {"task": e["task"], "job": e["job"]} if e.get("task") else {}))
            if status != e["run"]:
                move.update(run=e["run"], next_start=due.isoformat())
            events.append(eventlog.order_moved(cluster_id, member_id, "", move))
    eventlog.write_all(events)
    return len(events)
