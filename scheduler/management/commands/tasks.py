"""`manage.py tasks --cluster C [--job J] [--state S] [--limit N]`: recent tasks, newest first."""

from __future__ import annotations

from django.core.management.base import CommandError

from scheduler.management.commands._common import (
    MAX_COUNT,
    OperatorCommand,
    add_cluster_argument,
    fmt_time,
    get_cluster,
    get_jobs,
    print_table,
    whole_number,
)
from scheduler.models import Task


def seconds(delta) -> str:
    return "-" if delta is None else f"{delta.total_seconds():.1f}"


class Command(OperatorCommand):
    help = "List the recent tasks of a cluster, newest first (`tasklog ID` shows one's output)."

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("--job", metavar="JOB", help="Only this job's tasks.")
        parser.add_argument("--state", choices=Task.State.values, help="Only tasks in this state.")
        parser.add_argument("--limit", type=whole_number(MAX_COUNT), default=20,
                            help="At most this many (20).")

    def handle(self, *args, **options):
        cluster = get_cluster(options["cluster"])
        if options["limit"] < 1:
            raise CommandError("--limit: give a number of tasks of at least 1.")
        tasks = Task.objects.filter(cluster=cluster).select_related("job", "member")
        if options["job"]:
            (job,) = get_jobs(cluster, [options["job"]])
            tasks = tasks.filter(job=job).order_by("-scheduled_for", "-id")
        if options["state"]:
            tasks = tasks.filter(state=options["state"])
        rows = [
            [t.pk, t.job.name, t.trigger, t.state, t.attempt, fmt_time(t.scheduled_for),
             fmt_time(t.started_at), seconds(t.finished_at - t.started_at)
             if t.started_at and t.finished_at else "-",
             t.member.name if t.member else "-", "-" if t.exit_code is None else t.exit_code]
            for t in tasks[: options["limit"]]
        ]
        if not rows:
            self.stdout.write("no tasks")
            return
        print_table(self.stdout.write, ["task", "job", "trigger", "state", "attempt",
                                        "scheduled for", "started", "secs", "member", "exit"],
                    rows)
