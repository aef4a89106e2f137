"""`manage.py startchain --cluster C CHAIN [CHAIN ...] [--actor A] [--reason R]`."""

from __future__ import annotations

from scheduler.management.commands._orders import ChainActionCommand


class Command(ChainActionCommand):
    help = "Start stopped job chains: their orders move on again."
    action = "start"
