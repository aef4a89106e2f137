"""`manage.py addschedule --cluster C JOB (--cron EXPR | --interval SECONDS | --once TIME)`."""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction

from scheduler import timing
from scheduler.clock import db_now
from scheduler.management.commands._common import (
    MAX_COUNT,
    OperatorCommand,
    actor,
    add_actor_argument,
    add_cluster_argument,
    get_cluster,
    get_jobs,
    validation_error,
    whole_number,
)
from scheduler.models import Schedule

OPTIONS = {"cron": "--cron", "timezone": "--timezone", "interval_seconds": "--interval",
           "run_at": "--once", "start_at": "--start", "end_at": "--end",
           "misfire_policy": "--misfire", "job": "JOB"}
SHOWN_FIRES = 5


def parse_time(text: str | None, option: str, zone: str) -> datetime | None:
    """An ISO 8601 date-time; one without an offset is a wall time in the schedule's zone."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"{option}: '{text}' is not an ISO 8601 date-time, e.g. "
                           "2026-05-01T09:00 or 2026-05-01T09:00+02:00.") from None
    if value.tzinfo is None:
        value = value.replace(tzinfo=timing.validate_timezone(zone))
    return value


class Command(OperatorCommand):
    help = ("Add a schedule to a job: a cron expression in a time zone, a fixed interval, or "
            "once. Times without an offset are wall times in --timezone (default UTC). "
            "Prints the next fire times.")

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("job", metavar="JOB")
        when = parser.add_mutually_exclusive_group(required=True)
        when.add_argument("--cron", metavar="EXPR",
                          help="Five fields: minute hour day-of-month month day-of-week.")
        when.add_argument("--interval", type=whole_number(MAX_COUNT), metavar="SECONDS",
                          help="Fire every SECONDS, counted from --start (default: now).")
        when.add_argument("--once", metavar="TIME", help="Fire once at this ISO 8601 time.")
        parser.add_argument("--timezone", default="UTC",
                            help="IANA zone of the cron expression and of times without an "
                                 "offset (default UTC).")
        parser.add_argument("--start", metavar="TIME", help="No fire before this time.")
        parser.add_argument("--end", metavar="TIME", help="No fire after this time.")
        parser.add_argument("--misfire", choices=Schedule.Misfire.values,
                            default=Schedule.Misfire.RUN_ONCE,
                            help="What to do with fires missed while no member could run them.")
        parser.add_argument("--title", default="")
        add_actor_argument(parser)

    def handle(self, *args, **options):
        cluster = get_cluster(options["cluster"])
        (job,) = get_jobs(cluster, [options["job"]])
        zone = options["timezone"]
        try:
            timing.validate_timezone(zone)
        except timing.TimingError as exc:
            raise CommandError(f"--timezone: {exc}.") from None
        if options["cron"] is not None:
            kind = Schedule.Kind.CRON
        elif options["interval"] is not None:
            kind = Schedule.Kind.INTERVAL
        else:
            kind = Schedule.Kind.ONCE
        schedule = Schedule(
            cluster=cluster, job=job, kind=kind, title=options["title"],
            cron=options["cron"] or "", timezone=zone, interval_seconds=options["interval"],
            run_at=parse_time(options["once"], "--once", zone),
            start_at=parse_time(options["start"], "--start", zone),
            end_at=parse_time(options["end"], "--end", zone),
            misfire_policy=options["misfire"],
        )
        try:
            schedule.full_clean()
        except ValidationError as exc:
            raise validation_error(exc, OPTIONS) from None
        with transaction.atomic():
            schedule.save(actor=actor(options))  # named in the schedule.created event
        self.stdout.write(f"schedule {schedule.pk} added to job {job.name}: "
                          f"{schedule.describe()}")
        fires = timing.preview(schedule.timing(), db_now(), SHOWN_FIRES)
        if not fires:
            self.stdout.write("it has no fire after now")
        for fire in fires:
            note = f"  ({fire.note})" if fire.note else ""
            self.stdout.write(f"  next: {fire.local:%Y-%m-%d %H:%M:%S %Z}  "
                              f"{fire.at:%Y-%m-%d %H:%M:%S}Z{note}")
        if job.paused or schedule.paused:
            self.stdout.write(f"job {job.name} is paused: nothing fires until it is resumed")
