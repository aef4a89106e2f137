"""`manage.py loaddemo`: the two demo clusters `./run demo` starts, loaded idempotently."""

from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command

from scheduler.models import Cluster, Job, Order, Schedule

pytestmark = pytest.mark.django_db


def load(*args: str) -> str:
    out = StringIO()
    call_command("loaddemo", *args, stdout=out)
    return out.getvalue()


def test_loaddemo_makes_a_passive_and_an_active_cluster():
    load()
    assert set(Cluster.objects.values_list("name", flat=True)) == {"demo-passive",
                                                                    "demo-active"}
    for name in ("demo-passive", "demo-active"):
        jobs = Job.objects.filter(cluster__name=name)
        follow = jobs.get(name="follow-me")
        assert follow.kind == "shell" and "sleep 1" in follow.command
        assert jobs.filter(name="flaky-import").exists()  # a job that fails now and then
        assert Schedule.objects.filter(job__in=jobs, kind="interval").count() >= 3
    # demo-active's jobs run by the workers `./run demo` starts: Celery and django.tasks.
    active = Job.objects.filter(cluster__name="demo-active")
    hello = active.get(name="celery-hello")
    assert (hello.executor, hello.celery_queue, hello.kind) == ("celery", "demo", "shell")
    task = active.get(name="django-task")
    assert (task.kind, task.command) == ("task", "scheduler.demo_tasks.add")
    assert task.parameters == {"a": 2, "b": 40}
    for job in (hello, task):
        assert job.schedules.get().interval_seconds == 30
    orders = Order.objects.filter(chain__cluster__name="demo-passive", chain__name="nightly-etl")
    assert sorted(orders.values_list("order_id", "repeat_kind", "interval_seconds")) == [
        ("every-minute", "interval", 60), ("order-1", "", None)]
    # The repeating order waits for its first due time (within the minute), not for ever.
    every = orders.get(order_id="every-minute")
    assert every.next_start_at is not None


def test_loaddemo_again_changes_nothing():
    load()
    before = list(Schedule.objects.order_by("id").values_list("id", "next_fire_at"))
    out = load()
    assert " created " not in out and " updated " not in out, out
    assert list(Schedule.objects.order_by("id").values_list("id", "next_fire_at")) == before


def test_loaddemo_one_named_cluster():
    load("--cluster", "demo")
    assert list(Cluster.objects.values_list("name", flat=True)) == ["demo"]
    assert Job.objects.filter(cluster__name="demo", name="heartbeat-report").exists()
