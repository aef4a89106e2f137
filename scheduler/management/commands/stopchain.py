"""`manage.py stopchain --cluster C CHAIN [CHAIN ...] [--actor A] [--reason R]`."""

from __future__ import annotations

from scheduler.management.commands._orders import ChainActionCommand


class Command(ChainActionCommand):
    help = "Stop job chains: no order moves until the chain is started again."
    action = "stop"
