"""The cluster tab: every member, the lease, switch-over, the cluster's event timeline."""

from __future__ import annotations

from django.http import Http404

from scheduler.console.access import console_view


@console_view
def clusters(request):
    raise Http404("not built yet")


@console_view
def cluster(request, cluster_id: int):
    raise Http404("not built yet")


@console_view
def switchover(request, cluster_id: int):
    raise Http404("not built yet")
