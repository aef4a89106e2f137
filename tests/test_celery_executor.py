"""The celery executor: a real node sends the work to a real Celery worker (local Redis)."""

from __future__ import annotations

import uuid

import pytest

from scheduler.models import Task
from tests.celery_support import REDIS_URL, Worker, ended, log_text, require_broker
from tests.conftest import add_job, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5"]

require_broker("Redis", REDIS_URL)
# The nodes send through it too, whatever OPSCENTER_CELERY_BROKER says in this shell.
BROKER = {"OPSCENTER_CELERY_BROKER": REDIS_URL}


@pytest.fixture
def worker():
    workers: list[Worker] = []

    def start(queue: str) -> Worker:
        w = Worker(queue, REDIS_URL)
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


@pytest.fixture
def queue():
    return f"opsc-test-{uuid.uuid4().hex[:10]}"


def test_a_celery_job_runs_on_the_worker_and_its_row_ends_succeeded_or_failed(
        cluster, start_node, worker, queue):
    ok = add_job(cluster, "cel-ok", "echo hello from $OPSCENTER_PARAM_WHO", kind="shell",
                 executor="celery", celery_queue=queue, parameters={"WHO": "celery"})
    bad = add_job(cluster, "cel-bad", "echo going down; exit 3", kind="shell",
                  executor="celery", celery_queue=queue)
    w = worker(queue)
    node = start_node("--cluster", "test", "--node", "n1", *FAST, env=BROKER)
    t_ok, t_bad = ok.run_now("test"), bad.run_now("test")
    done_ok = wait_for(ended(t_ok), timeout=60, message=f"ok task\n{w.output()}\n"
                                                          f"{node.output()}")
    done_bad = wait_for(ended(t_bad), timeout=30, message="failing task")
    assert done_ok.state == "succeeded", (done_ok.error, w.output())
    assert done_ok.exit_code == 0 and done_ok.started_at and done_ok.finished_at
    assert done_ok.celery_seen_at is not None  # the worker ran it, not the node
    assert "hello from celery" in log_text(done_ok)
    assert done_bad.state == "failed" and done_bad.exit_code == 3
    assert "going down" in log_text(done_bad)
    assert "opscenter.run_task" in w.output()
    # The node forgot them without a write of its own and stays healthy.
    wait_for(lambda: not Task.objects.filter(state="running").exists(), timeout=5)


def test_a_worker_killed_mid_task_leaves_the_task_lost_and_recovered(
        cluster, start_node, worker, queue):
    job = add_job(cluster, "cel-slow", "echo started; sleep 20", kind="shell",
                  executor="celery", celery_queue=queue, recover_lost=True)
    w = worker(queue)
    start_node("--cluster", "test", "--node", "n1", *FAST,
               env={**BROKER, "OPSCENTER_CELERY_LEASE_TIMEOUT": "3"})
    task = job.run_now("test")
    wait_for(lambda: Task.objects.filter(pk=task.pk, celery_seen_at__isnull=False).exists(),
             timeout=60, message=f"the worker takes the task\n{w.output()}")
    w.kill()
    lost = wait_for(ended(task), timeout=30, message="the task ends")
    assert lost.state == "lost", lost.error
    assert "Celery worker" in lost.error
    recovery = wait_for(lambda: Task.objects.filter(retry_of=task).first(), timeout=10,
                        message="a recovery")
    assert recovery.trigger == "recovery"
    # A new worker runs the recovery; the lost row stays as it was.
    worker(queue)
    wait_for(lambda: Task.objects.filter(pk=recovery.pk, celery_seen_at__isnull=False).exists(),
             timeout=60, message="the recovery runs on the new worker")
    assert Task.objects.get(pk=task.pk).state == "lost"


def test_a_task_no_worker_takes_ends_failed_and_a_late_worker_runs_nothing(
        cluster, start_node, worker, queue):
    job = add_job(cluster, "cel-nobody", "echo should not run", kind="shell",
                  executor="celery", celery_queue=queue)
    start_node("--cluster", "test", "--node", "n1", *FAST,
               env={**BROKER, "OPSCENTER_CELERY_START_TIMEOUT": "2"})
    task = job.run_now("test")
    done = wait_for(ended(task), timeout=30, message="the task ends without a worker")
    assert done.state == "failed" and "no Celery worker took the task" in done.error
    # A worker that comes later takes the waiting message and runs nothing.
    w = worker(queue)
    wait_for(lambda: "opscenter.run_task" in w.output(), timeout=60,
             message="the late worker takes the message")
    done.refresh_from_db()
    assert done.state == "failed" and done.celery_seen_at is None
    assert "should not run" not in log_text(done)


def test_a_worker_keeps_its_connection_and_replaces_one_that_broke(
        cluster, start_node, worker, queue):
    """The worker keeps its database session across tasks (not one per task), and a session
    the database dropped meanwhile is replaced at the next task's start."""
    from django.db import connection

    from tests.conftest import is_postgres

    if not is_postgres():
        pytest.skip("counts and ends PostgreSQL sessions")
    job = add_job(cluster, "cel-again", "echo again", kind="shell", executor="celery",
                  celery_queue=queue)
    w = worker(queue)
    start_node("--cluster", "test", "--node", "n1", *FAST, env=BROKER)

    def run_once() -> Task:
        done = wait_for(ended(job.run_now("test")), timeout=60,
                        message=f"the task ends\n{w.output()}")
        assert done.state == "succeeded", (done.error, w.output())
        return done

    def sessions() -> int:
        """Sessions established to the test database so far (PostgreSQL 14+)."""
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_stat_clear_snapshot()")
            cursor.execute("SELECT sessions FROM pg_stat_database "
                           "WHERE datname = current_database()")
            return cursor.fetchone()[0]

    run_once()
    before = sessions()
    for _ in range(5):
        run_once()
    new = sessions() - before
    assert new <= 2, f"{new} sessions for 5 tasks"  # not one (or two) per task
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = "
                       "current_database() AND pid <> pg_backend_pid()")
    run_once()  # the worker's dropped session is replaced; the node reconnects too
