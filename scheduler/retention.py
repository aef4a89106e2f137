"""Tables that grow without end (tasks, events) are pruned after their retention period."""

from __future__ import annotations

from datetime import timedelta

from scheduler.clock import db_now
from scheduler.models import Event, MisfireRecord, Task

BATCH = 5000


def _delete_in_batches(queryset) -> int:
    # Small batches keep each delete's locks short while the nodes keep firing.
    total = 0
    while True:
        ids = list(queryset.values_list("pk", flat=True)[:BATCH])
        if not ids:
            return total
        total += queryset.model.objects.filter(pk__in=ids).delete()[0]


def prune(cluster_id: int, task_days: int, event_days: int) -> int:
    """Delete finished tasks (with their logs) and events older than their retention."""
    now = db_now()
    tasks = Task.objects.filter(
        cluster_id=cluster_id, state__in=Task.FINISHED_STATES,
        created_at__lt=now - timedelta(days=task_days),
    )
    events = Event.objects.filter(cluster_id=cluster_id,
                                  created_at__lt=now - timedelta(days=event_days))
    misfires = MisfireRecord.objects.filter(cluster_id=cluster_id,
                                            decided_at__lt=now - timedelta(days=task_days))
    return (_delete_in_batches(tasks) + _delete_in_batches(events)
            + _delete_in_batches(misfires))
