"""What the commands on job chains and orders share: finding a chain, its orders and nodes by
name (every name checked before anything changes), the operator's --reason, and doing an
operator action through scheduler/orderactions.py in one transaction (one refusal and
nothing is changed)."""

from __future__ import annotations

from dataclasses import replace

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError
from django.db import transaction

from scheduler import orderactions
from scheduler.eventlog import Actor
from scheduler.management.commands import _common
from scheduler.models import ChainNode, Cluster, JobChain, Order

MAX_REASON = 500  # as the console's dialog


def add_actor_arguments(parser) -> None:
    _common.add_actor_argument(parser)
    parser.add_argument("--reason", default="",
                        help=f"Why, for the event log (at most {MAX_REASON} characters).")


def actor(options) -> Actor:
    """Who runs this command and why (the door: the command line)."""
    reason = (options.get("reason") or "").strip()
    if len(reason) > MAX_REASON:
        raise CommandError(f"--reason: at most {MAX_REASON} characters ({len(reason)} given).")
    return replace(_common.actor(options), reason=reason)


def get_chain(cluster: Cluster, name: str) -> JobChain:
    chain = JobChain.objects.filter(cluster=cluster, name=name).select_related("cluster").first()
    if chain is None:
        known = ", ".join(JobChain.objects.filter(cluster=cluster)
                          .values_list("name", flat=True)[:20]) or "none"
        raise CommandError(f"No job chain named '{name}' in cluster '{cluster.name}' (chains: "
                           f"{known}).")
    return chain


def get_chains(cluster: Cluster, names: list[str]) -> list[JobChain]:
    return [get_chain(cluster, name) for name in dict.fromkeys(names)]


def get_orders(chain: JobChain, ids: list[str]) -> list[Order]:
    """The orders named, in the order given; all of them or a CommandError naming the missing."""
    by_id = {o.order_id: o for o in Order.objects.filter(chain=chain, order_id__in=ids)
             .select_related("chain__cluster", "member")}
    missing = [order_id for order_id in ids if order_id not in by_id]
    if missing:
        raise CommandError(f"No order {', '.join(repr(o) for o in missing)} in chain "
                           f"'{chain.name}'; `manage.py orders --cluster {chain.cluster.name} "
                           f"--chain {chain.name}` lists its orders.")
    return [by_id[order_id] for order_id in dict.fromkeys(ids)]


def get_node(chain: JobChain, state: str) -> ChainNode:
    node = chain.nodes.filter(state=state).select_related("chain").first()
    if node is None:
        states = ", ".join(chain.nodes.order_by("position", "id")
                           .values_list("state", flat=True)) or "none"
        raise CommandError(f"Chain '{chain.name}' has no node at state '{state}' (states: "
                           f"{states}).")
    return node


def perform_all(action: str, targets: list, who: Actor, **args) -> list[str]:
    """Every target's message; or a CommandError, with nothing changed."""
    for target in targets:  # names and arguments first: a bad one changes nothing
        try:
            orderactions.check(action, target, **args)
        except ValidationError as exc:
            raise CommandError(f"{orderactions.describe(target)}: "
                               f"{' '.join(exc.messages)}") from None
    lines = []
    with transaction.atomic():
        for target in targets:
            try:
                lines.append(orderactions.perform(action, target, who, **args).message)
            except ValidationError as exc:
                raise CommandError(f"{orderactions.describe(target)}: {' '.join(exc.messages)} "
                                   "Nothing was changed.") from None
    return lines


class OrderActionCommand(_common.OperatorCommand):
    """suspendorder, resumeorder, resetorder, removeorder: CHAIN ORDER [ORDER ...]."""

    action = "suspend"

    def add_arguments(self, parser):
        _common.add_cluster_argument(parser)
        parser.add_argument("chain", metavar="CHAIN")
        parser.add_argument("orders", nargs="+", metavar="ORDER", help="Order ids.")
        add_actor_arguments(parser)

    def handle(self, *args, **options):
        cluster = _common.get_cluster(options["cluster"])
        chain = get_chain(cluster, options["chain"])
        orders = get_orders(chain, options["orders"])
        for line in perform_all(self.action, orders, actor(options)):
            self.stdout.write(line)


class ChainActionCommand(_common.OperatorCommand):
    """stopchain, startchain: CHAIN [CHAIN ...]."""

    action = "stop"

    def add_arguments(self, parser):
        _common.add_cluster_argument(parser)
        parser.add_argument("chains", nargs="+", metavar="CHAIN", help="Chain names.")
        add_actor_arguments(parser)

    def handle(self, *args, **options):
        cluster = _common.get_cluster(options["cluster"])
        chains = get_chains(cluster, options["chains"])
        for line in perform_all(self.action, chains, actor(options)):
            self.stdout.write(line)
