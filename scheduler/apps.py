from django.apps import AppConfig
from django.db.models.signals import post_migrate


class SchedulerConfig(AppConfig):
    name = "scheduler"
    verbose_name = "Scheduler"

    def ready(self) -> None:
        from scheduler import signals  # noqa: F401  (wake-ups for the nodes)
        from scheduler.roles import ensure_groups

        post_migrate.connect(ensure_groups, sender=self, dispatch_uid="scheduler-groups")
