"""Job chains and their orders, as they exist. Nothing in this version moves orders along
their chains yet (another issue builds that): the pages say so where an order waits."""

from __future__ import annotations

import json

from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, render
from django.views.decorators.http import require_GET

from scheduler.console.access import console_view
from scheduler.models import ChainNode, Event, JobChain, Order

NOT_PROCESSED = "orders are not processed yet by this version"


def graph_order(nodes: list[ChainNode]) -> list[ChainNode]:
    """Nodes as an order travels them: from the first node (by position), next states before
    error states, breadth first; nodes no path reaches come last, in position order."""
    by_state = {node.state: node for node in nodes}
    ordered: list[ChainNode] = []
    seen: set[str] = set()
    queue = [nodes[0].state] if nodes else []
    while queue:
        state = queue.pop(0)
        if state in seen or state not in by_state:
            continue
        seen.add(state)
        node = by_state[state]
        ordered.append(node)
        queue.extend(s for s in (node.next_state, node.error_state) if s)
    ordered.extend(node for node in nodes if node.state not in seen)
    return ordered


def why_waiting(order: Order, chain: JobChain, nodes: dict[str, ChainNode]) -> str:
    """Why an order is where it is, in an operator's words."""
    if order.status == Order.Status.FINISHED:
        return "finished"
    if order.status == Order.Status.FAILED:
        return "failed"
    if order.status == Order.Status.SUSPENDED:
        return "suspended by an operator"
    node = nodes.get(order.state)
    if node is None:
        return f"its state '{order.state}' is not a node of the chain"
    if order.status == Order.Status.RUNNING:
        return f"running the step of node {node.state}" + (
            f" on member {order.member.name}" if order.member else "")
    if node.is_end:
        return "at an end node"
    if chain.stopped:
        return "chain stopped"
    if node.action == ChainNode.Action.STOPPED:
        return "node stopped"
    return NOT_PROCESSED


@console_view
@require_GET
def chains(request):
    counts = {status: Count("orders", filter=Q(orders__status=status), distinct=True)
              for status in Order.Status.values}
    rows = list(JobChain.objects.select_related("cluster")
                .annotate(node_count=Count("nodes", distinct=True), **{
                    f"orders_{status}": count for status, count in counts.items()})
                .order_by("cluster__name", "name"))
    for chain in rows:
        chain.order_counts = [(label, getattr(chain, f"orders_{status}"))
                              for status, label in Order.Status.choices]
    return render(request, "console/chains.html", {
        "nav": "chains", "chains": rows, "statuses": Order.Status.choices})


@console_view
@require_GET
def chain(request, chain_id: int):
    chain = get_object_or_404(JobChain.objects.select_related("cluster"), pk=chain_id)
    nodes = list(chain.nodes.select_related("job").order_by("position", "id"))
    by_state = {node.state: node for node in nodes}
    orders = list(chain.orders.select_related("member").order_by("-priority", "id")[:500])
    for order in orders:
        order.why = why_waiting(order, chain, by_state)
        order.node = by_state.get(order.state)
    waiting = {}
    for order in orders:
        if order.status in (Order.Status.WAITING, Order.Status.RUNNING):
            waiting[order.state] = waiting.get(order.state, 0) + 1
    ordered = graph_order(nodes)
    for node in ordered:
        node.order_count = waiting.get(node.state, 0)
    return render(request, "console/chain.html", {
        "nav": "chains", "chain": chain, "nodes": ordered, "orders": orders,
        "order_total": chain.orders.count(), "not_processed": NOT_PROCESSED})


def order_events(order: Order):
    """Events about this order (they name it in their data)."""
    return (Event.objects.filter(cluster_id=order.chain.cluster_id, kind__startswith="order.",
                                 data__order=order.pk)
            .select_related("member").order_by("-id")[:200])


@console_view
@require_GET
def order(request, order_id: int):
    order = get_object_or_404(Order.objects.select_related("chain", "chain__cluster", "member"),
                              pk=order_id)
    nodes = {node.state: node for node in order.chain.nodes.select_related("job")}
    order.why = why_waiting(order, order.chain, nodes)
    return render(request, "console/order.html", {
        "nav": "chains", "order": order, "node": nodes.get(order.state),
        "parameters_json": json.dumps(order.parameters, indent=2, ensure_ascii=False),
        "events": order_events(order)})
