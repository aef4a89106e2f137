"""`manage.py tasklog TASK_ID [--follow]`: print a task's captured output."""

from __future__ import annotations

from django.core.management.base import CommandError

from scheduler.management.commands._common import (
    MAX_ID,
    LogPrinter,
    OperatorCommand,
    describe_end,
    follow_task,
    whole_number,
)
from scheduler.models import Task


class Command(OperatorCommand):
    help = ("Print the captured log of a task (to stdout; its state goes to stderr). With "
            "--follow, keep printing new output until the task finishes.")

    def add_arguments(self, parser):
        parser.add_argument("task_id", type=whole_number(MAX_ID), metavar="TASK_ID")
        parser.add_argument("--follow", "-f", action="store_true",
                            help="Print new output as it comes until the task finishes.")

    def handle(self, *args, **options):
        task = Task.objects.filter(pk=options["task_id"]).first()
        if task is None:
            raise CommandError(f"No task with id {options['task_id']}.")
        printer = LogPrinter(self.stdout)
        if options["follow"]:
            task = follow_task(task.pk, printer, None)
        else:
            printer(task.log_text())
        self.stderr.write(describe_end(task))
