"""`manage.py runjob --cluster C JOB [--params JSON] [--wait [SECONDS]]`: run a job now."""

from __future__ import annotations

import time

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from scheduler.management.commands._common import (
    LogPrinter,
    OperatorCommand,
    actor,
    add_actor_argument,
    add_cluster_argument,
    describe_end,
    follow_task,
    get_cluster,
    get_jobs,
    seconds_type,
)
from scheduler.models import Task
from scheduler.validators import parse_parameters

DEFAULT_WAIT = 600.0
MAX_WAIT = 366 * 86400.0  # a year: longer is a mistake, and NaN or infinity never ends


class Command(OperatorCommand):
    help = ("Queue a run of a job now and print the task id; the first member with capacity "
            "starts it. With --wait, follow its log until it finishes and exit non-zero unless "
            "it succeeded.")

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("job", metavar="JOB")
        parser.add_argument("--params", metavar="JSON",
                            help='Parameters for this run, merged over the job\'s: a JSON '
                                 'object such as \'{"day": "2026-01-31"}\'.')
        parser.add_argument("--wait", nargs="?", type=seconds_type(MAX_WAIT),
                            const=DEFAULT_WAIT, default=None,
                            metavar="SECONDS",
                            help=f"Wait for the task to finish (at most SECONDS, default "
                                 f"{DEFAULT_WAIT:g}).")
        add_actor_argument(parser)

    def handle(self, *args, **options):
        cluster = get_cluster(options["cluster"])
        (job,) = get_jobs(cluster, [options["job"]])
        parameters = None
        if options["params"] is not None:
            try:
                parameters = parse_parameters(options["params"])
            except ValidationError as exc:
                raise CommandError(f"--params: {' '.join(exc.messages)}") from None
        wait = options["wait"]
        if wait is not None and wait <= 0:
            raise CommandError("--wait: give a number of seconds greater than 0.")
        task = job.run_now(actor(options), parameters=parameters)
        self.stdout.write(f"task {task.pk} queued for job {job.name} in cluster {cluster.name}")
        if job.paused:
            self.stderr.write(f"job {job.name} is paused: the task waits until it is resumed "
                              f"(`manage.py resumejob --cluster {cluster.name} {job.name}`).")
        if wait is None:
            return
        printer = LogPrinter(self.stdout)
        task = follow_task(task.pk, printer, time.monotonic() + wait)
        printer.end_line()
        if task.state not in Task.FINISHED_STATES:
            raise CommandError(f"task {task.pk} is still {task.state} after {wait:g} s; follow "
                               f"it with `manage.py tasklog {task.pk} --follow`.")
        if task.state != Task.State.SUCCEEDED:
            raise CommandError(describe_end(task))
        self.stdout.write(describe_end(task))
