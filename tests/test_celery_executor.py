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
