"""`manage.py resumeorder --cluster C CHAIN ORDER [ORDER ...] [--actor A] [--reason R]`."""

from __future__ import annotations

from scheduler.management.commands._orders import OrderActionCommand


class Command(OrderActionCommand):
    help = "Resume suspended orders: each goes on from the state it is at."
    action = "resume"
