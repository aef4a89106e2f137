"""Wake the nodes when something they schedule changes, so they need not poll.

On PostgreSQL a NOTIFY on the channel `opscenter` carries the cluster id; nodes LISTEN.
On SQLite nodes wake at least every heartbeat, which bounds the delay instead.
"""

from __future__ import annotations

from django.db.models.signals import post_save
from django.dispatch import receiver

from scheduler.models import Cluster, Job, Schedule, Task
from scheduler.wakeup import notify_nodes


@receiver(post_save, sender=Job)
@receiver(post_save, sender=Schedule)
def _definition_saved(sender, instance, **kwargs) -> None:
    notify_nodes(instance.cluster_id)


@receiver(post_save, sender=Cluster)
def _cluster_saved(sender, instance, **kwargs) -> None:
    notify_nodes(instance.pk)


@receiver(post_save, sender=Task)
def _task_saved(sender, instance, created, **kwargs) -> None:
    # A queued task created outside the daemon (run now) should start at once.
    if instance.state == Task.State.QUEUED or instance.cancel_reason:
        notify_nodes(instance.cluster_id)
