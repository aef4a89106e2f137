"""`manage.py addorder --cluster C CHAIN ORDER_ID [--title T] [--parameters JSON] [--priority N]
[--state S] [--end-state S] [--cron EXPR [--timezone TZ] | --interval SECONDS] [--actor A]
[--reason R]`: add an order to a job chain; with --cron or --interval it repeats."""

from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.management.base import CommandError

from scheduler import orderactions
from scheduler.management.commands._common import (
    MAX_COUNT,
    OperatorCommand,
    add_cluster_argument,
    get_cluster,
    validation_error,
    whole_number,
)
from scheduler.management.commands._orders import actor, add_actor_arguments, get_chain
from scheduler.validators import parse_parameters

OPTIONS = {"order_id": "ORDER_ID", "title": "--title", "parameters": "--parameters",
           "priority": "--priority", "initial_state": "--state", "end_state": "--end-state",
           "chain": "CHAIN", "cron": "--cron", "timezone": "--timezone",
           "interval_seconds": "--interval", "repeat_kind": "--cron/--interval"}


class Command(OperatorCommand):
    help = ("Add an order to a job chain: it starts at --state (default: the chain's first "
            "node) and travels the chain node by node.")

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("chain", metavar="CHAIN")
        parser.add_argument("order_id", metavar="ORDER_ID", help="Unique in the chain.")
        parser.add_argument("--title", default="")
        parser.add_argument("--parameters", "--params", dest="parameters", metavar="JSON",
                            help='Parameters merged over each step\'s job\'s: a JSON object '
                                 'such as \'{"day": "2026-01-31"}\'.')
        parser.add_argument("--priority", type=whole_number(MAX_COUNT), default=0,
                            help="Higher first (default 0).")
        parser.add_argument("--state", metavar="STATE",
                            help="The initial state (default: the chain's first node).")
        parser.add_argument("--end-state", metavar="STATE", default="",
                            help="The order ends when it reaches this state.")
        repeat = parser.add_mutually_exclusive_group()
        repeat.add_argument("--cron", metavar="EXPR", default="",
                            help="Repeat the order by cron (five fields, in --timezone): it "
                                 "starts at the next due time, and goes back to its initial "
                                 "state at the end of each run to wait for the next one.")
        repeat.add_argument("--interval", type=whole_number(MAX_COUNT), metavar="SECONDS",
                            help="Repeat the order every SECONDS (counted from now): the "
                                 "first run is SECONDS from now.")
        parser.add_argument("--timezone", default="UTC",
                            help="IANA zone of --cron (default UTC).")
        add_actor_arguments(parser)

    def handle(self, *args, **options):
        who = actor(options)
        cluster = get_cluster(options["cluster"])
        chain = get_chain(cluster, options["chain"])
        parameters = None
        if options["parameters"] is not None:
            try:
                parameters = parse_parameters(options["parameters"])
            except ValidationError as exc:
                raise CommandError(f"--parameters: {' '.join(exc.messages)}") from None
        try:
            order = orderactions.add_order(
                chain, options["order_id"], actor=who, title=options["title"],
                parameters=parameters, priority=options["priority"],
                initial_state=options["state"], end_state=options["end_state"],
                cron=options["cron"], timezone=options["timezone"],
                interval_seconds=options["interval"])
        except ValidationError as exc:
            raise validation_error(exc, OPTIONS) from None
        self.stdout.write(f"order {chain.name}/{order.order_id} added to chain {chain.name} "
                          f"in cluster {cluster.name} at state {order.state}")
        if order.repeat_kind:
            self.stdout.write(f"it repeats ({order.describe_repeat()}): first run at "
                              f"{order.next_start_text()}")
