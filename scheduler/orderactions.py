"""The operator's actions on orders, job chains and chain nodes: the one place every door
(admin, command line, console, later the API) goes through.

`perform(action, target, actor, **args)` checks the action's name and arguments before
anything changes, calls the model's method (which records the event naming the actor, its
door and reason) and returns an `Outcome` whose text is the message for the operator:
"order nightly-etl/order-1 suspended", "... was already suspended". An impossible request is
a `ValidationError` with a message that says what is wrong, and changes nothing.

`add_order` checks a new order field by field (the errors a form shows next to each field)
before `Order.add` creates it.

The model methods (`Order.add/suspend/resume/reset/move/remove`, `JobChain.stop/unstop`,
`ChainNode.set_action`, `Order.waiting_reason`, `Task.order`) are the order processing's;
each is called from exactly one function here, so a change of their names is one edit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from django.core.exceptions import ValidationError

from scheduler import chaingraph
from scheduler.eventlog import Actor
from scheduler.models import ChainNode, JobChain, Order, Task
from scheduler.validators import text_for_message

MAX_ORDER_ROWS = 500


@dataclass(frozen=True)
class Outcome:
    """What an action did: whether it changed something, and the operator's message."""

    changed: bool
    message: str

    def __str__(self) -> str:
        return self.message


# ------------------------------------------------------------------ the model's methods


def suspend(order: Order, actor: Actor) -> bool:
    return order.suspend(actor)


def resume(order: Order, actor: Actor) -> bool:
    return order.resume(actor)


def reset(order: Order, actor: Actor) -> bool:
    return order.reset(actor)


def move(order: Order, actor: Actor, *, state: str) -> bool:
    return order.move(state, actor)


def remove(order: Order, actor: Actor) -> bool:
    return order.remove(actor)


def stop_chain(chain: JobChain, actor: Actor) -> bool:
    return chain.stop(actor)


def start_chain(chain: JobChain, actor: Actor) -> bool:
    return chain.unstop(actor)


def set_node_action(node: ChainNode, actor: Actor, *, action: str) -> bool:
    return node.set_action(action, actor)


def create_order(chain: JobChain, order_id: str, *, title: str, parameters: dict | None,
                 priority: int, initial_state: str | None, end_state: str,
                 actor: Actor, **repeat) -> Order:
    return Order.add(chain, order_id, title=title, parameters=parameters, priority=priority,
                     initial_state=initial_state, end_state=end_state, actor=actor, **repeat)


def order_steps(order: Order, limit: int = MAX_ORDER_ROWS):
    """The order's step tasks, oldest first (with their job and member)."""
    return (Task.objects.filter(order=order).select_related("job", "member")
            .order_by("id")[:limit])


# ------------------------------------------------------------------ what an action says


@dataclass(frozen=True)
class Action:
    model: type
    label: str  # for buttons and menus
    call: Callable[..., bool]
    done: str  # "{target} suspended"
    unchanged: str  # "{target} was already suspended"
    arguments: tuple[str, ...] = ()


ORDER_ACTIONS = {
    "suspend": Action(Order, "Suspend", suspend, "{target} suspended",
                      "{target} was already suspended"),
    "resume": Action(Order, "Resume", resume, "{target} resumed", "{target} was not suspended"),
    "reset": Action(Order, "Reset", reset, "{target} reset to its initial state {initial}",
                    "{target} was already at its initial state {initial}"),
    "move": Action(Order, "Move", move, "{target} moved to state {state}",
                   "{target} was already at state {state}", ("state",)),
    "remove": Action(Order, "Remove", remove, "{target} removed",
                     "{target} was already removed"),
}
CHAIN_ACTIONS = {
    "stop": Action(JobChain, "Stop", stop_chain, "{target} stopped",
                   "{target} was already stopped"),
    "start": Action(JobChain, "Start", start_chain, "{target} started",
                    "{target} was not stopped"),
}
NODE_ACTIONS = {
    value: Action(ChainNode, value.capitalize(),
                  lambda node, actor, value=value: set_node_action(node, actor, action=value),
                  f"{{target}} set to {value}", f"{{target}} was already {value}")
    for value in ChainNode.Action.values
}
ACTIONS_OF = {Order: ORDER_ACTIONS, JobChain: CHAIN_ACTIONS, ChainNode: NODE_ACTIONS}


def describe(target) -> str:
    if isinstance(target, Order):
        return f"order {target.chain.name}/{target.order_id}"
    if isinstance(target, JobChain):
        return f"chain {target.name}"
    return f"node {target.chain.name}:{target.state}"


def check(action: str, target, **args) -> Action:
    """The action if `action` may be done to `target` with `args`; else a ValidationError
    saying what is wrong. Reads, never writes."""
    actions = ACTIONS_OF.get(type(target))
    if actions is None:
        raise ValidationError(f"{type(target).__name__} has no operator actions.")
    found = actions.get(action) if isinstance(action, str) else None
    if found is None:
        raise ValidationError(
            f"“{text_for_message(action)[:40]}” is not an action on a "
            f"{describe(target).split()[0]} (actions: {', '.join(actions)}).")
    extra = sorted(set(args) - set(found.arguments))
    if extra:
        raise ValidationError(f"{action} takes no {', '.join(extra)}.")
    missing = [name for name in found.arguments if args.get(name) in (None, "")]
    if missing:
        raise ValidationError(f"{action} needs a {', '.join(missing)}.")
    if "state" in found.arguments:
        check_state(target.chain, args["state"])
    return found


def check_state(chain: JobChain, state) -> None:
    states = states_in_graph_order(chain)
    if not isinstance(state, str) or state not in states:
        raise ValidationError(
            f"'{text_for_message(state)[:100]}' is not a state of chain {chain.name} "
            f"(states: {', '.join(states) or 'none'}).")


def perform(action: str, target, actor: Actor, **args) -> Outcome:
    """Do one operator action on an order, a chain or a node; see the module's text."""
    found = check(action, target, **args)
    changed = bool(found.call(target, actor, **args))
    text = found.done if changed else found.unchanged
    initial = getattr(target, "initial_state", "")
    return Outcome(changed, text.format(target=describe(target), initial=initial, **args))


# ------------------------------------------------------------------ adding an order


def states_in_graph_order(chain: JobChain) -> list[str]:
    """The chain's states as an order travels them (chaingraph.graph_order); the first is
    where a new order starts unless it names its initial state (Order.add)."""
    return chaingraph.graph_order(chain.nodes.order_by("position", "id"))


def new_order_errors(chain: JobChain, order_id, *, title="", parameters=None, priority=0,
                     initial_state=None, end_state="", cron="", timezone="UTC",
                     interval_seconds=None) -> dict[str, list[str]]:
    """What is wrong with a new order, by field ({} when nothing): the model's own checks
    (names, states of the chain, parameters, its own schedule if it repeats — a cron in a
    time zone or an interval, checked as a job's schedule is — what a database can hold) and
    a free id."""
    first = next(iter(states_in_graph_order(chain)), None)  # where Order.add starts it
    order = Order(chain=chain, order_id=order_id, title=title,
                  parameters={} if parameters is None else parameters, priority=priority,
                  initial_state=(first or "") if initial_state in (None, "") else initial_state,
                  end_state=end_state or "", cron=cron or "", timezone=timezone or "UTC",
                  interval_seconds=interval_seconds,
                  repeat_kind=Order.repeat_kind_of(cron, interval_seconds))
    errors: dict[str, list[str]] = {}
    try:
        order.full_clean(exclude=["state", "status", "version"], validate_unique=False,
                         validate_constraints=False)
    except ValidationError as exc:
        errors = {field: list(messages) for field, messages in exc.message_dict.items()}
    if initial_state in (None, "") and first is None:
        errors.setdefault("initial_state", []).append(f"Chain {chain.name} has no node.")
    if "order_id" not in errors and Order.objects.filter(chain=chain,
                                                         order_id=order_id).exists():
        errors["order_id"] = [f"Chain {chain.name} already has an order '{order_id}'."]
    return errors


def add_order(chain: JobChain, order_id: str, *, actor: Actor, title: str = "",
              parameters: dict | None = None, priority: int = 0,
              initial_state: str | None = None, end_state: str = "", cron: str = "",
              timezone: str = "UTC", interval_seconds: int | None = None) -> Order:
    """A new order of `chain`, checked field by field first (ValidationError by field). With
    a `cron` (in `timezone`) or an `interval_seconds` it repeats (Order.add)."""
    repeat = {"cron": cron or "", "timezone": timezone or "UTC",
              "interval_seconds": interval_seconds}
    errors = new_order_errors(chain, order_id, title=title, parameters=parameters,
                              priority=priority, initial_state=initial_state,
                              end_state=end_state, **repeat)
    if errors:
        raise ValidationError(errors)
    return create_order(chain, order_id, title=title, parameters=parameters,
                        priority=priority, initial_state=initial_state or None,
                        end_state=end_state or "", actor=actor, **repeat)
