"""The audit log: every operator action from every door (who, when, source, reason)."""

from __future__ import annotations

from django.http import Http404

from scheduler.console.access import console_view


@console_view
def audit(request):
    raise Http404("not built yet")
