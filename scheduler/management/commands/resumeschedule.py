"""`manage.py resumeschedule ID [ID ...]`: let paused schedules fire again, from now."""

from __future__ import annotations

from scheduler.management.commands.pauseschedule import ScheduleSwitchCommand


class Command(ScheduleSwitchCommand):
    help = "Resume paused schedules; they fire again from now (owed fires are not run)."
    verb = "resume"
    done_as = "resumed"
    skipped_as = "was not paused"
