"""`manage.py order --cluster C CHAIN ORDER`: one order, why it waits, its steps and events."""

from __future__ import annotations

import json

from scheduler import orderactions
from scheduler.management.commands._common import (
    OperatorCommand,
    add_cluster_argument,
    fmt_time,
    get_cluster,
    print_table,
)
from scheduler.management.commands._orders import get_chain, get_orders
from scheduler.models import Event

EVENTS = 20


class Command(OperatorCommand):
    help = "Show one order: where it is and why it waits, its step history and its events."

    def add_arguments(self, parser):
        add_cluster_argument(parser)
        parser.add_argument("chain", metavar="CHAIN")
        parser.add_argument("order", metavar="ORDER")

    def handle(self, *args, **options):
        cluster = get_cluster(options["cluster"])
        chain = get_chain(cluster, options["chain"])
        (order,) = get_orders(chain, [options["order"]])
        write = self.stdout.write
        write(f"order {chain.name}/{order.order_id}" + (f": {order.title}" if order.title
                                                         else ""))
        for label, value in (
            ("status", order.get_status_display()), ("at state", order.state),
            ("why it waits", order.waiting_reason() or "-"),
            ("initial state", order.initial_state), ("end state", order.end_state or "-"),
            ("priority", order.priority),
            ("member", order.member.name if order.member else "-"),
            ("parameters", json.dumps(order.parameters, ensure_ascii=False, sort_keys=True)),
            ("created", fmt_time(order.created_at)), ("updated", fmt_time(order.updated_at)),
        ):
            write(f"  {label + ':':15} {value}")
        write("")
        steps = list(orderactions.order_steps(order))
        if steps:
            print_table(write, ["node state", "task", "job", "state", "member", "started",
                                "finished", "exit"],
                        [[getattr(t, "order_state", "") or "-", t.pk, t.job.name, t.state,
                          t.member.name if t.member else "-", fmt_time(t.started_at),
                          fmt_time(t.finished_at), "-" if t.exit_code is None else t.exit_code]
                         for t in steps])
        else:
            write("no step yet")
        events = list(Event.objects.filter(cluster=cluster, kind__startswith="order.",
                                           data__order=order.pk).order_by("-id")[:EVENTS])
        if events:
            write("")
            print_table(write, ["when", "event", "who", "door", "what", "reason"],
                        [[fmt_time(e.created_at), e.kind, e.actor or "-", e.source or "-",
                          e.message, e.reason or "-"] for e in events])
