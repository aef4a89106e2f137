"""Jobs of kind `task` (django.tasks): enqueued on django-tasks-db, run by a real `db_worker`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.utils import timezone
from django_tasks_db.models import DBTaskResult

from scheduler import executors
from scheduler.executors import djtasks
from scheduler.models import Job, Task
from tests.conftest import add_interval, add_job, database_url, wait_for

ROOT = Path(__file__).resolve().parent.parent
FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5"]


class DBWorker:
    """A real `manage.py db_worker` (django-tasks-db) against the test database. It runs one
    task at a time: start several for tasks that run at once."""

    def __init__(self, number: int = 0):
        self.log = open(Path(os.environ.get("TMPDIR", "/tmp"))  # noqa: SIM115
                        / f"opsc-dbw-{os.getpid()}-{number}.log", "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "manage.py"), "db_worker", "--interval", "0.1",
             "--no-startup-delay", "--no-reload"],
            cwd=ROOT, env={**os.environ, "DATABASE_URL": database_url(),
                           "PYTHONUNBUFFERED": "1"},
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.log.close()
        Path(self.log.name).unlink(missing_ok=True)


@pytest.fixture
def db_worker():
    worker = DBWorker()
    yield worker.proc
    worker.stop()


@pytest.fixture
def three_db_workers():
    workers = [DBWorker(n) for n in range(3)]
    yield workers
    for worker in workers:
        worker.stop()


def run_to_end(run: executors.TaskRun, log: executors.LogBuffer, cancel: executors.Cancel,
               timeout: float = 30.0) -> executors.Outcome:
    """What a node does: its pool thread hands the task to django.tasks (outcome SENT), then
    its loop follows the result until it ends."""
    outcome = executors.execute(run, log, cancel)
    if outcome.state != executors.SENT:
        return outcome
    sent = executors.Sent(run, log, cancel, time.monotonic(), outcome.handle)
    followed = wait_for(lambda: djtasks.follow(0, {run.task_id: sent})[0].outcome,
                        timeout=timeout, message="the end of the result")
    return followed


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_task_job_fires_once_per_due_time_and_ends_with_its_result(
        cluster, start_node, db_worker):
    job = add_job(cluster, "adder", "scheduler.demo_tasks.add", kind="task",
                  parameters={"a": 2, "b": 3})
    schedule = add_interval(job, 1)
    start_node("--cluster", "test", "--node", "n1", *FAST)
    wait_for(lambda: Task.objects.filter(schedule=schedule, state="succeeded").count() >= 3,
             timeout=40, message="three fires ran by the db_worker")
    done = list(Task.objects.filter(schedule=schedule, state="succeeded"))
    times = [t.scheduled_for for t in Task.objects.filter(schedule=schedule)]
    assert len(times) == len(set(times))  # once per due time
    ids = [t.external_id for t in done]
    assert all(ids) and len(set(ids)) == len(ids)
    # One enqueued result per task, each successful with the return value logged.
    results = DBTaskResult.objects.filter(id__in=ids)
    assert {r.status for r in results} == {"SUCCESSFUL"} and results.count() == len(ids)
    assert all(r.return_value == {"sum": 5} for r in results)
    assert 'return value: {"sum": 5}' in done[0].log_text()
    assert done[0].exit_code == 0


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_failing_task_ends_failed_with_its_error(cluster, start_node, db_worker):
    job = add_job(cluster, "failing", "scheduler.demo_tasks.fail", kind="task",
                  parameters={"message": "boom 42"})
    start_node("--cluster", "test", "--node", "n1", *FAST)
    task = job.run_now(actor="tester")
    done = wait_for(lambda: Task.objects.filter(pk=task.pk, state="failed").first(),
                    timeout=30, message="the failed run")
    assert "RuntimeError: boom 42" in done.error
    assert "RuntimeError: boom 42" in done.log_text()
    assert DBTaskResult.objects.get(id=done.external_id).status == "FAILED"


def _results(task_ids, **filters):
    ids = [i for i in Task.objects.filter(pk__in=task_ids).values_list("external_id", flat=True)
           if i]
    return DBTaskResult.objects.filter(id__in=ids, **filters)


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_node_with_one_pool_thread_keeps_three_task_jobs_in_flight_and_runs_its_own_job(
        cluster, start_node, three_db_workers, tmp_path):
    release = tmp_path / "release"
    waiting = add_job(cluster, "waiting", "tests.task_jobs.wait_for_file", kind="task",
                      parameters={"path": str(release)}, max_parallel=3, timeout_seconds=120)
    local = add_job(cluster, "local", "echo on the node", kind="shell")
    node = start_node("--cluster", "test", "--node", "n1", "--workers", "1", *FAST)
    ids = [waiting.run_now("test").pk for _ in range(3)]

    # All three run on the db_workers at once: none holds the node's only pool thread.
    wait_for(lambda: _results(ids, status="RUNNING").count() == 3, timeout=60,
             message=f"three results running\n{node.output()}")
    # The node's own job runs meanwhile, on that one thread.
    mine = local.run_now("test")
    done = wait_for(lambda: Task.objects.filter(pk=mine.pk, state="succeeded").first(),
                    timeout=30, message=f"the node's own job\n{node.output()}")
    assert done.member.name == "n1"
    # The task jobs could not have ended: they wait for the file.
    assert Task.objects.filter(pk__in=ids, state="running").count() == 3

    release.touch()
    wait_for(lambda: Task.objects.filter(pk__in=ids, state="succeeded").count() == 3,
             timeout=30, message=f"the three task jobs end\n{node.output()}")
    for task in Task.objects.filter(pk__in=ids):
        assert 'return value: "released"' in task.log_text()
        assert task.started_at is not None and task.exit_code == 0


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_cancelled_task_job_ends_at_once_and_its_result_runs_on(
        cluster, start_node, db_worker, tmp_path):
    release = tmp_path / "release"
    job = add_job(cluster, "waiting", "tests.task_jobs.wait_for_file", kind="task",
                  parameters={"path": str(release)})
    node = start_node("--cluster", "test", "--node", "n1", "--workers", "1", *FAST)
    task = job.run_now("test")
    wait_for(lambda: _results([task.pk], status="RUNNING").exists(), timeout=60,
             message=f"the db_worker runs it\n{node.output()}")
    task.refresh_from_db()
    assert task.request_cancel("test")
    ended = wait_for(lambda: Task.objects.filter(pk=task.pk).exclude(state="running").first(),
                     timeout=15, message="the cancel")
    assert ended.state == "cancelled", ended.error
    assert "django.tasks cannot stop it, so it may still run" in ended.log_text()
    # django.tasks cannot stop a result: it runs to its end; the task stays cancelled.
    release.touch()
    wait_for(lambda: _results([task.pk], status="SUCCESSFUL").exists(), timeout=30,
             message="the result ends")
    ended.refresh_from_db()
    assert ended.state == "cancelled"


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_clean_stop_waits_the_grace_for_task_jobs_in_flight(cluster, start_node, db_worker,
                                                              tmp_path):
    """Within the grace, the result's end is the task's end; after it, the task ends lost
    (interrupted by the stop of its member), and its recovery follows the same result."""
    from scheduler.models import Member

    release = tmp_path / "release"
    job = add_job(cluster, "waiting", "tests.task_jobs.wait_for_file", kind="task",
                  parameters={"path": str(release)})
    node = start_node("--cluster", "test", "--node", "n1", "--workers", "1",
                      "--stop-grace", "30", *FAST)
    task = job.run_now("test")
    wait_for(lambda: _results([task.pk], status="RUNNING").exists(), timeout=60,
             message=f"the db_worker runs it\n{node.output()}")
    node.signal(signal.SIGTERM)
    wait_for(lambda: Member.objects.filter(name="n1", state="stopping").exists(), timeout=10,
             message="the node stopping")
    release.touch()
    assert node.wait(30) == 0
    task.refresh_from_db()
    assert task.state == "succeeded", task.error
    assert Member.objects.get(name="n1").stop_reason == "normal stop"

    release.unlink()
    node = start_node("--cluster", "test", "--node", "n1", "--workers", "1",
                      "--stop-grace", "1", *FAST)
    task = job.run_now("test")
    wait_for(lambda: _results([task.pk], status="RUNNING").exists(), timeout=60,
             message=f"the db_worker runs it\n{node.output()}")
    node.signal(signal.SIGTERM)
    assert node.wait(30) == 0
    task.refresh_from_db()
    assert task.state == "lost" and "interrupted by the stop of its member" in task.error
    assert "stopped following result" in task.log_text()

    # The next member recovers it: it follows the same result, not enqueued again.
    enqueued = DBTaskResult.objects.count()
    node = start_node("--cluster", "test", "--node", "n1", "--workers", "1", *FAST)
    recovery = wait_for(lambda: Task.objects.filter(retry_of=task, trigger="recovery").first(),
                        timeout=30, message=f"the recovery\n{node.output()}")
    release.touch()
    recovery = wait_for(lambda: Task.objects.filter(pk=recovery.pk, state="succeeded").first(),
                        timeout=30, message=f"the recovery ends\n{node.output()}")
    assert recovery.external_id == task.external_id
    assert "not enqueued again" in recovery.log_text()
    assert DBTaskResult.objects.count() == enqueued


@pytest.mark.processes
@pytest.mark.django_db(transaction=True)
def test_a_recovery_follows_the_result_of_the_lost_attempt(cluster, db_worker):
    """The node that enqueued died: its recovery does not enqueue a second time."""
    from scheduler.demo_tasks import add

    job = add_job(cluster, "adder", "scheduler.demo_tasks.add", kind="task",
                  parameters={"a": 1, "b": 1})
    first = add.enqueue(a=1, b=1)
    now = timezone.now()
    lost = Task.objects.create(cluster=cluster, job=job, scheduled_for=now, trigger="manual",
                               state="lost", external_id=str(first.id))
    recovery = Task.objects.create(cluster=cluster, job=job, scheduled_for=now, attempt=2,
                                   trigger="recovery", state="running", retry_of=lost)
    log = executors.LogBuffer()
    run = executors.TaskRun(task_id=recovery.pk, job_name=job.name, kind="task",
                            command=job.command, parameters=job.parameters, timeout=30)
    outcome = run_to_end(run, log, executors.Cancel())
    assert outcome.state == "succeeded", (outcome, log.drain())
    assert "not enqueued again" in log.drain()
    assert DBTaskResult.objects.count() == 1
    recovery.refresh_from_db()
    assert recovery.external_id == str(first.id)


@pytest.mark.django_db
def test_following_stops_at_the_timeout_without_a_worker(cluster):
    job = add_job(cluster, "slow", "scheduler.demo_tasks.sleep", kind="task")
    row = Task.objects.create(cluster=cluster, job=job, scheduled_for=timezone.now(),
                              trigger="manual", state="running")
    log = executors.LogBuffer()
    run = executors.TaskRun(task_id=row.pk, job_name=job.name, kind="task",
                            command=job.command, timeout=0.3)
    outcome = run_to_end(run, log, executors.Cancel())
    assert outcome.state == "timed_out"
    assert "stopped following result" in log.drain()
    row.refresh_from_db()
    assert DBTaskResult.objects.get(id=row.external_id).status == "READY"


BAD_PATHS = [
    ("scheduler.demo_jobs:report", "not a django.tasks task"),  # a plain function
    ("scheduler.demo_tasks.missing", "has no attribute 'missing'"),
    ("nowhere.at_all", "No module named 'nowhere'"),
    ("not a path", "expected 'package.module.function'"),
]


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "reason"), BAD_PATHS)
def test_a_bad_path_is_refused_by_the_model(cluster, path, reason):
    job = Job(cluster=cluster, name="t", kind="task", command=path)
    with pytest.raises(ValidationError) as exc:
        job.full_clean()
    message = " ".join(exc.value.message_dict["command"])
    assert "function decorated with Django's @task" in message and reason in message


@pytest.mark.django_db
def test_parameters_must_be_argument_names(cluster):
    job = Job(cluster=cluster, name="t", kind="task", command="scheduler.demo_tasks.add",
              parameters={"not-a-name": 1})
    with pytest.raises(ValidationError) as exc:
        job.full_clean()
    assert "cannot be an argument name" in " ".join(exc.value.message_dict["parameters"])
    Job(cluster=cluster, name="t", kind="task", command="scheduler.demo_tasks.add",
        parameters={"a": 1}).full_clean()


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "reason"), BAD_PATHS)
def test_a_bad_path_is_refused_by_addjob(cluster, path, reason):
    with pytest.raises(CommandError, match="@task"):
        call_command("addjob", "--cluster", "test", "t", "--task", path, stdout=StringIO())
    assert not Job.objects.filter(name="t").exists()
    call_command("addjob", "--cluster", "test", "t", "--task", "scheduler.demo_tasks.add",
                 stdout=StringIO())
    assert Job.objects.get(name="t").kind == "task"


@pytest.mark.django_db
def test_a_bad_path_is_refused_by_the_admin(admin_client, cluster):
    from tests.test_admin import job_form, url

    response = admin_client.post(url(Job, "add"), job_form(
        cluster, kind="task", command="scheduler.demo_jobs:report"))
    assert response.status_code == 200
    assert "not a django.tasks task" in response.content.decode()
    assert not Job.objects.exists()
    response = admin_client.post(url(Job, "add"), job_form(
        cluster, kind="task", command="scheduler.demo_tasks.add", parameters='{"a": 4}'))
    assert response.status_code == 302
    assert Job.objects.get().kind == "task"


