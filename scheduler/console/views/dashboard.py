"""The dashboard: the health of every cluster at a glance."""

from __future__ import annotations

from django.shortcuts import render

from scheduler.console.access import console_view
from scheduler.models import Cluster


@console_view
def dashboard(request):
    clusters = Cluster.objects.order_by("name")
    return render(request, "console/dashboard.html", {"clusters": clusters})
