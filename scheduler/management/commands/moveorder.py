"""`manage.py moveorder --cluster C CHAIN ORDER STATE [--actor A] [--reason R]`."""

from __future__ import annotations

from scheduler.management.commands._common import (
    OperatorCommand,
    add_cluster_argument,
    get_cluster,
)
from scheduler.management.commands._orders import (
    actor,
    add_actor_arguments,
    get_chain,
    get_orders,
    perform_all,
)


class Command(OperatorCommand):
    help = "Move an order to another state of its chain (a running step finishes first)."

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("chain", metavar="CHAIN")
        parser.add_argument("order", metavar="ORDER")
        parser.add_argument("to_state", metavar="STATE", help="A node state of the chain.")
        add_actor_arguments(parser)

    def handle(self, *args, **options):
        cluster = get_cluster(options["cluster"])
        chain = get_chain(cluster, options["chain"])
        orders = get_orders(chain, [options["order"]])
        for line in perform_all("move", orders, actor(options), state=options["to_state"]):
            self.stdout.write(line)
