"""`manage.py pauseschedule ID [ID ...]`: stop schedules from firing (by id, see `jobs`)."""

from __future__ import annotations

from django.core.management.base import CommandError

from scheduler.management.commands._common import (
    MAX_ID,
    OperatorCommand,
    actor,
    add_actor_argument,
    whole_number,
)
from scheduler.models import Schedule


class ScheduleSwitchCommand(OperatorCommand):
    """Pause or resume schedules by id; every id is checked before any schedule changes."""

    verb = "pause"
    done_as = "paused"
    skipped_as = "was already paused"

    def add_arguments(self, parser):
        parser.add_argument("ids", nargs="+", type=whole_number(MAX_ID), metavar="ID",
                            help="Schedule ids (`manage.py jobs --cluster C` shows them).")
        add_actor_argument(parser)

    def handle(self, *args, **options):
        ids = list(dict.fromkeys(options["ids"]))
        by_id = Schedule.objects.select_related("job", "cluster").in_bulk(ids)
        missing = [str(i) for i in ids if i not in by_id]
        if missing:
            raise CommandError(f"No schedule with id {', '.join(missing)}.")
        who = actor(options)
        for schedule_id in ids:
            schedule = by_id[schedule_id]
            changed = getattr(schedule, self.verb)(who)
            self.stdout.write(f"schedule {schedule.pk} of job {schedule.job.name} "
                              f"({schedule.cluster.name}) "
                              f"{self.done_as if changed else self.skipped_as}")


class Command(ScheduleSwitchCommand):
    help = "Pause schedules by id; the job still runs from its other schedules or on demand."
