"""The celery executor on each broker: Redis (the default), RabbitMQ and kombu's filesystem
transport (the demo's): a real node sends the work to a real Celery worker through each.

Redis: OPSCENTER_TEST_REDIS_URL, default redis://127.0.0.1:6379/0; RabbitMQ:
OPSCENTER_TEST_RABBITMQ_URL, default amqp://guest:guest@127.0.0.1:5672//; without them these
tests skip, under CI=true they fail.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import pytest

from scheduler.models import Task
from tests.celery_support import (
    RABBITMQ_URL,
    REDIS_URL,
    Worker,
    delete_queue,
    ended,
    log_text,
    require_broker,
)
from tests.conftest import add_job, wait_for

pytestmark = [pytest.mark.processes, pytest.mark.django_db(transaction=True)]

FAST = ["--heartbeat-interval", "0.2", "--dead-after", "1.5"]


@dataclass
class Broker:
    name: str
    url: str
    env: dict = field(default_factory=dict)  # for the nodes and the workers alike


@pytest.fixture(params=["redis", "rabbitmq", "filesystem"])
def broker(request, tmp_path):
    if request.param == "redis":
        require_broker("Redis", REDIS_URL)
        yield Broker("redis", REDIS_URL, {"OPSCENTER_CELERY_BROKER": REDIS_URL})
    elif request.param == "rabbitmq":
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


def test_a_celery_job_runs_on_the_worker_through_the_broker(
        broker, cluster, start_node, worker, queue):
    ok = add_job(cluster, "cel-ok", "echo hello via $OPSCENTER_PARAM_VIA", kind="shell",
                 executor="celery", celery_queue=queue, parameters={"VIA": broker.name})
    bad = add_job(cluster, "cel-bad", "echo going down; exit 3", kind="shell",
                  executor="celery", celery_queue=queue)
    w = worker()
    node = start_node("--cluster", "test", "--node", "n1", *FAST, env=broker.env)
    t_ok, t_bad = ok.run_now("test"), bad.run_now("test")
    done_ok = wait_for(ended(t_ok), timeout=60, message=f"ok task\n{w.output()}\n"
                                                          f"{node.output()}")
    done_bad = wait_for(ended(t_bad), timeout=30, message="failing task")
    assert done_ok.state == "succeeded", (done_ok.error, w.output())
    assert done_ok.exit_code == 0 and done_ok.started_at and done_ok.finished_at
    assert done_ok.celery_seen_at is not None  # the worker ran it, not the node
    assert f"hello via {broker.name}" in log_text(done_ok)
    assert done_bad.state == "failed" and done_bad.exit_code == 3
    assert "going down" in log_text(done_bad)
    output = w.output()
    assert "opscenter.run_task" in output
    assert broker.url.split("://")[0] + "://" in output  # the worker's banner names its broker
    # The node forgot them without a write of its own and stays healthy.
    wait_for(lambda: not Task.objects.filter(state="running").exists(), timeout=5)


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
    lost = wait_for(ended(task), timeout=30, message="the task ends")
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


def test_the_same_message_delivered_twice_runs_the_job_once(
        broker, cluster, worker, queue, tmp_path, monkeypatch):
    """What a redelivery does (acks_late: a worker lost before its ack, RabbitMQ's consumer
    timeout, Redis' visibility timeout): the worker's guarded start refuses a task a worker
    has started, so the second message runs nothing and the row keeps the first run's end."""
    from celery import Celery
    from django.utils import timezone

    import opscenter.celery
    from scheduler.models import Member

    runs = tmp_path / "runs"
    job = add_job(cluster, "cel-once", f"echo ran >> {runs}; echo done", kind="shell",
                  executor="celery", celery_queue=queue)
    # A running task of a live member, as a node leaves it when it sends the task (no node
    # here: nobody declares the member dead or the task lost).
    member = Member.objects.create(cluster=cluster, name="n1", mode="single", host="h", pid=1,
                                   version="1", state="active")
    now = timezone.now()
    task = Task.objects.create(cluster=cluster, job=job, scheduled_for=now, trigger="manual",
                               state="running", member=member, claimed_at=now)
    payload = {"task_id": task.pk, "cluster_id": cluster.pk, "member_id": member.pk,
               "run": {"job_name": job.name, "kind": "shell", "command": job.command,
                       "working_directory": "", "parameters": {}, "data": {},
                       "timeout": None, "scheduled_for": now.isoformat(), "attempt": 1,
                       "cluster": cluster.name, "member": member.name,
                       "isolation": "thread", "stateful": False}}
    options = {}
    if broker.name == "filesystem":
        monkeypatch.setenv("OPSCENTER_CELERY_FOLDER", broker.env["OPSCENTER_CELERY_FOLDER"])
        options = opscenter.celery._filesystem_options()
    sender = Celery("opscenter-test", broker=broker.url.replace(
        "filesystem://", "filesystem://localhost//"), set_as_current=False)
    sender.conf.broker_transport_options = options
    for _ in range(2):
        sender.send_task("opscenter.run_task", args=[payload], queue=queue)
    w = worker()
    done = wait_for(ended(task), timeout=60, message=f"the first message runs\n{w.output()}")
    wait_for(lambda: f"task {task.pk}: not started" in w.output(), timeout=30,
             message=f"the second message is refused\n{w.output()}")
    assert done.state == "succeeded" and done.exit_code == 0
    assert runs.read_text() == "ran\n"
    assert log_text(done).count("done") == 1
    assert Task.objects.filter(pk=task.pk).values_list("state", "finished_at").get() == \
        ("succeeded", done.finished_at)
