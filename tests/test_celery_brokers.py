"""The celery executor on RabbitMQ and on kombu's filesystem transport (the demo's broker):
a real node sends the work to a real Celery worker through each. (Redis: test_celery_executor.)

RabbitMQ: OPSCENTER_TEST_RABBITMQ_URL, default amqp://guest:guest@127.0.0.1:5672//; without
it these tests skip, under CI=true they fail.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from scheduler.models import Task, TaskLog
from tests.celery_support import RABBITMQ_URL, Worker, delete_queue, require_broker
from tests.conftest import add_job, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5"]


@dataclass
class Broker:
    name: str
    url: str
    env: dict = field(default_factory=dict)  # for the nodes and the workers alike


@pytest.fixture(params=["rabbitmq", "filesystem"])
def broker(request, tmp_path):
    if request.param == "rabbitmq":
        require_broker("RabbitMQ", RABBITMQ_URL)
        yield Broker("rabbitmq", RABBITMQ_URL, {"OPSCENTER_CELERY_BROKER": RABBITMQ_URL})
    else:
        # A folder of this test's own: no message of another run is ever seen.
        yield Broker("filesystem", "filesystem://",
                     {"OPSCENTER_CELERY_BROKER": "filesystem://",
                      "OPSCENTER_CELERY_FOLDER": str(tmp_path / "celery-broker")})


@pytest.fixture
def queue(broker):
    # A queue of this run's own, so that no stale message ever reaches its workers.
    name = f"opsc-test-{uuid.uuid4().hex[:10]}"
    yield name
    if broker.name == "rabbitmq":
        delete_queue(broker.url, name)


@pytest.fixture
def worker(broker, queue):
    """Start Celery workers on the test's queue and broker; killed at the end (before the
    queue is deleted)."""
    workers: list[Worker] = []

    def start() -> Worker:
        w = Worker(queue, broker.url, broker.env)
        workers.append(w)
        return w

    yield start
    for w in workers:
        w.stop()


def _log_text(task: Task) -> str:
    return "".join(TaskLog.objects.filter(task=task).order_by("pk").values_list("text",
                                                                                flat=True))


def _ended(task: Task):
    return lambda: Task.objects.filter(pk=task.pk).exclude(state__in=("queued", "running")) \
        .first()


def test_a_celery_job_runs_on_the_worker_through_the_broker(
        broker, cluster, start_node, worker, queue):
    ok = add_job(cluster, "cel-ok", "echo hello via $OPSCENTER_PARAM_VIA", kind="shell",
                 executor="celery", celery_queue=queue, parameters={"VIA": broker.name})
    bad = add_job(cluster, "cel-bad", "echo going down; exit 3", kind="shell",
                  executor="celery", celery_queue=queue)
    w = worker()
    node = start_node("--cluster", "test", "--node", "n1", *FAST, env=broker.env)
    t_ok, t_bad = ok.run_now("test"), bad.run_now("test")
    done_ok = wait_for(_ended(t_ok), timeout=60, message=f"ok task\n{w.output()}\n"
                                                          f"{node.output()}")
    done_bad = wait_for(_ended(t_bad), timeout=30, message="failing task")
    assert done_ok.state == "succeeded", (done_ok.error, w.output())
    assert done_ok.exit_code == 0 and done_ok.started_at and done_ok.finished_at
    assert done_ok.celery_seen_at is not None  # the worker ran it, not the node
    assert f"hello via {broker.name}" in _log_text(done_ok)
    assert done_bad.state == "failed" and done_bad.exit_code == 3
    assert "going down" in _log_text(done_bad)
    output = w.output()
    assert "opscenter.run_task" in output
    assert broker.url.split("://")[0] + "://" in output  # the worker's banner names its broker


def test_a_worker_killed_mid_task_leaves_the_task_lost_and_recovered(
        broker, cluster, start_node, worker, queue):
    """RabbitMQ gives the killed worker's message back at once: the next worker takes it and
    runs nothing (the task was started). The filesystem transport never gives it back. Either
    way the lease ends the task lost and the recovery runs once, on the next worker."""
    job = add_job(cluster, "cel-slow", "echo started; sleep 20", kind="shell",
                  executor="celery", celery_queue=queue, recover_lost=True)
    first = worker()
    start_node("--cluster", "test", "--node", "n1", *FAST,
               env={**broker.env, "OPSCENTER_CELERY_LEASE_TIMEOUT": "3"})
    task = job.run_now("test")
    wait_for(lambda: Task.objects.filter(pk=task.pk, celery_seen_at__isnull=False).exists(),
             timeout=60, message=f"the worker takes the task\n{first.output()}")
    first.kill()
    lost = wait_for(_ended(task), timeout=30, message="the task ends")
    assert lost.state == "lost", lost.error
    assert "Celery worker" in lost.error
    recovery = wait_for(lambda: Task.objects.filter(retry_of=task).first(), timeout=10,
                        message="a recovery")
    assert recovery.trigger == "recovery"
    second = worker()
    wait_for(lambda: Task.objects.filter(pk=recovery.pk, celery_seen_at__isnull=False).exists(),
             timeout=60, message=f"the recovery runs on the new worker\n{second.output()}")
    refused = f"task {task.pk}: not started"
    if broker.name == "rabbitmq":
        wait_for(lambda: refused in second.output(), timeout=30,
                 message=f"the redelivered message is refused\n{second.output()}")
    else:
        assert refused not in second.output()
    # The lost row stays as the node recorded it: nothing started it again.
    assert Task.objects.filter(pk=task.pk).values_list("state", "error", "finished_at") \
        .get() == ("lost", lost.error, lost.finished_at)
