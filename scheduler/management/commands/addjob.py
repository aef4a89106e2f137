"""`manage.py addjob --cluster C NAME (--shell CMD | --python DOTTED | --task DOTTED) [options]`."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction

from scheduler import eventlog
from scheduler.management.commands._common import (
    MAX_COUNT,
    OperatorCommand,
    actor,
    add_actor_argument,
    add_cluster_argument,
    validation_error,
    whole_number,
)
from scheduler.models import Cluster, Job
from scheduler.validators import parse_parameters

OPTIONS = {"name": "NAME", "command": "--shell/--python", "parameters": "--params",
           "timeout_seconds": "--timeout", "max_retries": "--retries",
           "max_parallel": "--max-parallel", "overlap_policy": "--overlap",
           "affinity": "--affinity", "stateful": "--stateful", "title": "--title",
           "cluster": "--cluster", "isolation": "--isolation", "executor": "--executor",
           "celery_queue": "--celery-queue"}


class Command(OperatorCommand):
    help = ("Add a job to a cluster (the cluster is created if it does not exist yet). Give it "
            "schedules with addschedule, or run it with runjob.")

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        add_actor_argument(parser)
        parser.add_argument("name", metavar="NAME")
        what = parser.add_mutually_exclusive_group(required=True)
        what.add_argument("--shell", metavar="CMD", help="A command line for /bin/sh.")
        what.add_argument("--python", metavar="DOTTED",
                          help="A dotted path to a callable, e.g. myapp.jobs:nightly.")
        what.add_argument("--task", metavar="DOTTED",
                          help="A dotted path to a function decorated with Django's @task "
                               "(django.tasks), enqueued with the parameters as arguments.")
        parser.add_argument("--title", default="")
        parser.add_argument("--params", metavar="JSON",
                            help='Parameters: a JSON object such as \'{"region": "eu"}\'.')
        parser.add_argument("--timeout", type=whole_number(MAX_COUNT), metavar="SECONDS",
                            help="Stop a run after this long (default: no limit).")
        parser.add_argument("--retries", type=whole_number(MAX_COUNT), default=0,
                            help="Retries after a failure.")
        parser.add_argument("--max-parallel", type=whole_number(MAX_COUNT), default=1,
                            help="Runs at once (default 1).")
        parser.add_argument("--overlap", choices=Job.Overlap.values, default=Job.Overlap.QUEUE,
                            help="When a run is due while another runs (default queue).")
        parser.add_argument("--stateful", action="store_true",
                            help="Keep the data map a run leaves for the next; never overlap.")
        parser.add_argument("--affinity", default="",
                            help="Run only on the member of this name or with this label.")
        parser.add_argument("--isolation", choices=Job.Isolation.values,
                            default=Job.Isolation.THREAD,
                            help="python jobs: run in a thread of the node (default), or in a "
                                 "process of their own (untrusted code: a crash or os._exit "
                                 "fails the task, not the node).")
        parser.add_argument("--executor", choices=Job.Executor.values, default=Job.Executor.NODE,
                            help="Where the job's work runs: the node's worker pool (default), "
                                 "or a Celery worker (celery -A opscenter worker -Q QUEUE).")
        parser.add_argument("--celery-queue", metavar="QUEUE", default="",
                            help="--executor celery: the Celery queue to send the work to "
                                 "(default: celery).")

    def handle(self, *args, **options):
        name = options["cluster"]
        if not name:
            raise CommandError("--cluster NAME is required (or set OPSCENTER_CLUSTER).")
        parameters = {}
        if options["params"] is not None:
            try:
                parameters = parse_parameters(options["params"])
            except ValidationError as exc:
                raise CommandError(f"--params: {' '.join(exc.messages)}") from None
        kind = (Job.Kind.SHELL if options["shell"] is not None
                else Job.Kind.TASK if options["task"] is not None else Job.Kind.PYTHON)
        job = Job(name=options["name"], title=options["title"], kind=kind,
                  command={Job.Kind.SHELL: options["shell"], Job.Kind.TASK: options["task"],
                           Job.Kind.PYTHON: options["python"]}[kind],
                  parameters=parameters, timeout_seconds=options["timeout"],
                  max_retries=options["retries"], max_parallel=options["max_parallel"],
                  overlap_policy=options["overlap"], stateful=options["stateful"],
                  affinity=options["affinity"], isolation=options["isolation"],
                  executor=options["executor"], celery_queue=options["celery_queue"])
        # One transaction: a job that is refused leaves no new cluster behind.
        with transaction.atomic():
            cluster = Cluster.objects.filter(name=name).first()
            created = cluster is None
            if created:
                cluster = Cluster(name=name)
                try:
                    cluster.full_clean()
                except ValidationError as exc:
                    raise validation_error(exc, {"name": "--cluster"}) from None
                cluster.save()
            if Job.objects.filter(cluster=cluster, name=job.name).exists():
                raise CommandError(f"Cluster '{name}' already has a job named '{job.name}'.")
            job.cluster = cluster
            try:
                job.full_clean()
            except ValidationError as exc:
                raise validation_error(exc, OPTIONS) from None
            job.save()
            eventlog.job_created(job, actor(options))
        if created:
            self.stdout.write(f"cluster {cluster.name} created")
        where = ""
        if job.executor == Job.Executor.CELERY:
            where = f"; runs on a Celery worker, queue {job.celery_queue or 'celery'}"
        self.stdout.write(f"job {job.name} added to cluster {cluster.name} ({job.kind}: "
                          f"{job.command}{where})")
