"""The demo's python jobs (loaded by `manage.py loaddemo`, run by `./run demo`).

Each callable receives a `JobContext` (see scheduler/executors/): `ctx.parameters`, the job
data map `ctx.data`, `ctx.logger` (writes into the task's log), `ctx.task_id`, `ctx.attempt`.
They only log what they would do; nothing here touches files or the network.
"""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from scheduler.executors import JobContext


def report(ctx: JobContext) -> dict:
    """heartbeat-report: a minutely cron job in Europe/Berlin."""
    zone = ZoneInfo(ctx.parameters.get("timezone", "Europe/Berlin"))
    due = ctx.scheduled_for or datetime.now(UTC)
    ctx.logger.info("heartbeat report for %s, due %s (%s), run by %s (task %s)",
                    ctx.cluster, due.astimezone(zone).strftime("%Y-%m-%d %H:%M:%S %Z"),
                    zone.key, ctx.member, ctx.task_id)
    return {"reported_at": due.isoformat()}


def sync_inventory(ctx: JobContext) -> None:
    """sync-inventory: a stateful job; its data map counts the runs across tasks and nodes."""
    runs = int(ctx.data.get("runs", 0)) + 1
    ctx.data["runs"] = runs
    ctx.data["last_task"] = ctx.task_id
    items = int(ctx.parameters.get("items", 100))
    ctx.logger.info("synced %d inventory items; this is run %d of this job", items, runs)


def flaky_import(ctx: JobContext) -> None:
    """flaky-import: fails now and then, to show failed tasks and retries."""
    chance = float(ctx.parameters.get("failure_rate", 0.3))
    ctx.logger.info("importing batch (attempt %d)", ctx.attempt)
    if random.random() < chance:  # noqa: S311 (a demo coin toss, not cryptography)
        raise RuntimeError(f"upstream feed timed out (simulated, attempt {ctx.attempt})")
    ctx.logger.info("import done")


def _step(ctx: JobContext, what: str, seconds: float = 0.5) -> None:
    order = ctx.parameters.get("order", "?")
    ctx.logger.info("%s: starting for order %s (date %s)", what, order,
                    ctx.parameters.get("date", "today"))
    time.sleep(seconds)
    ctx.logger.info("%s: done", what)


def extract(ctx: JobContext) -> None:
    """nightly-etl, step extract."""
    _step(ctx, "extract rows from " + str(ctx.parameters.get("source", "inventory.csv")))


def transform(ctx: JobContext) -> None:
    """nightly-etl, step transform."""
    _step(ctx, "transform rows")


def load(ctx: JobContext) -> None:
    """nightly-etl, step load."""
    _step(ctx, "load rows into " + str(ctx.parameters.get("target", "warehouse")))


def where_am_i(ctx: JobContext) -> dict:
    """where-am-i (active cluster): which member ran this fire; the fires spread over both."""
    ctx.logger.info("fire due %s run by member %s of cluster %s (task %s)",
                    ctx.scheduled_for.strftime("%H:%M:%S") if ctx.scheduled_for else "now",
                    ctx.member, ctx.cluster, ctx.task_id)
    return {"member": ctx.member}
