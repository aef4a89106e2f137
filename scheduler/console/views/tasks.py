"""Tasks: the list with filters, one task's page, and its log (tail, download)."""

from __future__ import annotations

from django.http import Http404

from scheduler.console.access import console_view


@console_view
def tasks(request):
    raise Http404("not built yet")


@console_view
def task(request, task_id: int):
    raise Http404("not built yet")


@console_view
def task_log(request, task_id: int):
    raise Http404("not built yet")


@console_view
def task_log_download(request, task_id: int):
    raise Http404("not built yet")


@console_view
def task_cancel(request, task_id: int):
    raise Http404("not built yet")
