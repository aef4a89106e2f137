"""`manage.py resumejob --cluster C JOB [JOB ...] | --all`: let paused jobs start again."""

from __future__ import annotations

from scheduler.management.commands.pausejob import JobSwitchCommand


class Command(JobSwitchCommand):
    help = ("Resume paused jobs; their schedules fire again from now (fires owed while paused "
            "are not run).")
    verb = "resume"
    done_as = "resumed"
    skipped_as = "was not paused"
