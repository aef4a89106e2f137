"""Prototypes of changes to the hot path, measured by the bench, NOT applied to scheduler/.

    .venv/bin/python bench/fires.py --prototype NAME ...

runs the members through `python -m bench.patched runscheduler ...`, which swaps in the
named prototypes before the command starts: a prototype is a replacement for one function of
`scheduler.ledger`, registered below as NAME: (attribute, function). They exist to put a
number on a suggestion in docs/performance.md before it is built; the scheduler's own code is
what the other figures measure.

None is registered now: the first, `insert-unnest` (the fire-task insert as one prepared
INSERT ... SELECT FROM unnest(arrays)), became `ledger.INSERT_FIRES_SQL`.
"""

from __future__ import annotations

from collections.abc import Callable

PROTOTYPES: dict[str, tuple[str, Callable]] = {}


def apply(names: str) -> None:
    from scheduler import ledger

    for name in filter(None, names.split(",")):
        attr, func = PROTOTYPES[name]
        setattr(ledger, attr, func)
