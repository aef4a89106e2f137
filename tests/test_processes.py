"""Real `runscheduler` processes against the test database."""

from __future__ import annotations

import signal
from datetime import timedelta

import psutil
import pytest
from django.db.models import Count

from scheduler.models import Event, Member, Task
from tests.conftest import add_interval, add_job, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5"]




def live_member(name):
    return lambda: Member.objects.filter(name=name, state__in=Member.LIVE_STATES).first()


def test_one_second_schedule_has_one_task_per_fire_and_none_missing(cluster, start_node):
    job = add_job(cluster, "every-second", "tests.test_node:noop", kind="python")
    schedule = add_interval(job, 1)
    node = start_node("--cluster", "test", "--node", "n1", *FAST)
    wait_for(lambda: Task.objects.filter(schedule=schedule, state="succeeded").count() >= 12,
             timeout=30, message="twelve fires")
    node.signal(signal.SIGTERM)
    assert node.wait() == 0, node.output()
    times = list(Task.objects.filter(schedule=schedule).order_by("scheduled_for")
                 .values_list("scheduled_for", flat=True))
    assert len(times) == len(set(times))
    # No gap: consecutive fires are exactly one interval apart, from the anchor on.
    assert times[0] == schedule.anchor_at
    assert all(b - a == timedelta(seconds=1) for a, b in zip(times, times[1:], strict=False))
    assert not Task.objects.exclude(state="succeeded").exists()
    # Started on the schedule, not at some poll: never early, and never a whole interval
    # late (the figures under load are the benchmark's business, not a test's).
    late = [t.lateness for t in Task.objects.filter(schedule=schedule)]
    assert min(late) >= timedelta(0) and max(late) < timedelta(seconds=5), late


def test_sigterm_leaves_no_task_running_and_the_member_stopped(cluster, start_node):
    job = add_job(cluster, "long", "echo started; sleep 600", kind="shell")
    task = job.run_now()
    node = start_node("--cluster", "test", "--node", "n1", "--stop-grace", "0.5", *FAST)
    wait_for(lambda: "started" in Task.objects.get(pk=task.pk).log_text(), timeout=20,
             message="the task to start")
    children = psutil.Process(node.pid).children(recursive=True)
    assert children, "the shell job should be a child of the node"
    node.signal(signal.SIGTERM)
    assert node.wait(timeout=20) == 0, node.output()
    task.refresh_from_db()
    assert task.state == "lost" and "stop" in task.error
    assert not Task.objects.filter(state="running").exists()
    member = Member.objects.get(name="n1")
    assert member.state == "stopped" and member.stop_reason == "normal stop"
    assert member.stopped_at is not None
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    kinds = list(Event.objects.filter(member=member).values_list("kind", flat=True))
    assert {"member.joined", "member.stopping", "member.stopped"} <= set(kinds)


def test_a_second_live_member_with_the_same_name_is_refused(cluster, start_node):
    first = start_node("--cluster", "test", "--node", "same", *FAST)
    wait_for(live_member("same"), timeout=20)
    second = start_node("--cluster", "test", "--node", "same", *FAST)
    assert second.wait(timeout=20) != 0
    assert "a live member named 'same' is already in cluster 'test'" in second.output()
    assert Member.objects.filter(name="same").count() == 1
    assert first.proc.poll() is None


def test_a_member_of_another_mode_is_refused(cluster, start_node):
    start_node("--cluster", "test", "--node", "a", "--distributed-orders", *FAST)
    wait_for(live_member("a"), timeout=20)
    other = start_node("--cluster", "test", "--node", "b", "--exclusive", *FAST)
    assert other.wait(timeout=20) != 0
    out = other.output()
    assert "runs as a active cluster" in out and "--distributed-orders" in out, out
    assert not Member.objects.filter(name="b").exists()


@pytest.mark.parametrize("args, message", [
    (["--node", "x"], "--cluster NAME is required"),
    (["--cluster", "bad name!"], "is not a valid name"),
    (["--cluster", "c", "--backup"], "--backup needs --exclusive"),
    (["--cluster", "c", "--distributed-orders", "--exclusive", "--backup"],
     "do not go together"),
    (["--cluster", "c", "--workers", "0"],
     "argument --workers: '0' is out of range: allowed is a whole number from 1 to"),
    (["--cluster", "c", "--dead-after", "0.5", "--heartbeat-interval", "1"],
     "--dead-after (OPSCENTER_DEAD_AFTER) must be longer"),
])
def test_bad_options_are_refused_with_a_message(db, start_node, args, message):
    node = start_node(*args)
    assert node.wait(timeout=20) != 0
    assert message in node.output()
    assert not Member.objects.exists()


def test_run_now_on_a_running_node_starts_at_once(cluster, start_node):
    job = add_job(cluster, "adhoc", "echo adhoc", kind="shell")
    start_node("--cluster", "test", "--node", "n1", *FAST)
    wait_for(live_member("n1"), timeout=20)
    task = job.run_now(actor="tester")
    done = wait_for(lambda: Task.objects.filter(pk=task.pk, state="succeeded").first(),
                    timeout=10, message="the manual run")
    assert done.log_text() == "adhoc\n"
    # On PostgreSQL the NOTIFY wakes the node at once; SQLite has no NOTIFY, so the node
    # looks within a heartbeat (0.2 s here) rather than at its next fire or never.
    assert done.started_at - done.created_at < timedelta(seconds=2)


def test_no_fire_runs_twice_with_two_processes(cluster, start_node):
    jobs = [add_job(cluster, f"j{i}", "tests.test_node:noop", kind="python") for i in range(10)]
    schedules = [add_interval(job, 1) for job in jobs]
    a = start_node("--cluster", "test", "--node", "a", "--distributed-orders", *FAST)
    b = start_node("--cluster", "test", "--node", "b", "--distributed-orders", *FAST)
    wait_for(lambda: Task.objects.filter(state="succeeded").count() >= 80, timeout=40)
    for node in (a, b):
        node.signal(signal.SIGTERM)
    for node in (a, b):
        assert node.wait(timeout=20) == 0, node.output()
    doubles = (Task.objects.values("schedule_id", "scheduled_for").annotate(n=Count("id"))
               .filter(n__gt=1))
    assert not doubles.exists()
    for schedule in schedules:
        times = list(Task.objects.filter(schedule=schedule).order_by("scheduled_for")
                     .values_list("scheduled_for", flat=True))
        assert all(y - x == timedelta(seconds=1) for x, y in zip(times, times[1:], strict=False))
    by_member = dict(Task.objects.filter(member__isnull=False).values_list("member__name")
                     .annotate(n=Count("id")))
    assert set(by_member) == {"a", "b"}, by_member
