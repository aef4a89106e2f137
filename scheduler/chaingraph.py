"""Job chain graphs, without Django: is a chain sound, in which order are its nodes shown,
and what happens to an order at a node.

A node here is anything with the keys (a dict) or attributes state, job (truthy when the node
runs a job), next_state, error_state and, for `step_at`, action. The models, the node's
processing (scheduler/ledger/orders.py) and the console all ask this module.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum
from typing import Any

ACTIONS = ("active", "stopped", "skipped")


class Step(StrEnum):
    """What happens to an order that waits at a node."""

    RUN = "run"    # the node's job runs as a step of the order (a task)
    SKIP = "skip"  # a skipped node: the order passes to its next state without a task
    END = "end"    # an end node (no job), or the order's own end state: the order ends there
    WAIT = "wait"  # a stopped node: the order waits until the node is active again


def _get(node: Any, key: str):
    if isinstance(node, dict):
        return node.get(key)
    if key == "job":
        # A model instance: its job id says whether it runs one, without loading the job.
        return getattr(node, "job_id", None) or getattr(node, "job", None)
    return getattr(node, key)


def step_at(node: Any, end_state: str = "") -> Step:
    """What happens to an order waiting at `node` (the order's `end_state` ends it there)."""
    if not _get(node, "job") or (end_state and _get(node, "state") == end_state):
        return Step.END
    action = _get(node, "action") or "active"
    if action == "stopped":
        return Step.WAIT
    if action == "skipped":
        return Step.SKIP
    return Step.RUN


def check_chain_graph(nodes: Iterable[Any]) -> list[str]:
    """Problems of a chain's graph, each naming the node; [] when it is sound.

    Every next/error state must exist, a node without a job is an end node (no next or error
    state), a node with a job has both, there is an end node, and every node reaches one.
    """
    nodes = [
        {"state": _get(n, "state"), "job": _get(n, "job"),
         "next_state": _get(n, "next_state") or "", "error_state": _get(n, "error_state") or ""}
        for n in nodes
    ]
    problems = []
    by_state: dict[str, dict] = {}
    for node in nodes:
        if node["state"] in by_state:
            problems.append(f"State '{node['state']}' is used by more than one node.")
        by_state[node["state"]] = node
    if not nodes:
        return ["A job chain needs at least one node with a job and one end node."]
    ends = {s for s, n in by_state.items() if not n["job"]}
    if not ends:
        problems.append("The chain has no end node (a node without a job).")
    for state, node in by_state.items():
        if not node["job"]:
            if node["next_state"] or node["error_state"]:
                problems.append(f"Node '{state}' has no job, so it is an end node and "
                                "cannot have a next or error state.")
            continue
        for label in ("next_state", "error_state"):
            target = node[label]
            if not target:
                problems.append(f"Node '{state}' runs a job but has no {label.replace('_', ' ')}.")
            elif target not in by_state:
                problems.append(f"Node '{state}': {label.replace('_', ' ')} '{target}' "
                                "is not a state of this chain.")
    if problems:
        return problems
    # Every node must be able to reach an end node: walk backwards from the ends.
    reaches_end = set(ends)
    grew = True
    while grew:
        grew = False
        for state, node in by_state.items():
            if state not in reaches_end and (
                node["next_state"] in reaches_end or node["error_state"] in reaches_end
            ):
                reaches_end.add(state)
                grew = True
    for state in by_state:
        if state not in reaches_end:
            problems.append(f"Node '{state}' cannot reach an end node.")
    return problems


def graph_order(nodes: Iterable[Any]) -> list[str]:
    """The states in the order an operator reads the chain: from the entry nodes (those no
    other node leads to, in the given order), each path along next states first, then error
    states; end nodes after the nodes that lead to them; unreachable nodes last."""
    nodes = list(nodes)
    by_state = {_get(n, "state"): n for n in nodes}
    targets = {t for n in nodes for t in (_get(n, "next_state"), _get(n, "error_state")) if t}
    roots = [s for s in by_state if s not in targets] or list(by_state)[:1]
    seen: list[str] = []
    seen_set: set[str] = set()
    stack = list(reversed(roots))
    while stack:  # depth first, the next state before the error state
        state = stack.pop()
        if state in seen_set or state not in by_state:
            continue
        seen.append(state)
        seen_set.add(state)
        node = by_state[state]
        stack += [t for t in (_get(node, "error_state"), _get(node, "next_state")) if t]
    # Ends last among what was reached, keeping their order; then whatever was not reached.
    runs = [s for s in seen if _get(by_state[s], "job")]
    ends = [s for s in seen if not _get(by_state[s], "job")]
    rest = [s for s in by_state if s not in seen_set]
    return runs + ends + rest


def first_state(nodes: Iterable[Any]) -> str:
    """Where a new order starts unless it names its initial state: the first in graph order."""
    order = graph_order(nodes)
    return order[0] if order else ""
