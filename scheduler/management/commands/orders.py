"""`manage.py orders --cluster C [--chain CHAIN] [--status S] [--limit N]`: a cluster's orders."""

from __future__ import annotations

from django.core.management.base import CommandError

from scheduler.management.commands._common import (
    MAX_COUNT,
    OperatorCommand,
    add_cluster_argument,
    fmt_time,
    get_cluster,
    print_table,
    whole_number,
)
from scheduler.management.commands._orders import get_chain
from scheduler.models import Order


class Command(OperatorCommand):
    help = ("List the orders of a cluster by chain and priority: status, state, member and why "
            "each waits (`manage.py order` shows one with its steps).")

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("--chain", metavar="CHAIN", help="Only this chain's orders.")
        parser.add_argument("--status", choices=Order.Status.values,
                            help="Only orders with this status.")
        parser.add_argument("--limit", type=whole_number(MAX_COUNT), default=50,
                            help="At most this many (50).")

    def handle(self, *args, **options):
        cluster = get_cluster(options["cluster"])
        if options["limit"] < 1:
            raise CommandError("--limit: give a number of orders of at least 1.")
        orders = (Order.objects.filter(chain__cluster=cluster)
                  .select_related("chain", "member")
                  .order_by("chain__name", "-priority", "id"))
        if options["chain"]:
            orders = orders.filter(chain=get_chain(cluster, options["chain"]))
        if options["status"]:
            orders = orders.filter(status=options["status"])
        rows = [[o.chain.name, o.order_id, o.status, o.state, o.priority,
                 o.member.name if o.member else "-", fmt_time(o.updated_at),
                 o.waiting_reason() or "-"]
                for o in orders[: options["limit"]]]
        if not rows:
            self.stdout.write("no orders")
            return
        print_table(self.stdout.write, ["chain", "order", "status", "state", "priority",
                                        "member", "updated", "why it waits"], rows)
