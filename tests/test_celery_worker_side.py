"""The worker's side of the celery executor, in this process (no broker): its guarded start
and what the node's own end of a task keeps of the worker's start."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from scheduler import ledger
from scheduler.executors.base import Outcome
from scheduler.executors.celery_executor import _finished, run_on_worker
from scheduler.models import Member, Task
from tests.conftest import add_job

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def member(cluster):
    return Member.objects.create(cluster=cluster, name="m", mode="single", host="h", pid=1,
                                 version="x", state="active")


def running(job, member, claimed_ago: float) -> Task:
    at = timezone.now() - timedelta(seconds=claimed_ago)
    return Task.objects.create(cluster=job.cluster, job=job, member=member, trigger="manual",
                               state="running", scheduled_for=at, claimed_at=at, started_at=at)


def payload(task: Task, member: Member) -> dict:
    return {"task_id": task.pk, "cluster_id": member.cluster_id, "member_id": member.pk,
            "run": {"job_name": task.job.name, "kind": "shell", "command": "echo ran",
                    "working_directory": "", "parameters": {}, "data": {}, "timeout": None,
                    "scheduled_for": None, "attempt": 1, "cluster": "test", "member": "m",
                    "isolation": "thread", "stateful": False}}


def test_a_worker_does_not_start_a_task_the_node_may_be_ending_as_not_taken(
        cluster, member, settings):
    settings.OPSCENTER = {**settings.OPSCENTER, "CELERY_START_TIMEOUT": 20.0}
    job = add_job(cluster, "cel", "echo ran", kind="shell", executor="celery")
    late = running(job, member, claimed_ago=16)  # within the 5 s margin of the 20 s
    assert run_on_worker(payload(late, member)) == "refused"
    late.refresh_from_db()
    assert late.state == "running" and late.celery_seen_at is None
    fresh = running(job, member, claimed_ago=1)
    assert run_on_worker(payload(fresh, member)) == "succeeded"
    fresh.refresh_from_db()
    assert fresh.state == "succeeded" and fresh.celery_seen_at is not None


def test_the_nodes_end_of_a_task_keeps_the_start_its_worker_wrote(cluster, member):
    job = add_job(cluster, "cel", "sleep 60", kind="shell", executor="celery")
    task = running(job, member, claimed_ago=1)
    worker_start = timezone.now()
    Task.objects.filter(pk=task.pk).update(started_at=worker_start, celery_seen_at=worker_start)
    # The node cancels it before its look saw the start: it knows no start (None).
    ended = _finished(task.pk, Outcome("cancelled", None, "cancelled"))
    ended.started_at = None
    assert ledger.record_finished(cluster.pk, member.pk, [ended], []) == []
    task.refresh_from_db()
    assert task.state == "cancelled" and task.started_at == worker_start
    # A task no worker took keeps no start.
    never = running(job, member, claimed_ago=1)
    ended = _finished(never.pk, Outcome("failed", None, "no Celery worker took the task"))
    ended.started_at = None
    ledger.record_finished(cluster.pk, member.pk, [ended], [])
    never.refresh_from_db()
    assert never.state == "failed" and never.started_at is None


def test_a_task_its_worker_started_is_recovered_only_if_its_job_says_so(cluster, member):
    """The node ends it lost (its stop) before its look saw the worker's start: the ledger
    judges by the start on the row, so a job that does not recover lost tasks is not run
    again beside its worker; one that never started always runs again."""
    job = add_job(cluster, "cel", "sleep 60", kind="shell", executor="celery",
                  recover_lost=False)
    started = running(job, member, claimed_ago=1)
    Task.objects.filter(pk=started.pk).update(started_at=timezone.now(),
                                              celery_seen_at=timezone.now())
    never = running(job, member, claimed_ago=1)
    ends = []
    for task in (started, never):
        ended = _finished(task.pk, Outcome("lost", None, "interrupted by the stop"))
        ended.started_at = None
        ends.append(ended)
    assert ledger.record_finished(cluster.pk, member.pk, ends, []) == []
    assert not Task.objects.filter(retry_of=started).exists()
    assert Task.objects.filter(retry_of=never, trigger="recovery").count() == 1
