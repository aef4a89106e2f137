"""`manage.py removeorder --cluster C CHAIN ORDER [ORDER ...] [--actor A] [--reason R]`."""

from __future__ import annotations

from scheduler.management.commands._orders import OrderActionCommand


class Command(OrderActionCommand):
    help = "Remove orders from their chain (a running step finishes)."
    action = "remove"
