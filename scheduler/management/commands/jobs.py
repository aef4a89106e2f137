"""`manage.py jobs --cluster C`: the jobs of a cluster, their schedules and last outcome."""

from __future__ import annotations

from django.db.models import OuterRef, Subquery

from scheduler.management.commands._common import (
    OperatorCommand,
    add_cluster_argument,
    fmt_time,
    get_cluster,
    print_table,
)
from scheduler.models import Job, Schedule, Task


class Command(OperatorCommand):
    help = ("List the jobs of a cluster: kind, paused, schedules (with the ids that "
            "pauseschedule takes), next fire and the state of the last task.")

    def add_arguments(self, parser):
        add_cluster_argument(parser)

    def handle(self, *args, **options):
        cluster = get_cluster(options["cluster"])
        last_task = Task.objects.filter(job=OuterRef("pk")).order_by("-scheduled_for", "-id")
        next_fire = Schedule.objects.filter(
            job=OuterRef("pk"), paused=False, next_fire_at__isnull=False
        ).order_by("next_fire_at")
        jobs = (Job.objects.filter(cluster=cluster)
                .annotate(last_state=Subquery(last_task.values("state")[:1]),
                          next_fire_time=Subquery(next_fire.values("next_fire_at")[:1]))
                .prefetch_related("schedules").order_by("name"))
        rows = []
        for job in jobs:
            schedules = "; ".join(
                f"#{s.pk} {s.describe()}{' (paused)' if s.paused else ''}"
                for s in job.schedules.all()
            ) or "-"
            rows.append([job.name, job.kind, "yes" if job.paused else "no", schedules,
                         "paused" if job.paused else fmt_time(job.next_fire_time),
                         job.last_state or "-"])
        if not rows:
            self.stdout.write(f"cluster {cluster.name} has no jobs (add one with `manage.py "
                              f"addjob --cluster {cluster.name} NAME --shell CMD`).")
            return
        print_table(self.stdout.write,
                    ["job", "kind", "paused", "schedules", "next fire", "last task"], rows)
