"""`manage.py resetorder --cluster C CHAIN ORDER [ORDER ...] [--actor A] [--reason R]`."""

from __future__ import annotations

from scheduler.management.commands._orders import OrderActionCommand


class Command(OrderActionCommand):
    help = "Reset orders to their initial state (a running step finishes first)."
    action = "reset"
