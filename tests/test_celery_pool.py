"""A Celery task holds no pool slot of its node: a node with one worker thread keeps several
Celery tasks in flight and still runs its own jobs; and what the celery executor declares
(time limit, stateful data map) holds (real node, real worker, local Redis)."""

from __future__ import annotations

import signal
import uuid
from pathlib import Path

import pytest

from scheduler.models import Task
from tests.celery_support import REDIS_URL, Worker, require_broker
from tests.conftest import add_job, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5"]


@pytest.fixture
def worker():
    """A Celery worker with a pool of 4 threads on a queue of its own."""
    require_broker("Redis", REDIS_URL)
    proc = Worker(f"opsc-pool-{uuid.uuid4().hex[:10]}", REDIS_URL, pool="threads", concurrency=4)
    yield proc
    proc.stop()


def test_a_node_with_one_pool_thread_keeps_three_celery_tasks_in_flight_and_runs_its_own_job(
        cluster, start_node, worker, tmp_path):
    release = tmp_path / "release"
    slow = add_job(cluster, "cel-wait", f"while [ ! -e {release} ]; do sleep 0.05; done; "
                   "echo released", kind="shell", executor="celery",
                   celery_queue=worker.queue, max_parallel=3, timeout_seconds=120)
    local = add_job(cluster, "local", "echo on the node", kind="shell")
    node = start_node("--cluster", "test", "--node", "n1", "--workers", "1", *FAST)
    tasks = [slow.run_now("test") for _ in range(3)]
    ids = [t.pk for t in tasks]

    # All three run on the worker at once: none holds the node's only pool thread.
    wait_for(lambda: Task.objects.filter(pk__in=ids, state="running",
                                         celery_seen_at__isnull=False).count() == 3,
             timeout=60, message=f"three Celery tasks in flight\n{worker.output()}\n"
                                 f"{node.output()}")
    # The node's own job runs meanwhile, on that one thread.
    mine = local.run_now("test")
    done = wait_for(lambda: Task.objects.filter(pk=mine.pk, state="succeeded").first(),
                    timeout=30, message=f"the node's own job\n{node.output()}")
    assert done.member.name == "n1" and done.celery_seen_at is None
    # The Celery tasks could not have ended: they wait for the file.
    assert Task.objects.filter(pk__in=ids, state="running").count() == 3

    release.touch()
    wait_for(lambda: Task.objects.filter(pk__in=ids, state="succeeded").count() == 3,
             timeout=30, message=f"the three Celery tasks end\n{worker.output()}")
    # Their ends were written by the worker; the node forgot them and holds nothing.
    wait_for(lambda: not Task.objects.filter(state="running").exists(), timeout=10)


def test_a_cancelled_celery_task_ends_at_once_and_its_worker_stops_the_job(
        cluster, start_node, worker, tmp_path):
    from scheduler.models import TaskLog

    marker = tmp_path / "went-on"
    job = add_job(cluster, "cel-long", f"echo started; sleep 30; touch {marker}", kind="shell",
                  executor="celery", celery_queue=worker.queue)
    node = start_node("--cluster", "test", "--node", "n1", "--workers", "1", *FAST)
    task = job.run_now("test")
    wait_for(lambda: Task.objects.filter(pk=task.pk, celery_seen_at__isnull=False).exists(),
             timeout=60, message=f"the worker takes it\n{worker.output()}\n{node.output()}")
    task.refresh_from_db()
    assert task.request_cancel("test")
    ended = wait_for(lambda: Task.objects.filter(pk=task.pk).exclude(state="running").first(),
                     timeout=15, message="the cancel")
    assert ended.state == "cancelled", ended.error
    # The worker's next renewal is refused: it stops the job (its SIGTERM ends `sleep`).
    wait_for(lambda: "no longer this worker's" in worker.output(), timeout=15,
             message=f"the worker stops the job\n{worker.output()}")
    assert not marker.exists()
    ended.refresh_from_db()
    assert ended.state == "cancelled"  # the worker's end was refused, not written over
    assert TaskLog.objects.filter(task=task).exists()


def _waiting_job(cluster, worker, release: Path, name: str):
    return add_job(cluster, name, f"echo started; while [ ! -e {release} ]; do sleep 0.05; "
                   "done; echo released", kind="shell", executor="celery",
                   celery_queue=worker.queue, recover_lost=False, timeout_seconds=120)


def test_a_clean_stop_waits_the_grace_for_celery_tasks_in_flight(cluster, start_node, worker,
                                                                 tmp_path):
    """Within the grace, the worker's end is the task's end; after it, the task ends lost
    (interrupted by the stop of its member) and the worker stops the job."""
    from scheduler.models import Member

    release = tmp_path / "release"
    finishes = _waiting_job(cluster, worker, release, "cel-finishes")
    node = start_node("--cluster", "test", "--node", "n1", "--workers", "1",
                      "--stop-grace", "30", *FAST)
    task = finishes.run_now("test")
    wait_for(lambda: Task.objects.filter(pk=task.pk, celery_seen_at__isnull=False).exists(),
             timeout=60, message=f"the worker takes it\n{worker.output()}\n{node.output()}")
    node.signal(signal.SIGTERM)
    wait_for(lambda: Member.objects.filter(name="n1", state="stopping").exists(), timeout=10,
             message="the node stopping")
    release.touch()
    assert node.wait(30) == 0
    task.refresh_from_db()
    assert task.state == "succeeded", task.error
    assert Member.objects.get(name="n1").stop_reason == "normal stop"

    release.unlink()
    interrupted = _waiting_job(cluster, worker, release, "cel-interrupted")
    node = start_node("--cluster", "test", "--node", "n1", "--workers", "1",
                      "--stop-grace", "1", *FAST)
    task = interrupted.run_now("test")
    wait_for(lambda: Task.objects.filter(pk=task.pk, celery_seen_at__isnull=False).exists(),
             timeout=60, message=f"the worker takes it\n{worker.output()}\n{node.output()}")
    node.signal(signal.SIGTERM)
    assert node.wait(30) == 0
    task.refresh_from_db()
    assert task.state == "lost" and "interrupted by the stop of its member" in task.error
    wait_for(lambda: "no longer this worker's" in worker.output(), timeout=15,
             message=f"the worker stops the job\n{worker.output()}")
    task.refresh_from_db()
    assert task.state == "lost"


def test_the_celery_executor_honours_its_declarations(cluster, start_node, worker):
    """Declared (manage.py executors): a time limit stops the work on the worker, and a
    stateful python job's data map comes back."""
    from scheduler.executors import registry
    from scheduler.models import Job

    assert registry.find("celery", "shell").support.time_limit
    assert registry.find("celery", "python").support.data_map
    slow = add_job(cluster, "cel-timeout", "echo started; sleep 30; echo never", kind="shell",
                   executor="celery", celery_queue=worker.queue, timeout_seconds=2)
    counter = add_job(cluster, "cel-count", "tests.jobs:remember", executor="celery",
                      celery_queue=worker.queue, stateful=True, data_map={"runs": 4},
                      isolation="process", parameters={"word": "kept"})
    node = start_node("--cluster", "test", "--node", "n1", "--workers", "1", *FAST)
    timed, counted = slow.run_now("test"), counter.run_now("test")
    ended = wait_for(lambda: Task.objects.filter(pk=timed.pk).exclude(
        state__in=("queued", "running")).first(), timeout=60,
        message=f"the timeout\n{worker.output()}\n{node.output()}")
    assert ended.state == "timed_out" and ended.error == "timed out after 2 s"
    assert (ended.finished_at - ended.started_at).total_seconds() < 15
    wait_for(lambda: Task.objects.filter(pk=counted.pk, state="succeeded").exists(),
             timeout=60, message=f"the stateful run\n{worker.output()}")
    data = Job.objects.get(pk=counter.pk).data_map
    assert data["runs"] == 5 and data["seen"] == "kept"
