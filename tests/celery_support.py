"""Real Celery workers for the celery executor's tests, and the brokers they need.

A broker that does not answer skips its tests with the reason, except under CI=true, where it
is a failure (like the PostgreSQL run of `./run test`): CI must run them.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, database_url

REDIS_URL = os.environ.get("OPSCENTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
RABBITMQ_URL = os.environ.get("OPSCENTER_TEST_RABBITMQ_URL",
                              "amqp://guest:guest@127.0.0.1:5672//")


def is_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


@functools.cache
def broker_problem(url: str) -> str | None:
    """Why the broker at `url` cannot be used (connect and log in), or None."""
    from kombu import Connection

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def require_broker(what: str, url: str) -> None:
    """Skip the calling test module when the broker does not answer; fail under CI=true."""
    problem = broker_problem(url)
    if problem is None:
        return
    from kombu.utils.url import maybe_sanitize_url

    reason = f"{what} at {maybe_sanitize_url(url)} does not answer ({problem})"
    if is_ci():
        pytest.fail(f"CI=true and {reason}: the Celery tests on {what} must run in CI",
                    pytrace=False)
    pytest.skip(reason, allow_module_level=True)


class Worker:
    """`celery -A opscenter worker --pool <pool> -Q <queue>` against the test database."""

    def __init__(self, queue: str, broker: str, env: dict | None = None, *,
                 pool: str = "solo", concurrency: int = 1):
        self.queue = queue
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = tmp / f"opsc-celery-{os.getpid()}-{id(self)}.log"
        self._log = open(self.log_path, "w")  # noqa: SIM115
        full_env = {**os.environ, "DATABASE_URL": database_url(), "PYTHONUNBUFFERED": "1",
                    "OPSCENTER_CELERY_BROKER": broker, **(env or {})}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "opscenter", "worker", "--pool", pool,
             "--concurrency", str(concurrency), "-Q", queue, "-n", f"{queue}@%h",
             "--without-gossip", "--without-mingle", "-l", "info"],
            cwd=ROOT, env=full_env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        self.kill()
        self._log.close()
        self.log_path.unlink(missing_ok=True)


def delete_queue(url: str, queue: str) -> None:
    """Remove a test's queue (and what is left in it) from the broker."""
    from kombu import Connection

    with Connection(url, connect_timeout=3) as conn:
        conn.default_channel.queue_delete(queue)


def log_text(task) -> str:
    """The task's whole log, in order."""
    from scheduler.models import TaskLog

    return "".join(TaskLog.objects.filter(task=task).order_by("pk").values_list("text",
                                                                                flat=True))


def ended(task):
    """For wait_for: the task once it has ended (None before)."""
    from scheduler.models import Task

    return lambda: Task.objects.filter(pk=task.pk).exclude(state__in=("queued", "running")) \
        .first()
