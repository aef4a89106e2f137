"""The event writers: each kind's message in one place, the actor's door and reason kept."""

from __future__ import annotations

from datetime import UTC, datetime

from scheduler import eventlog, membership
from scheduler.eventlog import Actor
from scheduler.models import Event, Member, Task


def add_member(cluster, name: str, state: str = "active") -> Member:
    return Member.objects.create(cluster=cluster, name=name, host="h", pid=1, state=state)


def test_an_operator_action_records_the_actor_s_door_and_reason(shell_job):
    shell_job.pause(Actor(name="alice", source="console", reason="storage maintenance"))
    event = Event.objects.get(kind="job.paused")
    assert (event.actor, event.source, event.reason) == ("alice", "console",
                                                         "storage maintenance")
    assert event.message == "job echo paused" and event.job_id == shell_job.pk


def test_a_plain_name_is_still_an_actor_without_a_door(shell_job):
    task = shell_job.run_now("tester")
    event = Event.objects.get(kind="job.run_now")
    assert (event.actor, event.source, event.task_id) == ("tester", "", task.pk)
    assert task.requested_by == "tester"


def test_what_a_node_does_itself_names_the_member_and_the_node_door(cluster):
    member = add_member(cluster, "n1")
    membership.mark_stopped(member, "asked to stop")
    event = Event.objects.get(kind="member.stopped")
    assert (event.actor, event.source) == ("n1", "node")
    assert event.message == "member n1 stopped: asked to stop"


def test_writers_for_batches_return_unsaved_events_written_in_one_insert(shell_job):
    task = Task.objects.create(cluster=shell_job.cluster, job=shell_job, state="lost",
                               scheduled_for=datetime(2026, 1, 1, tzinfo=UTC))
    row = {"id": task.pk, "job_id": shell_job.pk, "job__name": "echo",
           "job__recover_lost": True, "deaths": 1}
    lost = eventlog.task_lost(shell_job.cluster_id, None, "n2", row, "member n1 died")
    assert lost.pk is None
    eventlog.write_all([lost])
    event = Event.objects.get(kind="task.lost")
    assert event.message == (f"task {task.pk} of job echo lost: member n1 died; "
                             "recovery run queued")
    assert (event.actor, event.source, event.data) == (
        "n2", "node", {"recovered": True, "member_deaths": 1})
    assert eventlog.write_all([]) == []


def test_a_switch_over_names_who_asked_or_an_operator(cluster):
    target = add_member(cluster, "primary", state="standby")
    eventlog.switchover_requested(cluster.pk, target, Actor(name="", source="api"))
    eventlog.switchover_requested(cluster.pk, target, Actor(name="bob", source="cli"))
    assert list(Event.objects.order_by("id").values_list("message", "source")) == [
        ("switch-over to primary requested by an operator", "api"),
        ("switch-over to primary requested by bob", "cli"),
    ]
