"""Jobs: the list with filters and bulk operations, and one job's page."""

from __future__ import annotations

from django.http import Http404

from scheduler.console.access import console_view


@console_view
def jobs(request):
    raise Http404("not built yet")


@console_view
def job(request, job_id: int):
    raise Http404("not built yet")


@console_view
def job_actions(request):
    raise Http404("not built yet")
