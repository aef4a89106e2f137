"""Jobs the benchmarks schedule (node processes import them as `bench.jobs:NAME`)."""

from __future__ import annotations


def noop(ctx) -> None:
    """Do nothing: what is measured is the scheduler, not the job."""
    return None


def sleep(ctx) -> None:
    """Wait `seconds` (parameter, default 2): a slow job, to keep many tasks in flight."""
    ctx.cancelled.wait(float(ctx.parameters.get("seconds", 2.0)))
