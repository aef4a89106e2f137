"""Who did something, from which door, and why; and one writer per kind of event.

Every door (admin, console, command line, API) builds one `Actor` and passes it to the model
method it calls; the method writes it into the event it records. What a node does on its own
is recorded with the member as its actor and the door "node".

Each event kind has its writer here, so its message and data are written in one place.
Most writers insert the event and return it. The few called in a node's hot path or for
many rows at once (misfires, lost tasks, ...) return it unsaved: the caller inserts a batch
with `write_all`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scheduler.models import Event, Job, Member, Order, Schedule, Task


@dataclass(frozen=True)
class Actor:
    name: str  # a user name, or a member's name for what a node does on its own
    source: str = ""  # the door: admin, console, cli, api, node
    reason: str = ""  # the operator's words, if asked for one

    def __str__(self) -> str:
        return self.name


def node(name: str) -> Actor:
    """A member acting on its own."""
    return Actor(name=name, source="node")


NODE = Actor(name="", source="node")  # a node's event that names no one


def _model() -> type[Event]:
    # Imported when an event is written: the models import this module (and an Actor is
    # usable before Django is set up).
    from scheduler.models import Event

    return Event


def _kind():
    return _model().Kind


def build(cluster_id: int, kind: str, message: str, actor: Actor | str = "",
          **fields) -> Event:
    """An unsaved event of any kind (a kind's writer below is the way to write one); an Actor
    brings its door and reason, a plain name neither."""
    return _model()(
        cluster_id=cluster_id, kind=kind, message=message, actor=str(actor or ""),
        source=getattr(actor, "source", ""), reason=getattr(actor, "reason", ""), **fields,
    )


def _write(cluster_id: int, kind: str, message: str, actor: Actor | str = "",
           **fields) -> Event:
    event = build(cluster_id, kind, message, actor, **fields)
    event.save(force_insert=True)
    return event


def write_all(events: list[Event]) -> list[Event]:
    """Insert a batch of unsaved events in one statement."""
    return _model().objects.bulk_create(events) if events else []


# ---------------------------------------------------------------- operator actions


def job_created(job: Job, actor: Actor | str) -> Event:
    return _write(job.cluster_id, _kind().JOB_CREATED, f"job {job.name} created ({job.kind})",
                  actor, job_id=job.pk)


def job_changed(job: Job, fields: list[str], actor: Actor | str) -> Event:
    names = ", ".join(sorted(f for f in fields if f != "updated_at")) or "nothing"
    return _write(job.cluster_id, _kind().JOB_CHANGED, f"job {job.name} changed: {names}",
                  actor, job_id=job.pk, data={"fields": sorted(fields)})


def job_deleted(job: Job, actor: Actor | str) -> Event:
    """Before the delete: the event keeps the name (its link to the job goes with the row)."""
    return _write(job.cluster_id, _kind().JOB_DELETED, f"job {job.name} deleted", actor,
                  job_id=job.pk, data={"job": job.pk, "name": job.name})


def schedule_deleted(schedule: Schedule, actor: Actor | str) -> Event:
    return _write(schedule.cluster_id, _kind().SCHEDULE_DELETED,
                  f"schedule {schedule.pk} of job {schedule.job.name} deleted "
                  f"({schedule.describe()})", actor, job_id=schedule.job_id,
                  data={"schedule": schedule.pk})


def job_paused(job: Job, actor: Actor | str) -> Event:
    return _write(job.cluster_id, _kind().JOB_PAUSED, f"job {job.name} paused", actor,
                  job_id=job.pk)


def job_resumed(job: Job, actor: Actor | str) -> Event:
    return _write(job.cluster_id, _kind().JOB_RESUMED, f"job {job.name} resumed", actor,
                  job_id=job.pk)


def job_run_now(job: Job, task: Task, actor: Actor | str) -> Event:
    return _write(job.cluster_id, _kind().JOB_RUN_NOW, f"job {job.name}: run now requested",
                  actor, job_id=job.pk, task=task)


def _schedule_defined(kind: str, schedule: Schedule, actor: Actor | str) -> Event:
    return _write(schedule.cluster_id, kind,
                  f"schedule {schedule.pk} of job {schedule.job.name}: {schedule.describe()}",
                  actor, job_id=schedule.job_id, schedule=schedule,
                  data={"definition": schedule.definition(), "version": schedule.version})


def schedule_created(schedule: Schedule, actor: Actor | str) -> Event:
    """The definition in force from now (audited against the fires on both sides)."""
    return _schedule_defined(_kind().SCHEDULE_CREATED, schedule, actor)


def schedule_changed(schedule: Schedule, actor: Actor | str) -> Event:
    return _schedule_defined(_kind().SCHEDULE_CHANGED, schedule, actor)


def schedule_paused(schedule: Schedule, actor: Actor | str) -> Event:
    return _write(schedule.cluster_id, _kind().SCHEDULE_PAUSED,
                  f"schedule {schedule.pk} of job {schedule.job.name} paused", actor,
                  job_id=schedule.job_id, schedule=schedule)


def schedule_resumed(schedule: Schedule, actor: Actor | str) -> Event:
    return _write(schedule.cluster_id, _kind().SCHEDULE_RESUMED,
                  f"schedule {schedule.pk} of job {schedule.job.name} resumed", actor,
                  job_id=schedule.job_id, schedule=schedule)


def task_cancel(task: Task, reason: str, actor: Actor | str) -> Event:
    return _write(task.cluster_id, _kind().TASK_CANCEL, f"{task}: cancel ({reason})", actor,
                  job_id=task.job_id, task=task)


def switchover_requested(cluster_id: int, target: Member, actor: Actor | str) -> Event:
    return _write(cluster_id, _kind().SWITCHOVER_REQUESTED,
                  f"switch-over to {target.name} requested by {str(actor) or 'an operator'}", actor,
                  member=target)


# ---------------------------------------------------------------- membership and the lease


def member_joined(member: Member) -> Event:
    return _write(
        member.cluster_id, _kind().MEMBER_JOINED,
        f"member {member.name} joined ({member.mode}"
        f"{', ' + member.role if member.role else ''}) on {member.host} pid {member.pid}",
        node(member.name), member=member,
        data={"host": member.host, "ip": member.ip, "pid": member.pid,
              "version": member.version, "labels": member.labels, "role": member.role,
              "precedence": member.backup_precedence},
    )


def member_dead(member: Member, by: str, reason: str) -> Event:
    """Declared dead by another member (`by`), for `reason`."""
    return _write(member.cluster_id, _kind().MEMBER_DEAD,
                  f"member {member.name} declared dead by {by}: {reason}", node(by),
                  member=member)


def member_gone(member: Member, successor: str) -> Event:
    """A member whose process on this host is gone, seen by the member starting after it."""
    return _write(member.cluster_id, _kind().MEMBER_DEAD,
                  f"member {member.name} (pid {member.pid}) on this host is gone: "
                  "declared dead by its successor", node(successor), member=member)


def member_stopping(member: Member) -> Event:
    return _write(member.cluster_id, _kind().MEMBER_STOPPING,
                  f"member {member.name} is stopping", node(member.name), member=member)


def member_stopped(member: Member, reason: str) -> Event:
    return _write(member.cluster_id, _kind().MEMBER_STOPPED,
                  f"member {member.name} stopped: {reason}", node(member.name), member=member)


def member_active(member: Member, epoch: int) -> Event:
    """A standby member that was handed the lease (switch-over) is now active."""
    return _write(member.cluster_id, _kind().MEMBER_ACTIVE,
                  f"member {member.name} is now the active member (epoch {epoch}, handed over)",
                  node(member.name), member=member)


def lease_taken(member: Member, epoch: int, why: str) -> Event:
    return _write(member.cluster_id, _kind().LEASE_TAKEN,
                  f"member {member.name} is now the active member (epoch {epoch}): {why}",
                  node(member.name), member=member, data={"epoch": epoch})


def lease_lost(member: Member, why: str) -> Event:
    return _write(member.cluster_id, _kind().LEASE_LOST,
                  f"member {member.name} lost the lease ({why}) and stands by",
                  node(member.name), member=member)


def lease_reclaimed(member: Member, holder: Member) -> Event:
    """The primary, back, asks the backup holding the lease to hand it over."""
    return _write(member.cluster_id, _kind().SWITCHOVER_REQUESTED,
                  f"primary {member.name} reclaims the lease from {holder.name}",
                  node(member.name), member=member)


def lease_handover(member: Member, target: Member, epoch: int) -> Event:
    """`member` handed the lease to `target`; `epoch` is the new one."""
    return _write(member.cluster_id, _kind().LEASE_HANDOVER,
                  f"member {member.name} handed the lease to {target.name} (epoch {epoch})",
                  node(member.name), member=member, data={"to": target.name, "epoch": epoch})


# ---------------------------------------------------------------- fires and tasks (the node)


def schedule_parked(cluster_id: int, member_id: int, job_id: int, schedule_id: int,
                    why: str) -> Event:
    """Unsaved: a schedule whose next fire cannot be computed no longer fires."""
    return build(cluster_id, _kind().SCHEDULE_CHANGED,
                f"schedule {schedule_id} cannot be computed ({why}); it no longer fires "
                "until it is edited", NODE, member_id=member_id, job_id=job_id,
                schedule_id=schedule_id, data={"parked": True, "error": why})


def misfire(cluster_id: int, member_id: int, schedule_id: int, first: datetime,
            last: datetime, count: int, policy: str, reason: str) -> Event:
    """Unsaved: fires of a schedule missed and not run."""
    return build(cluster_id, _kind().MISFIRE,
                f"schedule {schedule_id}: {count} missed fire(s) from {first:%Y-%m-%d %H:%M:%S} "
                f"to {last:%Y-%m-%d %H:%M:%S} UTC not run ({reason})", NODE,
                member_id=member_id, schedule_id=schedule_id,
                data={"first": first.isoformat(), "last": last.isoformat(), "count": count,
                      "policy": policy, "reason": reason})


def task_failed(cluster_id: int, member_id: int, job: Job, task_id: int, state: str,
                error: str, retried: bool) -> Event:
    return _write(cluster_id, _kind().TASK_FAILED,
                  f"task {task_id} of job {job.name} {state.replace('_', ' ')}: {error}"
                  + (" (retry queued)" if retried else ""), NODE,
                  member_id=member_id, job_id=job.id, task_id=task_id)


def task_ran_unowned(cluster_id: int, member_id: int, member_name: str, job_id: int,
                     task_id: int, at: datetime) -> Event:
    """Unsaved: a task entered on a member after the task was declared lost with it."""
    return build(cluster_id, _kind().TASK_RAN_UNOWNED,
                f"task {task_id}: its job was entered on member {member_name} at "
                f"{at.astimezone(UTC):%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC, but the "
                "task was declared lost with that member: the fire may have run twice",
                node(member_name), member_id=member_id, job_id=job_id, task_id=task_id,
                data={"task": task_id, "member": member_name, "entered_at": at.isoformat()})


def task_lost(cluster_id: int, member_id: int, by: str, task: dict, why: str) -> Event:
    """Unsaved: `task` is a row with id, job_id, job__name, job__recover_lost, deaths."""
    recovered = task["job__recover_lost"]
    return build(cluster_id, _kind().TASK_LOST,
                f"task {task['id']} of job {task['job__name']} lost: {why}"
                + ("; recovery run queued" if recovered else ""), node(by),
                member_id=member_id, job_id=task["job_id"], task_id=task["id"],
                data={"recovered": recovered, "member_deaths": task["deaths"]})


def task_quarantined(cluster_id: int, member_id: int, by: str, task: dict) -> Event:
    """Unsaved: as task_lost, the row's error saying why it is not run again."""
    return build(cluster_id, _kind().TASK_QUARANTINED,
                f"task {task['id']} of job {task['job__name']} {task['error']}", node(by),
                member_id=member_id, job_id=task["job_id"], task_id=task["id"],
                data={"recovered": False, "member_deaths": task["deaths"]})


def order_returned(order: Order, cluster_id: int, by: str, was_running: bool) -> Event:
    """An order held by a dead member goes back to its node or may be adopted."""
    return _write(cluster_id, _kind().ORDER_RETURNED,
                  f"order {order.order_id} of dead member {order.member.name} "
                  + (f"runs its step at {order.state} again (its task is recovered)"
                     if was_running else "may be adopted by another member"), node(by),
                  member_id=order.member_id,
                  data={"order": order.pk, "state": order.state, "was_running": was_running})


# ---------------------------------------------------------------- chains and orders


def _order_data(order: Order, **more) -> dict:
    return {"order": order.pk, "order_id": order.order_id, "chain": order.chain_id,
            "state": order.state, "status": order.status, **more}


def order_action(order: Order, action: str, actor: Actor | str, what: str) -> Event:
    """An operator's action on an order (add, suspend, resume, reset, move, remove)."""
    return _write(order.chain.cluster_id, f"order.{action}",
                  f"order {order.order_id} of chain {order.chain.name}: {what}", actor,
                  data=_order_data(order))


def order_changed(order: Order, fields: list[str], actor: Actor | str) -> Event:
    """An operator edited an order's definition (the admin's form): which fields."""
    return _write(order.chain.cluster_id, _kind().ORDER_CHANGED,
                  f"order {order.order_id} of chain {order.chain.name}: changed "
                  f"{', '.join(fields)} (version {order.version})", actor,
                  data=_order_data(order, fields=fields, version=order.version))


def chain_stopped(chain, stopped: bool, actor: Actor | str) -> Event:
    kind = _kind().CHAIN_STOP if stopped else _kind().CHAIN_UNSTOP
    return _write(chain.cluster_id, kind,
                  f"job chain {chain.name} {'stopped' if stopped else 'no longer stopped'}",
                  actor, data={"chain": chain.pk})


def node_action(node, action: str, actor: Actor | str) -> Event:
    return _write(node.chain.cluster_id, _kind().NODE_ACTION,
                  f"node {node.state} of job chain {node.chain.name} is now {action}", actor,
                  job_id=node.job_id, data={"chain": node.chain_id, "node": node.pk,
                                            "state": node.state, "action": action})


def order_moved(cluster_id: int, member_id: int | None, by: str, move: dict) -> Event:
    """Unsaved: what a node did with an order. `move` has order (pk), order_id, chain (pk),
    from, to, status (the order's new one), why (succeeded, failed, skipped, end, cancelled,
    quarantined), and task and job when a step ended."""
    status = move["status"]
    kinds = _kind()
    # A repeating order's run that ended (`run`: finished or failed): the run's event, though
    # the order itself waits again at its initial state (`to`) until `next_start`.
    kind = {"finished": kinds.ORDER_FINISHED, "failed": kinds.ORDER_FAILED,
            "suspended": kinds.ORDER_SUSPENDED}.get(move.get("run", status), kinds.ORDER_MOVED)
    step = f"step at {move['from']} {move['why']}" if move.get("task") else \
        f"node {move['from']}: {move['why']}"
    if move.get("run"):
        what = (f"run {move['run']} at {move['end']} ({step}); repeats: {status} at "
                f"{move['to']} until {move['next_start']}")
    elif status in ("finished", "failed"):
        what = f"{status} at {move['to']} ({step})"
    elif move["from"] == move["to"]:
        what = f"{status} at {move['to']} ({step})"
    else:
        what = f"moved from {move['from']} to {move['to']} ({step})" + (
            ", suspended" if status == "suspended" else "")
    return build(cluster_id, kind, f"order {move['order_id']}: {what}", node(by) if by else NODE,
                 member_id=member_id, job_id=move.get("job"), task_id=move.get("task"),
                 data={k: move[k] for k in ("order", "order_id", "chain", "from", "to",
                                             "status", "why", "run", "end", "next_start")
                       if k in move})
