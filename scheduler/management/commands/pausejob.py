"""`manage.py pausejob --cluster C JOB [JOB ...] | --all`: stop new starts of jobs."""

from __future__ import annotations

from django.core.management.base import CommandError

from scheduler.management.commands._common import (
    OperatorCommand,
    actor,
    add_actor_argument,
    add_cluster_argument,
    get_cluster,
    get_jobs,
)
from scheduler.models import Job


class JobSwitchCommand(OperatorCommand):
    """Pause or resume jobs by name; every name is checked before any job changes."""

    verb = "pause"
    done_as = "paused"
    skipped_as = "was already paused"

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("jobs", nargs="*", metavar="JOB", help="Job names.")
        parser.add_argument("--all", action="store_true", help="Every job of the cluster.")
        add_actor_argument(parser)

    def handle(self, *args, **options):
        cluster = get_cluster(options["cluster"])
        if options["all"] == bool(options["jobs"]):
            raise CommandError("Give job names or --all (not both).")
        if options["all"]:
            jobs = list(Job.objects.filter(cluster=cluster))
        else:
            jobs = get_jobs(cluster, options["jobs"])
        who = actor(options)
        for job in jobs:
            changed = getattr(job, self.verb)(who)
            self.stdout.write(f"job {job.name} {self.done_as if changed else self.skipped_as}")


class Command(JobSwitchCommand):
    help = "Pause jobs: no new task starts; running tasks finish."
