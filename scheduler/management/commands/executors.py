"""`manage.py executors [--json]`: what each executor supports, per job kind (read only)."""

from __future__ import annotations

import dataclasses
import json

from django.core.management.base import BaseCommand

from scheduler.executors import registry
from scheduler.management.commands._common import print_table


def _yes(value: bool) -> str:
    return "yes" if value else "no"


class Command(BaseCommand):
    help = ("Show what each executor supports for each job kind: isolation, time limit, cancel, "
            "live log, stateful data map, where the work runs and what it needs. A job whose "
            "executor, kind, isolation or stateful flag no row allows is refused at every "
            "door.")

    def add_arguments(self, parser):
        parser.add_argument("--json", action="store_true",
                            help="One JSON object per executor and kind, in a list.")

    def handle(self, *args, **options):
        supports = registry.declared()
        if options["json"]:
            self.stdout.write(json.dumps([dataclasses.asdict(s) for s in supports], indent=2))
            return
        rows = [[s.executor, s.kind, ", ".join(s.isolations) or "-",
                 "stops the work" if s.time_limit else "ends the task only",
                 "stops the work" if s.cancel else "ends the task only",
                 _yes(s.live_log), _yes(s.data_map), s.runs_on] for s in supports]
        print_table(self.stdout.write, ["executor", "kind", "isolation", "time limit", "cancel",
                                        "live log", "stateful", "runs on"], rows)
        self.stdout.write("")
        for s in supports:
            notes = "; ".join(part for part in (s.note, f"needs {s.needs}" if s.needs else "")
                              if part)
            if notes:
                self.stdout.write(f"{s.executor}/{s.kind}: {notes}")
