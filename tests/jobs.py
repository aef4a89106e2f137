"""Python jobs for tests that run them in real node processes or child processes."""

from __future__ import annotations

import os
import sys
import time


def noop(ctx):
    return None


def die(ctx):
    """A poison job: ends whatever process runs it, with no chance to record anything."""
    ctx.logger.info("about to end this process")
    os._exit(int(ctx.parameters.get("code", 1)))


def remember(ctx):
    """Log, print, count in the data map and return more data."""
    ctx.logger.info("task %s attempt %s of %s on %s/%s", ctx.task_id, ctx.attempt,
                    ctx.job_name, ctx.cluster, ctx.member)
    print("printed", flush=True)
    ctx.data["runs"] = ctx.data.get("runs", 0) + 1
    return {"seen": ctx.parameters.get("word", ""),
            "scheduled_for": ctx.scheduled_for.isoformat() if ctx.scheduled_for else None}


def fail(ctx):
    raise RuntimeError("broken on purpose")


def exit_with(ctx):
    sys.exit(ctx.parameters.get("code", 4))


def wait_for_cancel(ctx):
    """Log, then wait until cancelled; says so in the log and in the data map."""
    ctx.logger.info("waiting")
    if ctx.cancelled.wait(30):
        ctx.logger.info("cancelled, stopping")
        ctx.data["state"] = "stopped"
        return None
    ctx.data["state"] = "never cancelled"
    return None


def ignore_cancel(ctx):
    """Blocks SIGTERM's effect: only SIGKILL ends it."""
    ctx.logger.info("ignoring")
    end = time.monotonic() + 30
    while time.monotonic() < end:
        time.sleep(0.05)


def slow_lines(ctx):
    """One line now, one a while later: the log must show the first before the end."""
    ctx.logger.info("first line")
    deadline = time.monotonic() + 30
    while not ctx.cancelled.is_set() and time.monotonic() < deadline:
        path = ctx.parameters.get("go")
        if path and os.path.exists(path):
            break
        time.sleep(0.02)
    ctx.logger.info("second line")


def leave_a_set(ctx):
    ctx.data["bad"] = {1, 2}


def count_orm_jobs(ctx):
    from scheduler.models import Job

    return {"jobs": Job.objects.count()}


def append_entry(ctx):
    """One line per entry of a job (name, due instant, task id, time.time()), in the file named
    by its parameters. Here, in a module that is quick to import, so that a woken member's pool
    thread reaches the job's entry as fast as it would in a warm node (tests/test_fence.py)."""
    at = time.time()
    with open(ctx.parameters["file"], "a") as f:
        f.write(f"{ctx.job_name} {ctx.scheduled_for.isoformat()} {ctx.task_id} {at}\n")
