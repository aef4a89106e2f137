"""What the operator's commands share: finding a cluster or job by name, the acting user,
turning a model's ValidationError into a CommandError, tables, and following a task's log.

Every lookup happens before anything changes, so a bad name changes nothing.
"""

from __future__ import annotations

import getpass
import os
import time
from datetime import datetime

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.utils import timezone

from scheduler.models import Cluster, Job, Task, TaskLog

POLL_SECONDS = 0.5
TIME_FORMAT = "%Y-%m-%d %H:%M:%S %Z"


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


def actor(options) -> str:
    return options.get("actor") or default_actor()


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
