"""What the operator's commands share: the base class that answers bad input and an
unreachable database in one line, argument types with bounds, finding a cluster or job by
name, the acting user, turning a model's ValidationError into a CommandError, tables, and
following a task's log.

Every lookup happens before anything changes, so a bad name changes nothing.
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import time
from datetime import datetime

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import DatabaseError, connection
from django.utils import timezone

from scheduler.eventlog import Actor
from scheduler.models import Cluster, Job, Task, TaskLog
from scheduler.validators import text_problem

POLL_SECONDS = 0.5
TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


# The largest count or id any of our tables holds (PostgreSQL integer / bigint).
MAX_COUNT = 2**31 - 1
MAX_ID = 2**63 - 1


def whole_number(high: int):
    """An argparse type: a whole number no larger (either way) than `high`, so it fits the
    column or the query it goes to; the command or the model says what else is wrong."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid int value: {text!r}") from None
        if abs(value) > high:
            raise argparse.ArgumentTypeError(f"{text!r} is too large (at most {high})")
        return value

    return parse


def seconds_type(high: float):
    """An argparse type: a finite number of seconds no larger than `high` (NaN and infinity
    never pass: they make a deadline that never comes)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid float value: {text!r}") from None
        if not math.isfinite(value) or abs(value) > high:
            raise argparse.ArgumentTypeError(
                f"{text!r}: give a finite number of seconds, at most {high:g}")
        return value

    return parse


def database_name() -> str:
    """The database in settings, as a URL with its password masked, for messages."""
    db = settings.DATABASES.get("default", {})
    engine = str(db.get("ENGINE", ""))
    if not engine:
        return "(no database configured)"
    if engine.endswith("sqlite3"):
        return f"sqlite:///{db.get('NAME', '')}"
    scheme = engine.rsplit(".", 1)[-1]
    password = ":***" if db.get("PASSWORD") else ""
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"{scheme}://{db.get('USER') or ''}{password}@{db.get('HOST') or ''}{port}/" \
           f"{db.get('NAME') or ''}"


def one_line(exc: BaseException) -> str:
    """A driver's error, which may span lines (psycopg's does), as one line."""
    text = " ".join(str(exc).split()).replace("FATAL: ", "")
    # psycopg: 'connection failed: connection to server at "h", port p failed: <why>'
    return text.rsplit(" failed: ", 1)[-1] or type(exc).__name__


POSITIONAL = {"name": "NAME", "job": "JOB", "jobs": "JOB", "ids": "ID", "task_id": "TASK_ID",
              "chain": "CHAIN", "chains": "CHAIN", "order": "ORDER", "orders": "ORDER",
              "order_id": "ORDER_ID", "to_state": "STATE", "node_state": "STATE",
              "node_action": "ACTION"}


class OperatorCommand(BaseCommand):
    """An operator's command: text options that no database can hold (NUL, lone surrogates)
    are refused before anything runs, and a database that cannot be reached at the start is
    said in one line instead of a traceback. Once a command runs, its own errors are its own
    (a node treats a lost database as weather)."""

    def execute(self, *args, **options):
        for name, value in options.items():
            for item in value if isinstance(value, (list, tuple)) else [value]:
                problem = text_problem(item) if isinstance(item, str) else None
                if problem:
                    option = POSITIONAL.get(name, f"--{name.replace('_', '-')}")
                    raise CommandError(f"{option}: the value {problem}.")
        for item in args:
            problem = text_problem(item) if isinstance(item, str) else None
            if problem:
                raise CommandError(f"an argument {problem}.")
        check_database(self.__module__.rsplit(".", 1)[-1])
        return super().execute(*args, **options)


def check_database(command: str) -> None:
    """Connect once; refuse in one line (password masked) when the database is not there."""
    try:
        connection.ensure_connection()
    except (DatabaseError, ImproperlyConfigured) as exc:
        raise CommandError(f"{command}: cannot reach the database {database_name()}: "
                           f"{one_line(exc)}") from None


def default_actor() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):
        return "operator"  # no login name in a bare container; the event still says "who"


def add_cluster_argument(parser) -> None:
    parser.add_argument("--cluster", default=os.environ.get("OPSCENTER_CLUSTER") or None,
                        help="Cluster name (env OPSCENTER_CLUSTER).")


def add_actor_argument(parser) -> None:
    parser.add_argument("--actor", default=None,
                        help="Who does this, for the event log (default: the OS user).")


def actor(options) -> Actor:
    """Who runs this command, for the events it records (the door: the command line)."""
    return Actor(name=options.get("actor") or default_actor(), source="cli")


def get_cluster(name: str | None) -> Cluster:
    if not name:
        raise CommandError("--cluster NAME is required (or set OPSCENTER_CLUSTER).")
    cluster = Cluster.objects.filter(name=name).first()
    if cluster is None:
        known = ", ".join(Cluster.objects.values_list("name", flat=True)) or "none"
        raise CommandError(f"There is no cluster named '{name}' (clusters: {known}).")
    return cluster


def get_jobs(cluster: Cluster, names: list[str]) -> list[Job]:
    """The jobs named, in the order given; all of them or a CommandError naming the missing."""
    by_name = {job.name: job for job in Job.objects.filter(cluster=cluster, name__in=names)}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise CommandError(f"No job named {', '.join(repr(n) for n in missing)} in cluster "
                           f"'{cluster.name}'; `manage.py jobs --cluster {cluster.name}` "
                           "lists its jobs.")
    return [by_name[name] for name in dict.fromkeys(names)]


def validation_error(exc: ValidationError, options: dict[str, str]) -> CommandError:
    """A model's ValidationError, each message prefixed with the option that set the field."""
    if not hasattr(exc, "error_dict"):
        return CommandError(" ".join(exc.messages))
    lines, seen = [], set()
    # Field errors first; a model-wide check often repeats one of them (a bad cron
    # expression is both a bad field and a bad schedule), which is said once.
    fields = sorted(exc.message_dict.items(), key=lambda item: item[0] == "__all__")
    for field, messages in fields:
        where = "" if field == "__all__" else f"{options.get(field, field)}: "
        for message in messages:
            if message not in seen:
                seen.add(message)
                lines.append(f"{where}{message}")
    return CommandError("\n".join(lines))


def fmt_time(value: datetime | None) -> str:
    return timezone.localtime(value).strftime(TIME_FORMAT) if value else "-"


def print_table(write, headers: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in cells]) for i, h in enumerate(headers)]
    for row in [headers, ["-" * w for w in widths], *cells]:
        write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


class LogPrinter:
    """Writes log chunks as they are; end_line() starts a fresh line for what follows."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.at_line_start = True

    def __call__(self, text: str) -> None:
        if text:
            self.stream.write(text, ending="")
            self.at_line_start = text.endswith("\n")

    def end_line(self) -> None:
        if not self.at_line_start:
            self.stream.write("")
            self.at_line_start = True


def follow_task(task_id: int, write, deadline: float | None) -> Task:
    """Write the task's log as it grows until the task finishes or the (monotonic) deadline
    passes; return the task as last read."""
    last_chunk = 0
    while True:
        # Read the state first: output written before it finished is then surely read below.
        task = Task.objects.get(pk=task_id)
        for chunk_id, text in (TaskLog.objects.filter(task_id=task_id, id__gt=last_chunk)
                               .order_by("id").values_list("id", "text")):
            write(text)
            last_chunk = chunk_id
        if task.state in Task.FINISHED_STATES:
            return task
        if deadline is not None and time.monotonic() >= deadline:
            return task
        time.sleep(POLL_SECONDS)


def describe_end(task: Task) -> str:
    text = f"task {task.pk} {task.get_state_display()}"
    if task.exit_code is not None:
        text += f" (exit code {task.exit_code})"
    if task.error:
        text += f": {task.error}"
    return text
