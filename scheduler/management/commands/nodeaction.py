"""`manage.py nodeaction --cluster C CHAIN STATE {active,stopped,skipped} [--actor] [--reason]`."""

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
    get_node,
    perform_all,
)
from scheduler.models import ChainNode


class Command(OperatorCommand):
    help = ("Set a chain node's action: active, stopped (orders wait there) or skipped "
            "(orders pass to its next state without running its job).")

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("chain", metavar="CHAIN")
        parser.add_argument("node_state", metavar="STATE", help="The node's state.")
        parser.add_argument("node_action", metavar="ACTION", choices=ChainNode.Action.values,
                            help="active, stopped or skipped.")
        add_actor_arguments(parser)

    def handle(self, *args, **options):
        cluster = get_cluster(options["cluster"])
        chain = get_chain(cluster, options["chain"])
        node = get_node(chain, options["node_state"])
        for line in perform_all(options["node_action"], [node], actor(options)):
            self.stdout.write(line)
