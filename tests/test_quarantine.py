"""Poison tasks: a task whose member died while running it twice in a row is not run again."""

from __future__ import annotations

import pytest

from scheduler import ledger
from scheduler.models import Event, Member, Task
from tests.conftest import add_interval, add_job, is_postgres, wait_for


def member(cluster, name):
    return Member.objects.create(cluster=cluster, name=name, mode="active", host="h", pid=1,
                                 version="t")


def run_on(task, m):
    Task.objects.filter(pk=task.pk).update(state="running", member=m, started_at=task.created_at)


def die(cluster, m, died=True):
    Member.objects.filter(pk=m.pk).update(state="dead" if died else "stopped")
    ledger.lose_member_tasks(cluster.pk, m.pk, by="test", why=f"member {m.name} died",
                             died=died)


def recovery_of(task):
    return Task.objects.get(retry_of=task, trigger="recovery")


@pytest.mark.django_db
def test_a_task_is_quarantined_when_its_member_died_twice_in_a_row(cluster):
    job = add_job(cluster, "poison", recover_lost=True)
    a, b = member(cluster, "a"), member(cluster, "b")
    first = job.run_now()
    run_on(first, a)
    die(cluster, a)
    second = recovery_of(first)
    assert second.member_deaths == 1 and second.state == "queued"
    run_on(second, b)
    die(cluster, b)
    second.refresh_from_db()
    assert second.state == "lost" and "quarantined" in second.error
    assert "died while running it 2 times in a row" in second.error
    assert "os._exit" in second.error
    assert not Task.objects.filter(retry_of=second).exists()
    event = Event.objects.get(kind="task.quarantined")
    assert event.task_id == second.pk and event.job_id == job.pk
    assert event.data == {"recovered": False, "member_deaths": 2}
    # An operator can still run it.
    manual = job.run_now(actor="operator")
    assert manual.state == "queued" and manual.member_deaths == 0


@pytest.mark.django_db
def test_a_stop_of_its_member_does_not_count_as_a_death(cluster):
    job = add_job(cluster, "slow", recover_lost=True)
    a, b, c = member(cluster, "a"), member(cluster, "b"), member(cluster, "c")
    first = job.run_now()
    run_on(first, a)
    die(cluster, a)                      # 1 death
    second = recovery_of(first)
    run_on(second, b)
    die(cluster, b, died=False)          # stopped normally: no death counted
    third = recovery_of(second)
    assert third.member_deaths == 1
    run_on(third, c)
    die(cluster, c)                      # the 2nd death in the lineage: quarantined
    third.refresh_from_db()
    assert "quarantined" in third.error


@pytest.mark.django_db
def test_one_death_is_recovered_as_before(cluster):
    job = add_job(cluster, "once", recover_lost=True)
    a = member(cluster, "a")
    first = job.run_now()
    run_on(first, a)
    die(cluster, a)
    first.refresh_from_db()
    assert first.state == "lost" and "quarantined" not in first.error
    assert recovery_of(first).state == "queued"
    assert not Event.objects.filter(kind="task.quarantined").exists()


FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5"]


@pytest.mark.processes
@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not is_postgres(), reason="cluster tests need PostgreSQL")
def test_a_job_that_ends_its_node_kills_two_members_at_most_then_is_quarantined(
        cluster, start_node):
    poison = add_job(cluster, "poison", "tests.jobs:die", recover_lost=True)
    tick = add_job(cluster, "tick", "tests.jobs:noop")
    add_interval(tick, 1)
    args = ["--cluster", "test", "--distributed-orders", *FAST]
    a = start_node(*args, "--node", "a")
    b = start_node(*args, "--node", "b")
    wait_for(lambda: Member.objects.filter(state="active").count() == 2, timeout=20)
    poison.run_now(actor="tester")
    # The first member to run it dies; the other recovers it and dies too.
    assert a.wait(timeout=30) != 0
    assert b.wait(timeout=30) != 0
    assert Task.objects.filter(job=poison, trigger="recovery").count() == 1
    # A member that comes back quarantines it instead of running it a third time.
    c = start_node(*args, "--node", "a")
    quarantined = wait_for(lambda: Event.objects.filter(kind="task.quarantined").first(),
                           timeout=20, message="the quarantine")
    last = Task.objects.get(pk=quarantined.task_id)
    assert last.state == "lost" and last.member_deaths == 1 and last.attempt == 2
    assert "quarantined" in last.error
    assert not Task.objects.filter(job=poison, state__in=["queued", "running"]).exists()
    # It goes on firing the other job.
    since = Task.objects.filter(job=tick, state="succeeded").count()
    wait_for(lambda: Task.objects.filter(job=tick, state="succeeded").count() >= since + 3,
             timeout=20, message="the tick job to go on")
    assert c.proc.poll() is None, c.output()
    assert Member.objects.filter(state="dead").count() == 2
