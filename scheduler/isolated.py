"""The child process of a python job with isolation "process" (started by scheduler/executors/).

It reads the task (JSON) on stdin, sets Django up (so the job may use the ORM), calls the
callable with the same `ctx` as a job in a thread of the node, and writes the outcome as JSON
(exit code, error, data map) on the file descriptor the node passed. Its stdout and stderr are
the task's log: `ctx.logger`, print() and tracebacks stream there. SIGTERM sets `ctx.cancelled`.
Whatever ends this process early (os._exit, a crash) leaves no outcome: the node then fails the
task with the process's exit code, and lives on.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
from datetime import datetime

from scheduler.executors import base, python


class _Log:
    """The task's log as the executors' helpers expect it: write(text), at once."""

    def write(self, text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()


def main() -> int:
    cancelled = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: cancelled.set())
    spec = json.loads(sys.stdin.buffer.read())
    result_fd = int(spec["result_fd"])
    sys.stdout.reconfigure(line_buffering=True)  # print() reaches the log as it happens
    sys.stderr.reconfigure(line_buffering=True)
    log = _Log()
    try:
        _setup_django()
    except Exception as exc:  # the job cannot run; say why, as a result
        log.write(traceback.format_exc())
        return _report(result_fd, 1, f"could not set Django up: {base.describe(exc)}",
                       None, spec)
    scheduled_for = spec.get("scheduled_for")
    run = base.TaskRun(
        task_id=spec["task_id"], job_name=spec["job_name"], kind="python",
        command=spec["command"], parameters=spec.get("parameters") or {},
        data=spec.get("data") or {}, attempt=spec.get("attempt", 1),
        scheduled_for=datetime.fromisoformat(scheduled_for) if scheduled_for else None,
        cluster=spec.get("cluster", ""), member=spec.get("member", ""),
    )
    ctx = python.job_context(run, log, cancelled)
    result = python.PythonResult()
    try:
        # The node's entry gate ran before this process was spawned: nothing more to wait for.
        python.run_callable(run.command, ctx, log, result, base.Entry(), base.Cancel())
    finally:
        _close_connections()
    if isinstance(result.returned, dict):
        ctx.data.update(result.returned)
    elif result.returned is not None:
        log.write(f"returned: {base.shorten(repr(result.returned), base.REPR_MAX)}\n")
    return _report(result_fd, result.exit_code, result.error, ctx.data, spec)


def _setup_django() -> None:
    if not os.environ.get("DJANGO_SETTINGS_MODULE"):
        return  # executors used without Django: the job gets no ORM
    import django

    django.setup()


def _close_connections() -> None:
    if "django.db" in sys.modules:
        from django.db import connections

        connections.close_all()


def _report(fd: int, exit_code: int | None, error: str, data: dict | None, spec: dict) -> int:
    payload = {"exit_code": exit_code, "error": error, "data": data}
    try:
        text = json.dumps(payload)
    except (TypeError, ValueError) as exc:
        # What a thread of the node would leave: a stateful job fails (its data map cannot be
        # stored); for any other job the data map does not matter.
        payload["data"] = None
        if spec.get("stateful"):
            payload["exit_code"] = 1
            payload["error"] = f"the data map the run left is not JSON data: {exc}"
        text = json.dumps(payload, default=str)
    with os.fdopen(fd, "wb") as out:
        out.write(text.encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
