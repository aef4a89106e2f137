"""`manage.py switchover --cluster C [--to NODE]`: hand a passive cluster's lease over."""

from __future__ import annotations

from django.core.management.base import CommandError

from scheduler.management.commands._common import (
    OperatorCommand,
    actor,
    add_actor_argument,
    add_cluster_argument,
)
from scheduler.membership import MemberRefused, request_switchover


class Command(OperatorCommand):
    help = ("Ask the active member of a passive cluster to hand the lease to a standby member "
            "(default: the primary).")

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("--to", metavar="NODE", help="The standby member to hand over to.")
        add_actor_argument(parser)

    def handle(self, *args, **options):
        if not options["cluster"]:
            raise CommandError("--cluster NAME is required (or set OPSCENTER_CLUSTER).")
        try:
            target = request_switchover(options["cluster"], options["to"], actor(options))
        except MemberRefused as exc:
            raise CommandError(f"Switch-over refused: {exc}.") from None
        self.stdout.write(f"switch-over to {target.name} requested; the active member hands "
                          "the lease over at its next heartbeat (`manage.py cluster "
                          f"--cluster {options['cluster']}` shows it).")
