"""Jobs: the list with filters and bulk operations, and one job's page.

The list reads every row's next fire and last result with subqueries, so a page costs the
same few queries whatever its length. Actions go through the models' operator methods
(`Job.pause/resume/run_now`) with the console's actor and the operator's reason, all or
nothing: one bad id and no job is touched.
"""

from __future__ import annotations

import json
from datetime import datetime

from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import F, OuterRef, Q, QuerySet, Subquery
from django.db.models.functions import Coalesce
from django.http import HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from scheduler import timing
from scheduler.admin import plural, report
from scheduler.clock import db_now
from scheduler.console import live
from scheduler.console.access import NOT_OPERATOR, can_operate, console_actor, console_view
from scheduler.console.forms import JOB_SORTS, NEVER_RAN, JobActionForm, JobFilterForm
from scheduler.console.paging import page_size
from scheduler.console.views import query_with
from scheduler.executors import registry
from scheduler.models import Cluster, Event, Job, Schedule, Task

PREVIEW_COUNT = 10
RECENT_TASKS = 20
AUDIT_ROWS = 50
# A push of the jobs topic carries the rows of the jobs that moved lately (at most this many);
# the page's script swaps in those of its rows it shows and ignores the others.
PUSH_ROWS = 300
PUSH_RECENT_TASKS = 500
PUSH_RECENT_EVENTS = 200


# ------------------------------------------------------------------------------ queries


def with_status(queryset: QuerySet) -> QuerySet:
    """Jobs with their cluster, next fire and last result, each a subquery (no per-row query).

    Last result = the job's latest task by scheduled time (index task_job_recent); its time
    is when it finished, else started, else was due."""
    last = Task.objects.filter(job=OuterRef("pk")).order_by("-scheduled_for", "-id")
    next_fire = (Schedule.objects.filter(job=OuterRef("pk"), paused=False,
                                         next_fire_at__isnull=False)
                 .order_by("next_fire_at").values("next_fire_at")[:1])
    return queryset.select_related("cluster").annotate(
        next_fire=Subquery(next_fire),
        last_task_id=Subquery(last.values("pk")[:1]),
        last_state=Subquery(last.values("state")[:1]),
        last_at=Subquery(last.annotate(
            at=Coalesce("finished_at", "started_at", "scheduled_for")).values("at")[:1]),
    )


def filtered_jobs(values: dict) -> QuerySet:
    qs = Job.objects.all()
    if values.get("cluster") is not None:
        qs = qs.filter(cluster=values["cluster"])
    if values.get("q"):
        qs = qs.filter(Q(name__icontains=values["q"]) | Q(title__icontains=values["q"]))
    if values.get("paused") == "paused":
        qs = qs.filter(paused=True)
    elif values.get("paused") == "active":
        qs = qs.filter(paused=False)
    if values.get("kind"):
        qs = qs.filter(kind=values["kind"])
    qs = with_status(qs)
    if values.get("state") == NEVER_RAN:
        qs = qs.filter(last_state__isnull=True)
    elif values.get("state"):
        qs = qs.filter(last_state=values["state"])
    _, key, descending = JOB_SORTS.get(values.get("sort") or "name", JOB_SORTS["name"])
    order = F(key).desc(nulls_last=True) if descending else F(key).asc(nulls_last=True)
    return qs.order_by(order, "name", "pk")


# ------------------------------------------------------------------------------ the list


@console_view
@require_GET
def jobs(request):
    form = JobFilterForm(request.GET, clusters=Cluster.objects.order_by("name"))
    values, problems = form.usable()
    size = page_size(request.GET.get("size"))
    number = values.get("page") or 1
    queryset = filtered_jobs(values)
    total = queryset.count()
    offset = (number - 1) * size
    rows = list(queryset[offset:offset + size]) if offset < total else []
    if total and not rows:
        problems.append(f"Page {number} is past the last page: there are {total} jobs.")
    cluster = values.get("cluster")
    context = {
        "nav": "jobs",
        "form": form,
        "problems": problems,
        "rows": rows,
        "total": total,
        "first": offset + 1 if rows else 0,
        "last": offset + len(rows),
        "previous_url": query_with(request, drop=(), page=number - 1 if number > 2 else None)
        if number > 1 else None,
        "next_url": query_with(request, drop=(), page=number + 1)
        if offset + size < total else None,
        "cluster": cluster,
        "topic": f"jobs:{cluster.pk}" if cluster else "jobs",
        "next_url_here": request.get_full_path(),
    }
    template = "console/jobs.html#table" if request.htmx else "console/jobs.html"
    return render(request, template, context)


# ------------------------------------------------------------------------------ one job


def _fires(schedule: Schedule, now: datetime) -> tuple[list[dict], str]:
    """The next fires of a schedule (timing.preview, the admin's preview too) in its zone,
    each with its DST note; or the reason there are none."""
    try:
        fires = timing.preview(schedule.timing(), now, PREVIEW_COUNT)
    except (timing.TimingError, OverflowError) as exc:
        return [], str(exc) or "This schedule's times cannot be computed."
    out = [{"at": fire.at, "local": fire.local.strftime("%a %Y-%m-%d %H:%M:%S %Z"),
            "note": fire.note} for fire in fires]
    return out, "" if out else "No fire after now."


def job_context(job: Job) -> dict:
    """What the job page and the job topic's pushes show (the same partials)."""
    now = db_now()
    schedules = []
    for schedule in job.schedules.order_by("id"):
        fires, why_none = _fires(schedule, now)
        schedules.append({"schedule": schedule, "fires": fires, "why_none": why_none})
    recent = list(job.tasks.select_related("member").order_by("-scheduled_for", "-id")
                  [:RECENT_TASKS])
    found = registry.find(job.executor, job.kind)
    return {"job": job, "schedules": schedules, "recent_tasks": recent,
            "support": found.support if found else None}


@console_view
@require_GET
def job(request, job_id: int):
    found = get_object_or_404(with_status(Job.objects.all()), pk=job_id)
    events = list(Event.objects.filter(job=found).order_by("-id")[:AUDIT_ROWS])
    user = request.user
    may_edit = user.is_staff and user.has_perm("scheduler.change_job")
    context = {
        **job_context(found),
        "nav": "jobs",
        "events": events,
        "admin_url": reverse("admin:scheduler_job_change", args=[found.pk]) if may_edit
        else None,
        "next_url_here": request.get_full_path(),
        "parameters": json.dumps(found.parameters, indent=2, ensure_ascii=False,
                                 sort_keys=True) if found.parameters else "",
    }
    return render(request, "console/job.html", context)


# ------------------------------------------------------------------------------ actions


def _safe_next(request, url: str | None) -> str:
    """Back where the operator was (the list with its filters), if that is a local URL."""
    if (url and len(url) <= 2000 and url.startswith("/") and url.isprintable()
            and url_has_allowed_host_and_scheme(url, allowed_hosts={request.get_host()},
                                                require_https=request.is_secure())):
        return url
    return reverse("console:jobs")


@console_view
@require_POST
def job_actions(request):
    """Pause, resume or run now one or many jobs (POST: action, job…, reason, next)."""
    if not can_operate(request.user):
        raise PermissionDenied(NOT_OPERATOR)
    back = HttpResponseRedirect(_safe_next(request, request.POST.get("next")))
    data = request.POST
    if not data.getlist("job") and request.GET.getlist("job"):
        # A row's own form names its job in its URL (no JS: no dialog to carry it), so the
        # list's checkboxes stay the only inputs named job in the page.
        data = data.copy()
        data.setlist("job", request.GET.getlist("job"))
    form = JobActionForm(data)
    if not form.is_valid():
        messages.error(request, "Nothing was changed. " + " ".join(form.problems()))
        return back
    action = form.cleaned_data["action"]
    jobs_ = form.cleaned_data["jobs"]
    actor = console_actor(request, form.cleaned_data["reason"])
    with transaction.atomic():
        if action == "pause":
            done = sum(job_.pause(actor) for job_ in jobs_)
            report(request, done, len(jobs_) - done, "job", "paused", "paused")
        elif action == "resume":
            done = sum(job_.resume(actor) for job_ in jobs_)
            report(request, done, len(jobs_) - done, "job", "resumed", "active")
        else:
            tasks = [job_.run_now(actor) for job_ in jobs_]
            ids = ", ".join(str(task.pk) for task in tasks)
            messages.success(request, f"{plural(len(tasks), 'job')} queued to run now "
                                      f"({'task' if len(tasks) == 1 else 'tasks'} {ids}).")
            paused = [job_.name for job_ in jobs_ if job_.paused]
            if paused:
                messages.warning(request, "Paused, so the task waits until resumed: "
                                          f"{', '.join(paused)}.")
    return back


# ------------------------------------------------------------------------------ live


def _recent_job_ids(cluster_id: int | None) -> list[int]:
    """The jobs that moved lately: running ones, those of the latest tasks and events."""
    tasks = Task.objects.all()
    events = Event.objects.filter(job__isnull=False)
    if cluster_id is not None:
        tasks = tasks.filter(cluster_id=cluster_id)
        events = events.filter(cluster_id=cluster_id)
    ids: dict[int, None] = {}
    for query in (
        tasks.filter(state=Task.State.RUNNING).values_list("job_id", flat=True)[:PUSH_ROWS],
        events.order_by("-id").values_list("job_id", flat=True)[:PUSH_RECENT_EVENTS],
        tasks.order_by("-id").values_list("job_id", flat=True)[:PUSH_RECENT_TASKS],
    ):
        for pk in query:
            ids.setdefault(pk, None)
    return list(ids)[:PUSH_ROWS]


@live.renderer("jobs", takes_id=None,
               tables=("scheduler_job", "scheduler_schedule", "scheduler_task",
                       "scheduler_event", "scheduler_cluster"))
def render_jobs(cluster_id: int | None, viewers: list[live.Viewer]) -> list[str]:
    """The rows of the jobs that moved lately, in `#jobs-push`: jobs.js swaps each into the
    list where that row is shown (the list's filters and page are the browser's own). A pushed
    row has no action form (it would have no CSRF token): jobs.js keeps the row's own."""
    ids = _recent_job_ids(cluster_id)
    rows = list(with_status(Job.objects.filter(pk__in=ids)).order_by("name", "pk")) if ids \
        else []
    return live.render_parts("console/jobs.html", ("push",), {"rows": rows}, viewers)


@live.renderer("job", takes_id=True,
               tables=("scheduler_job", "scheduler_schedule", "scheduler_task"))
def render_job(job_id: int | None, viewers: list[live.Viewer]) -> list[str]:
    """One job's state, next fires and recent tasks."""
    found = Job.objects.filter(pk=job_id).first()
    if found is None:
        return [""] * len(viewers)
    return live.render_parts("console/job.html", ("state", "schedules", "recent_tasks"),
                             job_context(found), viewers)
