"""`manage.py suspendorder --cluster C CHAIN ORDER [ORDER ...] [--actor A] [--reason R]`."""

from __future__ import annotations

from scheduler.management.commands._orders import OrderActionCommand


class Command(OrderActionCommand):
    help = "Suspend orders: each stays where it is (a running step finishes) until resumed."
    action = "suspend"
