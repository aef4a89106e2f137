"""Tasks: the list with filters, one task's page, and its log (tail, download)."""

from __future__ import annotations

import json
from datetime import timedelta

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.core.handlers.asgi import ASGIRequest
from django.http import JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from scheduler import tasklogs
from scheduler.console import live
from scheduler.console.access import can_operate, console_actor, console_view, display_zone
from scheduler.console.forms import CancelForm, ListDateTimeField
from scheduler.console.paging import keyset_page, page_size
from scheduler.console.views import query_with
from scheduler.models import Cluster, Job, Member, Task

# The live log asks for at most this much at a time; a gap bigger than the tail is skipped
# with a marker (a log that grows by 100 MB in a second is not pushed into the browser).
LOG_READ_LIMIT = tasklogs.TAIL_BYTES


def seconds(delta: timedelta | None) -> str:
    if delta is None:
        return "–"
    value = delta.total_seconds()
    return f"{value:.3f} s" if abs(value) < 10 else f"{value:.1f} s"


def megabytes(size: int) -> str:
    return f"{size / 1_000_000:.1f} MB" if size >= 100_000 else f"{size / 1000:.1f} kB"


class TaskFilter(forms.Form):
    """The list's filters, all in the URL. Times are in the viewer's zone."""

    cluster = forms.ModelChoiceField(Cluster.objects.order_by("name"), required=False,
                                     empty_label="all clusters")
    # A name, not a choice of every job: a select of 10,000 jobs would be rendered on every
    # full page.
    job = forms.CharField(required=False, max_length=200, label="Job name contains")
    member = forms.CharField(required=False, max_length=100, label="Member name")
    state = forms.MultipleChoiceField(choices=Task.State.choices, required=False,
                                      widget=forms.CheckboxSelectMultiple)
    trigger = forms.ChoiceField(choices=[("", "any trigger"), *Task.Trigger.choices],
                                required=False)
    scheduled_from = ListDateTimeField(required=False, label="Scheduled from")
    scheduled_to = ListDateTimeField(required=False, label="Scheduled to")

    def clean(self):
        data = super().clean()
        start, end = data.get("scheduled_from"), data.get("scheduled_to")
        if start and end and end < start:
            raise forms.ValidationError("“Scheduled to” is before “Scheduled from”.")
        return data

    def apply(self, qs):
        data = self.cleaned_data
        if data.get("cluster"):
            qs = qs.filter(cluster=data["cluster"])
        if data.get("job"):
            qs = qs.filter(job__in=Job.objects.filter(name__icontains=data["job"]))
        if data.get("member"):
            qs = qs.filter(member__name=data["member"])
        if data.get("state"):
            qs = qs.filter(state__in=data["state"])
        if data.get("trigger"):
            qs = qs.filter(trigger=data["trigger"])
        if data.get("scheduled_from"):
            qs = qs.filter(scheduled_for__gte=data["scheduled_from"])
        if data.get("scheduled_to"):
            qs = qs.filter(scheduled_for__lte=data["scheduled_to"])
        return qs


def decorate(task: Task) -> Task:
    """Figures the templates show, computed once."""
    task.duration_text = (seconds(task.finished_at - task.started_at)
                          if task.started_at and task.finished_at else "–")
    task.lateness_text = seconds(task.lateness)
    return task


@console_view
@require_GET
def tasks(request):
    form = TaskFilter(request.GET or None)
    with timezone.override(display_zone(request.user)):
        valid = form.is_valid() if request.GET else True
    page = None
    if valid:
        qs = Task.objects.select_related("job", "schedule", "member", "cluster")
        if request.GET:
            qs = form.apply(qs)
        # Newest first by id, the primary key's index: an index of its own for this list
        # would cost every fire's insert (see docs/performance.md, "fewer task indexes").
        page = keyset_page(qs, descending=True,
                           after=request.GET.get("after"), before=request.GET.get("before"),
                           size=page_size(request.GET.get("size")))
        for row in page.rows:
            decorate(row)
    context = {
        "nav": "tasks", "form": form, "page": page,
        "next_query": query_with(request, after=page.after) if page and page.after else None,
        "prev_query": query_with(request, before=page.before) if page and page.before else None,
        "member_names": (Member.objects.order_by("name").values_list("name", flat=True)
                         .distinct()[:200]),
    }
    status = 200 if valid else 400
    template = "console/tasks.html#list" if request.htmx else "console/tasks.html"
    return render(request, template, context, status=status)


def retry_chain(task: Task, limit: int = 50) -> list[Task]:
    """The attempts of this task's fire in order: what it retries, and what retries it."""
    earlier = []
    current = task
    while current.retry_of_id and len(earlier) < limit:
        current = (Task.objects.select_related("member")
                   .filter(pk=current.retry_of_id).first())
        if current is None:
            break
        earlier.append(current)
    later = []
    current = task
    while len(later) < limit:
        current = (Task.objects.select_related("member").filter(retry_of=current)
                   .order_by("id").first())
        if current is None:
            break
        later.append(current)
    chain = [*reversed(earlier), task, *later]
    return chain if len(chain) > 1 else []


def _task(task_id: int) -> Task:
    return decorate(get_object_or_404(
        Task.objects.select_related("job", "schedule", "member", "cluster", "retry_of"),
        pk=task_id))


@console_view
@require_GET
def task(request, task_id: int):
    return _task_page(request, task_id)


def _task_page(request, task_id: int, status: int = 200):
    task = _task(task_id)
    log = tasklogs.head_and_tail(task.pk)
    context = {
        "nav": "tasks", "task": task, "log": log,
        "log_hidden_text": megabytes(log.hidden),
        "log_size_text": megabytes(log.size),
        "retry_chain": retry_chain(task),
        "retried_by": Task.objects.filter(retry_of=task).order_by("id"),
        "ended": task.state in Task.FINISHED_STATES,
        "parameters_json": json.dumps(task.parameters, indent=2, ensure_ascii=False),
        "data_map_json": json.dumps(task.job.data_map, indent=2, ensure_ascii=False),
    }
    return render(request, "console/task.html", context, status=status)


class BadCursor(ValueError):
    pass


def _cursor(raw: str | None, size: int) -> int:
    if raw is None or raw == "":
        raise BadCursor("Give the byte offset to read from: ?cursor=<bytes>, e.g. ?cursor=0.")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 18:
        raise BadCursor(f"The cursor must be a byte offset (a whole number from 0), not "
                        f"{raw[:40]!r}.")
    cursor = int(raw)
    if cursor > size:
        raise BadCursor(f"The cursor {cursor} is past the end of the log ({size} bytes).")
    return cursor


@console_view
@require_GET
def task_log(request, task_id: int):
    """The log from a byte cursor, as JSON: {text, cursor (the next one), skipped (bytes not
    sent, when the gap was bigger than a read), ended (the task has finished: nothing more
    will come), state}. Reads cost the new data, not the whole log."""
    # The state first: output written before the task ended is then surely read below.
    state = Task.objects.filter(pk=task_id).values_list("state", flat=True).first()
    if state is None:
        return JsonResponse({"error": f"There is no task {task_id}."}, status=404)
    size = tasklogs.size(task_id)
    try:
        cursor = _cursor(request.GET.get("cursor"), size)
    except BadCursor as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    skipped = 0
    if size - cursor > LOG_READ_LIMIT:
        start = size - LOG_READ_LIMIT
        piece = tasklogs.read(task_id, start, LOG_READ_LIMIT)
        skipped = piece.start - cursor
    else:
        piece = tasklogs.read(task_id, cursor, size - cursor)
    ended = state in Task.FINISHED_STATES and piece.end >= size
    return JsonResponse({"text": piece.text, "cursor": piece.end, "skipped": skipped,
                         "ended": ended, "state": state})


@console_view
@require_GET
def task_log_download(request, task_id: int):
    task = get_object_or_404(Task, pk=task_id)
    # Under ASGI (daphne) an async iterator: Django would read a sync one whole into memory.
    chunks = (tasklogs.astream(task.pk) if isinstance(request, ASGIRequest)
              else tasklogs.stream(task.pk))
    response = StreamingHttpResponse(chunks, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="task-{task.pk}.log"'
    response["X-Content-Type-Options"] = "nosniff"
    return response


@console_view
@require_POST
def task_cancel(request, task_id: int):
    if not can_operate(request.user):
        raise PermissionDenied("Cancelling a task needs the operator role.")
    task = get_object_or_404(Task.objects.select_related("job"), pk=task_id)
    form = CancelForm(request.POST)
    if not form.is_valid():
        messages.error(request, " ".join(form.problems()) + " Nothing was changed.")
        return _task_page(request, task.pk, status=400)
    reason = form.cleaned_data["reason"]
    if task.request_cancel(reason, console_actor(request, reason)):
        if task.state == Task.State.QUEUED:
            messages.success(request, f"Task {task.pk} cancelled before it started.")
        else:
            messages.success(request, f"Task {task.pk}: its member was asked to stop it.")
    else:
        task.refresh_from_db(fields=["state"])
        messages.warning(request, f"Task {task.pk} is {task.get_state_display()}: there is "
                                  "nothing to cancel. Nothing was changed.")
    return redirect("console:task", task_id=task.pk)


@live.renderer("task", takes_id=True, tables=("scheduler_task",))
def render_task(topic_id: int | None, viewers: list[live.Viewer]) -> list[str]:
    """The task's state, times and exit code, swapped into its page by id. Never the Cancel
    form (rendered without a request it would have no CSRF token): the page keeps its own,
    and hides it when #task-state says the task has ended (tasklog.js)."""
    task = (Task.objects.select_related("job", "schedule", "member", "cluster", "retry_of")
            .filter(pk=topic_id).first())
    if task is None:
        return [""] * len(viewers)
    context = {"task": decorate(task), "ended": task.state in Task.FINISHED_STATES}
    return live.render_parts("console/task.html", ("state", "facts"), context, viewers)
