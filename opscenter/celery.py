"""The Celery app of the `celery` executor: `celery -A opscenter worker -Q <queue>`.

The broker is OPSCENTER_CELERY_BROKER (Redis by default; an amqp:// URL for RabbitMQ). No
result backend: the task row in the database is where a run's outcome goes, written by the
worker itself (scheduler/executors/celery_executor.py).
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "opscenter.settings")

DEFAULT_BROKER = "redis://127.0.0.1:6379/0"


def _visibility_timeout() -> float:
    try:
        return float(os.environ.get("OPSCENTER_CELERY_VISIBILITY_TIMEOUT", "3600"))
    except ValueError:
        return 3600.0


app = Celery("opscenter", broker=os.environ.get("OPSCENTER_CELERY_BROKER", DEFAULT_BROKER))
app.conf.update(
    task_serializer="json",
    accept_content=["json"],
    task_ignore_result=True,
    # Acknowledged when the run ends, and given back when the worker is lost: a message taken
    # by a worker that died before it started the job is delivered again (Redis: after the
    # visibility timeout). The worker's start is guarded (celery_executor.run_on_worker), so a
    # run that had started is never started a second time from the same message.
    task_acks_late=True,
    task_reject_on_worker_lost=True,
    worker_prefetch_multiplier=1,
    broker_transport_options={"visibility_timeout": _visibility_timeout()},
    broker_connection_retry_on_startup=True,
)


@app.task(name="opscenter.run_task")
def run_task(payload: dict) -> str:
    """Run one task of a job sent by a node; returns how it ended (for the worker's log)."""
    from scheduler.executors.celery_executor import run_on_worker

    return run_on_worker(payload)
