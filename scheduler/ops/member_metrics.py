"""The metrics of one member (a `runscheduler` process), kept in the process itself.

Updated by the node once per batch (a claim, a batch of recorded results, a batch of written
starts), never per fire on its own: a counter increment is a lock and an add. They live in a
registry of their own, served by `runscheduler --metrics-port` (prometheus-client's
start_http_server); the console's /metrics reads the database instead (console_metrics.py).
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Iterable
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

INFO = Gauge("opscenter_member_info", "This member: always 1, its identity in the labels.",
             ["cluster", "member", "mode"], registry=REGISTRY)
CLAIMS = Counter("opscenter_member_claims", "Claims of due fires made by this member.",
                 registry=REGISTRY)
FIRES = Counter("opscenter_member_fires_claimed",
                "Fires taken from schedules by this member (run, queued or skipped).",
                registry=REGISTRY)
MISFIRES = Counter("opscenter_member_misfires", "Owed fires recorded as misfires.",
                   registry=REGISTRY)
BATCH = Histogram("opscenter_member_claim_batch_size",
                  "Tasks started per claim that started any.",
                  buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000), registry=REGISTRY)
ORDER_STEPS = Counter("opscenter_member_order_steps_claimed",
                      "Steps of job chain orders claimed by this member.", registry=REGISTRY)
OUTCOMES = Counter("opscenter_member_task_outcomes",
                   "Tasks this member ran and recorded, by job and final state.",
                   ["job", "state"], registry=REGISTRY)
LATENESS = Histogram("opscenter_member_fire_lateness_seconds",
                     "When a task's job was entered minus the time it was due (started_at - "
                     "scheduled_for), seen when the starts are written.",
                     buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60,
                              300),
                     registry=REGISTRY)
LEASE = Counter("opscenter_member_lease_changes",
                "Passive cluster: leases this member took or lost (handing over is lost).",
                ["change"], registry=REGISTRY)
for _change in ("taken", "lost"):
    LEASE.labels(_change)


# Counting costs a few microseconds a fire; a member that serves no metrics pays nothing.
ENABLED = False


def serve(port: int, host: str) -> None:
    """Serve REGISTRY on host:port in a daemon thread; OSError when the port is taken."""
    global ENABLED
    start_http_server(port, addr=host, registry=REGISTRY)
    ENABLED = True


def member_started(cluster: str, member: str, mode: str) -> None:
    if not ENABLED:
        return
    INFO.labels(cluster, member, mode).set(1)


def claimed(fired: int, started: int, misfired: int) -> None:
    if not ENABLED:
        return
    CLAIMS.inc()
    if fired:
        FIRES.inc(fired)
    if misfired:
        MISFIRES.inc(misfired)
    if started:
        BATCH.observe(started)


def order_steps_claimed(n: int) -> None:
    if not ENABLED:
        return
    if n:
        ORDER_STEPS.inc(n)


def outcomes(pairs: Iterable[tuple[str, str]]) -> None:
    """(job name, state) of a batch of recorded results: one increment per pair seen."""
    if not ENABLED:
        return
    for (job, state), n in Tally(pairs).items():
        OUTCOMES.labels(job, state).inc(n)


def lateness(pairs: Iterable[tuple[datetime, datetime]]) -> None:
    """(started_at, scheduled_for) of a batch of written starts."""
    if not ENABLED:
        return
    for started_at, scheduled_for in pairs:
        LATENESS.observe(max((started_at - scheduled_for).total_seconds(), 0.0))


def lease(change: str) -> None:
    if not ENABLED:
        return
    LEASE.labels(change).inc()
