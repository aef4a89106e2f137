"""Job chains and their orders, as they exist."""

from __future__ import annotations

from django.http import Http404

from scheduler.console.access import console_view


@console_view
def chains(request):
    raise Http404("not built yet")


@console_view
def chain(request, chain_id: int):
    raise Http404("not built yet")


@console_view
def order(request, order_id: int):
    raise Http404("not built yet")
