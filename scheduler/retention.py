"""Tables that grow without end (tasks, events) are pruned after their retention period."""

from __future__ import annotations

from datetime import timedelta

from scheduler.clock import db_now
from scheduler.models import Event, MisfireRecord, Task

BATCH = 5000


def _delete_a_batch(queryset) -> int:
    # One small batch per call: a node prunes between its other steps, so a large backlog
    # is worked off over several passes instead of stalling heartbeats. Oldest first (the
    # callers order by time, on its index), so what is left is always the whole history from
    # some time on: the audit reads a resume whose pause is gone as paused from before it.
    ids = list(queryset.values_list("pk", flat=True)[:BATCH])
    if not ids:
        return 0
    return queryset.model.objects.filter(pk__in=ids).delete()[0]


def prune(cluster_id: int, task_days: int, event_days: int) -> int:
    """Delete a batch of finished tasks (with their logs), events and misfire records older
    than their retention. Returns how many rows went; call again while it is not 0."""
    now = db_now()
    tasks = Task.objects.filter(
        cluster_id=cluster_id, state__in=Task.FINISHED_STATES,
        created_at__lt=now - timedelta(days=task_days),
    ).order_by("created_at")
    events = Event.objects.filter(cluster_id=cluster_id,
                                  created_at__lt=now - timedelta(days=event_days)
                                  ).order_by("created_at")
    misfires = MisfireRecord.objects.filter(cluster_id=cluster_id,
                                            decided_at__lt=now - timedelta(days=task_days)
                                            ).order_by("decided_at")
    return _delete_a_batch(tasks) + _delete_a_batch(events) + _delete_a_batch(misfires)
