"""Job chains and their orders: the pages, and the operator's actions on them (stop or start
a chain, stop / skip / activate a node, add an order; suspend, resume, reset, move or remove
an order), each through scheduler/orderactions.py with the console's actor and the
operator's reason. A bad id, action or state is said in a message and changes nothing."""

from __future__ import annotations

import json

from django.contrib import messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import Count, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import get_template
from django.views.decorators.http import require_GET, require_POST

from scheduler import chaingraph, orderactions
from scheduler.clock import db_now
from scheduler.console import live
from scheduler.console.access import NOT_OPERATOR, can_operate, console_actor, console_view
from scheduler.console.orderforms import ActionForm, AddOrderForm
from scheduler.models import ChainNode, Event, JobChain, Order

WAITING_FOR_MEMBER = "waiting for a member with free capacity to take its step"


def why_waiting(order: Order, chain: JobChain, nodes: dict[str, ChainNode],
                running: int | None = None, now=None) -> str:
    """Where an order stands and why, in an operator's words (the model says what holds a
    waiting order: `Order.waiting_reason`)."""
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
            f" on member {order.member.name}" if order.member else "") + (
            "; suspended when it ends" if order.suspend_requested else "")
    if node.is_end:
        return "at an end node"
    return order.waiting_reason(nodes, running, now=now) or WAITING_FOR_MEMBER


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


def chain_context(chain: JobChain) -> dict:
    nodes = list(chain.nodes.select_related("job").order_by("position", "id"))
    by_state = {node.state: node for node in nodes}
    orders = list(chain.orders.select_related("member").order_by("-priority", "id")[:500])
    running = chain.orders.filter(status=Order.Status.RUNNING).count()
    now = db_now()
    for order in orders:
        order.chain = chain
        order.why = why_waiting(order, chain, by_state, running, now)
        order.node = by_state.get(order.state)
    waiting = {}
    for order in orders:
        if order.status in (Order.Status.WAITING, Order.Status.RUNNING):
            waiting[order.state] = waiting.get(order.state, 0) + 1
    ordered = [by_state[state] for state in chaingraph.graph_order(nodes)]
    for node in ordered:
        node.order_count = waiting.get(node.state, 0)
    return {"nav": "chains", "chain": chain, "nodes": ordered, "orders": orders,
            "order_total": chain.orders.count(),
            "chain_actions": orderactions.CHAIN_ACTIONS,
            "node_actions": orderactions.NODE_ACTIONS}


@console_view
@require_GET
def chain(request, chain_id: int):
    chain = get_object_or_404(JobChain.objects.select_related("cluster"), pk=chain_id)
    return render(request, "console/chain.html", {
        **chain_context(chain), "add_form": AddOrderForm(chain=chain)})


def order_events(order: Order):
    """Events about this order (they name it in their data)."""
    return (Event.objects.filter(cluster_id=order.chain.cluster_id, kind__startswith="order.",
                                 data__order=order.pk)
            .select_related("member").order_by("-id")[:200])


ORDERS = Order.objects.select_related("chain", "chain__cluster", "member")


def order_context(order: Order) -> dict:
    """What the order page and the order topic's pushes show (the same partials)."""
    nodes = {node.state: node for node in order.chain.nodes.select_related("job")}
    order.why = why_waiting(order, order.chain, nodes)
    return {"order": order, "node": nodes.get(order.state), "events": order_events(order),
            "steps": list(orderactions.order_steps(order)),
            "states": chaingraph.graph_order(sorted(nodes.values(),
                                                    key=lambda n: (n.position, n.pk)))}


@console_view
@require_GET
def order(request, order_id: int):
    order = get_object_or_404(ORDERS, pk=order_id)
    return render(request, "console/order.html", {
        **order_context(order), "nav": "chains",
        "parameters_json": json.dumps(order.parameters, indent=2, ensure_ascii=False),
        "order_actions": orderactions.ORDER_ACTIONS})


# ------------------------------------------------------------------------------ live
# Pushed fragments carry no form (a push has no request, so no CSRF token): the chain's and
# the order's action forms stay out of them; only what the nodes change is pushed.


CHAIN_TABLES = ("scheduler_order", "scheduler_jobchain", "scheduler_chainnode", "scheduler_job",
                "scheduler_member")


@live.renderer("chain", takes_id=True, tables=CHAIN_TABLES)
def render_chain(chain_id: int | None, viewers: list[live.Viewer]) -> list[str]:
    """A chain's stopped badge, each node's action and count of orders there, and the orders
    table (status, state, why each waits). "Waiting until" changes with time alone: the
    relay's periodic render keeps it true."""
    found = JobChain.objects.select_related("cluster").filter(pk=chain_id).first() \
        if chain_id is not None else None
    if found is None:
        return [""] * len(viewers)
    context = chain_context(found)
    template = "console/chain.html"
    head = [get_template(f"{template}#chain_state")]
    per_node = [get_template(f"{template}#{name}") for name in ("node_action", "node_orders")]
    tail = [get_template(f"{template}#orders")]
    out = []
    for viewer in viewers:
        seen = {**context, **viewer.context()}
        parts = [t.render(seen) for t in head]
        for node in context["nodes"]:
            parts += [t.render({**seen, "node": node}) for t in per_node]
        parts += [t.render(seen) for t in tail]
        out.append("".join(parts))
    return out


@live.renderer("order", takes_id=True,
               tables=(*CHAIN_TABLES, "scheduler_task", "scheduler_event"))
def render_order(order_id: int | None, viewers: list[live.Viewer]) -> list[str]:
    """An order's status, its facts (where it is, why it waits, its repeats), its step history
    and its events."""
    found = ORDERS.filter(pk=order_id).first() if order_id is not None else None
    if found is None:
        return [""] * len(viewers)
    return live.render_parts("console/order.html", ("status", "facts", "steps",
                                                    "events_section"),
                             order_context(found), viewers)


# ------------------------------------------------------------------------------ actions


def _operator_only(request) -> None:
    if not can_operate(request.user):
        raise PermissionDenied(NOT_OPERATOR)


def _act(request, action_form: ActionForm, target) -> bool:
    """Do the form's action to `target`; the outcome or the refusal as a message."""
    if not action_form.is_valid():
        messages.error(request, "Nothing was changed. " + " ".join(action_form.problems()))
        return False
    actor = console_actor(request, action_form.cleaned_data["reason"])
    try:
        outcome = orderactions.perform(action_form.cleaned_data["action"], target, actor,
                                       **action_form.arguments())
    except ValidationError as exc:
        messages.error(request, f"{' '.join(exc.messages)} Nothing was changed.")
        return False
    messages.add_message(request, messages.SUCCESS if outcome.changed else messages.WARNING,
                         outcome.message[:1].upper() + outcome.message[1:] + ".")
    return outcome.changed


@console_view
@require_POST
def order_action(request, order_id: int):
    """Suspend, resume, reset, move (POST state) or remove an order (POST: action, reason)."""
    _operator_only(request)
    order = get_object_or_404(Order.objects.select_related("chain"), pk=order_id)
    form = ActionForm(request.POST, actions=orderactions.ORDER_ACTIONS)
    done = _act(request, form, order)
    if done and form.cleaned_data["action"] == "remove" and \
            not Order.objects.filter(pk=order.pk).exists():
        return redirect("console:chain", chain_id=order.chain_id)
    return redirect("console:order", order_id=order.pk)


@console_view
@require_POST
def chain_action(request, chain_id: int):
    """Stop or start a chain (POST: action, reason)."""
    _operator_only(request)
    chain = get_object_or_404(JobChain, pk=chain_id)
    _act(request, ActionForm(request.POST, actions=orderactions.CHAIN_ACTIONS), chain)
    return redirect("console:chain", chain_id=chain.pk)


@console_view
@require_POST
def node_action(request, chain_id: int, node_id: int):
    """Make a node of the chain active, stopped or skipped (POST: action, reason)."""
    _operator_only(request)
    node = get_object_or_404(ChainNode.objects.select_related("chain"), pk=node_id,
                             chain_id=chain_id)
    _act(request, ActionForm(request.POST, actions=orderactions.NODE_ACTIONS), node)
    return redirect("console:chain", chain_id=chain_id)


@console_view
@require_POST
def add_order(request, chain_id: int):
    """A new order of the chain; a bad field is shown by its field and nothing is added."""
    _operator_only(request)
    chain = get_object_or_404(JobChain.objects.select_related("cluster"), pk=chain_id)
    form = AddOrderForm(request.POST, chain=chain)
    if form.is_valid():
        try:
            added = orderactions.add_order(
                chain, form.cleaned_data["order_id"],
                actor=console_actor(request, form.cleaned_data["reason"]),
                **form.order_arguments())
        except ValidationError as exc:
            form.add_model_errors(exc)
        else:
            messages.success(request, f"Order {chain.name}/{added.order_id} added at state "
                                      f"{added.state}.")
            return redirect("console:order", order_id=added.pk)
    messages.error(request, "The order was not added: see the form.")
    return render(request, "console/chain.html", {**chain_context(chain), "add_form": form},
                  status=400)
