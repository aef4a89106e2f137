"""Which executor runs which job kind, and what each declares it supports.

Every executor module declares one `Executor` (its `Support` and its runner) per job kind it
runs; scheduler/executors/__init__.py registers them. `execute()` and the node dispatch through
`find()`, and every door checks a job against `refusals()` (Job.clean), so a combination no
executor declares is refused with the field and the reason, never run. Django-free.
"""

from __future__ import annotations

from scheduler.executors.base import Executor, Support

_executors: dict[tuple[str, str], Executor] = {}


def register(*executors: Executor) -> None:
    for executor in executors:
        key = (executor.support.executor, executor.support.kind)
        if key in _executors:
            raise ValueError(f"executor {key[0]!r} already runs {key[1]!r} jobs")
        _executors[key] = executor


def find(executor: str, kind: str) -> Executor | None:
    return _executors.get((executor, kind))


def declared() -> list[Support]:
    """Every declaration, in the order registered."""
    return [executor.support for executor in _executors.values()]


def refusals(executor: str, kind: str, isolation: str, stateful: bool) -> dict[str, str]:
    """Why a job with these fields cannot run, by field ({} when it can). An executor or kind
    nobody registers at all is left to the field's own choices."""
    known = declared()
    if not any(s.executor == executor for s in known) or not any(s.kind == kind for s in known):
        return {}
    found = find(executor, kind)
    if found is None:
        runs = _kinds(s for s in known if s.executor == executor)
        others = [s.executor for s in known if s.kind == kind]
        return {"executor": f"The {executor} executor runs {runs} jobs, not {kind} jobs; "
                            f"{kind} jobs run with the executor {_either(others)}."}
    support = found.support
    errors: dict[str, str] = {}
    if isolation and isolation != "thread" and isolation not in support.isolations:
        chosen = [s for s in known if s.executor == executor and isolation in s.isolations]
        errors["isolation"] = (
            f"Only {_kinds(chosen) or 'no'} jobs have an isolation {isolation!r} (executor "
            f"{executor}): a {kind} job runs on {support.runs_on}.")
    if stateful and not support.data_map:
        keep = [s for s in known if s.executor == executor and s.data_map]
        errors["stateful"] = (
            f"A {kind} job leaves no data map to keep (executor {executor}): only "
            f"{_kinds(keep) or 'no'} jobs can be stateful. For runs that never overlap, "
            f"keep max parallel at 1.")
    return errors


def _kinds(supports) -> str:
    return _either(list(dict.fromkeys(s.kind for s in supports)), "and")


def _either(words: list[str], join: str = "or") -> str:
    if len(words) <= 1:
        return "".join(words)
    return f"{', '.join(words[:-1])} {join} {words[-1]}"
