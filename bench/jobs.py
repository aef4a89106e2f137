"""Jobs the benchmarks schedule (node processes import them as `bench.jobs:NAME`)."""

from __future__ import annotations


def noop(ctx) -> None:
    """Do nothing: what is measured is the scheduler, not the job."""
    return None
